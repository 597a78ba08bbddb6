"""2D image translation with a trained generator: both directions in image terms.

The 2D counterpart of :mod:`medsr.inference` (3D volumes): it loads a checkpoint of the shared
Trainer, maps A -> B and B -> A for batches of images in [-1, 1], and undoes the training data's
normalisation and ``data.direction`` so callers always think in the folder's A and B.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from medsr.checkpoint import load_generator
from medsr.normalise import ChannelStats

__all__ = ["Translator"]


class Translator:
    """Both directions of a generator in image terms (A and B in [-1, 1]), undoing ``norm`` stats.

    Args:
        checkpoint: a ``last.pt`` of a 2D translation run (a model with ``forward`` and ``reverse``).
        device: where the model runs.

    Attributes:
        model: the generator (eval mode).
        ck: the checkpoint dict (its ``config`` and ``data`` entries tell dataset and image size).
        swap: the run trained with ``data.direction: BtoA`` (the model's input side x is B).

    Raises:
        ValueError: naming the checkpoint, when its model has no ``reverse``.
    """

    def __init__(self, checkpoint: str | os.PathLike, device: torch.device) -> None:
        model, sx, sy, ck = load_generator(checkpoint, map_location="cpu")
        if not callable(getattr(model, "reverse", None)):
            raise ValueError(f"{checkpoint}: model {ck['model']['name']!r} has no reverse(); "
                             "not a 2D translation generator")
        self.model = model.to(device).eval()
        self.ck: dict[str, Any] = ck
        data = (ck.get("config") or {}).get("data", {}) or {}
        self.swap = data.get("direction", "AtoB") == "BtoA"
        self.sx, self.sy = sx, sy

    @staticmethod
    def _run(fn: Callable, inp: torch.Tensor, s_in: ChannelStats, s_out: ChannelStats) -> torch.Tensor:
        x = s_in.normalise(inp, channel_axis=1)
        return s_out.denormalise(fn(x), channel_axis=1)

    @torch.no_grad()
    def a_to_b(self, a: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) A -> (N, 3, H, W) B (B = label colours or logits' colours for Cityscapes)."""
        if self.swap:
            return self._run(self.model.reverse, a, self.sy, self.sx)
        return self._run(self.model.forward, a, self.sx, self.sy)

    @torch.no_grad()
    def b_to_a(self, b: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) B -> (N, 3, H, W) A."""
        if self.swap:
            return self._run(self.model.forward, b, self.sx, self.sy)
        return self._run(self.model.reverse, b, self.sy, self.sx)
