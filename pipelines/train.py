"""Training orchestration: config -> run folder -> data -> Trainer -> ``last.pt``.

``train()`` is the Python API used by the CLI, the demo and the tests. It works the same in a
single process and under ``torchrun`` (one process per GPU or CPU slot): every rank builds the
data and the networks, only rank 0 writes into the run folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from medsr.config import Config, load_config, save_config
from medsr.training.distributed import (
    DistInfo, barrier, env_dist_info, init_distributed, select_device, shutdown_distributed,
)

RUN_FILES = ("last.pt", "log.csv", "config.yaml")


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an existing non-empty run folder unless resuming or overwriting (read-only check)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"output_dir {run_dir}: exists and is not a folder")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if overwrite:
        if not any((run_dir / f).exists() for f in RUN_FILES):
            raise FileExistsError(
                f"output_dir {run_dir}: not empty and holds no medsr run (no {', '.join(RUN_FILES)}); "
                "refusing to delete it, choose another output_dir"
            )
        return
    if not resume:
        raise FileExistsError(
            f"output_dir {run_dir}: exists and is not empty; pass --resume to continue it or --overwrite to replace it"
        )


def train(config: Config | dict[str, Any] | str | os.PathLike, resume: bool = False, overwrite: bool = False,
          overrides: list[str] | None = None) -> Path:
    """Train from a config (object, dict or YAML path) and return the run folder.

    Args:
        config: the experiment config.
        resume: continue from ``<output_dir>/last.pt`` (a fresh start when there is none).
        overwrite: delete an existing run in ``output_dir`` first.
        overrides: ``a.b=value`` strings applied on top of ``config``.

    Raises:
        ValueError / FileNotFoundError / FileExistsError: bad config, data or run folder (one line,
            naming the key or file).
        medsr.training.TrainingDiverged: a loss became non-finite (the last good checkpoint is kept).
    """
    from medsr.checkpoint import load_checkpoint
    from medsr.data import build_dataset
    from medsr.training.distributed import broadcast_object
    from medsr.training.trainer import Trainer, configure_determinism

    import torch

    cfg = load_config(config, overrides)
    threads_before = torch.get_num_threads()
    info: DistInfo = env_dist_info()
    device = select_device(cfg.train.device, info)
    configure_determinism(cfg.train.deterministic, cfg.train.threads)
    owns_group = info.enabled and not _dist_initialized()
    init_distributed(info, device)
    try:
        run_dir = Path(cfg.output_dir)
        check_run_dir(run_dir, resume, overwrite)
        barrier(info)  # every rank has looked before rank 0 writes anything
        # Build everything that can fail on bad input before touching the run folder.
        data = build_dataset(cfg, info)
        trainer = Trainer(cfg, data, run_dir, info, device)
        ckpt = run_dir / "last.pt"
        state = None
        if resume:
            # Read on rank 0 into CPU memory and broadcast: other nodes need no shared disk, and no
            # rank's tensors land on rank 0's GPU; load_state_dict copies them to each rank's device.
            state = load_checkpoint(ckpt, "cpu") if info.is_main and ckpt.is_file() else None
            state = broadcast_object(state, info)
            if state is None and info.is_main:
                print(f"medsr train: no {ckpt} to resume from; starting a new run")
        if info.is_main:
            if overwrite and run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        barrier(info)
        if state is not None:
            trainer.load_state_dict(state)
        trainer.fit()
        barrier(info)
        return run_dir
    finally:
        torch.set_num_threads(threads_before)  # train.threads must not leak into the caller
        if owns_group:
            shutdown_distributed()


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
