"""An exponential moving average of the generator's weights (``train.ema``), the weights a checkpoint serves.

At a constant learning rate the weights of the last step carry the noise of the last few batches; their
moving average (Polyak averaging, as BasicSR's ``ema_decay`` and timm's ``ModelEmaV3`` keep) is the
trained model with that noise averaged out, at the cost of one weighted sum per step. The averaging is
torch's own :class:`torch.optim.swa_utils.AveragedModel`; the decay warms up as
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (timm's and TensorFlow's rule), so a short run's
average is not dominated by its random initial weights.

A checkpoint's ``model`` entry holds the averaged weights, so ``medsr infer``, ``evaluate``, ``export`` and the
model card use them unchanged; the weights the optimiser is at travel in its ``ema`` entry for resume.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel


def warmup_decay(decay: float, updates: int) -> float:
    """The decay of update ``updates + 1``: ``min(decay, (1 + updates) / (10 + updates))``."""
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """The moving average of ``model``'s parameters and buffers.

    Args:
        model: the module whose weights are averaged (unwrapped, not DDP's wrapper).
        decay: the weight of the average at each update once warmed up, in (0, 1).

    Attributes:
        module: a copy of ``model`` holding the average (eval mode, no gradients).
        updates: how many times :meth:`update` ran.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an EMA decay lies in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        # The multi-tensor form: one fused lerp over every parameter (torch's foreach kernels) per step.
        self._averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)
        self._averaged.requires_grad_(False).eval()

    @property
    def module(self) -> nn.Module:
        return self._averaged.module

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n: Any) -> None:
        # avg <- avg + (1 - d) * (cur - avg); the Python counter sets d (no device sync for AveragedModel's n).
        torch._foreach_lerp_(averaged, current, 1.0 - warmup_decay(self.decay, self.updates - 1))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (the first update copies them)."""
        self.updates += 1
        self._averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "updates", "state_dict"}``: the averaged module's weights and how they came about."""
        return {"decay": self.decay, "updates": int(self.updates), "state_dict": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore an average written by :meth:`state_dict`."""
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])
        self._averaged.n_averaged.fill_(self.updates)
