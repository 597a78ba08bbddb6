"""``medsr bench precision``: how far bf16 autocast moves the reversible core and whole-volume inference.

Three measurements, each against float32 on the same weights and inputs:

* **Inverse** of the reversible core at depths R (default 8 and 32): ``max|C^-1(C(x)) - x| / max|x|``
  under bf16 autocast, beside the same in fp32 and in a "naive" bf16 where the whole core is cast to
  bfloat16 (the residual stream rounded to bf16 too, which :mod:`medsr.networks.reversible` avoids by
  keeping the coupling sums in float32 under autocast).
* **Gradients** of ``sum(w * C(x))`` with respect to the input and every parameter, as one vector:
  ``||g_a - g_b|| / ||g_b||`` for the memory-saving backward (which rebuilds each block's input by
  inversion) against plain autograd (``memory_efficient=False``), both under bf16 autocast; and both
  against the fp32 plain-autograd gradient, for scale (the error bf16 itself brings).
* **Inference**: a generator with random (default-initialised, not zero) weights over a synthetic DTI
  volume, :meth:`medsr.inference.Predictor.predict` in fp32 and bf16; the difference in units of each
  channel's standard deviation over the brain (RMS and max over brain voxels).

The fp32 references of the core run without TF32 (:func:`true_fp32`); inference runs with PyTorch's default
flags, as ``medsr infer`` does. Weights are PyTorch's default conv initialisation everywhere (the
zero-initialised last conv of each branch included), so every block changes the stream as a trained one
does. Deterministic for a seed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medsr.checkpoint import model_entry
from medsr.inference import Predictor
from medsr.networks import create_model
from medsr.networks.reversible import make_core
from medsr.normalise import brain_stats
from medsr.precision import autocast, check_precision
from medsr.utils.device import resolve_device
from benchmarks.shape_arg import add_shape_argument
from medsr.utils.threads import bench_threads, parse_threads

DEFAULT_DEPTHS = "8,32"


def default_init(module: nn.Module) -> nn.Module:
    """PyTorch's default initialisation on every conv (undoing medsr's zero-initialised last convs)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            m.reset_parameters()
    return module


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """||a - b|| / ||b|| over the concatenation of the tensors (float64 sums)."""
    num = sum(float(((x.double() - y.double()) ** 2).sum()) for x, y in zip(a, b))
    den = sum(float((y.double() ** 2).sum()) for y in b)
    return math.sqrt(num / den) if den > 0 else float("nan")


@contextlib.contextmanager
def true_fp32():
    """float32 convolutions and matmuls without TF32 (PyTorch lets cuDNN use TF32 by default on Ampere and
    newer GPUs, which would make the "fp32" reference itself a 10-bit-mantissa computation)."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def _inverse_error(core: nn.Module, x: torch.Tensor, precision: str) -> tuple[float, float]:
    """(max|C^-1(C(x)) - x| / max|x|, max|C(x)| / max|x|) under ``precision``'s autocast."""
    with torch.no_grad(), autocast(precision, x.device):
        y = core(x)
        back = core.inverse(y)
    scale = float(x.abs().max())
    return float((back.float() - x).abs().max()) / scale, float(y.float().abs().max()) / scale


def _gradients(core: nn.Module, x: torch.Tensor, w: torch.Tensor, precision: str,
               memory_efficient: bool) -> list[torch.Tensor]:
    """d sum(w * C(x)) / d(x, params), as float32 tensors."""
    core.memory_efficient = memory_efficient
    xi = x.detach().clone().requires_grad_(True)
    with autocast(precision, x.device):
        y = core(xi)
        loss = (y.float() * w).sum()
    grads = torch.autograd.grad(loss, [xi, *core.parameters()])
    return [g.float() for g in grads]


