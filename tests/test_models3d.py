"""Registered 3D generators and the PatchGAN discriminators: shapes, options, checkpoints, gradients."""
from __future__ import annotations

import pytest
import torch

from conftest import randomise, random_twins
from medsr.checkpoint import build_model, model_entry
from medsr.networks import create_model, list_models
from medsr.networks.nets.patchgan import auto_n_layers


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_names():
    assert {"srcnn3d", "rev_srcnn3d", "patchgan3d", "patchgan2d"} <= set(list_models())


@pytest.mark.parametrize("name,depth", [("srcnn3d", 0), ("rev_srcnn3d", 2)])
@pytest.mark.parametrize("memory_efficient", [True, False])
def test_generator_contract_call(name, depth, memory_efficient):
    # Exactly the call the training / inference code and the checks make.
    m = create_model(name, in_channels=6, width=8, depth=depth, memory_efficient=memory_efficient)
    x = torch.randn(2, 6, 8, 8, 8)
    y = m(x)
    assert y.shape == x.shape and m.reverse(y).shape == x.shape
    assert len(m.core) == depth and m.core.inverse(m.core(torch.randn(1, 8, 4, 4, 4))).shape == (1, 8, 4, 4, 4)
    y.square().mean().backward()
    assert all(p.grad is not None for p in [*m.enc_x.parameters(), *m.dec_y.parameters(), *m.core.parameters()])


def test_generator_options_and_shapes():
    m = create_model("rev_srcnn3d", in_channels=1, out_channels=6, width=8, depth=1, norm="instance",
                     residual=False, padding_mode="replicate", coupling="affine")
    assert m(torch.randn(1, 1, 6, 7, 8)).shape == (1, 6, 6, 7, 8)
    assert m.reverse(torch.randn(1, 6, 6, 7, 8)).shape == (1, 1, 6, 7, 8)
    with pytest.raises(ValueError, match="residual"):
        create_model("rev_srcnn3d", in_channels=1, out_channels=6, width=8, depth=1)
    with pytest.raises(ValueError, match="even"):
        create_model("rev_srcnn3d", in_channels=6, width=7, depth=2)
    with pytest.raises(ValueError, match="depth must be 0"):
        create_model("srcnn3d", in_channels=6, width=8, depth=3)
    with pytest.raises(ValueError, match="norm"):
        create_model("rev_srcnn3d", in_channels=6, width=8, depth=2, norm="batch")


def test_fresh_model_defaults_and_identity_core():
    m = create_model("rev_srcnn3d", in_channels=6, width=8, depth=3)
    assert m.residual and isinstance(m.enc_x[1], torch.nn.Identity)  # defaults: residual, no norm
    h = torch.relu(torch.randn(1, 8, 5, 5, 5))
    assert torch.equal(m.core(h), h)
    # Same state_dict keys whatever the memory strategy: checkpoints are interchangeable.
    plain = create_model("rev_srcnn3d", in_channels=6, width=8, depth=3, memory_efficient=False)
    assert list(m.state_dict()) == list(plain.state_dict())


def test_memory_efficient_generator_gradients_match_float64():
    """Through the real generator: the encoder's in-place ReLU feeds the core directly."""
    a, b = random_twins("rev_srcnn3d", in_channels=2, width=8, depth=3, norm="instance", residual=False)
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64)
    for direction in ("forward", "reverse"):
        grads = []
        for m in (a, b):
            xi = x.clone().requires_grad_(True)
            out = getattr(m, direction)(xi)
            grads.append(torch.autograd.grad(out.square().sum(), [xi, *m.parameters()], allow_unused=True))
        used = 0
        for g, r in zip(*grads):
            assert (g is None) == (r is None)  # the other direction's encoder/decoder is unused
            if r is not None:
                used += 1
                assert (g - r).abs().max() <= 1e-8 * r.abs().max() + 1e-13
        assert used == 1 + 4 + 3 * 8  # input, encoder + decoder (w, b each), 3 blocks x 8 tensors


def test_cycle_loss_through_both_directions_matches_plain():
    """forward then reverse uses the shared core twice (C then C^-1) in one graph."""
    a, b = random_twins("rev_srcnn3d", in_channels=2, width=8, depth=2)
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64)
    for m in (a, b):
        (m.reverse(m(x)) - x).abs().mean().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-8 * q.grad.abs().max() + 1e-13


def test_checkpoint_entry_rebuilds_model():
    kwargs = dict(in_channels=6, width=8, depth=2, memory_efficient=True)
    m = randomise(create_model("rev_srcnn3d", **kwargs), std=0.05)
    m2 = build_model(model_entry("rev_srcnn3d", kwargs, m))
    x = torch.randn(1, 6, 6, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x))


def test_patchgan3d_adapts_depth_to_patch():
    assert auto_n_layers(24) == 3 and auto_n_layers(64) == 5 and auto_n_layers(8) == 2
    d = create_model("patchgan3d", in_channels=6, width=8)
    assert d(torch.randn(2, 6, 24, 24, 24)).shape == (2, 1, 3, 3, 3)
    d16 = create_model("patchgan3d", in_channels=12, width=8, patch_size=16)
    assert d16(torch.randn(1, 12, 16, 16, 16)).shape == (1, 1, 2, 2, 2)
    widths = [m.out_channels for m in create_model("patchgan3d", in_channels=1, n_layers=5).modules()
              if isinstance(m, torch.nn.Conv3d)]
    assert widths == [64, 128, 256, 512, 512, 1]
    p = create_model("patchgan3d", in_channels=6, width=8, use_sigmoid=True)(torch.randn(1, 6, 24, 24, 24))
    assert ((p > 0) & (p < 1)).all()
    with pytest.raises(ValueError, match="too small"):
        create_model("patchgan3d", in_channels=6, patch_size=3)


def test_patchgan2d_is_the_70x70_patchgan():
    d = create_model("patchgan2d", in_channels=3, width=8)
    assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    out = d(torch.randn(1, 3, 64, 64))
    out.mean().backward()
    assert all(p.grad is not None for p in d.parameters())
