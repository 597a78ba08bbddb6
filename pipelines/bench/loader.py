"""``medsr bench loader``: patches/s the loader supplies vs patches/s a training step consumes.

Both are measured in the same process on the same config: first the DataLoader alone is
drained for ``--batches`` batches (what the data side can supply), then the Trainer runs
``--steps`` optimisation steps on batches already in memory (what the model consumes). The
ratio supply / consumption should be >= 10 so the model never waits for data. CPU seconds per
step are reported too: on a shared machine they show what an idle core would do.

Without ``--manifest`` or ``data.manifest`` a small synthetic prepared dataset is generated in a
temporary folder (``--shape``, ``--kind``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML config (default: configs/quick_paired_l1.yaml)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. data.patch_size=24 model.kwargs.width=64")
    parser.add_argument("--manifest", default=None, help="prepared data manifest (overrides data.manifest)")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], help="synthetic volume shape")
    parser.add_argument("--kind", choices=["dti", "scalar"], default="dti", help="synthetic data kind")
    parser.add_argument("--batches", type=int, default=200, help="loader batches to time")
    parser.add_argument("--steps", type=int, default=20, help="training steps to time (after 3 warm-up steps)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")


def measure(cfg, batches: int, steps: int) -> dict:
    """Time the loader alone and the training step on ``cfg``; returns a dict of rates."""
    import torch

    from medsr.data import build_dataset
    from medsr.training.distributed import env_dist_info, select_device
    from medsr.training.trainer import Trainer, configure_determinism

    info = env_dist_info()
    device = select_device(cfg.train.device, info)
    configure_determinism(False, cfg.train.threads)
    data = build_dataset(cfg, info)
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
    return {
        "mode": cfg.train.mode, "model": cfg.model.name, "kwargs": trainer.gen_kwargs,
        "patch_size": cfg.data.patch_size, "batch_size": bs, "device": str(device),
        "threads": torch.get_num_threads(), "loader_patches_per_s": round(supply, 1),
        "train_patches_per_s": round(consume, 2), "train_steps_per_s": round(steps / wall, 2),
        "train_cpu_s_per_step": round(cpu / steps, 4), "ratio": round(supply / consume, 1),
    }


def run(args: argparse.Namespace) -> int:
    from medsr.config import load_config

    config = args.config or str(Path(__file__).parents[2] / "configs" / "quick_paired_l1.yaml")
    overrides = list(args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        if args.manifest:
            overrides.append(f"data.manifest={args.manifest}")
        cfg = load_config(config, overrides)
        if not cfg.data.manifest and cfg.data.type == "patches3d":
            from medsr.data.synthetic import make_prepared_dataset

            m = make_prepared_dataset(Path(tmp) / "data", 2, tuple(args.shape), args.kind,
                                      patch_size=cfg.data.patch_size)
            cfg = load_config(cfg, [f"data.manifest={m}"])
        result = measure(cfg, args.batches, args.steps)
    print(f"loader: {result['loader_patches_per_s']:.1f} patches/s   "
          f"training step ({result['mode']}, {result['model']} {result['kwargs']}, {result['patch_size']}^3, "
          f"batch {result['batch_size']}, {result['threads']} thread(s)): {result['train_patches_per_s']:.2f} patches/s "
          f"= {result['train_steps_per_s']:.2f} steps/s, {result['train_cpu_s_per_step']} CPU s/step   "
          f"ratio {result['ratio']:.1f}x (target >= 10)")
    if args.json:
        from medsr.utils.atomic import atomic_path

        with atomic_path(args.json) as t:
            Path(t).write_text(json.dumps(result, indent=1))
    return 0
