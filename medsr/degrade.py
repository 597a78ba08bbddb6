"""HR -> LR degradation (block averaging, or a slice profile), its grid geometry, and nearest-neighbour upsampling.

Geometry (the image-quality-transfer convention), per axis: with factor ``r = (rx, ry, rz)`` an LR
voxel covers an ``rx x ry x rz`` block of HR voxels, so its edge along axis ``a`` is ``r_a`` times
longer, and the centre of LR voxel (0, 0, 0) is the world centre of the HR block, i.e. HR voxel
coordinate ``((rx-1)/2, (ry-1)/2, (rz-1)/2)``::

    A_lr[:3, :3] = A_hr[:3, :3] @ diag(r)
    A_lr[:3, 3]  = A_hr[:3, :3] @ ((r-1)/2) + A_hr[:3, 3]

A factor is an int (the same on every axis) or three ints (:func:`medsr.factor.factor_triple`).

Odd sizes: a spatial size that is not a multiple of its axis's factor is **cropped** at the high-index
end by default (the last ``size % r_a`` slices are dropped), or, with ``pad=True``, **edge-padded** at
the high-index end (the last slice repeated). Either way voxel (0, 0, 0) and the affine are unchanged,
so the cropped/padded HR grid is ``nn_upsample(block_mean(hr))``'s grid; :func:`fit_to_factor` gives
that HR volume so targets and inputs line up voxel for voxel.

Degradation (:func:`degrade_array`): ``box`` is the block mean on every axis (the IQT protocol);
``gaussian`` keeps the block mean in plane and weights the through-plane axis with a Gaussian slice
profile (:mod:`medsr.slice_profile`). Both give LR voxels on the same grid.
"""
from __future__ import annotations

import numpy as np

from medsr.factor import Factor, FactorLike, factor_triple, factor_value
from medsr.slice_profile import PROFILES, apply_weights, profile_weights, slice_axis
from medsr.volume import Volume


def _check_factor(factor: FactorLike) -> Factor:
    return factor_triple(factor)