def measure_core(depth: int, width: int = 64, patch: int = 16, device: str = "cpu", seed: int = 0,
                 precision: str = "bf16") -> dict[str, Any]:
    """Inverse and gradient errors of a ``depth``-block core (K = ``width``) on one ``patch``^3 input."""
    torch.manual_seed(seed)
    core = default_init(make_core(width, depth, 3, norm="none")).to(device)
    x = torch.randn(1, width, patch, patch, patch, device=device)
    w = torch.randn_like(x)
    t0 = time.perf_counter()
    with true_fp32():
        inv_fp32, _ = _inverse_error(core, x, "fp32")
    inv_low, growth = _inverse_error(core, x, precision)
    naive = copy.deepcopy(core).to(_DTYPE[precision])  # the stream in bf16 too (no autocast)
    with torch.no_grad():
        back = naive.inverse(naive(x.to(_DTYPE[precision])))
    inv_naive = float((back.float() - x).abs().max()) / float(x.abs().max())
    g_rev = _gradients(core, x, w, precision, True)
    g_plain = _gradients(core, x, w, precision, False)
    with true_fp32():
        g_ref = _gradients(core, x, w, "fp32", False)
        g_rev32 = _gradients(core, x, w, "fp32", True)
    core.memory_efficient = True
    return {
        "depth": depth, "width": width, "patch": patch, "device": str(device), "precision": precision,
        "stream_growth": growth, "inverse_fp32": inv_fp32, "inverse": inv_low, "inverse_naive": inv_naive,
        "grad_rev_vs_plain": _rel(g_rev, g_plain), "grad_input_rev_vs_plain": _rel(g_rev[:1], g_plain[:1]),
        "grad_rev_vs_fp32": _rel(g_rev, g_ref), "grad_rev_vs_plain_fp32": _rel(g_rev32, g_ref),
        "grad_plain_vs_fp32": _rel(g_plain, g_ref),
        "seconds": time.perf_counter() - t0,
    }


_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def measure_inference(model_name: str = "rev_srcnn3d", kwargs: dict[str, Any] | None = None,
                      shape: tuple[int, int, int] = (48, 48, 48), device: str = "cpu", seed: int = 0,
                      precision: str = "bf16", window: int | None = 0) -> dict[str, Any]:
    """fp32 vs ``precision`` whole-volume inference of a random-weight generator on a synthetic DTI volume.

    ``window``: 0 = one pass over the whole volume (default), ``None`` = ``medsr infer``'s automatic rule.

    Returns the output dtype and the difference in units of each channel's brain standard deviation
    (``rms_sd``, ``max_sd``), with the seconds of each pass (``predict`` end to end: normalisation,
    windows, CPU stitching) and, on CUDA, each pass's ``max_memory_allocated`` (``peak_MiB*``).
    """
    vol, mask = _subject(tuple(int(s) for s in shape), seed)
    kwargs = dict(kwargs or {"width": 64, "depth": 8})
    kwargs.setdefault("in_channels", vol.channels)
    if model_name == "rev_espcn3d":
        kwargs.setdefault("factor", 2)
    torch.manual_seed(seed)
    model = default_init(create_model(model_name, **kwargs)).eval()
    stats = brain_stats([(vol.data, mask)])
    ck = {"model": model_entry(model_name, kwargs, model),
          "data": {"factor": 2, "patch_size": 16, "channels": vol.channels, "kind": "dti"}}
    outs, secs, peaks = {}, {}, {}
    cuda = torch.device(device).type == "cuda"
    for prec in ("fp32", precision):
        pred = Predictor(model, stats, stats, ck, device, prec)
        plan = pred.plan(vol.spatial_shape, window)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        outs[prec] = pred.predict(vol, plan=plan)
        if cuda:
            torch.cuda.synchronize()
            peaks[prec] = (torch.cuda.max_memory_allocated() - base) / 2.0**20
        secs[prec] = time.perf_counter() - t0
    sd = np.asarray(stats.std, dtype=np.float64).reshape(-1, 1)
    diff = (outs[precision].data.astype(np.float64) - outs["fp32"].data)[:, mask] / sd  # (C, brain voxels)
    return {
        "model": model_name, "kwargs": {k: v for k, v in kwargs.items() if k != "in_channels"},
        "shape": list(shape), "channels": vol.channels, "device": str(device), "precision": precision,
        "dtype": str(outs[precision].data.dtype), "rms_sd": float(np.sqrt((diff**2).mean())),
        "max_sd": float(np.abs(diff).max()), "seconds_fp32": secs["fp32"], "seconds": secs[precision],
        "windows": f"{'x'.join(map(str, plan.roi))} x{plan.n_windows}",
        "peak_MiB_fp32": peaks.get("fp32", float("nan")), "peak_MiB": peaks.get(precision, float("nan")),
    }


