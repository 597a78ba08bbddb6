"""Patch positions: a regular grid over the volume, kept where enough of the patch is brain.

The paper keeps 24^3 patches with at least 1% brain voxels (about 112 per HCP volume).
"""
from __future__ import annotations

import numpy as np


def grid_origins(shape: tuple[int, int, int], size: int, stride: int | None = None) -> np.ndarray:
    """Origins (N, 3) of ``size``^3 patches on a regular grid that fit inside ``shape``.

    With ``stride == size`` (the default) patches do not overlap. Volumes smaller than a
    patch yield no origins.
    """
    stride = size if stride is None else stride
    axes = [np.arange(0, max(s - size, -1) + 1, stride) for s in shape]
    if any(len(a) == 0 for a in axes):
        return np.zeros((0, 3), dtype=np.int64)
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)


def brain_patch_origins(
    mask: np.ndarray, size: int = 24, stride: int | None = None, min_fraction: float = 0.01
) -> np.ndarray:
    """Grid origins (N, 3) whose ``size``^3 patch holds at least ``min_fraction`` brain voxels."""
    origins = grid_origins(mask.shape, size, stride)
    if len(origins) == 0:
        return origins
    fractions = patch_fractions(mask, origins, size)
    return origins[fractions >= min_fraction]


def patch_fractions(mask: np.ndarray, origins: np.ndarray, size: int) -> np.ndarray:
    """Brain fraction (N,) of the patches at ``origins`` (N, 3), from an integral image."""
    m = np.asarray(mask, dtype=bool)
    # Summed-volume table with a zero border: any box sum is 8 lookups.
    s = np.zeros(tuple(d + 1 for d in m.shape), dtype=np.int64)
    s[1:, 1:, 1:] = m.cumsum(0).cumsum(1).cumsum(2)
    o = np.asarray(origins, dtype=np.int64)
    x0, y0, z0 = o[:, 0], o[:, 1], o[:, 2]
    x1, y1, z1 = x0 + size, y0 + size, z0 + size
    total = (
        s[x1, y1, z1] - s[x0, y1, z1] - s[x1, y0, z1] - s[x1, y1, z0]
        + s[x0, y0, z1] + s[x0, y1, z0] + s[x1, y0, z0] - s[x0, y0, z0]
    )
    return total / float(size**3)


def count_brain_patches(mask: np.ndarray, size: int = 24, min_fraction: float = 0.01) -> int:
    """Number of non-overlapping ``size``^3 grid patches passing the brain rule (manifest column)."""
    return int(len(brain_patch_origins(mask, size, None, min_fraction)))
