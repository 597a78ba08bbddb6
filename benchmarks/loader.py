"""``medsr bench loader``: patches/s the loader supplies vs patches/s a training step consumes.

Both are measured in the same process on the same config: first the DataLoader alone is
drained for ``--batches`` batches (what the data side can supply, ``--workers`` processes), then
the Trainer runs ``--steps`` optimisation steps on batches already in memory (what the model
consumes). The ratio supply / consumption should be >= 10 so the model never waits for data. CPU
seconds per step are reported too: on a shared machine they show what an idle core would do.

Without ``--manifest`` or ``data.manifest`` a prepared dataset of ``--n-subjects`` generated subjects
(``--shape``, ``--kind``; ``medsr.data.synthetic``) is written to ``--data`` (reused when it already
holds enough subjects) or a temporary folder. Opening the dataset builds the subjects' caches on
first use (``medsr.data.cache``); the seconds it took are reported.

Peak resident memory is reported for this process (``VmHWM``, reset after the data are generated,
so it covers opening the dataset, loading and training) and for the largest loader worker
(``ru_maxrss`` of the waited-for children: each worker starts as a fork of this process).
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import tempfile
import time
from pathlib import Path

from pipelines.flags import refuse_renamed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML config (default: configs/quick_paired_l1.yaml)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. data.patch_size=24 model.kwargs.width=64")
    parser.add_argument("--manifest", default=None, help="prepared data manifest (overrides data.manifest)")
    parser.add_argument("--n-subjects", type=int, default=2, metavar="N",
                        help="generated subjects (without --manifest; default 2)")
    refuse_renamed(parser, "--subjects", "--n-subjects N", "a count; --subjects lists subject IDs elsewhere")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder for the generated subjects, kept and reused (default: a temporary folder)")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], help="generated volume shape")
    parser.add_argument("--kind", choices=["dti", "scalar"], default="dti", help="generated data kind")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (data.num_workers)")
    parser.add_argument("--batches", type=int, default=200, help="loader batches to time")
    parser.add_argument("--steps", type=int, default=20, help="training steps to time (after 3 warm-up steps)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS count (Linux ``clear_refs``; elsewhere a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """This process's peak resident memory since the last :func:`reset_peak_rss` (MiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generated_manifest(folder: Path, n: int, shape: tuple[int, int, int], kind: str, patch_size: int) -> Path:
    """A manifest of ``n`` generated subjects under ``folder``, reusing those already there."""
    from medsr.data.synthetic import make_prepared_dataset
    from medsr.manifest import read_manifest, write_manifest

    everything = folder / "all" / "manifest.csv"
    rows = read_manifest(everything).to_dict("records") if everything.exists() else []
    if len(rows) < n or any(r["shape"] != "x".join(map(str, shape)) or r["kind"] != kind for r in rows[:n]):
        made = make_prepared_dataset(folder / "all", n, shape, kind, patch_size=patch_size)
        rows = read_manifest(made).to_dict("records")
    return write_manifest(folder / f"n{n}" / "manifest.csv", rows[:n])


def measure(cfg, batches: int, steps: int) -> dict:
    """Time opening the data, the loader alone and the training step on ``cfg``; returns a dict of rates."""
    import torch

    from medsr.data import build_dataset
    from medsr.patches import format_shape
    from medsr.training.distributed import env_dist_info, select_device
    from medsr.training.trainer import Trainer, configure_determinism
    from medsr.utils.threads import choose_threads

    info = env_dist_info()
    device = select_device(cfg.train.device, info)
    configure_determinism(False, cfg.train.threads)
    t0 = time.perf_counter()
    data = build_dataset(cfg, info)
    open_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, data, Path(tmp), info, device)
        loader = trainer.make_loader()
        bs = cfg.train.batch_size
        # Supply: drain the loader (several epochs if needed), copies to the device included.
        n, epoch = 0, 0
        t0 = time.perf_counter()
        while n < batches:
            data.sampler.set_epoch(epoch)
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                n += 1
                if n >= batches:
                    break
            epoch += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        supply = n * bs / (time.perf_counter() - t0)
        # Consumption: training steps on a fixed batch (no loader in the loop).
        data.sampler.set_epoch(0)
        batch = {k: v.to(device) for k, v in next(iter(loader)).items()}
        del loader  # stops persistent workers, so their peak memory is counted below
        gc.collect()
        # train.threads auto: the count timed on this very step (the loader above ran with torch's own).
        choose_threads(cfg.train.threads, lambda: trainer.mode.train_step(batch))
        for _ in range(3):
            trainer.mode.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.mode.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    consume = steps * bs / wall
    workers = int(cfg.data.num_workers)
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers else None
    return {
        "mode": cfg.train.mode, "model": cfg.model.name, "kwargs": trainer.mode.networks["generator"].kwargs,
        "subjects": len(data.info.get("subjects", [])), "n_patches": len(data.dataset),
        "patch_size": cfg.data.patch_size, "patch": format_shape(data.info["patch_size"]), "batch_size": bs,
        "device": str(device), "num_workers": workers,
        "threads": torch.get_num_threads(), "open_s": round(open_s, 2), "loader_patches_per_s": round(supply, 1),
        "train_patches_per_s": round(consume, 2), "train_steps_per_s": round(steps / wall, 2),
        "train_cpu_s_per_step": round(cpu / steps, 4), "ratio": round(supply / consume, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "worker_peak_rss_mib": round(worker_peak, 1) if worker_peak is not None else None,
    }


def run(args: argparse.Namespace) -> int:
    from medsr.config import load_config

    config = args.config or str(Path(__file__).parents[1] / "configs" / "quick_paired_l1.yaml")
    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.manifest:
            overrides.append(f"data.manifest={args.manifest}")
        cfg = load_config(config, overrides)
        if not cfg.data.manifest and cfg.data.type == "patches3d":
            m = generated_manifest(args.data or Path(tmp) / "data", args.n_subjects, tuple(args.shape), args.kind,
                                   cfg.data.patch_size)
            cfg = load_config(cfg, [f"data.manifest={m}"])
        reset_peak_rss()  # generating the data is not part of the measurement
        result = measure(cfg, args.batches, args.steps)
    workers = f", largest worker {result['worker_peak_rss_mib']:.0f} MiB" if result["num_workers"] else ""
    print(f"{result['subjects']} subjects ({result['n_patches']} patches/epoch, opened in {result['open_s']:.1f} s), "
          f"{result['num_workers']} worker(s)\n"
          f"loader: {result['loader_patches_per_s']:.1f} patches/s   "
          f"training step ({result['mode']}, {result['model']} {result['kwargs']}, {result['patch']} patches, "
          f"batch {result['batch_size']}, {result['threads']} thread(s)): {result['train_patches_per_s']:.2f} patches/s "
          f"= {result['train_steps_per_s']:.2f} steps/s, {result['train_cpu_s_per_step']} CPU s/step   "
          f"ratio {result['ratio']:.1f}x (target >= 10)\n"
          f"peak RSS: this process {result['peak_rss_mib']:.0f} MiB{workers}")
    if args.json:
        from medsr.utils.atomic import atomic_path

        with atomic_path(args.json) as t:
            Path(t).write_text(json.dumps(result, indent=1))
    return 0
