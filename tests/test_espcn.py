"""RevESPCN-3D (LR-grid core, pixel-shuffle output) and the torch interpolation it builds on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import randomise, random_twins
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


# ----------------------------------------------------------------------------- per-axis factors

@pytest.mark.parametrize("r", [1, 2, 3])
def test_per_axis_pixel_shuffle_is_monais_at_equal_factors(r):
    from monai.networks.utils import pixelshuffle, pixelunshuffle

    from medsr.networks.shuffle import pixel_shuffle, pixel_unshuffle

    x = torch.randn(2, 3 * r**3, 3, 4, 5)
    torch.testing.assert_close(pixel_shuffle(x, r), pixelshuffle(x, 3, r), rtol=0, atol=0)
    torch.testing.assert_close(pixel_shuffle(x, (r, r, r)), pixelshuffle(x, 3, r), rtol=0, atol=0)
    y = torch.randn(2, 3, 3 * r, 2 * r, 4 * r)
    torch.testing.assert_close(pixel_unshuffle(y, (r, r, r)), pixelunshuffle(y, 3, r), rtol=0, atol=0)
    x2 = torch.randn(1, 2 * r**2, 3, 4)  # 2D too, MONAI's layout
    torch.testing.assert_close(pixel_shuffle(x2, (r, r)), pixelshuffle(x2, 2, r), rtol=0, atol=0)


@pytest.mark.parametrize("factor", [(1, 1, 4), (2, 2, 4), (1, 3, 2)])
def test_per_axis_pixel_shuffle_places_each_phase_and_inverts(factor):
    from medsr.networks.shuffle import pixel_shuffle, pixel_unshuffle

    rx, ry, rz = factor
    x = torch.randn(2, 3 * rx * ry * rz, 3, 2, 4)
    y = pixel_shuffle(x, factor)
    assert y.shape == (2, 3, 3 * rx, 2 * ry, 4 * rz)
    for c, px, py, pz in [(0, 0, 0, 0), (2, rx - 1, ry - 1, rz - 1), (1, rx // 2, 0, rz - 1)]:
        ch = c * rx * ry * rz + (px * ry + py) * rz + pz  # the documented channel layout
        torch.testing.assert_close(y[:, c, px::rx, py::ry, pz::rz], x[:, ch], rtol=0, atol=0)
    torch.testing.assert_close(pixel_unshuffle(y, factor), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a multiple of the factor"):
        pixel_unshuffle(torch.zeros(1, 1, 4, 4, 6), (1, 1, 4))


def _keys_reference(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Keys' cubic convolution (a = -0.5) written as explicit loops over HR voxels and taps, edge-extended."""
    def keys(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return 1.5 * t**3 - 2.5 * t**2 + 1
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t < 2 else 0.0

    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    out = np.zeros(a.shape[:-1] + (n * r,))
    for i in range(n * r):
        u = (i - (r - 1) / 2) / r  # block-centre geometry: HR voxel i at LR coordinate u
        k0 = int(np.floor(u))
        for k in range(k0 - 2, k0 + 3):
            out[..., i] += keys(u - k) * a[..., min(max(k, 0), n - 1)]
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("factor", [2, 3, (1, 1, 4), (2, 2, 4)])
def test_per_axis_cubic_base_equals_an_explicit_reference(factor):
    r = (factor,) * 3 if isinstance(factor, int) else factor
    lr = np.random.default_rng(5).normal(size=(1, 2, 4, 3, 5))
    ref = lr[0]
    for axis, f in enumerate(r):
        if f > 1:
            ref = _keys_reference(ref, f, axis + 1)
    got = upsample(torch.from_numpy(lr), factor, "cubic")[0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12)
    for mode in ("nn", "linear"):  # and the torch nn / linear bases are the baselines' per axis
        np.testing.assert_allclose(upsample(torch.from_numpy(lr), factor, mode)[0].numpy(),
                                   upsample_array(lr[0], factor, mode), atol=1e-5)
    torch.testing.assert_close(block_mean(upsample(torch.from_numpy(lr), factor, "nn"), factor), torch.from_numpy(lr))


@pytest.mark.parametrize("factor", [(1, 1, 4), (2, 2, 4), 3])
def test_per_axis_model_starts_as_its_base_and_reverse_is_blockwise_constant(factor):
    r = (factor,) * 3 if isinstance(factor, int) else factor
    net = create_model("rev_espcn3d", in_channels=6, width=8, depth=2, factor=list(r) if len(set(r)) > 1 else factor)
    assert net.input_factor == r
    lr = torch.randn(2, 6, 3, 4, 2)
    x = upsample(lr, factor, "nn")
    y = net(x)
    assert y.shape == x.shape == (2, 6, 3 * r[0], 4 * r[1], 2 * r[2])
    torch.testing.assert_close(y, upsample(lr, factor, "cubic"))
    torch.testing.assert_close(net.forward_lr(lr), y)
    randomise(net)
    g = net.reverse(torch.randn_like(x))
    torch.testing.assert_close(upsample(block_mean(g, factor), factor, "nn"), g)


def test_factor_two_checkpoint_written_before_per_axis_factors_gives_the_same_output(tmp_path):
    """An old checkpoint (``factor: 2``, MONAI's pixel shuffle) loads and computes what the old model did."""
    from monai.networks.utils import pixelshuffle

    from medsr.checkpoint import load_generator, model_entry, save_checkpoint

    kwargs = {"in_channels": 2, "factor": 2, "width": 8, "depth": 2, "base": "cubic"}
    net = create_model("rev_espcn3d", **kwargs)
    randomise(net)
    save_checkpoint({"model": model_entry("rev_espcn3d", kwargs, net),
                     "data": {"factor": 2, "patch_size": 16, "channels": 2, "kind": "scalar"}}, tmp_path / "old.pt")
    loaded, *_ = load_generator(tmp_path / "old.pt")
    lr = torch.randn(1, 2, 4, 5, 3)
    with torch.no_grad():
        old = upsample(lr, 2, "cubic") + pixelshuffle(net.dec_y(net.core(net.enc_x(lr))), 3, 2)
        torch.testing.assert_close(loaded.forward_lr(lr), old, rtol=0, atol=0)


@pytest.mark.parametrize("factor", [(1, 1, 4), (2, 2, 4), 3])
def test_per_axis_windows_run_on_the_lr_grid_and_stitch_in_place(factor):
    """LR-grid windows per axis (MONAI stitches outputs r_a times larger along each axis): a fresh nn-base
    model gives back its NN-upsampled input exactly, whatever window each voxel fell in."""
    from medsr.inference import Predictor, detect_grid
    from medsr.normalise import ChannelStats
    from medsr.volume import Volume

    r = (factor,) * 3 if isinstance(factor, int) else factor
    net = create_model("rev_espcn3d", in_channels=2, width=4, depth=1, base="nn", factor=factor)
    ck = {"model": {"name": "rev_espcn3d", "kwargs": {"width": 4}},
          "data": {"factor": list(r), "channels": 2, "voxel_size": [1.0, 1.0, 1.0]}}
    pred = Predictor(net, ChannelStats.identity(2), ChannelStats.identity(2), ck, "cpu")
    lr = torch.randn(1, 2, 9, 7, 6)
    vol = Volume(upsample(lr, factor, "nn")[0].numpy(), np.eye(4))
    plan = pred.plan(vol.spatial_shape, window=(4 * r[0], 4 * r[1], 4 * r[2]), overlap=0.25)
    assert plan.roi == (4, 4, 4) and plan.n_windows > 1 and "LR grid" in plan.reason
    np.testing.assert_allclose(pred.predict(vol, plan=plan).data, vol.data, rtol=0, atol=1e-5)
    # --input-grid auto compares voxel sizes axis by axis: 1 x 1 x 4 mm is the LR grid of 1 mm at 1 1 4.
    lr_vol = Volume(lr[0].numpy(), np.diag([float(f) for f in r] + [1.0]))
    assert detect_grid(lr_vol, factor, [1.0, 1.0, 1.0]) == "lr" and detect_grid(vol, factor, [1.0, 1.0, 1.0]) == "hr"
    hr_in = pred.prepare(lr_vol, "auto")
    np.testing.assert_allclose(hr_in.data, vol.data)
    with pytest.raises(ValueError, match="matches neither"):
        detect_grid(Volume(lr[0].numpy(), np.diag([2.0, 3.0, 5.0, 1.0])), factor, [1.0, 1.0, 1.0])
    if r[2] > 1:
        with pytest.raises(ValueError, match="not a multiple of the model's factor"):
            pred.plan((r[0] * 4, r[1] * 4, r[2] * 4 + 1))
