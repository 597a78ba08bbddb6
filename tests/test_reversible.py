"""The reversible core: exact inverse, gradients equal to plain autograd, constant saved memory.

Tiny shapes (8 channels, 6^3 / 8^2) keep the whole file to a few seconds on 2 CPU cores.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from conftest import randomise
from medsr.networks.invertible import inversion_error, is_invertible
from medsr.networks.reversible import (
    AdditiveCoupling,
    ReversibleSequence,
    make_block,
    make_branch,
    make_core,
)


# Tiny convs are dominated by thread synchronisation on a shared 2-core machine (~30x slower with
# 2 threads than with 1 here), so these tests run single-threaded (tests/conftest.py:one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _shape(spatial_dims: int, c: int = 8, n: int = 6, b: int = 2) -> tuple[int, ...]:
    return (b, c) + (n,) * spatial_dims


def _grads(core: nn.Module, x: torch.Tensor, w: torch.Tensor, inverse: bool = False) -> list[torch.Tensor]:
    """Gradients of sum(w * core(x)) w.r.t. x and every parameter, via torch.autograd.grad."""
    x = x.detach().requires_grad_(True)
    y = core.inverse(x) if inverse else core(x)
    params = list(core.parameters())
    return list(torch.autograd.grad((y * w).sum(), [x, *params]))


def _assert_rel_close(a: torch.Tensor, b: torch.Tensor, rel: float, atol: float = 1e-13) -> None:
    """max|a - b| <= rel * max|b| (+ atol for gradients that are analytically zero, e.g. a conv bias
    followed by instance norm, where both sides are float64 rounding noise ~1e-15)."""
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    assert diff <= rel * scale + atol, f"max diff {diff} vs scale {scale}"


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("coupling", ["additive", "affine"])
@pytest.mark.parametrize("norm", ["none", "instance"])
@pytest.mark.parametrize("inverse", [False, True])
def test_gradients_equal_plain_autograd_float64(spatial_dims, coupling, norm, inverse):
    core = randomise(make_core(8, 3, spatial_dims, norm, "reflect", True, coupling)).double()
    x = torch.randn(_shape(spatial_dims), dtype=torch.float64)
    w = torch.randn_like(x)
    core.memory_efficient = True
    got = _grads(core, x, w, inverse)
    core.memory_efficient = False
    want = _grads(core, x, w, inverse)
    assert len(got) == 1 + len(list(core.parameters()))
    for g, r in zip(got, want):
        _assert_rel_close(g, r, 1e-8)


def test_backward_fills_grad_like_plain_autograd_and_accumulates():
    core = randomise(make_core(8, 2, 3)).double()
    ref = copy.deepcopy(core)
    ref.memory_efficient = False
    x = torch.randn(_shape(3), dtype=torch.float64)
    w1, w2 = torch.randn_like(x), torch.randn_like(x)
    for m in (core, ref):
        xi = x.clone().requires_grad_(True)
        # Two backward calls: gradient accumulation must add into .grad.
        (m(xi) * w1).sum().backward()
        (m(xi) * w2).sum().backward()
        m.x_grad = xi.grad
    _assert_rel_close(core.x_grad, ref.x_grad, 1e-8)
    for p, q in zip(core.parameters(), ref.parameters()):
        _assert_rel_close(p.grad, q.grad, 1e-8)
    # And the accumulated sum equals the gradient of the summed loss.
    total = _grads(ref, x, w1 + w2)
    for p, g in zip(ref.parameters(), total[1:]):
        _assert_rel_close(p.grad, g, 1e-8)


def test_relu_before_core_and_input_left_intact():
    """memcnn frees the core's input; a ReLU right before it saved that tensor for its backward."""
    core = randomise(make_core(8, 3, 3)).double()
    ref = copy.deepcopy(core)
    ref.memory_efficient = False
    x = torch.randn(_shape(3), dtype=torch.float64)
    out = []
    for m in (core, ref):
        xi = x.clone().requires_grad_(True)
        h = torch.relu(xi)
        before, version, nbytes = h.detach().clone(), h._version, h.untyped_storage().nbytes()
        y = m(h)
        assert h._version == version and h.untyped_storage().nbytes() == nbytes
        assert torch.equal(h.detach(), before)
        y.square().sum().backward()
        out.append(xi.grad)
    _assert_rel_close(out[0], out[1], 1e-8)


def test_no_grad_runs_blocks_without_touching_caller_tensor():
    core = randomise(make_core(8, 2, 3))
    x = torch.randn(_shape(3), requires_grad=True)
    before, version, nbytes = x.detach().clone(), x._version, x.untyped_storage().nbytes()
    with torch.no_grad():
        y = core(x)
        xr = core.inverse(y)
    assert not y.requires_grad and y.grad_fn is None
    assert x._version == version and x.untyped_storage().nbytes() == nbytes and torch.equal(x.detach(), before)
    torch.testing.assert_close(xr, before, atol=1e-5, rtol=0)
    core.eval()
    with torch.inference_mode():
        torch.testing.assert_close(core(before), y)