@functools.lru_cache(maxsize=2)
def _subject(shape: tuple[int, int, int], seed: int):
    """A synthetic DTI subject (volume, brain mask), generated once per shape (HCP size takes seconds)."""
    from medsr.data.synthetic import synthetic_subject

    return synthetic_subject(shape, "dti", seed=seed)


def format_core(rows: list[dict[str, Any]]) -> str:
    lo = rows[0]["precision"] if rows else "bf16"
    head = ("R", "inverse fp32", f"inverse {lo}", f"inverse {lo} stream", "grad rev vs plain fp32",
            f"grad rev vs plain {lo}", f"grad rev {lo} vs fp32", f"grad plain {lo} vs fp32", "stream growth")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = (str(r["depth"]), f"{r['inverse_fp32']:.1e}", f"{r['inverse']:.1e}", f"{r['inverse_naive']:.1e}",
                f"{r['grad_rev_vs_plain_fp32']:.1e}", f"{r['grad_rev_vs_plain']:.1e}", f"{r['grad_rev_vs_fp32']:.1e}",
                f"{r['grad_plain_vs_fp32']:.1e}",
                f"{r['stream_growth']:.1f}x")
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def format_inference(rows: list[dict[str, Any]]) -> str:
    lo = rows[0]["precision"] if rows else "bf16"
    head = ("model", "volume", "output dtype", "RMS diff (SD)", "max diff (SD)", "s fp32", f"s {lo}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kw = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
        vals = (f"{r['model']} ({kw})", "x".join(map(str, r["shape"])) + f"x{r['channels']}", r["dtype"],
                f"{r['rms_sd']:.1e}", f"{r['max_sd']:.1e}", f"{r['seconds_fp32']:.2f}", f"{r['seconds']:.2f}")
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


INFER_MODELS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("rev_srcnn3d", {"width": 64, "depth": 8}),
    ("rev_espcn3d", {"width": 32, "depth": 4, "base": "cubic"}),  # configs/default.yaml's generator
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depths", default=DEFAULT_DEPTHS, help="reversible depths R (default %(default)s)")
    parser.add_argument("--width", type=int, default=64, help="core width K (default %(default)s)")
    parser.add_argument("--patch", type=int, default=16, help="input side for the core (default %(default)s)")
    add_shape_argument(parser, (48, 48, 48), "inference volume, even sizes >= 8")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default %(default)s)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"],
                        help="low precision to compare with fp32 (fp16: CUDA only; default %(default)s)")
    parser.add_argument("--threads", type=parse_threads, default="auto",
                        help="torch CPU threads: auto (the fastest count on a conv3d probe, default), a number, "
                             "or 0 (torch's own count)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    device = str(resolve_device(args.device))
    check_precision(args.precision, device, "--precision")
    try:
        depths = [int(d) for d in args.depths.split(",") if d.strip()]
    except ValueError:
        raise ValueError(f"--depths takes comma-separated integers, got {args.depths!r}") from None
    shape = tuple(args.shape)
    if min(shape) < 8 or any(s % 2 for s in shape):
        raise ValueError(f"--shape {' '.join(map(str, shape))}: three even sizes >= 8")
    if not depths or min(depths) < 1 or args.width % 2 or args.width < 2:
        raise ValueError("--depths must be integers >= 1 and --width even")
    bench_threads(args.threads)
    core = [measure_core(d, args.width, args.patch, device, args.seed, args.precision) for d in depths]
    infer = [measure_inference(m, kw, shape, device, args.seed, args.precision) for m, kw in INFER_MODELS]
    print(f"medsr bench precision: {args.precision} autocast vs fp32 on {device} "
          f"(threads {torch.get_num_threads()}, torch {torch.__version__}); core K={args.width}, "
          f"one {args.patch}^3 input, default-initialised weights")
    print("\nreversible core: inverse max|C^-1(C(x)) - x| / max|x|; gradients ||g - g_ref|| / ||g_ref|| "
          "over input and parameters")
    print(format_core(core))
    print("\nwhole-volume inference (window 0 = one pass), difference in units of each channel's brain SD")
    print(format_inference(infer))
    return 0
