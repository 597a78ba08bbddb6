"""Diffusion tensor maths on channel-first arrays: component orders, 3x3 matrices, MD, FA, eigenvalues.

medsr keeps tensors as 6 unique components along axis 0 in FSL ``dtifit --save_tensor`` order::

    index:  0    1    2    3    4    5
            Dxx  Dxy  Dxz  Dyy  Dyz  Dzz        (FSL, "upper triangular, row-wise")

Two other orders meet us in files and libraries, and each has an explicit converter here:

* **lower-triangular** (row-wise lower triangle): ``Dxx, Dxy, Dyy, Dxz, Dyz, Dzz``. It is the order of
  the NIfTI-1 ``NIFTI_INTENT_SYMMATRIX`` intent (nifti1.h: "the lower triangle of the matrix is stored
  row by row: A11, A21, A22, A31, A32, A33") and of dipy's ``TensorFit.lower_triangular()``. It differs
  from FSL's by swapping the 3rd and 4th entries (Dyy <-> Dxz), so the permutation is its own inverse.
* **full 9** (the whole 3x3 matrix row-major): ``Dxx, Dxy, Dxz, Dyx, Dyy, Dyz, Dzx, Dzy, Dzz``. The
  off-diagonal pairs are averaged, so a slightly asymmetric input (rounding) becomes symmetric.

Units are whatever the fit produced (mm^2/s when b-values are in s/mm^2). All functions work on any
trailing spatial shape: (6, ...) in, (...) or (3, ...) out.
"""
from __future__ import annotations

import numpy as np

FSL_ORDER: tuple[str, ...] = ("Dxx", "Dxy", "Dxz", "Dyy", "Dyz", "Dzz")
LOWER_ORDER: tuple[str, ...] = ("Dxx", "Dxy", "Dyy", "Dxz", "Dyz", "Dzz")
FULL9_ORDER: tuple[str, ...] = ("Dxx", "Dxy", "Dxz", "Dyx", "Dyy", "Dyz", "Dzx", "Dzy", "Dzz")

# FSL[i] = LOWER[LOWER_TO_FSL[i]]; the swap of entries 2 and 3 is its own inverse.
LOWER_TO_FSL: tuple[int, ...] = tuple(LOWER_ORDER.index(n) for n in FSL_ORDER)  # (0, 1, 3, 2, 4, 5)
FSL_TO_LOWER: tuple[int, ...] = tuple(FSL_ORDER.index(n) for n in LOWER_ORDER)  # (0, 1, 3, 2, 4, 5)
# (row, col) of each FSL component in the 3x3 matrix.
FSL_INDEX: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def lower_to_fsl(t: np.ndarray, axis: int = 0) -> np.ndarray:
    """Reorder lower-triangular components (NIfTI SYMMATRIX, dipy) to FSL order along ``axis``."""
    _check_len(t, axis, 6, "lower-triangular tensor")
    return np.take(t, LOWER_TO_FSL, axis=axis)


def fsl_to_lower(t: np.ndarray, axis: int = 0) -> np.ndarray:
    """Reorder FSL components to lower-triangular order (for NIfTI SYMMATRIX files) along ``axis``."""
    _check_len(t, axis, 6, "FSL tensor")
    return np.take(t, FSL_TO_LOWER, axis=axis)


def full9_to_fsl(t: np.ndarray, axis: int = 0) -> np.ndarray:
    """9 row-major matrix entries along ``axis`` -> 6 FSL components; off-diagonal pairs averaged."""
    _check_len(t, axis, 9, "full 3x3 tensor")
    t = np.moveaxis(t, axis, 0)
    out = np.stack(
        [t[0], 0.5 * (t[1] + t[3]), 0.5 * (t[2] + t[6]), t[4], 0.5 * (t[5] + t[7]), t[8]], axis=0
    ).astype(t.dtype, copy=False)
    return np.moveaxis(out, 0, axis)


def fsl_to_full9(t: np.ndarray, axis: int = 0) -> np.ndarray:
    """6 FSL components along ``axis`` -> 9 row-major matrix entries."""
    _check_len(t, axis, 6, "FSL tensor")
    t = np.moveaxis(t, axis, 0)
    xx, xy, xz, yy, yz, zz = t
    return np.moveaxis(np.stack([xx, xy, xz, xy, yy, yz, xz, yz, zz], axis=0), 0, axis)