def lr_affine(hr_affine: np.ndarray, factor: FactorLike = 2) -> np.ndarray:
    """The LR grid's affine for HR affine ``hr_affine`` (4x4) and ``factor`` (int or per axis)."""
    r = np.asarray(_check_factor(factor), dtype=np.float64)
    a = np.asarray(hr_affine, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = a[:3, :3] * r[None, :]
    out[:3, 3] = a[:3, :3] @ ((r - 1) / 2.0) + a[:3, 3]
    return out


def hr_affine(lr_affine_: np.ndarray, factor: FactorLike = 2) -> np.ndarray:
    """Inverse of :func:`lr_affine`: the HR grid's affine from the LR one."""
    r = np.asarray(_check_factor(factor), dtype=np.float64)
    a = np.asarray(lr_affine_, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = a[:3, :3] / r[None, :]
    out[:3, 3] = a[:3, 3] - out[:3, :3] @ ((r - 1) / 2.0)
    return out


def fit_array(data: np.ndarray, factor: FactorLike = 2, *, pad: bool = False) -> np.ndarray:
    """Crop (default) or edge-pad the last three axes of ``data`` (..., X, Y, Z) to multiples of ``factor`` per axis."""
    r = _check_factor(factor)
    shape = data.shape[-3:]
    if pad:
        extra = [(-s) % f for s, f in zip(shape, r)]
        if not any(extra):
            return data
        widths = [(0, 0)] * (data.ndim - 3) + [(0, e) for e in extra]
        return np.pad(data, widths, mode="edge")
    keep = [s - s % f for s, f in zip(shape, r)]
    if any(k == 0 for k in keep):
        raise ValueError(f"spatial shape {tuple(shape)} is smaller than the factor "
                         f"{' '.join(map(str, r))} on some axis")
    return data[..., : keep[0], : keep[1], : keep[2]]


def fit_to_factor(vol: Volume, factor: FactorLike = 2, *, pad: bool = False) -> Volume:
    """``vol`` cropped (or edge-padded) at the high-index end to multiples of ``factor``; same affine."""
    data = fit_array(vol.data, factor, pad=pad)
    if data is vol.data:
        return vol
    return Volume(np.ascontiguousarray(data), vol.affine.copy(), name=vol.name, meta=dict(vol.meta))


def block_mean_array(data: np.ndarray, factor: FactorLike = 2, *, pad: bool = False) -> np.ndarray:
    """Mean over ``rx x ry x rz`` blocks of the last three axes: (..., X, Y, Z) -> (..., X/rx, Y/ry, Z/rz) float32.

    Sums in float64 one leading index at a time, so the result is the exact block mean (to float32
    rounding) without a float64 copy of the whole input.
    """
    r = _check_factor(factor)
    data = fit_array(data, r, pad=pad)
    lead = data.shape[:-3]
    x, y, z = (s // f for s, f in zip(data.shape[-3:], r))
    flat = data.reshape((-1,) + data.shape[-3:])
    out = np.empty((flat.shape[0], x, y, z), dtype=np.float32)
    for c in range(flat.shape[0]):
        blocks = flat[c].reshape(x, r[0], y, r[1], z, r[2])
        out[c] = blocks.mean(axis=(1, 3, 5), dtype=np.float64)
    return out.reshape(lead + (x, y, z))


def block_mean(vol: Volume, factor: FactorLike = 2, *, pad: bool = False) -> Volume:
    """Average ``factor`` blocks: HR (C, X, Y, Z) -> LR (C, X/rx, Y/ry, Z/rz) on the :func:`lr_affine` grid.

    Args:
        vol: the HR volume.
        factor: block edges (an int for every axis, or three; 2 in the paper).
        pad: edge-pad odd sizes instead of cropping them (see the module docstring).
    """
    return degrade(vol, factor, pad=pad)


def degrade_array(data: np.ndarray, factor: FactorLike = 2, *, profile: str = "box", pad: bool = False) -> np.ndarray:
    """The LR array of ``data`` (..., X, Y, Z) under slice profile ``profile`` (``box`` or ``gaussian``).

    ``box`` is :func:`block_mean_array`. ``gaussian`` block-averages the in-plane axes and weights the
    through-plane axis (:func:`medsr.slice_profile.slice_axis`) with a Gaussian of FWHM = one slice,
    centred on each LR slice's centre (:func:`medsr.slice_profile.profile_weights`).
    """
    if profile not in PROFILES:
        raise ValueError(f"slice profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if profile == "box":
        return block_mean_array(data, factor, pad=pad)
    r = _check_factor(factor)
    axis = slice_axis(r)
    data = fit_array(data, r, pad=pad)  # every axis, the slice axis included
    in_plane = block_mean_array(data, tuple(1 if a == axis else f for a, f in enumerate(r)))
    return apply_weights(in_plane, profile_weights(in_plane.shape[-3 + axis], r[axis], profile), axis)


def degrade(vol: Volume, factor: FactorLike = 2, *, profile: str = "box", pad: bool = False) -> Volume:
    """:func:`degrade_array` of a volume, on the :func:`lr_affine` grid (the LR volume prep writes)."""
    data = degrade_array(vol.data, factor, profile=profile, pad=pad)
    return Volume(data, lr_affine(vol.affine, factor), name=vol.name, meta=dict(vol.meta, factor=factor_value(factor)))


def nn_upsample_array(data: np.ndarray, factor: FactorLike = 2) -> np.ndarray:
    """Repeat each voxel ``r_a`` times along each of the last three axes: (..., x, y, z) -> (..., rx*x, ry*y, rz*z)."""
    r = _check_factor(factor)
    out = data
    for axis, f in zip((-3, -2, -1), r):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return out


def nn_upsample(vol: Volume, factor: FactorLike = 2) -> Volume:
    """Nearest-neighbour upsampling LR -> HR grid (:func:`hr_affine`): the paper's network input ``lr_up``."""
    data = nn_upsample_array(vol.data, factor)
    return Volume(data, hr_affine(vol.affine, factor), name=vol.name, meta=dict(vol.meta))


def downsample_mask(mask: np.ndarray, factor: FactorLike = 2, *, threshold: float = 0.5, pad: bool = False) -> np.ndarray:
    """LR mask (x, y, z) bool: an LR voxel is brain when at least ``threshold`` of its HR block is brain."""
    return block_mean_array(np.asarray(mask, dtype=np.float32), factor, pad=pad) >= threshold
