"""Training orchestration: config -> run folder -> data -> Trainer -> ``last.pt``.

``train()`` is the Python API used by the CLI, the demo and the tests. It works the same in a
single process and under ``torchrun`` (one process per GPU or CPU slot): every rank builds the
data and the networks, only rank 0 writes into the run folder.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from medsr.checkpoint import check_finite_weights, load_checkpoint
from medsr.config import Config, load_config, save_config
from medsr.data import build_dataset
from medsr.factor import factor_triple, format_factor
from medsr.precision import check_precision
from medsr.training.distributed import (
    DistInfo, barrier, broadcast_object, env_dist_info, init_distributed, select_device, shutdown_distributed,
)
from medsr.training.names import check_names
from medsr.training.trainer import Trainer, configure_determinism
from medsr.utils.atomic import is_temporary
from medsr.utils.lock import LockHeld, file_lock
from medsr.utils.paths import check_not_input

RUN_FILES = ("last.pt", "log.csv", "config.yaml")
# Held by the one process training into a run folder (rank 0 under torchrun), removed when it ends.
LOCK_NAME = ".medsr-train.lock"
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
        if p.name == LOCK_NAME:
            continue  # the lock of the run holding the folder: never removed under it
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
    if not run_dir.is_dir() or not any(p.name != LOCK_NAME for p in run_dir.iterdir()):
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
        with hold_run_dir(run_dir, info):
            return _train_in(cfg, run_dir, info, device, resume, overwrite, config)
    finally:
        torch.set_num_threads(threads_before)  # train.threads must not leak into the caller
        if owns_group:
            shutdown_distributed()


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, info: DistInfo) -> Iterator[None]:
    """Take ``run_dir`` for this run before anything else: one process trains into a run folder.

    Rank 0 holds an exclusive lock (:func:`medsr.utils.lock.file_lock`) on ``run_dir/.medsr-train.lock``
    for the whole run; a second ``medsr train`` on the same folder is refused at once, naming it, and
    every rank learns the outcome. When the run ends the lock file goes, and so does the folder when
    this run created it and wrote nothing into it (a refused run leaves nothing behind).

    Raises:
        ValueError: another live process holds the folder.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"output_dir {run_dir}: exists and is not a folder")
    if not info.is_main:
        refused = broadcast_object(None, info)
        if refused:
            raise ValueError(refused)
        yield
        return
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # the folders this run makes
    lock = run_dir / LOCK_NAME
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock, wait=False))
        except LockHeld:
            message = (f"output_dir {run_dir}: in use by another medsr train process (it holds {lock}); "
                       "wait for it to finish or choose another output_dir")
            broadcast_object(message, info)
            raise ValueError(message) from None
        broadcast_object(None, info)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # still held: a process waiting on it locks again (see file_lock)
            for d in created:  # innermost first, each only when empty: a refused run leaves no folder behind
                try:
                    d.rmdir()
                except OSError:
                    break


def _train_in(cfg: Config, run_dir: Path, info: DistInfo, device: torch.device, resume: bool, overwrite: bool,
              source: Any) -> Path:
    """The body of :func:`train`, run while this process holds ``run_dir`` (:func:`hold_run_dir`)."""
    check_run_dir(run_dir, resume, overwrite)
    if overwrite and isinstance(source, (str, os.PathLike)):  # --overwrite never replaces what this run reads
        check_not_input([run_dir / f for f in RUN_FILES], {"the config": Path(source)}, "--overwrite")
    barrier(info)  # every rank has looked before rank 0 writes anything
    # Build everything that can fail on bad input before touching the run folder.
    data = build_dataset(cfg, info)
    trainer = Trainer(cfg, data, run_dir, info, device)
    check_relations(cfg, trainer)
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
        # incomplete checkpoint, NaN weights) leaves the run folder exactly as it was.
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            check_finite_weights(state["model"], ckpt)
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


def check_relations(cfg: Config, trainer: Trainer) -> None:
    """The config's relations that need the data and the built networks, checked before the run folder is written.

    ``model.kwargs.factor`` and ``data.patch_size`` against the factor of a model computing on the
    LR grid, then one forward pass of every network on a training patch (no gradient, eval mode, no
    random numbers drawn), so any other mismatch of patch and networks is named here with the keys
    that set it, not at the first training step.

    Raises:
        ValueError: naming the config key(s).
    """
    gen = trainer.mode.generator
    r = factor_triple(getattr(gen, "input_factor", 1) or 1)
    factor = trainer.data.info.get("factor")
    if r != (1, 1, 1) and factor is not None and factor_triple(factor) != r:
        raise ValueError(f"config key 'model.kwargs.factor': {format_factor(r, ' ')} differs from the factor of the "
                         f"data ({cfg.data.manifest}: {format_factor(factor, ' ')}); set it to auto")
    # data.patch_size needs no check here: the patch dataset rounds it up to a multiple of every factor.
    sample = trainer.data.dataset[0]
    x, y = sample["x"][None].to(trainer.device), sample["y"]
    nets = [("model", gen), *[("discriminator", d) for d in trainer.mode.discriminators.values()]]
    modes = [n.training for _, n in nets]
    try:
        with torch.no_grad():
            for _, net in nets:
                net.eval()
            try:
                out = gen(x)
            except (ValueError, RuntimeError) as e:
                raise _patch_error(cfg, "model", tuple(x.shape[1:]), e) from None
            spatial = tuple(y.shape[-(out.dim() - 2):])
            if tuple(out.shape[2:]) != spatial:
                raise ValueError(f"config keys 'data.patch_size' and 'model.kwargs': {cfg.model.name} maps a "
                                 f"patch of {tuple(x.shape[2:])} to {tuple(out.shape[2:])}, the target is {spatial}")
            if trainer.mode.discriminators:
                d_in = torch.zeros(1, trainer.mode.discriminator_in_channels(trainer.data.channels), *out.shape[2:],
                                   device=trainer.device)
                for _, disc in nets[1:]:
                    try:
                        disc(d_in)
                    except (ValueError, RuntimeError) as e:
                        raise _patch_error(cfg, "discriminator", tuple(d_in.shape[1:]), e) from None
    finally:
        for (_, net), mode in zip(nets, modes):
            net.train(mode)


def _patch_error(cfg: Config, section: str, shape: tuple[int, ...], e: Exception) -> ValueError:
    name = cfg.model.name if section == "model" else cfg.discriminator.name
    size = "data.image_size" if cfg.data.type != "patches3d" else "data.patch_size"
    detail = " ".join(str(e).split())[:200]
    return ValueError(f"config keys {size!r} and '{section}.kwargs': {name} cannot run on a training input of "
                      f"shape {shape} ({detail})")


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
