"""Flip augmentation that keeps diffusion tensors physically correct.

Mirroring a tensor field along voxel axis a is the reflection ``P = diag(..., -1 at a, ...)``:
positions move to ``P r`` and every tensor becomes ``P D P^T``. The diagonal is unchanged and
each off-diagonal ``D_ab`` with exactly one index equal to the flipped axis changes sign:

    flip x: -Dxy, -Dxz      flip y: -Dxy, -Dyz      flip z: -Dxz, -Dyz

A plain array flip moves the tensors but skips the sign change, which corrupts their
orientation (tested in tests/test_patch_dataset.py). The tensors are assumed to be expressed
in the voxel frame (what dtifit/dipy return when fitted with FSL-convention bvecs).

Permuting the voxel axes (``data.permute``) is the rotation/reflection ``Q`` that maps new axis
``i`` to old axis ``perm[i]``; every tensor becomes ``Q D Q^T``, i.e. new component ``D_ij`` is the
old ``D_perm[i],perm[j]``: a reordering of the six channels (no sign change). With flips, the
48 symmetries of the cube: each is as likely a view of a brain-like texture as the original, so
a few training subjects give the network 48x the local anatomy (docs/quality.md).

A permutation is a symmetry of the data only when the axes it swaps look alike: the same voxel size
and the same downsampling factor (:func:`allowed_permutations`). For thick-slice data (factor 1 1 4,
or 0.9 x 0.9 x 4 mm voxels) that leaves x <-> y; flips are always allowed.
"""
from __future__ import annotations

import numpy as np

# FSL order Dxx, Dxy, Dxz, Dyy, Dyz, Dzz: the components whose sign a flip of each axis negates.
DTI_FLIP_SIGNS: dict[int, tuple[int, ...]] = {0: (1, 2), 1: (1, 4), 2: (2, 4)}


# FSL order: the channel of the tensor component (a, b).
_DTI_INDEX = {(0, 0): 0, (0, 1): 1, (0, 2): 2, (1, 1): 3, (1, 2): 4, (2, 2): 5}
_DTI_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
PERMUTATIONS: tuple[tuple[int, int, int], ...] = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def allowed_permutations(voxel_size, factor=1, rtol: float = 0.05) -> tuple[tuple[int, int, int], ...]:
    """The axis permutations that map the grid onto itself: only axes of equal voxel size and factor swap.

    Args:
        voxel_size: (3,) voxel edges in mm (or several subjects' (N, 3): every one must agree).
        factor: the downsampling factor (an int or one per axis; :func:`medsr.factor.factor_triple`).
        rtol: relative tolerance of "equal voxel size".

    Returns:
        A subset of :data:`PERMUTATIONS` in its order, the identity always first.
    """
    from medsr.factor import factor_triple

    r = factor_triple(factor)
    vox = np.atleast_2d(np.asarray(voxel_size, dtype=np.float64))

    def alike(a: int, b: int) -> bool:
        return r[a] == r[b] and bool(np.allclose(vox[:, a], vox[:, b], rtol=rtol))

    return tuple(p for p in PERMUTATIONS if all(alike(i, p[i]) for i in range(3)))


def permute_channel_order(perm: tuple[int, ...]) -> list[int]:
    """Old channel feeding each new DTI channel after moving voxel axis ``perm[i]`` to axis ``i``."""
    return [_DTI_INDEX[tuple(sorted((perm[a], perm[b])))] for a, b in _DTI_PAIRS]


def flip_sign_vector(axes: tuple[int, ...], channels: int = 6) -> np.ndarray:
    """Per-channel sign (C,) applied to a DTI volume after flipping ``axes`` (0=x, 1=y, 2=z)."""
    sign = np.ones(channels, dtype=np.float32)
    for a in axes:
        for c in DTI_FLIP_SIGNS[a]:
            sign[c] *= -1.0
    return sign


def flip_axes_from_bits(bits: int) -> tuple[int, ...]:
    """Bit k of ``bits`` set -> flip spatial axis k."""
    return tuple(a for a in range(3) if bits >> a & 1)


