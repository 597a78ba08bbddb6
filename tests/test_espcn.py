"""RevESPCN-3D (LR-grid core, pixel-shuffle output) and the torch interpolation it builds on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_twins
from medsr.baselines import upsample_array
from medsr.networks import create_model
from medsr.networks.interpolate import block_mean, upsample


pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_and_nn_equal_the_baselines_and_cubic_is_close():
    rng = np.random.default_rng(0)
    lr = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    t = torch.from_numpy(lr)[None]
    for mode in ("nn", "linear"):
        np.testing.assert_allclose(upsample(t, 2, mode)[0].numpy(), upsample_array(lr, 2, mode), atol=1e-5)
    # Keys' cubic convolution vs the baselines' cubic B-spline: both interpolate, close on smooth data
    x = np.linspace(0, 3, 12)
    smooth = np.sin(x)[:, None, None] * np.cos(x[:10])[None, :, None] * np.ones(9)[None, None, :]
    ours = upsample(torch.from_numpy(smooth[None, None]), 2, "cubic")[0].numpy()
    ref = upsample_array(smooth[None], 2, "cubic")
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert np.abs(ours[inner] - ref[inner]).max() < 5e-3  # 0.5% of the amplitude
    # a constant stays constant, a linear ramp stays exact inside (partition of unity, 2nd-order)
    ramp = torch.arange(8.0)[:, None, None].expand(8, 4, 4)[None, None].contiguous()
    up = upsample(ramp, 2, "cubic")[0, 0, :, 1, 1]
    np.testing.assert_allclose(up[3:-3].numpy(), (np.arange(16) - 0.5)[3:-3] / 2, atol=1e-5)


def test_block_mean_inverts_nn_upsampling_and_refuses_misaligned_sizes():
    x = torch.randn(1, 3, 4, 5, 6)
    torch.testing.assert_close(block_mean(upsample(x, 2, "nn"), 2), x)
    with pytest.raises(ValueError, match="multiple of the factor 2"):
        block_mean(torch.zeros(1, 1, 9, 8, 8), 2)


@pytest.mark.parametrize("base", ["cubic", "linear", "none"])
def test_shapes_and_start_as_the_base_interpolation(base):
    net = create_model("rev_espcn3d", in_channels=6, width=8, depth=2, base=base)
    lr = torch.randn(2, 6, 5, 6, 4)
    x = upsample(lr, 2, "nn")  # what the data gives: lr_up
    y = net(x)
    assert y.shape == x.shape and net.reverse(y).shape == x.shape
    expected = torch.zeros_like(x) if base == "none" else upsample(lr, 2, base)
    torch.testing.assert_close(y, expected)  # zero-initialised decoders: F starts as the base
    torch.testing.assert_close(net.forward_lr(lr), y)
    # G's output is an NN-upsampled LR volume (constant on every 2^3 block)
    g = net.reverse(torch.randn_like(x))
    torch.testing.assert_close(upsample(block_mean(g, 2), 2, "nn"), g)


def test_core_is_exactly_invertible_and_gradients_match_plain_autograd():
    eff, plain = random_twins("rev_espcn3d", in_channels=1, width=8, depth=3, factor=2)
    h = torch.randn(2, 8, 4, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(eff.core.inverse(eff.core(h)), h, atol=1e-12, rtol=0)
    x = upsample(torch.randn(2, 1, 4, 4, 4, dtype=torch.float64), 2, "nn")
    y = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    grads = []
    for net in (eff, plain):
        net.zero_grad()
        loss = (net(x) - y).abs().mean() + (net.reverse(y) - x).abs().mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-10, rtol=1e-8, msg=n)


def test_factor_auto_and_registry_kwargs_are_checked():
    with pytest.raises(ValueError, match="base must be one of"):
        create_model("rev_espcn3d", in_channels=1, base="quintic")
    with pytest.raises(ValueError, match="factor"):
        create_model("rev_espcn3d", in_channels=1, factor=0)


def test_windowed_inference_runs_on_the_lr_grid_and_stitches_in_place():
    """Several LR-grid windows (MONAI stitches the 2x larger outputs): a fresh nn-base model must give
    back its NN-upsampled input exactly where every voxel came from, whatever window it fell in."""
    from medsr.inference import Predictor
    from medsr.normalise import ChannelStats
    from medsr.volume import Volume

    net = create_model("rev_espcn3d", in_channels=2, width=4, depth=1, base="nn")
    ck = {"model": {"name": "rev_espcn3d", "kwargs": {"width": 4}}, "data": {"factor": 2, "channels": 2}}
    pred = Predictor(net, ChannelStats.identity(2), ChannelStats.identity(2), ck, "cpu")
    lr = torch.randn(1, 2, 9, 7, 6)
    vol = Volume(upsample(lr, 2, "nn")[0].numpy(), np.eye(4))
    plan = pred.plan(vol.spatial_shape, window=8, overlap=0.25)
    assert plan.roi == (4, 4, 4) and plan.n_windows > 1 and "LR grid" in plan.reason
    out = pred.predict(vol, plan=plan)
    assert out.data.shape == vol.data.shape
    np.testing.assert_allclose(out.data, vol.data, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of the model's factor 2"):
        pred.plan((9, 8, 8))
