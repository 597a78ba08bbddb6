"""Pixel shuffle with one factor per spatial axis (sub-pixel convolution output of LR-grid models).

MONAI's ``pixelshuffle`` / ``pixelunshuffle`` take one factor for every axis; thick-slice data need
``(1, 1, 4)`` or ``(2, 2, 4)``. These generalise them with MONAI's channel layout, so at equal
factors they are the same operation (tests/test_espcn.py checks it) and a model trained before
per-axis factors existed loads and runs unchanged: channel ``c * R + (p_x * ry + p_y) * rz + p_z``
(``R = rx * ry * rz``) holds output channel ``c`` at HR phase ``(p_x, p_y, p_z)`` of each LR voxel.
"""
from __future__ import annotations

from typing import Sequence

import torch


def _factors(factor: int | Sequence[int], dims: int) -> list[int]:
    f = [int(factor)] * dims if isinstance(factor, int) else [int(v) for v in factor]
    if len(f) != dims or any(v < 1 for v in f):
        raise ValueError(f"need {dims} positive factors, got {factor!r}")
    return f


def pixel_shuffle(x: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """(B, C * prod(r), *S) -> (B, C, *(S * r)): each channel group becomes a block of HR voxels.

    Args:
        x: (B, C * rx * ry [* rz], x, y[, z]).
        factor: one int per spatial axis (or one int for all).
    """
    dims = x.dim() - 2
    r = _factors(factor, dims)
    b, ch, *size = x.shape
    n = 1
    for v in r:
        n *= v
    if ch % n:
        raise ValueError(f"{ch} channels are not divisible by the {n} voxels of a {'x'.join(map(str, r))} block")
    x = x.reshape([b, ch // n] + r + size)
    # (B, C, r_0..r_d, s_0..s_d) -> (B, C, s_0, r_0, s_1, r_1, ...)
    order = [0, 1] + [i for a in range(dims) for i in (2 + dims + a, 2 + a)]
    return x.permute(order).reshape([b, ch // n] + [s * v for s, v in zip(size, r)])


def pixel_unshuffle(x: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pixel_shuffle`: (B, C, *(S * r)) -> (B, C * prod(r), *S).

    Raises:
        ValueError: a spatial size is not a multiple of its axis's factor.
    """
    dims = x.dim() - 2
    r = _factors(factor, dims)
    b, ch, *size = x.shape
    if any(s % v for s, v in zip(size, r)):
        raise ValueError(f"spatial size {tuple(size)} is not a multiple of the factor {' '.join(map(str, r))}")
    low = [s // v for s, v in zip(size, r)]
    x = x.reshape([b, ch] + [i for s, v in zip(low, r) for i in (s, v)])
    # (B, C, s_0, r_0, s_1, r_1, ...) -> (B, C, r_0..r_d, s_0..s_d)
    order = [0, 1] + [3 + 2 * a for a in range(dims)] + [2 + 2 * a for a in range(dims)]
    n = 1
    for v in r:
        n *= v
    return x.permute(order).reshape([b, ch * n] + low)
