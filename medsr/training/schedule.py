"""Optimiser and learning-rate schedule of the paper: Adam, constant LR then linear decay to zero."""
from __future__ import annotations

from typing import Iterable

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with the paper's settings (lr 2e-4, betas (0.5, 0.999) by default in the config)."""
    return torch.optim.Adam(params, lr=lr, betas=betas)


class LinearDecay:
    """LR factor per epoch: 1 for ``n_epochs`` epochs, then linear to 0 over ``n_epochs_decay``.

    The CycleGAN rule ``1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)``: the last decay
    epoch still trains at a small positive rate. A plain class (not a lambda) so the scheduler's
    state dict stays weights_only-loadable.
    """

    def __init__(self, n_epochs: int, n_epochs_decay: int) -> None:
        self.n_epochs = int(n_epochs)
        self.n_epochs_decay = int(n_epochs_decay)

    def __call__(self, epoch: int) -> float:
        if self.n_epochs_decay <= 0:
            return 1.0
        return 1.0 - max(0, epoch + 1 - self.n_epochs) / float(self.n_epochs_decay + 1)


def make_scheduler(opt: torch.optim.Optimizer, n_epochs: int, n_epochs_decay: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(opt, LinearDecay(n_epochs, n_epochs_decay))
