"""``medsr bench infer``: whole-volume inference throughput and peak memory on an HCP-size volume.

For each window choice (``--configs``), a fresh Python process builds the model, generates a smooth
145x174x145x6 volume, runs :meth:`medsr.inference.Predictor.predict` and reports its wall time and its
peak RSS (``ru_maxrss``: a fresh process so one run's peak never hides another's). In this process a
conv3d probe (the model's dominant layer: K/2 -> K/2 channels, 3^3, reflect padding) measures the
machine's GFLOP/s before and after the runs; the larger of the two is the limit, so the fraction is
conservative. Reported per choice:

* voxels/s (output voxels per second of ``predict``),
* overlap factor = voxels computed / voxels output (MONAI's own window count),
* peak RSS of the inference process,
* fraction of the limit = voxels/s * model FLOPs per output voxel / probe FLOP/s,
* the same fraction per CPU-second (model FLOPs / CPU seconds of ``predict`` over the probe's FLOP per
  CPU-second): on cores shared with other jobs the wall-clock ratio measures the neighbours' load as
  much as the code, while the CPU-time ratio does not.

``--tta flip`` (or ``full``) runs the test-time views as ``medsr infer --tta`` does, views batched into
model calls as the memory budget allows; ``--views-per-call 1`` runs one view at a time, for comparison.

Model FLOPs per voxel are counted with ``torch.utils.flop_counter`` on a small input (all convs are
stride 1 "same", so FLOPs scale exactly with the voxel count) and cross-checked by the closed form
2 * sum over convs of C_in * C_out * k^3.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.shape_arg import add_shape_argument
from medsr.utils.threads import parse_threads  # torch-free

DEFAULT_CONFIGS = "auto,64:0.25"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_argument(parser, (145, 174, 145), "volume (HCP 1.25 mm)")
    parser.add_argument("--channels", type=int, default=6, help="channels C (default 6: DTI)")
    parser.add_argument("--model", default="rev_srcnn3d", help="registered generator (default rev_srcnn3d)")
    parser.add_argument("--depth", type=int, default=8, help="reversible blocks R (default 8)")
    parser.add_argument("--width", type=int, default=64, help="core width K (default 64)")
    parser.add_argument("--norm", default="none", choices=["none", "instance"], help="generator norm (default none)")
    parser.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help="comma list of WINDOW:OVERLAP (WINDOW 0 = one pass) or 'auto' (the CLI default rule); "
        f"default {DEFAULT_CONFIGS}",
    )
    parser.add_argument("--threads", type=parse_threads, default="auto",
                        help="torch threads: auto (the fastest count on a conv3d probe, chosen once for every "
                             "config, default), a number, or 0 (torch's own count)")
    parser.add_argument("--tta", choices=["none", "flip", "full"], default="none",
                        help="test-time views per volume, as `medsr infer --tta` (default none)")
    parser.add_argument("--views-per-call", type=int, default=None, metavar="N",
                        help="with --tta: views per model call (default: as many as the memory budget allows, as "
                             "`medsr infer`; 1 = one view at a time)")
    parser.add_argument("--memory-limit-gb", type=float, default=4.0, help="peak RSS target (default 4)")
    parser.add_argument("--target-fraction", type=float, default=0.5, help="throughput target (default 0.5)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--plan-only", action="store_true",
                        help="print each choice's windows and overlap factor (no inference) and exit")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one measured run


def _build(args: dict):
    import torch

    from medsr.networks import create_model

    kwargs = dict(in_channels=args["channels"], width=args["width"], depth=args["depth"], norm=args["norm"])
    if args["model"] == "srcnn3d":
        kwargs.pop("depth")
    if args["norm"] == "none":  # every model's default; not every model takes the argument (rev_espcn3d)
        kwargs.pop("norm")
    model = create_model(args["model"], **kwargs)
    # Random non-zero weights everywhere (the zero-initialised branch convs would be an untrained model).
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model, kwargs


def flops_per_voxel(model, channels: int, direction: str = "forward") -> tuple[float, float]:
    """(counted, closed-form) FLOPs per output voxel of one forward pass (multiply-add = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    n = 8
    x = torch.zeros(1, channels, n, n, n)
    fn = model.reverse if direction == "reverse" else model.forward
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(x)
    counted = counter.get_total_flops() / n**3
    # Closed form over the convs the direction uses (forward: enc_x, core, dec_y).
    closed = 0.0
    used = ("enc_x", "core", "dec_y") if direction == "forward" else ("enc_y", "core", "dec_x")
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv3d) and name.split(".")[0] in used:
            closed += 2.0 * m.in_channels * m.out_channels * float(torch.tensor(m.kernel_size).prod()) / m.groups
    return float(counted), closed


