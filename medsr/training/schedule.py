"""Optimiser and learning-rate schedules: Adam, then one schedule object per optimiser.

A schedule is the only writer of its optimiser's learning rate. The loop tells it where the run
stands whenever that changes (after each step, and at the start of a resumed run: :class:`RunPoint`);
the schedule's policy turns that into the rate of the next step:

* ``epochs`` (the paper): constant for ``n_epochs`` epochs, then linear to zero (:class:`LinearDecay`).
* ``cosine``: from ``lr`` to zero over the run's progress (:class:`CosineDecay`).

The rate is a pure function of (base rate, run point), so a resumed run takes the same rates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with the paper's settings (lr 2e-4, betas (0.5, 0.999) by default in the config)."""
    return torch.optim.Adam(params, lr=lr, betas=betas)


@dataclass(frozen=True)
class RunPoint:
    """Where the run stands before a step.

    Attributes:
        step: optimisation steps taken so far.
        epoch: the epoch the next step belongs to.
        progress: fraction of the run done, in [0, 1] (steps, or time under ``train.max_minutes``).
    """

    step: int = 0
    epoch: int = 0
    progress: float = 0.0


class Policy(Protocol):
    def lr(self, base: float, at: RunPoint) -> float: ...


class LinearDecay:
    """LR factor per epoch: 1 for ``n_epochs`` epochs, then linear to 0 over ``n_epochs_decay``.

    The CycleGAN rule ``1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)``: the last decay
    epoch still trains at a small positive rate.
    """

    def __init__(self, n_epochs: int, n_epochs_decay: int) -> None:
        self.n_epochs = int(n_epochs)
        self.n_epochs_decay = int(n_epochs_decay)

    def __call__(self, epoch: int) -> float:
        if self.n_epochs_decay <= 0:
            return 1.0
        return 1.0 - max(0, epoch + 1 - self.n_epochs) / float(self.n_epochs_decay + 1)

    def lr(self, base: float, at: RunPoint) -> float:
        return base * self(at.epoch)


class CosineDecay:
    """Half a cosine from the base rate at progress 0 to zero at progress 1."""

    def lr(self, base: float, at: RunPoint) -> float:
        return base * 0.5 * (1.0 + math.cos(math.pi * at.progress))


class LRSchedule:
    """The learning rate of one optimiser, set from the run point before each step.

    Args:
        optimizer: its parameter groups' current ``lr`` become the base rates.
        policy: base rate and run point -> rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, policy: Policy) -> None:
        self.optimizer = optimizer
        self.policy = policy
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0
        self.step(RunPoint())

    def step(self, at: RunPoint) -> None:
        """Set every parameter group's rate for the next step, taken at ``at``."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.policy.lr(base, at)
        self.last_epoch = at.epoch

    def state_dict(self) -> dict[str, Any]:
        """``{"base_lrs", "last_epoch"}``: the base rates and the epoch the current rates are for.

        The rate itself follows from these and the run point, which the loop restores on resume.
        The keys are those of ``torch.optim.lr_scheduler.LambdaLR``, whose state older checkpoints hold.
        """
        return {"base_lrs": list(self.base_lrs), "last_epoch": int(self.last_epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the base rates (from this class's state or a ``LambdaLR``'s)."""
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self.last_epoch = int(state.get("last_epoch", 0))


def make_schedule(optimizer: torch.optim.Optimizer, train: Any) -> LRSchedule:
    """The schedule ``train.lr_decay`` names (``train``: the config's train section)."""
    if train.lr_decay == "cosine":
        return LRSchedule(optimizer, CosineDecay())
    return LRSchedule(optimizer, LinearDecay(train.n_epochs, train.n_epochs_decay))
