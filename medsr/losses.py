"""Loss functions of the training modes: adversarial (vanilla or LSGAN) and pixel (L1 / L2)."""
from __future__ import annotations

import typing

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsr.choices import GanLoss

GAN_LOSSES: tuple[str, ...] = typing.get_args(GanLoss)  # the config field's set


class GANLoss(nn.Module):
    """Adversarial loss against a constant real/fake target.

    ``vanilla`` is binary cross-entropy on the discriminator's logits (the sigmoid of the
    paper's PatchGAN is folded into the loss for numerical stability); ``lsgan`` is the
    least-squares loss of Mao et al. on the raw output.

    Args:
        kind: ``vanilla`` or ``lsgan``.
    """

    def __init__(self, kind: str = "vanilla") -> None:
        super().__init__()
        if kind not in GAN_LOSSES:
            raise ValueError(f"gan loss {kind!r}: expected one of {', '.join(GAN_LOSSES)}")
        self.kind = kind

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """Mean loss of a discriminator output map (B, 1, ...) against real (1) or fake (0)."""
        prediction = prediction.float()  # in float32 under autocast too: a bf16 mean loses digits
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        if self.kind == "vanilla":
            return F.binary_cross_entropy_with_logits(prediction, target)
        return F.mse_loss(prediction, target)


def pixel_loss(kind: str):
    """The element-wise mean loss ``l1`` or ``l2`` as a function (prediction, target) -> scalar."""
    if kind == "l1":
        return F.l1_loss
    if kind == "l2":
        return F.mse_loss
    raise ValueError(f"pixel loss {kind!r}: expected 'l1' or 'l2'")
