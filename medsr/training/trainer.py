"""One Trainer for every mode and both dimensionalities.

The Trainer owns the loop and what every mode shares: the device and DDP wrapping, the data
loader, budgets (``max_steps``, ``max_minutes``), the run point each learning-rate schedule is set
from, checkpoints (atomic, resumable bit for bit in deterministic mode), ``log.csv``, the progress
bar, TensorBoard and the per-epoch PNG. What is trained and what a step computes belong to the
mode (:mod:`medsr.training.base`); what a batch holds belongs to the dataset builder
(:mod:`medsr.data.registry`).
"""
from __future__ import annotations

import csv
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsr import __version__
from medsr.checkpoint import save_checkpoint
from medsr.config import Config
from medsr.data.registry import TrainData
from medsr.precision import check_precision
from medsr.training.base import TrainMode, create_mode
from medsr.training.distributed import DistInfo, all_mean, gather_objects, wrap_ddp
from medsr.training.names import check_names
from medsr.training.networks import DataFacts
from medsr.training.schedule import RunPoint
from medsr.utils.atomic import atomic_path
from medsr.utils.thread_tuner import training_tuner


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is left untouched."""


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as weights_only-loadable containers."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # Items carry their own seeds; seeding workers anyway keeps any library randomness reproducible.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class Trainer:
    """Train the generator of ``cfg`` on ``data``; rank 0 writes into ``run_dir``.

    Args:
        cfg: the resolved config.
        data: the training data (see :func:`medsr.data.build_dataset`).
        run_dir: the run folder (``last.pt``, ``log.csv``, ``samples/``).
        dist: this process's place in a DDP job.
        device: where the networks live.
    """

    def __init__(self, cfg: Config, data: TrainData, run_dir: Path, dist: DistInfo, device: torch.device) -> None:
        self.cfg, self.data, self.run_dir, self.dist, self.device = cfg, data, Path(run_dir), dist, device
        t = cfg.train
        check_names(cfg)
        # train.precision first: fp16 on a CPU is refused before any network is built.
        check_precision(t.precision, device, "config key 'train.precision':")
        seed_everything(t.seed)  # identical initial weights on every rank
        self.mode: TrainMode = create_mode(cfg, dist.rank)

        def wrap(module: torch.nn.Module, find_unused: bool = False) -> torch.nn.Module:
            return wrap_ddp(module, dist, device, find_unused)

        self.mode.setup(DataFacts.of(data, cfg), device, wrap)
        self.steps_per_epoch = int(data.sampler.steps_per_epoch)
        total = (t.n_epochs + t.n_epochs_decay) * self.steps_per_epoch
        self.total_steps = min(total, t.max_steps) if t.max_steps is not None else total
        self.step = 0
        # Seconds of training loop behind ``self.step`` (restored on resume): train.max_minutes
        # counts over every run that led to this checkpoint, as max_steps does.
        self.train_seconds = 0.0
        self.log_rows: list[dict[str, Any]] = []
        # train.threads: the count in use, measured and rechecked with auto; it also watches the step rate.
        self.threads = training_tuner(t.threads, device_type=device.type, deterministic=t.deterministic,
                                      world_size=dist.world_size)
        self.last_good: tuple[int, Path] | None = None
        self._step_lr = 0.0
        self._tb = None

    # ------------------------------------------------------------------ state
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "last.pt"

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict (layout of :mod:`medsr.checkpoint`). Collective: call on every rank."""
        rngs = gather_objects(rng_state(), self.dist)
        modes = gather_objects(self.mode.rank_state_dict(), self.dist)
        return {
            "format": 1,
            "medsr_version": __version__,
            **self.mode.state_dict(),  # model, discriminators, optimizers, schedulers, amp
            "step": int(self.step),
            "epoch": int(self.step // self.steps_per_epoch),
            "train_seconds": float(self.train_seconds),
            "rng": {"world_size": self.dist.world_size, "per_rank": rngs},
            "mode": self.cfg.train.mode,
            "mode_state": {"per_rank": modes},
            "precision": self.cfg.train.precision,
            "norm": {k: v.to_dict() for k, v in self.data.norm.items()},
            "data": dict(self.data.info),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        """Restore everything a checkpoint holds (weights, optimisers, schedules, RNG, pools, step)."""
        gen = self.mode.networks["generator"]
        if ck["model"]["name"] != gen.name or ck["model"]["kwargs"] != gen.kwargs:
            raise ValueError(
                f"{self.ckpt_path}: checkpoint model {ck['model']['name']} {ck['model']['kwargs']} differs from the "
                f"config's {gen.name} {gen.kwargs}; resume with the run's own config.yaml"
            )
        if ck.get("mode") != self.cfg.train.mode:
            raise ValueError(f"{self.ckpt_path}: checkpoint was trained in mode {ck.get('mode')!r}, config says "
                             f"{self.cfg.train.mode!r}")
        held, wanted = list(ck.get("discriminators") or {}), list(self.mode.discriminator_names)
        if held != wanted:  # e.g. train.reverse changed: the learned G has D_X, the known degradation has not
            raise ValueError(f"{self.ckpt_path}: checkpoint has discriminators {held or 'none'}, the config trains "
                             f"{wanted or 'none'} (train.reverse?); resume with the run's own config.yaml")
        self.mode.load_state_dict(ck)
        self.step = int(ck["step"])
        self.train_seconds = float(ck.get("train_seconds", 0.0))
        per_rank = ck["rng"]["per_rank"]
        set_rng_state(per_rank[self.dist.rank if self.dist.rank < len(per_rank) else 0])
        modes = ck.get("mode_state", {}).get("per_rank", [])
        if modes:
            self.mode.load_rank_state_dict(modes[self.dist.rank if self.dist.rank < len(modes) else 0])
        self.last_good = (self.step, self.ckpt_path)
        self.log_rows = [r for r in _read_log(self.run_dir / "log.csv") if int(r["step"]) <= self.step]

    def save(self) -> None:
        """Write ``last.pt`` atomically (rank 0; every rank takes part in gathering RNG states)."""
        state = self.state_dict()
        if self.dist.is_main:
            save_checkpoint(state, self.ckpt_path)
            self._write_log()
        self.last_good = (self.step, self.ckpt_path)

    # ------------------------------------------------------------------ output
    def _write_log(self) -> None:
        if not self.log_rows:
            return
        names = list(self.log_rows[-1].keys())
        with atomic_path(self.run_dir / "log.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=names)
                w.writeheader()
                w.writerows(self.log_rows)

    def _tensorboard(self):
        if self._tb is None and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self._tb = False
        return self._tb or None

    def write_preview(self, name: str) -> Path | None:
        """Save the data's preview (input, output, target) as ``samples/<name>.png`` (rank 0)."""
        if not (self.dist.is_main and self.cfg.train.samples and self.data.preview is not None):
            return None
        from medsr.figures.preview import preview_figure

        generator = self.mode.served_generator  # what the checkpoint will serve (the average under train.ema)
        training = generator.training
        generator.eval()
        try:
            panels = self.data.preview(generator, self.device)
        finally:
            generator.train(training)
        path = preview_figure(self.run_dir / "samples" / f"{name}.png", panels,
                              title=f"{self.cfg.train.mode} step {self.step}")
        return path

    # ------------------------------------------------------------------ loop
    def make_loader(self) -> torch.utils.data.DataLoader:
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(
            self.data.dataset, batch_sampler=self.data.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", worker_init_fn=_worker_init if workers else None,
            persistent_workers=workers > 0,
        )

    def out_of_time(self) -> bool:
        """``train.max_minutes`` is set and the time trained (agreed by all ranks) has reached it."""
        budget = self.cfg.train.max_minutes
        return budget is not None and self.train_seconds >= 60.0 * float(budget)

    def progress(self) -> float:
        """Fraction of the run done: steps of ``total_steps`` or time of ``train.max_minutes``."""
        done = self.step / max(self.total_steps, 1)
        budget = self.cfg.train.max_minutes
        if budget is not None:
            done = max(done, self.train_seconds / (60.0 * float(budget)))
        return min(done, 1.0)

    def run_point(self) -> RunPoint:
        """Where the run stands before the next step (what the learning-rate schedules read)."""
        return RunPoint(step=self.step, epoch=self.step // self.steps_per_epoch, progress=self.progress())

    def _set_learning_rates(self) -> None:
        """Tell each of the mode's schedules the run point: it sets the rate of the next step."""
        at = self.run_point()
        for schedule in self.mode.schedules.values():
            schedule.step(at)

    def learning_rate(self) -> float:
        """The rate of the mode's first optimiser (the generator's) for the next step."""
        return float(next(iter(self.mode.optimizers.values())).param_groups[0]["lr"])

    def fit(self) -> Path:
        """Train from ``self.step`` to the last step (or ``train.max_minutes``); returns the checkpoint path."""
        from tqdm import tqdm

        loader = self.make_loader()
        self._set_learning_rates()  # from the step (and time) a resumed run restored
        clock = (self.train_seconds, time.perf_counter())  # (seconds trained before this call, its start)
        show = self.cfg.train.progress and self.dist.is_main and sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not show, dynamic_ncols=True, unit="step")
        speed = _Throughput(self.cfg.train.batch_size * self.dist.world_size, self.step)
        self._say(self.threads.start())
        try:
            while self.step < self.total_steps and not self.out_of_time():
                epoch = self.step // self.steps_per_epoch
                self.data.sampler.set_epoch(epoch, self.step % self.steps_per_epoch)
                for batch in loader:
                    values = self._train_step(batch, clock)
                    if self._after_step(values, speed, bar if show else None):
                        break
                if self.out_of_time():
                    break
        finally:
            bar.close()
            if self._tb:
                self._tb.close()
        if self.last_good is None or self.last_good[0] != self.step:
            self.save()
        if self.step % self.steps_per_epoch != 0:
            self.write_preview("final")
        return self.ckpt_path

    def _train_step(self, batch: dict[str, Any], clock: tuple[float, float]) -> dict[str, float]:
        """One optimisation step on ``batch``; returns its losses averaged over ranks.

        Also sets ``train_seconds`` from ``clock`` (seconds trained before :meth:`fit`, its start time).

        Raises:
            TrainingDiverged: a loss is not finite (the last good checkpoint is kept and named).
        """
        names = self.mode.loss_names
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        self._step_lr = self.learning_rate()  # the rate this step uses, for log.csv
        losses = self.mode.train_step(batch)
        self.step += 1
        # The elapsed time rides along with the losses' all-reduce: every rank gets the same mean, so
        # under torchrun all ranks stop at the same step without an extra collective.
        elapsed = torch.tensor([clock[0] + time.perf_counter() - clock[1]], device=self.device)
        vec = all_mean(torch.cat([torch.stack([losses[n].float() for n in names]), elapsed]), self.dist)
        *losses_mean, self.train_seconds = vec.cpu().double().tolist()
        self._set_learning_rates()  # for the next step, at the step count and time just reached
        values = dict(zip(names, losses_mean))
        if not all(math.isfinite(v) for v in values.values()):
            bad = ", ".join(f"{k}={v:g}" for k, v in values.items())
            kept = (f"last good checkpoint {self.last_good[1]} (step {self.last_good[0]}) kept"
                    if self.last_good else "no checkpoint was written")
            raise TrainingDiverged(f"non-finite loss at step {self.step} ({bad}); stopped, {kept}")
        return values

    def _after_step(self, values: dict[str, float], speed: "_Throughput", bar: Any) -> bool:
        """Log, show progress, close the epoch and checkpoint after a step; True when the run stops here.

        Args:
            values: the step's losses (:meth:`_train_step`).
            speed: the throughput since the last log row.
            bar: the tqdm bar to annotate, or None when it is not shown.
        """
        t = self.cfg.train
        self._say(self.threads.tick(self.step))
        end_of_epoch = self.step % self.steps_per_epoch == 0
        last = self.step >= self.total_steps or self.out_of_time()
        if self.step % t.log_every == 0 or end_of_epoch or last:
            self._log_step(values, speed.update(self.step))
        if bar is not None:
            bar.update(1)
            name = self.mode.loss_names[0]
            bar.set_postfix({name: f"{values[name]:.4g}", "patches/s": f"{speed.rate:.1f}",
                             "epoch": self.step // self.steps_per_epoch, "threads": self.threads.threads})
        if end_of_epoch:
            self._end_of_epoch()
        if self.step % t.checkpoint_every == 0 or last:
            self.save()
        return last

    def _say(self, lines: list[str]) -> None:
        """Show the thread tuner's lines (the choice, a change, a slowdown) above the progress bar (rank 0)."""
        if self.dist.is_main:
            from tqdm import tqdm

            for line in lines:
                tqdm.write(f"medsr train: {line}", file=sys.stderr)

    def _log_step(self, values: dict[str, float], rate: float) -> None:
        """Append a ``log.csv`` row (and TensorBoard scalars) for the step just taken."""
        lr = self._step_lr
        row = {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch}
        row.update({k: f"{v:.6g}" for k, v in values.items()})
        row.update({"lr": f"{lr:.6g}", "patches_per_s": f"{rate:.4g}", "train_s": f"{self.train_seconds:.1f}",
                    "threads": self.threads.threads})
        self.log_rows.append(row)
        tb = self._tensorboard()
        if tb:
            for k, v in values.items():
                tb.add_scalar(f"loss/{k}", v, self.step)
            tb.add_scalar("lr", lr, self.step)
            tb.add_scalar("patches_per_s", rate, self.step)

    def _end_of_epoch(self) -> None:
        """Write the epoch's preview."""
        self.write_preview(f"epoch_{self.step // self.steps_per_epoch:03d}")


class _Throughput:
    """Patches per second between log rows (``log.csv``'s ``patches_per_s``, the progress bar's)."""

    def __init__(self, per_step: int, step: int) -> None:
        self.per_step = per_step  # patches per step over all ranks
        self.rate = 0.0
        self._tick, self._tick_step = time.perf_counter(), step

    def update(self, step: int) -> float:
        """The rate since the previous update (or construction), now at ``step``."""
        now = time.perf_counter()
        self.rate = self.per_step * (step - self._tick_step) / max(now - self._tick, 1e-9)
        self._tick, self._tick_step = now, step
        return self.rate

def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def configure_determinism(deterministic: bool, threads: int | str = 0) -> None:
    """Deterministic kernels (strict on CPU; warn-only on CUDA where a few 3D ops lack them); an explicit
    thread count (``auto`` is the Trainer's :class:`medsr.utils.thread_tuner.ThreadTuner`)."""
    if isinstance(threads, int) and threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
