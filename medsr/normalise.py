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


@dataclass
class BrainSums:
    """Per-channel sums over the brain voxels of one volume: what pooled statistics need.

    Attributes:
        n: brain voxel count.
        s1: (C,) float64 sum of the values.
        s2: (C,) float64 sum of their squares.

    Kept per subject in the subject cache (``medsr.data.cache``), so the training statistics of
    any subset of subjects come without reading a voxel again.
    """

    n: int
    s1: np.ndarray
    s2: np.ndarray

    def to_dict(self) -> dict:
        # float64 through JSON's repr round-trips exactly, so cached sums give bit-identical statistics.
        return {"n": int(self.n), "s1": [float(v) for v in self.s1], "s2": [float(v) for v in self.s2]}

    @classmethod
    def from_dict(cls, d: dict) -> "BrainSums":
        return cls(int(d["n"]), np.asarray(d["s1"], dtype=np.float64), np.asarray(d["s2"], dtype=np.float64))


def brain_sums(data: np.ndarray, mask: np.ndarray) -> BrainSums:
    """:class:`BrainSums` of data (C, X, Y, Z) over mask (X, Y, Z) bool."""
    vox = data[:, np.asarray(mask, dtype=bool)].astype(np.float64)  # (C, Nbrain)
    return BrainSums(int(vox.shape[1]), vox.sum(1), (vox**2).sum(1))


def stats_from_sums(sums: Iterable[BrainSums], eps: float = 1e-8) -> ChannelStats:
    """Pooled per-channel mean/std from the brain sums of several volumes (summed in the given order)."""
    n = 0
    s1 = None
    s2 = None
    for b in sums:
        s1 = b.s1 if s1 is None else s1 + b.s1
        s2 = b.s2 if s2 is None else s2 + b.s2
        n += b.n
    if n == 0 or s1 is None:
        raise ValueError("no brain voxels to compute normalisation statistics from")
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    std = np.where(std < eps, 1.0, std)  # constant channels: leave their scale alone
    return ChannelStats(mean=mean.tolist(), std=std.tolist())


def brain_stats(volumes: Iterable[tuple[np.ndarray, np.ndarray]], eps: float = 1e-8) -> ChannelStats:
    """Pooled per-channel mean/std over the brain voxels of several volumes.

    Args:
        volumes: pairs (data (C, X, Y, Z), mask (X, Y, Z) bool), read one at a time.
    """
    return stats_from_sums((brain_sums(d, m) for d, m in volumes), eps)
