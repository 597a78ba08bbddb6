"""``medsr bench memory``: activation memory, peak memory, step time and GFLOP/s vs reversible depth.

For each depth R and each variant of the same generator, one training step (forward, MSE loss,
backward) on one patch is measured:

* ``reversible``: the core's memory-saving autograd Function (``memory_efficient=True``);
* ``plain``: the same blocks through plain autograd (``memory_efficient=False``);
* ``memcnn``: the same blocks, each wrapped in memcnn's ``InvertibleModuleWrapper`` (only when
  ``import memcnn`` works; skipped otherwise).

Measures, per configuration (each run in a fresh subprocess on CPU, so peak RSS is its own):

* ``saved_MiB``: bytes the forward pass saves for backward, through
  ``torch.autograd.graph.saved_tensors_hooks`` (unique storages, parameters excluded): deterministic.
  (memcnn keeps its per-block outputs on ``ctx`` where the hooks cannot see them.)
* ``peak_MiB`` / ``step_MiB``: CUDA ``max_memory_allocated`` (GPU), else peak RSS of the
  subprocess (``VmHWM``: ``ru_maxrss`` would include the parent's peak, inherited at fork/exec),
  run with ``MALLOC_MMAP_THRESHOLD_=65536`` so RSS tracks live tensors rather than glibc's
  retained heap; and its rise over the RSS just before the step.
* ``step_s`` / ``cpu_s``: median wall / process-CPU time of ``--repeats`` steps after one warm-up
  step, the variants of one depth interleaved round-robin in one process.
* ``GFLOP/s``: convolution FLOPs of the step (2 k^d Cin Cout per output voxel per conv, x3 for
  forward + backward, plus the recomputed core forwards: 1 for ``reversible``, 2 for ``memcnn``)
  over the median step time (wall, and CPU), next to a conv probe (3^d conv, K->K and K/2->K/2) timed in the same run.

The cases, the measuring and the plot writers live in :mod:`benchmarks.memory_common`; ``--2d`` runs
:mod:`benchmarks.memory_2d` (the paper's Table 5) with the same machinery.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.memory_common import (  # noqa: F401 - re-exported: the 3D benchmark's measuring functions
    CASES, MEMORY_PANELS, MIB, RECOMPUTE, VARIANTS, GeneratorCase, MemcnnCore, _build, _vm_rss_bytes, conv_flops,
    conv_probe_gflops, make_case, measure_in_subprocess, measure_memory, measure_times, memcnn_available,
    plot_vs_depth, report, saved_tensor_bytes, step_flops, training_step, write_csv)
from medsr.utils.device import resolve_device
from medsr.utils.threads import bench_threads, parse_threads


def run_benchmark(
    *,
    case: str = "3d",
    depths: list[int],
    width: int,
    channels: int,
    patch: int,
    repeats: int,
    device: str = "cpu",
    variants: list[str] | None = None,
    channels_last: bool = False,
    threads: int = 0,
    subprocess_per_config: bool | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Measure every (variant, depth); returns (rows, conv probe GFLOP/s by name).

    Per depth: memory of each variant (a fresh subprocess each on CPU), then the variants' step
    times interleaved in this process.
    """
    if variants is None:
        variants = [v for v in VARIANTS if v != "memcnn" or memcnn_available()]
    if subprocess_per_config is None:
        subprocess_per_config = not device.startswith("cuda")
    if threads:
        torch.set_num_threads(threads)
    spatial_dims = CASES[case].spatial_dims
    half = max(width // 2, 1)
    probes = {
        f"conv{c}_{clock}": conv_probe_gflops(c, patch, spatial_dims, repeats, channels_last, device, clock=clock)
        for c in (width, half) for clock in ("wall", "cpu")
    }
    rows = []
    bar = tqdm(total=2 * len(depths) * len(variants), desc="bench memory", unit="run", disable=not progress)
    for depth in depths:
        cfgs = [dict(case=case, variant=v, depth=depth, width=width, channels=channels, patch=patch,
                     device=device, channels_last=channels_last, threads=threads, seed=0) for v in variants]
        depth_rows = []
        for cfg in cfgs:
            depth_rows.append(measure_in_subprocess(cfg) if subprocess_per_config else measure_memory(cfg))
            bar.update(1)
        for row, ts, cs in zip(depth_rows, *measure_times(cfgs, repeats)):
            row["step_s"] = statistics.median(ts)
            row["cpu_s"] = statistics.median(cs)
            row["step_s_all"] = ";".join(f"{t:.4f}" for t in ts)
            row["cpu_s_all"] = ";".join(f"{t:.4f}" for t in cs)
            row["GFLOP_s"] = row["GFLOP_step"] / row["step_s"]
            row["GFLOP_s_cpu"] = row["GFLOP_step"] / row["cpu_s"] if row["cpu_s"] > 0 else float("nan")
            bar.update(1)
        rows += depth_rows
    bar.close()
    plain = {r["depth"]: r for r in rows if r["variant"] == "plain"}
    for r in rows:
        p = plain.get(r["depth"])
        r["time_vs_plain"] = r["step_s"] / p["step_s"] if p else float("nan")
        r["cpu_vs_plain"] = r["cpu_s"] / p["cpu_s"] if p and p["cpu_s"] > 0 else float("nan")
        r["probe_GFLOP_s"] = probes[f"conv{width}_wall"]
        r["probe_GFLOP_s_cpu"] = probes[f"conv{width}_cpu"]
        r["probe_half_GFLOP_s"] = probes[f"conv{half}_wall"]
        r["probe_half_GFLOP_s_cpu"] = probes[f"conv{half}_cpu"]
    return rows, probes


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, as PASS/FAIL lines (only those the measured depths allow)."""
    by = {(r["variant"], r["depth"]): r for r in rows}
    out = []
    if ("reversible", 2) in by and ("reversible", 32) in by:
        a, b = by[("reversible", 2)]["saved_MiB"], by[("reversible", 32)]["saved_MiB"]
        rel = abs(b - a) / a
        out.append(f"{'PASS' if rel <= 0.02 else 'FAIL'} reversible saved memory R=32 vs R=2: {b:.2f} vs {a:.2f} MiB ({100 * rel:.1f}%, target <= 2%)")
    plain = sorted((r["depth"], r["saved_MiB"]) for r in rows if r["variant"] == "plain")
    if len(plain) >= 3:
        xs, ys = [d for d, _ in plain], [s for _, s in plain]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        sxx = sum((x - mx) ** 2 for x in xs)
        syy = sum((y - my) ** 2 for y in ys)
        r2 = sxy * sxy / (sxx * syy) if sxx and syy else float("nan")
        out.append(f"{'PASS' if r2 > 0.99 else 'FAIL'} plain saved memory linear in depth: {sxy / sxx:.2f} MiB per block, R^2={r2:.4f}")
    for key, what in (("step_s", "wall"), ("cpu_s", "CPU")):
        if ("reversible", 8) in by and ("plain", 8) in by and key in by[("plain", 8)]:
            ratio = by[("reversible", 8)][key] / by[("plain", 8)][key]
            out.append(f"{'PASS' if ratio <= 1.35 else 'FAIL'} {what} step time reversible/plain at R=8: {ratio:.2f} (target <= 1.35)")
        for d in sorted({r["depth"] for r in rows if r["depth"] > 0}):
            if ("memcnn", d) in by and ("reversible", d) in by and key in by[("memcnn", d)]:
                a, b = by[("reversible", d)][key], by[("memcnn", d)][key]
                out.append(f"{'PASS' if a <= b else 'FAIL'} R={d}: {what} reversible {a:.3f}s vs memcnn {b:.3f}s (reversible no slower)")
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = [("variant", "{}"), ("depth", "{}"), ("params_M", "{:.3f}"), ("saved_MiB", "{:.2f}"),
            ("peak_MiB", "{:.1f}"), ("step_MiB", "{:.1f}"), ("step_s", "{:.3f}"), ("cpu_s", "{:.3f}"),
            ("time_vs_plain", "{:.2f}"), ("cpu_vs_plain", "{:.2f}"), ("GFLOP_step", "{:.1f}"), ("GFLOP_s", "{:.1f}"),
            ("GFLOP_s_cpu", "{:.1f}")]
    cells = [[c for c, _ in cols]] + [[fmt.format(r[c]) for c, fmt in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)


def write_png(rows: list[dict[str, Any]], path: Path, title: str) -> "matplotlib.figure.Figure":
    """Saved activations, peak memory, the step's memory rise and step time vs depth, per variant."""
    return plot_vs_depth(rows, path, title, series="variant", xlabel="reversible depth R",
                  panels=MEMORY_PANELS + [("step_s", "step time (s, median)")])


def png_title(case: str, width: int, patch: int, device: str) -> str:
    return f"memory vs depth ({case}, K={width}, patch {patch}^{CASES[case].spatial_dims}, {device})"


def replot(csv: Path, png: Path) -> "matplotlib.figure.Figure":
    """Redraw the PNG from a CSV this benchmark wrote (``--csv``), without measuring again; returns the figure."""
    import pandas as pd

    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: no such CSV (write one with --csv)")
    df = pd.read_csv(csv)
    need = {"case", "variant", "depth", "width", "patch", "device", "saved_MiB", "peak_MiB", "step_MiB", "step_s"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise ValueError(f"{csv}: not a 'medsr bench memory --csv' file (missing {', '.join(missing)})")
    r = df.iloc[0]
    return write_png(df.to_dict("records"), png, png_title(str(r["case"]), int(r["width"]), int(r["patch"]), str(r["device"])))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depths", default="0,2,4,8,16,32", help="comma-separated reversible depths R (default %(default)s)")
    parser.add_argument("--width", type=int, default=64, help="core width K (default %(default)s)")
    parser.add_argument("--channels", type=int, default=6, help="image channels (6 = DTI; default %(default)s)")
    parser.add_argument("--patch", type=int, default=24, help="patch side (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per config, median reported (>= 5; default %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)} (default: all available)")
    parser.add_argument("--channels-last", action="store_true", help="run in channels_last(_3d) memory layout")
    parser.add_argument("--threads", type=parse_threads, default="auto",
                        help="torch threads per config: auto (the fastest count on a conv3d probe, chosen once, "
                             "default), a number, or 0 (torch's own count)")
    parser.add_argument("--2d", dest="two_d", action="store_true", help="benchmark the 2D generators instead (when registered)")
    parser.add_argument("--size", type=int, default=256, help="--2d: image side (default %(default)s, Maps)")
    parser.add_argument("--width-cyclegan", type=int, default=32, help="--2d: CycleGAN ResNet width (default %(default)s)")
    parser.add_argument("--width-revgan", type=int, default=56,
                        help="--2d: RevGAN width (default %(default)s: parameters match CycleGAN's at depth 6)")
    parser.add_argument("--csv", type=Path, default=None, help="write the table as CSV here")
    parser.add_argument("--png", type=Path, default=None, help="write memory/time vs depth plots here")
    parser.add_argument("--replot", type=Path, default=None, metavar="CSV",
                        help="only redraw --png from a CSV written by --csv (no measurement)")


def run(args: argparse.Namespace) -> int:
    if args.replot is not None:
        if args.png is None:
            raise ValueError("--replot needs --png (the figure to draw)")
        replot(args.replot, args.png)
        print(f"wrote {args.png} from {args.replot}")
        return 0
    if args.two_d:  # the paper's Table 5: CycleGAN vs RevGAN generators
        from benchmarks.memory_2d import run_2d

        return run_2d(args)
    case = "3d"
    try:
        depths = sorted({int(d) for d in str(args.depths).split(",") if d.strip()})
    except ValueError:
        raise ValueError(f"--depths must be comma-separated integers, got {args.depths!r}") from None
    if not depths or min(depths) < 0:
        raise ValueError(f"--depths must be non-negative integers, got {args.depths!r}")
    if args.repeats < 5:
        raise ValueError(f"--repeats must be >= 5 for a meaningful median, got {args.repeats}")
    if args.width % 2 and max(depths) > 0:
        raise ValueError(f"--width must be even (the reversible core splits channels in half), got {args.width}")
    device = str(resolve_device(args.device))
    variants = None
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"--variants: unknown {bad}; expected a subset of {list(VARIANTS)}")
        if "memcnn" in variants and not memcnn_available():
            raise ValueError("--variants memcnn: memcnn is not installed (pip install memcnn --no-deps)")
    elif not memcnn_available():
        print("memcnn not installed: comparing reversible vs plain only", file=sys.stderr)
    for out in (args.csv, args.png):
        if out is not None and not out.parent.is_dir():
            raise FileNotFoundError(f"{out}: output folder does not exist")

    rows, probes = run_benchmark(
        case=case, depths=depths, width=args.width, channels=args.channels, patch=args.patch,
        repeats=args.repeats, device=device, variants=variants, channels_last=args.channels_last,
        threads=bench_threads(args.threads),
    )
    mem = "CUDA max_memory_allocated" if device.startswith("cuda") else "peak RSS of a fresh subprocess"
    print(f"medsr bench memory: {case}, K={args.width}, C={args.channels}, patch {args.patch}, batch 1, "
          f"device {device}, threads {torch.get_num_threads()}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}; peak = {mem}")
    probe = "conv probe (forward, 3^d, reflect padding, same layout; wall and CPU clocks): " + ", ".join(
        f"{k}: {v:.1f} GFLOP/s" for k, v in probes.items())
    report(rows, [format_table(rows), probe, *check_targets(rows)],
           args.csv, args.png, lambda png: write_png(rows, png, png_title(case, args.width, args.patch, device)))
    return 0
