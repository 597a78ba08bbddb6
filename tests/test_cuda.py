"""On a CUDA GPU: the reversible core's properties, mixed-precision training and inference, DDP with NCCL.

Every test here is marked ``cuda`` and skipped without a GPU; ``medsr bench gpu`` runs them
(``pytest -m cuda tests``) and reports the outcome in ``docs/gpu.md``.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import free_port, randomise, train_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MIB = 2.0**20


def _grads(core: nn.Module, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    return list(torch.autograd.grad((core(x) * w).sum(), [x, *core.parameters()]))


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_gradients_equal_plain_autograd_cuda_float64(coupling):
    from medsr.networks.reversible import make_core

    torch.manual_seed(0)
    core = randomise(make_core(8, 3, 3, "instance", coupling=coupling)).double().cuda()
    ref = copy.deepcopy(core)
    ref.memory_efficient = False
    x = torch.randn(2, 8, 6, 6, 6, dtype=torch.float64, device="cuda")
    w = torch.randn_like(x)
    for a, b in zip(_grads(core, x, w), _grads(ref, x, w)):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-9 * scale + 1e-12


def _held_and_peak(depth: int, memory_efficient: bool) -> tuple[float, float, float]:
    """(MiB held for backward after forward, peak MiB of forward + backward, MiB of parameters)."""
    from medsr.networks.reversible import make_core

    torch.manual_seed(0)
    core = make_core(16, depth, 3, memory_efficient=memory_efficient).cuda()
    x = torch.randn(2, 16, 16, 16, 16, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = core(torch.relu(x))
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    y.square().mean().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    params = sum(p.numel() * p.element_size() for p in core.parameters())
    del y, core, x
    torch.cuda.empty_cache()
    return held / MIB, peak / MIB, params / MIB


def test_memory_flat_in_depth_cuda():
    held2, peak2, par2 = _held_and_peak(2, True)
    held16, peak16, par16 = _held_and_peak(16, True)
    # What the forward keeps for backward does not grow with depth...
    assert abs(held16 - held2) <= 0.02 * held2 + 0.01, (held2, held16)
    # ...and the backward's peak grows only by the extra blocks' gradients (plus allocator slack).
    assert peak16 - peak2 <= 2.0 * (par16 - par2) + 2.0, (peak2, peak16, par2, par16)
    plain2, _, _ = _held_and_peak(2, False)
    plain16, _, _ = _held_and_peak(16, False)
    assert plain16 > 4.0 * plain2 and plain16 > 4.0 * held16


def _dataset(tmp_path: Path) -> Path:
    from medsr.data.synthetic import make_prepared_dataset

    return make_prepared_dataset(tmp_path / "prep", 2, (24, 24, 24), "dti", patch_size=8)


def _config(manifest: Path, out: Path, mode: str, precision: str, steps: int = 4) -> dict:
    return train_config(manifest, out, mode, model={"width": 8, "residual": True}, discriminator={"width": 8},
                        batch_size=2, n_epochs=100, max_steps=steps, checkpoint_every=100, progress=False,
                        device="cuda", precision=precision)


@pytest.mark.parametrize("mode", ["paired_l1", "paired", "unpaired"])
def test_bf16_training_steps_cuda(tmp_path, mode):
    from medsr.checkpoint import load_checkpoint
    from pipelines.train import train

    manifest = _dataset(tmp_path)
    ck = load_checkpoint(train(_config(manifest, tmp_path / "run", mode, "bf16")) / "last.pt")
    assert ck["step"] == 4 and ck["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in ck["model"]["state_dict"].values() if p.is_floating_point())
    assert all(torch.isfinite(p).all() for p in ck["model"]["state_dict"].values() if p.is_floating_point())
    ref = load_checkpoint(train(_config(manifest, tmp_path / "fp32", mode, "fp32")) / "last.pt")
    moved = [not torch.equal(a, ref["model"]["state_dict"][k]) for k, a in ck["model"]["state_dict"].items()]
    assert any(moved)  # bf16 trained, and not identically to fp32


def test_fp16_training_scales_losses_and_resumes_cuda(tmp_path):
    from medsr.checkpoint import load_checkpoint
    from pipelines.train import train

    manifest = _dataset(tmp_path)
    cfg = _config(manifest, tmp_path / "run", "paired", "fp16", steps=3)
    ck = load_checkpoint(train(cfg) / "last.pt")
    assert ck["precision"] == "fp16"
    scalers = ck["amp"]["scalers"]
    assert set(scalers) == {"G", "D"} and all(s["scale"] > 0 for s in scalers.values())
    cfg["train"]["max_steps"] = 5
    again = load_checkpoint(train(cfg, resume=True) / "last.pt")
    assert again["step"] == 5
    assert all(torch.isfinite(p).all() for p in again["model"]["state_dict"].values() if p.is_floating_point())


def test_infer_bf16_float32_within_tolerance_cuda():
    from benchmarks.precision import measure_inference

    r = measure_inference("rev_srcnn3d", {"width": 16, "depth": 4}, (32, 32, 32), "cuda", precision="bf16")
    assert r["dtype"] == "float32"
    # The documented tolerance (docs/memory.md, "Mixed precision").
    assert r["rms_sd"] <= 1e-2 and r["max_sd"] <= 1e-1, r


def test_bf16_inverse_and_gradients_cuda():
    from benchmarks.precision import measure_core

    r = measure_core(8, 32, 12, "cuda")
    assert r["inverse"] < r["inverse_naive"]  # the float32 stream beats a bf16 one
    assert r["inverse"] < 2e-2 and r["grad_rev_vs_fp32"] < 0.2
    assert r["grad_rev_vs_fp32"] <= 2.0 * r["grad_plain_vs_fp32"] + 1e-3


# ------------------------------------------------------------------------------------- DDP with NCCL
def _nccl_rank(rank: int, world: int, port: int, path: str) -> None:
    """One rank: DDP over the reversible generator's two directions; saves its gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from medsr.networks import create_model
    from medsr.training.base import GeneratorPasses

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        gen = randomise(create_model("rev_srcnn3d", in_channels=6, width=8, depth=2), 0.05).cuda()
        ddp = DDP(GeneratorPasses(gen), device_ids=[rank])
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2 * world, 6, 8, 8, 8, generator=g)[2 * rank: 2 * rank + 2].cuda()
        y = torch.randn(2 * world, 6, 8, 8, 8, generator=g)[2 * rank: 2 * rank + 2].cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = ddp(x=x, y=y)
            loss = (out["fake_y"].float() - y).abs().mean() + (out["fake_x"].float() - x).abs().mean()
        loss.backward()
        if rank == 0:
            torch.save({k: p.grad.cpu() for k, p in gen.named_parameters()}, path)
    finally:
        dist.destroy_process_group()


