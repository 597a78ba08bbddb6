"""Training orchestration: config -> run folder -> data -> Trainer -> ``last.pt``.

``train()`` is the Python API used by the CLI, the demo and the tests. It works the same in a
single process and under ``torchrun`` (one process per GPU or CPU slot): every rank builds the
data and the networks, only rank 0 writes into the run folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medsr.checkpoint import load_checkpoint
from medsr.config import Config, load_config, save_config
from medsr.data import build_dataset
from medsr.precision import check_precision
from medsr.training.distributed import (
    DistInfo, barrier, broadcast_object, env_dist_info, init_distributed, select_device, shutdown_distributed,
)
from medsr.training.names import check_names
from medsr.training.trainer import Trainer, configure_determinism
from medsr.utils.atomic import is_temporary

RUN_FILES = ("last.pt", "log.csv", "config.yaml")
# Sub-folders a run writes, and the names it writes there; --overwrite removes only these.
RUN_DIRS: dict[str, re.Pattern[str]] = {
    "samples": re.compile(r"[^/]*\.png"),
    "tensorboard": re.compile(r"events\.out\.tfevents\.[^/]*"),
}


def run_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """Split what ``run_dir`` holds into (medsr's own run files, anything else).

    Own: ``last.pt``, ``log.csv``, ``config.yaml``, the images in ``samples/``, TensorBoard event
    files in ``tensorboard/`` and the temporaries of interrupted atomic writes of those. Folders are
    listed last, after their files.
    """
    own: list[Path] = []
    other: list[Path] = []
    for p in sorted(run_dir.iterdir()):
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            other.append(p)
        elif p.is_file():
            mine = p.name in RUN_FILES or (is_temporary(p.name) and any(p.name.startswith(f".{f}.") for f in RUN_FILES))
            (own if mine else other).append(p)
        elif p.name in RUN_DIRS:
            pattern = RUN_DIRS[p.name]
            for q in sorted(p.rglob("*")):
                ok = q.is_file() and not q.is_symlink() and q.parent == p and (
                    pattern.fullmatch(q.name) or is_temporary(q.name))
                (own if ok else other).append(q)
            own.append(p)
        else:
            other.append(p)
    return own, other


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
        _, other = run_files(run_dir)
        if other:
            names = ", ".join(str(p.relative_to(run_dir)) for p in other[:3])
            more = f" and {len(other) - 3} more" if len(other) > 3 else ""
            raise FileExistsError(
                f"output_dir {run_dir}: --overwrite replaces only medsr's run files, but the folder also holds "
                f"{names}{more}; move them or choose another output_dir"
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
        overwrite: replace an existing run in ``output_dir``: its medsr files (``last.pt``, ``log.csv``,
            ``config.yaml``, ``samples/``, ``tensorboard/``) are deleted once config, data and model
            have been checked; a folder holding any other file is refused.
        overrides: ``a.b=value`` strings applied on top of ``config``.

    Raises:
        ValueError / FileNotFoundError / FileExistsError: bad config, data or run folder (one line,
            naming the key or file).
        medsr.training.TrainingDiverged: a loss became non-finite (the last good checkpoint is kept).
    """
    cfg = load_config(config, overrides)
    check_names(cfg)  # registered model, mode and data names, before any data is read
    threads_before = torch.get_num_threads()
    info: DistInfo = env_dist_info()
    device = select_device(cfg.train.device, info)
    check_precision(cfg.train.precision, device, "config key 'train.precision':")  # before any data is read
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
        if state is not None:
            # Before anything is written: a refused resume (another model, mode, a foreign or
            # incomplete checkpoint) leaves the run folder exactly as it was.
            try:
                trainer.load_state_dict(state)
            except (KeyError, IndexError, TypeError, RuntimeError) as e:
                detail = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())[:200]
                raise ValueError(f"{ckpt}: not a complete checkpoint of this run's model "
                                 f"({type(e).__name__}: {detail})") from e
            before = state.get("precision", "fp32")
            if before != cfg.train.precision and info.is_main:
                print(f"medsr train: {ckpt} was trained in {before}; continuing in {cfg.train.precision}")
        if info.is_main:
            if overwrite and run_dir.is_dir():
                check_run_dir(run_dir, resume, overwrite)  # again: files may have appeared meanwhile
                remove_run_files(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        barrier(info)
        trainer.fit()
        barrier(info)
        return run_dir
    finally:
        torch.set_num_threads(threads_before)  # train.threads must not leak into the caller
        if owns_group:
            shutdown_distributed()


def remove_run_files(run_dir: Path) -> None:
    """Delete medsr's own files of an earlier run in ``run_dir`` (see :func:`run_files`); nothing else."""
    own, _ = run_files(run_dir)
    for p in own:
        if p.is_dir():
            try:
                p.rmdir()  # empty by now, unless something appeared meanwhile: then it stays
            except OSError:
                pass
        else:
            p.unlink(missing_ok=True)


def _dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()
