"""Diffusion tensors in FSL order (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz): building them and their FA / MD."""
from __future__ import annotations

import numpy as np


def _cylinder6(direction: np.ndarray, md: float | np.ndarray, fa: float | np.ndarray) -> np.ndarray:
    """Axially symmetric tensors with principal axis ``direction`` (..., 3), as (..., 6) FSL order.

    With lambda1 = md (1 + 2k), lambda2 = lambda3 = md (1 - k), FA = 3k / sqrt(3 + 6k^2), so
    k = FA sqrt(3 / (9 - 6 FA^2)).
    """
    fa = np.asarray(fa, np.float32)
    md = np.asarray(md, np.float32)
    k = fa * np.sqrt(3.0 / (9.0 - 6.0 * fa**2))
    l1, l2 = md * (1 + 2 * k), md * (1 - k)
    v = direction.astype(np.float32)
    outer = np.stack([v[..., 0] * v[..., 0], v[..., 0] * v[..., 1], v[..., 0] * v[..., 2],
                      v[..., 1] * v[..., 1], v[..., 1] * v[..., 2], v[..., 2] * v[..., 2]], -1)
    iso = np.array([1, 0, 0, 1, 0, 1], np.float32)
    return (np.asarray(l2)[..., None] * iso + np.asarray(l1 - l2)[..., None] * outer).astype(np.float32)


def _isotropic6(n: int, md: float) -> np.ndarray:
    return np.tile(np.array([md, 0, 0, md, 0, md], np.float32), (n, 1))


def fa_md(tensor6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FA and MD of (..., 6) FSL-order tensors (eigenvalues through numpy)."""
    d = tensor6
    full = np.stack([np.stack([d[..., 0], d[..., 1], d[..., 2]], -1),
                     np.stack([d[..., 1], d[..., 3], d[..., 4]], -1),
                     np.stack([d[..., 2], d[..., 4], d[..., 5]], -1)], -2)
    ev = np.linalg.eigvalsh(full.astype(np.float64))
    md = ev.mean(-1)
    num = np.sqrt(((ev - md[..., None]) ** 2).sum(-1))
    den = np.sqrt((ev**2).sum(-1))
    fa = np.sqrt(1.5) * np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return fa.astype(np.float32), md.astype(np.float32)
