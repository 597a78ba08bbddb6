"""The ``segmentation`` training mode: per-pixel cross-entropy for the FCN-score segmenter.

The paper scores Cityscapes label->photo outputs with the FCN-score: a segmentation network
segments the generated photos and its labels are scored against the truth. The paper used a
pretrained FCN-8s; this toolkit trains its own ``segnet2d`` on the same training split through
the shared Trainer (``configs/2d/segnet_cityscapes.yaml``), so its FCN-scores are comparable
between models (trend) but not with the paper's absolute numbers.

Batches: ``{"x": (B, 3, H, W) photos in [-1, 1], "y": (B, H, W) int64 train ids, 255 = ignore}``
(``data.type: aligned2d`` with this mode yields them). The "generator" is the segmenter; its
``forward`` returns ``(B, num_classes, H, W)`` logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from medsr.training.base import TrainMode, register_mode
from medsr.twod.cityscapes import IGNORE


@register_mode("segmentation")
class Segmentation(TrainMode):
    """Cross-entropy with ``ignore_index = 255`` on the segmenter's logits; no discriminator."""

    @property
    def loss_names(self) -> list[str]:
        return ["ce", "pixel_acc"]

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"].long()
        # Only the forward direction: one forward call of ``passes`` (and of DDP) per step.
        with self.autocast():  # train.precision
            logits = self.passes(x=x)["fake_y"].float()
            loss = nn.functional.cross_entropy(logits, y, ignore_index=IGNORE)
        self.optimise("G", loss)
        with torch.no_grad():
            valid = y != IGNORE
            hits = (logits.argmax(1)[valid] == y[valid]).float()
            acc = hits.mean() if hits.numel() else torch.zeros((), device=x.device)
        return {"ce": loss.detach(), "pixel_acc": acc}