def probe_gflops(width: int, threads: int | None, seconds: float = 3.0) -> tuple[float, float]:
    """(GFLOP per wall second, GFLOP per CPU second) of the model's dominant layer
    (conv3d K/2 -> K/2, 3^3, reflect) on a 64^3 input."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    c = max(width // 2, 1)
    conv = torch.nn.Conv3d(c, c, 3, padding=1, padding_mode="reflect")
    x = torch.randn(1, c, 64, 64, 64)
    flop = 2.0 * c * c * 27 * 64**3
    with torch.inference_mode():
        conv(x)  # warm-up (allocations, kernel choice)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            conv(x)
            n += 1
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return flop * n / dt / 1e9, flop * n / dc / 1e9


def _smooth_volume(shape: tuple[int, int, int], channels: int):
    """A smooth, brain-like random field (C, X, Y, Z) float32 with an ellipsoid support."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.8
    out = np.empty((channels,) + shape, dtype=np.float32)
    small = tuple(max(s // 4, 2) for s in shape)
    for c in range(channels):
        field = ndimage.zoom(rng.normal(size=small).astype(np.float32), [s / m for s, m in zip(shape, small)], order=1)
        out[c] = np.where(inside, 1.0 + 0.3 * field[: shape[0], : shape[1], : shape[2]], 0.0)
    return out


def _child(spec: str) -> int:
    """One measured run in a fresh process; prints one JSON line."""
    import numpy as np
    import torch

    from medsr.checkpoint import model_entry
    from medsr.inference import Predictor
    from medsr.normalise import ChannelStats
    from medsr.volume import Volume

    a = json.loads(spec)
    if a.get("threads"):
        torch.set_num_threads(a["threads"])
    model, kwargs = _build(a)
    shape = tuple(a["shape"])
    ck = {
        "model": model_entry(a["model"], kwargs, model),
        "data": {"factor": 2, "patch_size": 24, "channels": a["channels"], "kind": "dti"},
    }
    pred = Predictor(model, ChannelStats.identity(a["channels"]), ChannelStats.identity(a["channels"]), ck, "cpu")
    vol = Volume(_smooth_volume(shape, a["channels"]), np.eye(4), name="generated")
    window = None if a["window"] == "auto" else int(a["window"])
    plan = pred.plan(shape, window, a["overlap"])  # LR-grid models plan on the LR grid
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    out = pred.predict(vol, plan=plan, tta=a.get("tta", "none"), views_per_call=a.get("views_per_call"))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    assert out.data.shape == vol.data.shape and np.isfinite(out.data).all()
    print(json.dumps({
        "window": list(plan.roi), "overlap": plan.overlap, "n_windows": plan.n_windows,
        "overlap_factor": plan.overlap_factor, "seconds": dt, "cpu_seconds": dc, "peak_rss": rss,
        "rss_before": rss_before,
        "reason": plan.reason,
    }))
    return 0


def _parse_configs(text: str) -> list[tuple[str, float | None]]:
    out: list[tuple[str, float | None]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "auto":
            out.append(("auto", None))
            continue
        w, _, ov = item.partition(":")
        out.append((str(int(w)), float(ov) if ov else None))
    if not out:
        raise ValueError(f"--configs {text!r}: no window choice given")
    return out


def _print_plans(shape: tuple[int, int, int], base: dict, configs: list[tuple[str, float | None]]
                 ) -> list[tuple[str, float | None]]:
    """Print the windows each choice runs and its overlap factor (compute relative to one pass).

    A choice the model refuses (an instance-norm model runs windows of its training patch size only)
    is printed as refused, with the reason, and left out of the returned list, so ``--norm instance``
    with the default ``--configs`` plans (and measures) what such a model can run.
    """
    from medsr.inference import choose_window

    ck = {"model": {"kwargs": {"width": base["width"], "norm": base["norm"]}}, "data": {"patch_size": 24}}
    print(f"{'config':<12}{'window':<14}{'ovl':>5}{'wins':>6}{'ovl.f':>7}  reason")
    kept = []
    for window, overlap in configs:
        label = f"{window}:{'auto' if overlap is None else overlap}"
        try:
            plan = choose_window(shape, ck, None if window == "auto" else int(window), overlap)
        except ValueError:
            if base["norm"] != "instance":
                raise
            print(f"{label:<12}refused: a model with instance norm runs windows of its training patch size "
                  f"{ck['data']['patch_size']} only")
            continue
        kept.append((window, overlap))
        print(f"{label:<12}{'x'.join(map(str, plan.roi)):<14}"
              f"{plan.overlap:>5.2f}{plan.n_windows:>6}{plan.overlap_factor:>7.2f}  {plan.reason}")
    if not kept:
        raise ValueError("--configs: every window choice was refused for this model")
    return kept


def run(args: argparse.Namespace) -> int:
    if args.child:
        return _child(args.child)
    import torch

    from medsr.utils.threads import bench_threads

    chosen = bench_threads(args.threads) or None  # every child runs with this count (None: torch's own)
    shape = tuple(args.shape)
    base = {"shape": shape, "channels": args.channels, "model": args.model, "depth": args.depth,
            "width": args.width, "norm": args.norm, "threads": chosen, "tta": args.tta,
            "views_per_call": args.views_per_call}
    configs = _parse_configs(args.configs)
    configs = _print_plans(shape, base, configs)
    if args.plan_only:
        return 0
    model, _ = _build(base)
    fpv, closed = flops_per_voxel(model, args.channels)
    del model
    if args.views_per_call is not None and args.views_per_call < 1:
        raise ValueError(f"--views-per-call {args.views_per_call}: must be >= 1")
    from medsr.data.augment import symmetries

    n_views = len(symmetries(args.tta))  # the compute per output voxel is n_views times one pass
    threads = chosen or torch.get_num_threads()
    print(f"model {args.model} R={args.depth} K={args.width} norm={args.norm}; volume {shape}x{args.channels}; "
          f"{threads} torch threads; tta {args.tta} ({n_views} view(s), "
          f"{args.views_per_call or 'automatic'} per call)")
    print(f"FLOPs per output voxel: {fpv / 1e6:.3f} M (counted), {closed / 1e6:.3f} M (closed form)")
    probe1 = probe_gflops(args.width, chosen)
    print(f"conv3d probe: {probe1[0]:.1f} GFLOP/s wall, {probe1[1]:.1f} GFLOP per CPU-second")
    n_out = float(shape[0] * shape[1] * shape[2])
    results = []
    from tqdm import tqdm

    for window, overlap in tqdm(configs, desc="configs", unit="run"):
        spec = json.dumps(dict(base, window=window, overlap=overlap))
        cmd = [sys.executable, "-m", "benchmarks.infer", "--child", spec]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            results.append({"config": f"{window}:{overlap}", "error": tail[0]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["config"] = f"{window}:{overlap if overlap is not None else 'auto'}"
        results.append(r)
    probe2 = probe_gflops(args.width, chosen)
    probe = (max(probe1[0], probe2[0]), max(probe1[1], probe2[1]))
    print(f"conv3d probe after: {probe2[0]:.1f} GFLOP/s wall, {probe2[1]:.1f} GFLOP per CPU-second "
          f"(the limit uses the larger of each: {probe[0]:.1f}, {probe[1]:.1f})")
    limit_rss = args.memory_limit_gb * 1e9
    print(f"{'config':<12}{'window':<14}{'ovl':>5}{'wins':>6}{'ovl.f':>7}{'wall s':>8}{'cpu s':>8}{'Mvox/s':>8}"
          f"{'RSS GB':>8}{'frac':>6}{'frac.cpu':>9}  ok")
    best = None
    for r in results:
        if "error" in r:
            print(f"{r['config']:<12}failed: {r['error']}")
            continue
        vps = n_out / r["seconds"]
        r["voxels_per_s"] = vps
        r["fraction"] = vps * n_views * fpv / (probe[0] * 1e9)
        # The same ratio per CPU-second: robust when other processes share the cores.
        r["fraction_cpu"] = (n_out * n_views * fpv / r["cpu_seconds"]) / (probe[1] * 1e9)
        r["ok"] = r["peak_rss"] <= limit_rss and max(r["fraction"], r["fraction_cpu"]) >= args.target_fraction
        w = "x".join(str(v) for v in r["window"])
        print(f"{r['config']:<12}{w:<14}{r['overlap']:>5.2f}{r['n_windows']:>6}{r['overlap_factor']:>7.2f}"
              f"{r['seconds']:>8.1f}{r['cpu_seconds']:>8.1f}{vps / 1e6:>8.3f}{r['peak_rss'] / 1e9:>8.2f}"
              f"{r['fraction']:>6.2f}{r['fraction_cpu']:>9.2f}  {'yes' if r['ok'] else 'no'}")
        if r["peak_rss"] <= limit_rss and (best is None or r["fraction_cpu"] > best["fraction_cpu"]):
            best = r
    if best is not None:
        print(f"best within {args.memory_limit_gb:g} GB: {best['config']} ({best['fraction']:.2f} of the limit by wall "
              f"time, {best['fraction_cpu']:.2f} by CPU time; {best['peak_rss'] / 1e9:.2f} GB)")
    if args.json:
        from medsr.utils.atomic import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"flops_per_voxel": fpv, "flops_closed_form": closed,
                                       "probe_gflops_wall": [probe1[0], probe2[0]],
                                       "probe_gflops_cpu": [probe1[1], probe2[1]],
                                       "settings": base, "results": results}, indent=2))
    return 0


if __name__ == "__main__":  # the --child entry point
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(run(p.parse_args()))