def flip_volume(data: np.ndarray, axes: tuple[int, ...], dti: bool) -> np.ndarray:
    """Mirror a (C, X, Y, Z) array along the spatial ``axes``; fix DTI signs when ``dti``.

    Works on raw (not normalised) values; see :func:`flip_normalised` for normalised data.
    """
    out = np.flip(data, axis=tuple(a + 1 for a in axes)) if axes else data
    if dti and axes:
        out = out * flip_sign_vector(axes, data.shape[0]).reshape(-1, 1, 1, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def flip_normalised(data: np.ndarray, axes: tuple[int, ...], dti: bool, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """As :func:`flip_volume` on data normalised as ``(v - mean) / std`` per channel.

    Negating raw v maps normalised n to ``-n - 2 mean / std``, so the sign change is applied to
    the raw value without leaving normalised space.
    """
    out = np.flip(data, axis=tuple(a + 1 for a in axes)) if axes else data
    out = np.ascontiguousarray(out, dtype=np.float32)
    if dti and axes:
        sign = flip_sign_vector(axes, data.shape[0])
        neg = sign < 0
        m = np.asarray(mean, dtype=np.float32)[neg].reshape(-1, 1, 1, 1)
        s = np.asarray(std, dtype=np.float32)[neg].reshape(-1, 1, 1, 1)
        out[neg] = -out[neg] - 2.0 * m / s
    return out


def symmetry_normalised(data: np.ndarray, perm: tuple[int, ...], axes: tuple[int, ...], dti: bool,
                        mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Permute the spatial axes of a normalised (C, X, Y, Z) array (new axis i = old ``perm[i]``), then flip ``axes``.

    DTI channels are reordered with the axes (and the flip signs applied after). Channels are
    normalised with different statistics, so a reordering goes through raw values.
    """
    if tuple(perm) == (0, 1, 2):
        return flip_normalised(data, axes, dti, mean, std)
    out = np.transpose(data, (0,) + tuple(p + 1 for p in perm))
    if dti:
        m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1, 1)
        s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1, 1)
        order = permute_channel_order(tuple(perm))
        out = ((out[order] * s[order] + m[order]) - m) / s
    return flip_normalised(out, axes, dti, mean, std)


def symmetry_mask(mask: np.ndarray, perm: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """The (X, Y, Z) mask moved as :func:`symmetry_normalised` moves the data."""
    out = np.transpose(mask, perm)
    return np.flip(out, axis=axes) if axes else out


def symmetry_volume(data: np.ndarray, perm: tuple[int, ...], axes: tuple[int, ...], dti: bool) -> np.ndarray:
    """Raw-value version of :func:`symmetry_normalised`: permute the axes of (C, X, Y, Z), then flip ``axes``."""
    out = np.transpose(data, (0,) + tuple(p + 1 for p in perm))
    if dti and tuple(perm) != (0, 1, 2):
        out = out[permute_channel_order(tuple(perm))]
    return flip_volume(out, axes, dti)


def inverse_symmetry_volume(data: np.ndarray, perm: tuple[int, ...], axes: tuple[int, ...], dti: bool) -> np.ndarray:
    """Undo :func:`symmetry_volume` (a flip is its own inverse; then the inverse permutation)."""
    inv = tuple(int(i) for i in np.argsort(perm))
    return symmetry_volume(flip_volume(data, axes, dti), inv, (), dti)


def symmetries(kind: str, permutations: tuple[tuple[int, ...], ...] = PERMUTATIONS
               ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (perm, axes) set of test-time augmentation ``kind``: ``none`` (1), ``flip`` (8) or ``full``
    (the 8 flips times ``permutations``: 48 on an isotropic grid, see :func:`allowed_permutations`)."""
    flips = [flip_axes_from_bits(b) for b in range(8)]
    if kind == "none":
        return [(PERMUTATIONS[0], ())]
    if kind == "flip":
        return [(PERMUTATIONS[0], f) for f in flips]
    if kind == "full":
        return [(p, f) for p in permutations for f in flips]
    raise ValueError(f"test-time augmentation must be none, flip, full or auto, got {kind!r}")
