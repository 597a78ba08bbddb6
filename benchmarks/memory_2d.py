"""``medsr bench memory --2d``: the paper's Table 5, CycleGAN vs unpaired RevGAN generator memory vs depth."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from benchmarks.memory_common import (CASES, MEMORY_PANELS, MIB, VARIANTS, GeneratorCase, MemcnnCore,
                                      measure_in_subprocess, measure_memory, plot_vs_depth, report)
from medsr.networks import create_model
from medsr.utils.device import resolve_device
from medsr.utils.threads import bench_threads


# --------------------------------------------------------------------------------------------
# 2D: the paper's Table 5 (CycleGAN vs unpaired RevGAN generator memory vs depth, on Maps)
# --------------------------------------------------------------------------------------------
# The same measuring functions (measure_memory / measure_in_subprocess) run two more cases: "2d" = the 2D RevGAN generator (rev_resnet2d: variants reversible, plain,
# memcnn) and "2d_cyclegan" = the CycleGAN ResNet baseline (resnet2d; no variants). One step trains
# both directions, as the unpaired models do. Default widths match parameters at depth 6 (paper:
# both ~3.9 M): CycleGAN K=32, RevGAN K=56.
DEPTHS_2D = (6, 9, 12, 18, 30)


class _TwoWayGenerator(nn.Module):
    """``forward(x) = (F(x) + G(x)) / 2``: one step through both directions of a 2D generator.

    ``core`` is registered before ``gen`` so the core's convs are named ``core.*`` (the
    recomputation FLOP count of :func:`conv_flops` looks for that prefix).
    """
    def __init__(self, gen: nn.Module) -> None:
        super().__init__()
        if hasattr(gen, "core"):
            self.core = gen.core
        self.gen = gen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) -> (1, 3, H, W)."""
        return 0.5 * (self.gen(x) + self.gen.reverse(x))


def _build_2d(name: str) -> Callable[[int, str, int, int], nn.Module]:
    def build(depth: int, variant: str, width: int, channels: int) -> nn.Module:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        if name == "resnet2d":
            return _TwoWayGenerator(create_model("resnet2d", in_channels=channels, width=width, depth=depth))
        gen = create_model("rev_resnet2d", in_channels=channels, width=width, depth=depth,
                           memory_efficient=(variant == "reversible"))
        if variant == "memcnn" and depth > 0:
            gen.core = MemcnnCore(gen.core)
        return _TwoWayGenerator(gen)

    return build


def _image_shape(channels: int, size: int) -> tuple[int, ...]:
    return (1, channels, size, size)


CASES["2d"] = GeneratorCase(2, _build_2d("rev_resnet2d"), _image_shape)
CASES["2d_cyclegan"] = GeneratorCase(2, _build_2d("resnet2d"), _image_shape)


def run_benchmark_2d(
    *, depths: list[int], size: int, width_cyclegan: int = 32, width_revgan: int = 56,
    device: str = "cpu", threads: int = 0, plain: bool = True, progress: bool = True,
) -> list[dict[str, Any]]:
    """Memory of one two-direction training step of CycleGAN and RevGAN generators per depth.

    Returns rows of :func:`measure_memory` with ``model`` (``cyclegan``, ``revgan``, and with
    ``plain`` ``revgan_plain``: the same reversible blocks through plain autograd) and
    ``params_MiB`` (float32 weights) added.
    """
    models = [("cyclegan", "2d_cyclegan", width_cyclegan, "plain"), ("revgan", "2d", width_revgan, "reversible")]
    if plain:
        models.append(("revgan_plain", "2d", width_revgan, "plain"))
    in_subprocess = not device.startswith("cuda")
    rows = []
    for depth, (label, case, width, variant) in tqdm([(d, m) for d in depths for m in models], desc="bench memory 2d",
                                                      unit="run", disable=not progress):
        cfg = dict(case=case, variant=variant, depth=depth, width=width, channels=3, patch=size, device=device,
                   channels_last=False, threads=threads, seed=0)
        row = measure_in_subprocess(cfg, cases_module=__name__) if in_subprocess else measure_memory(cfg)
        row["model"] = label
        row["params_MiB"] = row["params_M"] * 1e6 * 4 / MIB
        rows.append(row)
    return rows