def _reference_generator() -> nn.Module:
    """The ranks' generator (same seed and weights) in this process."""
    from medsr.networks import create_model

    torch.manual_seed(0)
    gen = randomise(create_model("rev_srcnn3d", in_channels=6, width=8, depth=2), 0.05).cuda()
    return gen


@pytest.mark.parametrize("world", [1, 2])
def test_ddp_nccl_bf16_gradients_reach_every_parameter(tmp_path, world):
    """NCCL DDP over the memory-saving core under bf16 autocast: every parameter's gradient is reduced
    (the core returns them explicitly, so DDP's hooks fire), equal to one process on the whole batch."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs (NCCL refuses two ranks on one device); this machine has "
                    f"{torch.cuda.device_count()}")
    out = tmp_path / "grads.pt"
    mp.spawn(_nccl_rank, args=(world, free_port(), str(out)), nprocs=world, join=True)
    grads = torch.load(out)
    from medsr.training.base import GeneratorPasses

    gen = _reference_generator()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * world, 6, 8, 8, 8, generator=g).cuda()
    y = torch.randn(2 * world, 6, 8, 8, 8, generator=g).cuda()
    # Per-rank means averaged by DDP = the mean over the per-rank halves, as below.
    total = 0.0
    for r in range(world):
        xs, ys = x[2 * r: 2 * r + 2], y[2 * r: 2 * r + 2]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            o = GeneratorPasses(gen)(x=xs, y=ys)
            total = total + ((o["fake_y"].float() - ys).abs().mean() + (o["fake_x"].float() - xs).abs().mean()) / world
    total.backward()
    assert set(grads) == {k for k, _ in gen.named_parameters()}
    for k, p in gen.named_parameters():
        ref = p.grad.cpu()
        assert grads[k] is not None and torch.isfinite(grads[k]).all(), k
        err = (grads[k] - ref).norm().item()
        assert err <= 0.05 * ref.norm().item() + 1e-6, (k, err, ref.norm().item())
    assert math.isfinite(float(total))
