"""Per-channel intensity normalisation computed over brain voxels.

Statistics come from the training subjects, are stored in the checkpoint, and are inverted
at inference so every error is reported in the data's original units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass
class ChannelStats:
    """Mean and standard deviation per channel, each a list of length C."""

    mean: list[float]
    std: list[float]

    def _shape(self, x: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
        shape = [1] * x.ndim
        shape[channel_axis] = len(self.mean)
        m = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        s = np.asarray(self.std, dtype=np.float32).reshape(shape)
        return m, s

    def normalise(self, x, channel_axis: int = 0):
        """(x - mean) / std along ``channel_axis``; works on numpy arrays and torch tensors."""
        m, s = self._shape(np.empty((1,) * x.ndim), channel_axis)
        if not isinstance(x, np.ndarray):  # torch tensor
            import torch

            m, s = torch.as_tensor(m, device=x.device, dtype=x.dtype), torch.as_tensor(s, device=x.device, dtype=x.dtype)
        return (x - m) / s

    def denormalise(self, x, channel_axis: int = 0):
        """Inverse of :meth:`normalise`."""
        m, s = self._shape(np.empty((1,) * x.ndim), channel_axis)
        if not isinstance(x, np.ndarray):
            import torch

            m, s = torch.as_tensor(m, device=x.device, dtype=x.dtype), torch.as_tensor(s, device=x.device, dtype=x.dtype)
        return x * s + m

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> "ChannelStats":
        return cls(mean=list(d["mean"]), std=list(d["std"]))

    @classmethod
    def identity(cls, channels: int) -> "ChannelStats":
        return cls(mean=[0.0] * channels, std=[1.0] * channels)


def brain_stats(volumes: Iterable[tuple[np.ndarray, np.ndarray]], eps: float = 1e-8) -> ChannelStats:
    """Pooled per-channel mean/std over the brain voxels of several volumes.

    Args:
        volumes: pairs (data (C, X, Y, Z), mask (X, Y, Z) bool).
    """
    n = 0
    s1 = None
    s2 = None
    for data, mask in volumes:
        vox = data[:, np.asarray(mask, dtype=bool)].astype(np.float64)  # (C, Nbrain)
        s1 = vox.sum(1) if s1 is None else s1 + vox.sum(1)
        s2 = (vox**2).sum(1) if s2 is None else s2 + (vox**2).sum(1)
        n += vox.shape[1]
    if n == 0 or s1 is None:
        raise ValueError("no brain voxels to compute normalisation statistics from")
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    std = np.where(std < eps, 1.0, std)  # constant channels: leave their scale alone
    return ChannelStats(mean=mean.tolist(), std=std.tolist())