def format_table_2d(rows: list[dict[str, Any]]) -> str:
    """Paper Table 5 layout: per depth, each model's weights, saved activations and step peak rise (MiB)."""
    labels = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["depth"]): r for r in rows}
    head = ["depth"] + [f"{m} {k}" for m in labels for k in ("params_M", "weights_MiB", "activations_MiB", "step_MiB")]
    cells = [head]
    for d in sorted({r["depth"] for r in rows}):
        line = [str(d)]
        for m in labels:
            r = by[(m, d)]
            line += [f"{r['params_M']:.2f}", f"{r['params_MiB']:.1f}", f"{r['saved_MiB']:.1f}", f"{r['step_MiB']:.0f}"]
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(c, widths)) for c in cells)


def check_targets_2d(rows: list[dict[str, Any]]) -> list[str]:
    """RevGAN saved activations flat in depth (<= 2 %), CycleGAN's growing linearly."""
    out = []
    for label, flat in (("revgan", True), ("cyclegan", False), ("revgan_plain", False)):
        pts = sorted((r["depth"], r["saved_MiB"]) for r in rows if r["model"] == label)
        if len(pts) < 2:
            continue
        (d0, a), (d1, b) = pts[0], pts[-1]
        rel = (b - a) / a
        if flat:
            out.append(f"{'PASS' if abs(rel) <= 0.02 else 'FAIL'} {label} activations flat: {a:.1f} MiB at depth {d0}, "
                       f"{b:.1f} MiB at depth {d1} ({100 * rel:+.1f}%, target within 2%)")
        else:
            per = (b - a) / (d1 - d0)
            out.append(f"{'PASS' if per > 0 else 'FAIL'} {label} activations grow: {a:.1f} -> {b:.1f} MiB "
                       f"from depth {d0} to {d1} ({per:.2f} MiB per block)")
    return out


def write_png_2d(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Saved activations and step peak vs depth, one line per model."""
    plot_vs_depth(rows, path, title, series="model", xlabel="depth (residual / reversible blocks)",
                  panels=MEMORY_PANELS)


def run_2d(args: argparse.Namespace) -> int:
    """``medsr bench memory --2d``: the paper's Table 5 in this project's terms."""
    given = str(args.depths)
    text = ",".join(map(str, DEPTHS_2D)) if given == "0,2,4,8,16,32" else given  # the 3D default -> 2D default
    try:
        depths = sorted({int(d) for d in text.split(",") if d.strip()})
    except ValueError:
        raise ValueError(f"--depths must be comma-separated integers, got {args.depths!r}") from None
    if not depths or min(depths) < 0:
        raise ValueError(f"--depths must be non-negative integers, got {args.depths!r}")
    if args.size % 4 or args.size < 16:
        raise ValueError(f"--size must be a multiple of 4 and >= 16 (two stride-2 convs), got {args.size}")
    if args.width_revgan % 2:
        raise ValueError(f"--width-revgan must be even (the core splits 4K channels in half), got {args.width_revgan}")
    device = str(resolve_device(args.device))
    for out in (args.csv, args.png):
        if out is not None and not out.parent.is_dir():
            raise FileNotFoundError(f"{out}: output folder does not exist")
    rows = run_benchmark_2d(depths=depths, size=args.size, width_cyclegan=args.width_cyclegan,
                            width_revgan=args.width_revgan, device=device, threads=bench_threads(args.threads))
    mem = "CUDA max_memory_allocated" if device.startswith("cuda") else "peak RSS of a fresh subprocess"
    print(f"medsr bench memory --2d: {args.size}x{args.size} RGB, batch 1, one step through both directions; "
          f"CycleGAN K={args.width_cyclegan}, RevGAN K={args.width_revgan}; device {device}; "
          f"activations = bytes saved for backward; peak = {mem}")
    report(rows, [format_table_2d(rows), *check_targets_2d(rows)], args.csv, args.png,
           lambda png: write_png_2d(rows, png, f"2D generator memory vs depth ({args.size}x{args.size}, {device})"))
    return 0
