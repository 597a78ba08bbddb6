"""HR -> LR degradation by block averaging, its grid geometry, and nearest-neighbour upsampling.

Geometry (the image-quality-transfer convention): an LR voxel covers an r x r x r block of HR
voxels, so its edges are r times longer, and the centre of LR voxel (0, 0, 0) is the world centre
of the HR block (0..r-1)^3, i.e. HR voxel coordinate ((r-1)/2, (r-1)/2, (r-1)/2)::

    A_lr[:3, :3] = r * A_hr[:3, :3]
    A_lr[:3, 3]  = A_hr[:3, :3] @ ((r-1)/2, (r-1)/2, (r-1)/2) + A_hr[:3, 3]

Odd sizes: a spatial size that is not a multiple of r is **cropped** at the high-index end by
default (the last ``size % r`` slices are dropped), or, with ``pad=True``, **edge-padded** at the
high-index end (the last slice repeated). Either way voxel (0, 0, 0) and the affine are unchanged,
so the cropped/padded HR grid is ``nn_upsample(block_mean(hr))``'s grid; :func:`fit_to_factor` gives
that HR volume so targets and inputs line up voxel for voxel.
"""
from __future__ import annotations

import numpy as np

from medsr.volume import Volume


def _check_factor(factor: int) -> int:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return int(factor)


def lr_affine(hr_affine: np.ndarray, factor: int = 2) -> np.ndarray:
    """The LR grid's affine for HR affine ``hr_affine`` (4x4) and integer ``factor``."""
    r = _check_factor(factor)
    a = np.asarray(hr_affine, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = a[:3, :3] * r
    out[:3, 3] = a[:3, :3] @ np.full(3, (r - 1) / 2.0) + a[:3, 3]
    return out


def hr_affine(lr_affine_: np.ndarray, factor: int = 2) -> np.ndarray:
    """Inverse of :func:`lr_affine`: the HR grid's affine from the LR one."""
    r = _check_factor(factor)
    a = np.asarray(lr_affine_, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = a[:3, :3] / r
    out[:3, 3] = a[:3, 3] - out[:3, :3] @ np.full(3, (r - 1) / 2.0)
    return out


def fit_array(data: np.ndarray, factor: int = 2, *, pad: bool = False) -> np.ndarray:
    """Crop (default) or edge-pad the last three axes of ``data`` (..., X, Y, Z) to multiples of ``factor``."""
    r = _check_factor(factor)
    shape = data.shape[-3:]
    if pad:
        extra = [(-s) % r for s in shape]
        if not any(extra):
            return data
        widths = [(0, 0)] * (data.ndim - 3) + [(0, e) for e in extra]
        return np.pad(data, widths, mode="edge")
    keep = [s - s % r for s in shape]
    if any(k == 0 for k in keep):
        raise ValueError(f"spatial shape {tuple(shape)} is smaller than the factor {r} on some axis")
    return data[..., : keep[0], : keep[1], : keep[2]]


def fit_to_factor(vol: Volume, factor: int = 2, *, pad: bool = False) -> Volume:
    """``vol`` cropped (or edge-padded) at the high-index end to multiples of ``factor``; same affine."""
    data = fit_array(vol.data, factor, pad=pad)
    if data is vol.data:
        return vol
    return Volume(np.ascontiguousarray(data), vol.affine.copy(), name=vol.name, meta=dict(vol.meta))


def block_mean_array(data: np.ndarray, factor: int = 2, *, pad: bool = False) -> np.ndarray:
    """Mean over ``factor``^3 blocks of the last three axes: (..., X, Y, Z) -> (..., X/r, Y/r, Z/r) float32.

    Sums in float64 one leading index at a time, so the result is the exact block mean (to float32
    rounding) without a float64 copy of the whole input.
    """
    r = _check_factor(factor)
    data = fit_array(data, r, pad=pad)
    lead = data.shape[:-3]
    x, y, z = (s // r for s in data.shape[-3:])
    flat = data.reshape((-1,) + data.shape[-3:])
    out = np.empty((flat.shape[0], x, y, z), dtype=np.float32)
    for c in range(flat.shape[0]):
        blocks = flat[c].reshape(x, r, y, r, z, r)
        out[c] = blocks.mean(axis=(1, 3, 5), dtype=np.float64)
    return out.reshape(lead + (x, y, z))


def block_mean(vol: Volume, factor: int = 2, *, pad: bool = False) -> Volume:
    """Average ``factor``^3 blocks: HR (C, X, Y, Z) -> LR (C, X/r, Y/r, Z/r) on the :func:`lr_affine` grid.

    Args:
        vol: the HR volume.
        factor: block edge r (any positive integer; 2 in the paper).
        pad: edge-pad odd sizes instead of cropping them (see the module docstring).
    """
    data = block_mean_array(vol.data, factor, pad=pad)
    return Volume(data, lr_affine(vol.affine, factor), name=vol.name, meta=dict(vol.meta, factor=int(factor)))


def nn_upsample_array(data: np.ndarray, factor: int = 2) -> np.ndarray:
    """Repeat each voxel ``factor`` times along the last three axes: (..., x, y, z) -> (..., r*x, r*y, r*z)."""
    r = _check_factor(factor)
    out = data
    for axis in (-3, -2, -1):
        out = np.repeat(out, r, axis=axis)
    return out


def nn_upsample(vol: Volume, factor: int = 2) -> Volume:
    """Nearest-neighbour upsampling LR -> HR grid (:func:`hr_affine`): the paper's network input ``lr_up``."""
    data = nn_upsample_array(vol.data, factor)
    return Volume(data, hr_affine(vol.affine, factor), name=vol.name, meta=dict(vol.meta))


def downsample_mask(mask: np.ndarray, factor: int = 2, *, threshold: float = 0.5, pad: bool = False) -> np.ndarray:
    """LR mask (x, y, z) bool: an LR voxel is brain when at least ``threshold`` of its HR block is brain."""
    return block_mean_array(np.asarray(mask, dtype=np.float32), factor, pad=pad) >= threshold