def test_input_without_grad_and_frozen_parameters():
    core = randomise(make_core(8, 3, 3)).double()
    for p in core.blocks[1].parameters():
        p.requires_grad_(False)
    ref = copy.deepcopy(core)
    ref.memory_efficient = False
    x = torch.randn(_shape(3), dtype=torch.float64)  # no requires_grad
    for m in (core, ref):
        (m(x) ** 2).sum().backward()
    for p, q in zip(core.parameters(), ref.parameters()):
        if p.requires_grad:
            _assert_rel_close(p.grad, q.grad, 1e-8)
        else:
            assert p.grad is None and q.grad is None
    # Everything frozen and no input grad: nothing to differentiate, no graph.
    for p in core.parameters():
        p.requires_grad_(False)
    assert core(x).grad_fn is None


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_inverse_reconstructs_deep_core_float32(spatial_dims):
    core = randomise(make_core(8, 32, spatial_dims, "instance"), std=0.05)
    h = torch.randn(_shape(spatial_dims, n=8))
    with torch.no_grad():
        y = core(h)
        assert (y - h).abs().max() > 0.1  # not the identity
        err = (core.inverse(y) - h).abs().max().item()
    assert err < 1e-5
    assert is_invertible(core, _shape(spatial_dims, n=8), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_blocks_start_as_identity(spatial_dims, coupling):
    core = make_core(8, 4, spatial_dims, "instance", coupling=coupling)
    h = torch.randn(_shape(spatial_dims))
    assert torch.equal(core(h), h) and torch.equal(core.inverse(h), h)
    for block in core.blocks:
        assert not block.f[-1].weight.any() and not block.g[-1].weight.any()
        # Every other conv starts from N(0, 0.02).
        assert 0.01 < block.f[0].weight.std().item() < 0.03


def test_saved_memory_does_not_grow_with_depth():
    def saved_bytes(depth: int, memory_efficient: bool) -> int:
        core = make_core(8, depth, 3, memory_efficient=memory_efficient)
        x = torch.randn(_shape(3), requires_grad=True)
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t

        # What the forward pass keeps alive for backward (packing during backward's recomputation
        # is transient, so the hooks are left before calling backward).
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = core(torch.relu(x))
        y.sum().backward()
        assert x.grad is not None
        return sum(storages.values())

    assert saved_bytes(2, True) == saved_bytes(8, True)
    assert saved_bytes(8, False) > 3 * saved_bytes(2, False)


def test_bf16_autocast_forward_backward_cpu():
    core = randomise(make_core(8, 2, 3, "instance"), std=0.05)
    ref = copy.deepcopy(core)
    ref.memory_efficient = False
    x = torch.randn(_shape(3))
    grads = []
    for m in (core, ref):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xi)
            loss = (y.float() ** 2).mean()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for g, r in zip(*grads):
        assert g.dtype == r.dtype
        assert (g - r).norm() <= 0.05 * r.norm() + 1e-6


def test_bf16_autocast_keeps_the_coupling_stream_in_float32():
    """bf16 sums would round away the low bits that inversion needs; the stream stays float32."""
    core = randomise(make_core(8, 16, 3, "instance"), std=0.05)
    h = torch.relu(torch.randn(_shape(3))).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = core(h)
        err = (core.inverse(y) - h.float()).abs().max().item()
    assert y.dtype == torch.float32
    assert err < 1e-2 * y.abs().max().item()
    # Without autocast a bf16 model keeps its dtype (no silent upcast).
    core16 = make_core(8, 2, 3).bfloat16()
    assert core16(h).dtype == torch.bfloat16


def test_batch_norm_rejected():
    with pytest.raises(ValueError, match="batch norm"):
        make_core(8, 2, 3, norm="batch")
    with pytest.raises(ValueError, match="batch norm"):
        AdditiveCoupling(nn.Sequential(nn.Conv3d(4, 4, 3, padding=1), nn.BatchNorm3d(4)), make_branch(4))


def test_odd_width_rejected():
    with pytest.raises(ValueError, match="even"):
        make_core(7, 2, 3)
    with pytest.raises(ValueError, match="even"):
        make_block(5)


def test_is_invertible_detects_a_broken_inverse():
    class Broken(nn.Module):
        def forward(self, x):
            return 2 * x

        def inverse(self, y):
            return y

    assert not is_invertible(Broken(), (1, 2, 4, 4, 4), atol=1e-5)
    assert inversion_error(ReversibleSequence([]), (1, 2, 4, 4)) == 0.0
    with pytest.raises(ValueError, match="inverse"):
        is_invertible(nn.Identity(), (1, 2, 4, 4))


def test_ddp_hooks_fire_and_grads_match(tmp_path):
    """Every parameter's gradient reaches DDP's reducer (else the 2nd step errors)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        core = randomise(make_core(8, 2, 3)).double()
        ref = copy.deepcopy(core)
        ref.memory_efficient = False
        ddp = DDP(core)
        x = torch.randn(_shape(3), dtype=torch.float64)
        for _ in range(2):
            ddp.zero_grad()
            ref.zero_grad()
            (ddp(x.clone().requires_grad_(True)) ** 2).sum().backward()
            (ref(x) ** 2).sum().backward()
        for p, q in zip(core.parameters(), ref.parameters()):
            _assert_rel_close(p.grad, q.grad, 1e-8)
    finally:
        dist.destroy_process_group()
