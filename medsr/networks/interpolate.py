"""Grid-aligned LR -> HR interpolation as differentiable torch ops (the residual base of LR-grid models).

Same geometry as prep and the baselines (:mod:`medsr.baselines`), per axis: LR voxel ``k`` is the
mean of HR voxels ``k*r .. k*r + r-1``, so HR voxel ``i = k*r + p`` lies at the LR coordinate
``k + (p - (r - 1) / 2) / r``, with ``r`` the factor of that axis (an int factor is the same on all). This is exactly ``F.interpolate(..., align_corners=False)`` for
``linear``; ``cubic`` is Keys' cubic convolution (a = -0.5), a 4-tap FIR stand-in for the
baselines' cubic B-spline (an IIR prefilter that has no cheap torch form); both extend the signal
by its edge value beyond the grid, like the baselines.

All functions take (B, C, x, y, z) and return (B, C, rx*x, ry*y, rz*z).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from medsr.factor import factor_triple

MODES: tuple[str, ...] = ("nn", "linear", "cubic")
_TAPS = 2  # Keys' kernel has support |t| < 2: taps k-2 .. k+2 cover every phase


def _keys(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    t = t.abs()
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def cubic_weights(factor: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(r, 1, 5) conv1d weights: row ``p`` interpolates HR phase ``p`` from LR taps ``k-2 .. k+2``."""
    r = int(factor)
    phase = (torch.arange(r, dtype=torch.float64) - (r - 1) / 2.0) / r  # (r,) offsets from LR voxel k
    taps = torch.arange(-_TAPS, _TAPS + 1, dtype=torch.float64)  # (5,)
    w = _keys(phase[:, None] - taps[None, :])
    w = w / w.sum(1, keepdim=True)  # exact partition of unity (it already is, up to rounding)
    return w[:, None, :].to(dtype)


def _cubic_axis(x: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """Upsample ``x`` by ``factor`` along ``dim`` with Keys' cubic convolution."""
    moved = x.movedim(dim, -1)
    lead, n = moved.shape[:-1], moved.shape[-1]
    flat = moved.reshape(-1, 1, n)
    flat = F.pad(flat, (_TAPS, _TAPS), mode="replicate")
    out = F.conv1d(flat, cubic_weights(factor, x.dtype).to(x.device))  # (N, r, n)
    out = out.transpose(1, 2).reshape(*lead, n * factor)  # interleave the phases
    return out.movedim(-1, dim)


def upsample(x: torch.Tensor, factor: int | Sequence[int], mode: str = "cubic") -> torch.Tensor:
    """(B, C, x, y, z) LR -> (B, C, rx*x, ry*y, rz*z) on the block-centre-aligned HR grid."""
    if mode not in MODES:
        raise ValueError(f"interpolation mode must be one of {MODES}, got {mode!r}")
    r = factor_triple(factor)
    if r == (1, 1, 1):
        return x
    if mode == "nn":
        for dim, f in zip((2, 3, 4), r):
            if f > 1:
                x = x.repeat_interleave(f, dim)
        return x
    if mode == "linear":
        return F.interpolate(x, scale_factor=r if len(set(r)) > 1 else r[0], mode="trilinear", align_corners=False)
    for dim, f in zip((2, 3, 4), r):
        if f > 1:  # Keys' weights at phase 0 are the identity: an unscaled axis is left as it is
            x = _cubic_axis(x, dim, f)
    return x


def block_mean(x: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """(B, C, X, Y, Z) HR -> (B, C, X/rx, Y/ry, Z/rz): the mean of each block (prep's degradation).

    On an NN-upsampled input (prep's ``lr_up``) whose blocks line up with the array, this recovers
    the LR volume (up to float rounding of the mean).
    """
    r = factor_triple(factor)
    if any(s % f for s, f in zip(x.shape[2:], r)):
        raise ValueError(f"spatial size {tuple(x.shape[2:])} is not a multiple of the factor "
                         f"{' '.join(map(str, r)) if len(set(r)) > 1 else r[0]}; "
                         "LR-grid models need windows and patches that are multiples of data.factor")
    return F.avg_pool3d(x, r if len(set(r)) > 1 else r[0]) if r != (1, 1, 1) else x
