"""Patch shapes and positions: a regular grid over the volume, kept where enough of the patch is brain.

The paper keeps 24^3 patches with at least 1% brain voxels (about 112 per HCP volume). A patch is a
cube (``size``: one edge) or a box (``(sx, sy, sz)``: one edge per axis, for thick-slice data whose
LR grid is coarse along one axis only); :func:`patch_shape` turns ``data.patch_size`` into the box.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from medsr.factor import FactorLike, factor_triple, round_up_to_factor

Shape = tuple[int, int, int]
SizeLike = Union[int, Sequence[int]]

#: ``data.patch_size: auto``: this many LR voxels along every axis (16^3 HR at factor 2, the size chosen
#: with ``medsr bench quality``; 8 x 8 x 32 at factor 1 1 4, 24^3 at factor 3: docs/anisotropic.md).
AUTO_LR_EDGE = 8


def patch_shape(size: SizeLike | str, factor: FactorLike = 1) -> Shape:
    """The patch box (sx, sy, sz) of ``data.patch_size`` at ``factor``, tiling whole LR blocks.

    * an int: a cube whose edge is rounded up to a multiple of every axis's factor (16 -> 18 at factor 3);
    * three ints (x y z): each edge rounded up to a multiple of its own axis's factor;
    * ``"auto"``: :data:`AUTO_LR_EDGE` LR voxels along every axis (``AUTO_LR_EDGE * r`` HR voxels).

    Raises:
        ValueError: not a positive int, three positive ints or ``"auto"`` (the config key named).
    """
    r = factor_triple(factor)
    if isinstance(size, str):
        if size != "auto":
            raise ValueError(f"config key 'data.patch_size': expected an int, three ints or 'auto', got {size!r}")
        return (AUTO_LR_EDGE * r[0], AUTO_LR_EDGE * r[1], AUTO_LR_EDGE * r[2])
    edges = [size] if isinstance(size, (int, np.integer)) else list(size)
    if len(edges) not in (1, 3) or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1
                                       for e in edges):
        raise ValueError(f"config key 'data.patch_size': expected one positive int or three (x y z), got {size!r}")
    if len(edges) == 1:
        edge = round_up_to_factor(int(edges[0]), r)
        return (edge, edge, edge)
    return tuple(-(-int(e) // f) * f for e, f in zip(edges, r))  # type: ignore[return-value]


def as_shape(size: SizeLike) -> Shape:
    """An int edge or an (sx, sy, sz) box as the box."""
    if isinstance(size, (int, np.integer)):
        return (int(size),) * 3
    sx, sy, sz = (int(e) for e in size)
    return (sx, sy, sz)


def shape_value(shape: SizeLike) -> int | list[int]:
    """The stored form (checkpoints, ``data.info``): the edge of a cube, else ``[sx, sy, sz]``."""
    s = as_shape(shape)
    return s[0] if s[0] == s[1] == s[2] else list(s)


def format_shape(shape: SizeLike) -> str:
    """``"16^3"`` for a cube, ``"8x8x32"`` for a box (messages)."""
    s = as_shape(shape)
    return f"{s[0]}^3" if s[0] == s[1] == s[2] else "x".join(map(str, s))


def grid_origins(shape: tuple[int, int, int], size: SizeLike, stride: int | None = None) -> np.ndarray:
    """Origins (N, 3) of ``size`` patches (an edge or a box) on a regular grid that fit inside ``shape``.

    With ``stride`` None (the default) patches do not overlap (the stride of each axis is its edge).
    Volumes smaller than a patch yield no origins.
    """
    box = as_shape(size)
    strides = box if stride is None else (stride,) * 3
    axes = [np.arange(0, max(s - e, -1) + 1, st) for s, e, st in zip(shape, box, strides)]
    if any(len(a) == 0 for a in axes):
        return np.zeros((0, 3), dtype=np.int64)
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)


def brain_patch_origins(
    mask: np.ndarray, size: SizeLike = 24, stride: int | None = None, min_fraction: float = 0.01
) -> np.ndarray:
    """Grid origins (N, 3) whose ``size`` patch (an edge or a box) holds at least ``min_fraction`` brain voxels."""
    origins = grid_origins(mask.shape, size, stride)
    if len(origins) == 0:
        return origins
    fractions = patch_fractions(mask, origins, size)
    return origins[fractions >= min_fraction]


def patch_fractions(mask: np.ndarray, origins: np.ndarray, size: SizeLike) -> np.ndarray:
    """Brain fraction (N,) of the ``size`` patches (an edge or a box) at ``origins`` (N, 3), from an integral image."""
    box = as_shape(size)
    m = np.asarray(mask, dtype=bool)
    # Summed-volume table with a zero border: any box sum is 8 lookups.
    s = np.zeros(tuple(d + 1 for d in m.shape), dtype=np.int64)
    s[1:, 1:, 1:] = m.cumsum(0).cumsum(1).cumsum(2)
    o = np.asarray(origins, dtype=np.int64)
    x0, y0, z0 = o[:, 0], o[:, 1], o[:, 2]
    x1, y1, z1 = x0 + box[0], y0 + box[1], z0 + box[2]
    total = (
        s[x1, y1, z1] - s[x0, y1, z1] - s[x1, y0, z1] - s[x1, y1, z0]
        + s[x0, y0, z1] + s[x0, y1, z0] + s[x1, y0, z0] - s[x0, y0, z0]
    )
    return total / float(np.prod(box))


def count_brain_patches(mask: np.ndarray, size: SizeLike = 24, min_fraction: float = 0.01) -> int:
    """Number of non-overlapping ``size`` grid patches (an edge or a box) passing the brain rule (manifest column)."""
    return int(len(brain_patch_origins(mask, size, None, min_fraction)))