def tensor6_to_matrix(t6: np.ndarray) -> np.ndarray:
    """FSL components (6, ...) -> symmetric matrices (..., 3, 3)."""
    _check_len(t6, 0, 6, "FSL tensor")
    m = np.empty(t6.shape[1:] + (3, 3), dtype=t6.dtype)
    for c, (i, j) in enumerate(FSL_INDEX):
        m[..., i, j] = t6[c]
        m[..., j, i] = t6[c]
    return m


def matrix_to_tensor6(m: np.ndarray) -> np.ndarray:
    """Symmetric matrices (..., 3, 3) -> FSL components (6, ...), averaging off-diagonal pairs."""
    m = np.asarray(m)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) matrices, got shape {m.shape}")
    return np.stack([0.5 * (m[..., i, j] + m[..., j, i]) for i, j in FSL_INDEX], axis=0).astype(m.dtype, copy=False)


def mean_diffusivity(t6: np.ndarray) -> np.ndarray:
    """MD = trace / 3, shape (...) from FSL components (6, ...)."""
    _check_len(t6, 0, 6, "FSL tensor")
    return (t6[0] + t6[3] + t6[5]) / 3.0


def fractional_anisotropy(t6: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """FA in [0, 1], shape (...) from FSL components (6, ...); 0 where the tensor is zero.

    Uses the invariant form FA = sqrt(3/2) * ||D - MD*I||_F / ||D||_F, which equals the usual
    eigenvalue formula exactly without an eigen-decomposition (faster, and defined for any
    symmetric D). Computed in float64 to avoid cancellation for nearly isotropic tensors, ``chunk``
    voxels at a time so a whole HCP volume never has a float64 copy.
    """
    _check_len(t6, 0, 6, "FSL tensor")
    t6 = np.asarray(t6)
    flat = t6.reshape(6, -1)
    out = np.empty(flat.shape[1], dtype=np.float32 if t6.dtype == np.float32 else np.float64)
    for s in range(0, flat.shape[1], chunk):
        t = flat[:, s : s + chunk].astype(np.float64)
        md = (t[0] + t[3] + t[5]) / 3.0
        off2 = 2.0 * (t[1] ** 2 + t[2] ** 2 + t[4] ** 2)
        dev2 = (t[0] - md) ** 2 + (t[3] - md) ** 2 + (t[5] - md) ** 2 + off2
        norm2 = t[0] ** 2 + t[3] ** 2 + t[5] ** 2 + off2
        with np.errstate(invalid="ignore", divide="ignore"):
            fa = np.sqrt(1.5 * dev2 / norm2)
        out[s : s + chunk] = np.clip(np.where(norm2 > 0, fa, 0.0), 0.0, 1.0)
    return out.reshape(t6.shape[1:])


def eigenvalues(t6: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Eigenvalues (3, ...) in descending order (l1 >= l2 >= l3), vectorised with ``eigvalsh``.

    Voxels are processed ``chunk`` at a time so a whole HCP volume needs only a few tens of MB.
    """
    _check_len(t6, 0, 6, "FSL tensor")
    flat = t6.reshape(6, -1)
    out = np.empty((3, flat.shape[1]), dtype=np.float64)
    for s in range(0, flat.shape[1], chunk):
        m = tensor6_to_matrix(flat[:, s : s + chunk].astype(np.float64))
        out[:, s : s + chunk] = np.linalg.eigvalsh(m)[:, ::-1].T  # eigvalsh is ascending
    return out.reshape((3,) + t6.shape[1:])


def eigh(t6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (3, ...) descending and eigenvectors (3, 3, ...) with ``vecs[:, k]`` the k-th vector.

    The principal direction (for colour-FA maps) is ``vecs[:, 0]``.
    """
    _check_len(t6, 0, 6, "FSL tensor")
    w, v = np.linalg.eigh(tensor6_to_matrix(np.asarray(t6, dtype=np.float64)))  # (..., 3), (..., 3, 3)
    w = np.moveaxis(w[..., ::-1], -1, 0)
    v = np.moveaxis(v[..., :, ::-1], (-2, -1), (0, 1))
    return w, v


def _check_len(t: np.ndarray, axis: int, n: int, what: str) -> None:
    if np.ndim(t) == 0 or np.shape(t)[axis] != n:
        raise ValueError(f"{what}: expected {n} components on axis {axis}, got shape {np.shape(t)}")
