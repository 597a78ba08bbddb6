"""Scalar and colour maps of a diffusion tensor volume, in dipy's (and FSL's) conventions.

From 6 FSL-ordered components (:mod:`medsr.dti`) per voxel, the maps researchers read:

======  ========  =====================================================================================
name    channels  what (units of the tensor, mm^2/s as ``medsr prep`` writes it, for diffusivities)
======  ========  =====================================================================================
fa      1         fractional anisotropy in [0, 1]
md      1         mean diffusivity, (l1 + l2 + l3) / 3
ad      1         axial diffusivity, l1
rd      1         radial diffusivity, (l2 + l3) / 2
rgb     3         colour FA: |V1| * FA per axis (red, green, blue = x, y, z of the tensor's frame)
evec    3         V1, the principal eigenvector (unit length; its sign is arbitrary, as in FSL's V1)
======  ========  =====================================================================================

Eigenvalues come from ``numpy.linalg.eigh`` in float64 and are clipped at 0, exactly as dipy's
``decompose_tensor`` (``min_diffusivity=0``) does before its ``fractional_anisotropy``,
``mean_diffusivity`` and ``color_fa``; ``tests/test_dti_maps.py`` compares every map with dipy's on the same
tensor. A positive-definite tensor gives FSL ``dtifit``'s values too; in a voxel with a negative eigenvalue
(a network's output can have one) FSL's MD stays trace / 3 while dipy's, and medsr's, counts that
eigenvalue as 0. Where every clipped eigenvalue is 0 (outside the brain) each map is 0, V1 included.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from medsr.dti import tensor6_to_matrix

# name -> (channels, file-name suffix medsr uses outside BIDS: FSL dtifit's where it has one)
MAPS: dict[str, tuple[int, str]] = {
    "fa": (1, "FA"), "md": (1, "MD"), "ad": (1, "AD"), "rd": (1, "RD"), "rgb": (3, "RGB"), "evec": (3, "V1"),
}
DEFAULT_MAPS: tuple[str, ...] = ("md", "fa", "rgb", "evec")


def parse_maps(text: str | Sequence[str], flag: str = "--maps") -> tuple[str, ...]:
    """``"md,fa"`` (or a list) -> ``("md", "fa")`` in the given order; an unknown name is refused by name."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    unknown = [n for n in names if n not in MAPS]
    if unknown or not names:
        raise ValueError(f"{flag} {','.join(items) if not isinstance(text, str) else text}: "
                         f"{'unknown map ' + repr(unknown[0]) if unknown else 'no map named'}; "
                         f"choose from {', '.join(MAPS)}")
    return names


def tensor_maps(t6: np.ndarray, names: Sequence[str] = DEFAULT_MAPS, *, chunk: int = 1 << 18,
                progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """The maps ``names`` of a tensor volume.

    Args:
        t6: (6, X, Y, Z) FSL-ordered tensor components.
        names: keys of :data:`MAPS`.
        chunk: voxels decomposed at a time (a whole HCP volume never has a float64 (N, 3, 3) copy).
        progress: called with the number of voxels done after each chunk.

    Returns:
        name -> float32 (C, X, Y, Z) with C = 1 or 3 (:data:`MAPS`).
    """
    names = parse_maps(list(names), "maps")
    t6 = np.asarray(t6)
    if t6.ndim < 2 or t6.shape[0] != 6:
        raise ValueError(f"a tensor volume needs 6 components on axis 0, got shape {t6.shape}")
    flat = t6.reshape(6, -1)
    n = flat.shape[1]
    out = {k: np.zeros((MAPS[k][0], n), np.float32) for k in names}
    for s in range(0, n, chunk):
        m = tensor6_to_matrix(flat[:, s:s + chunk].astype(np.float64))
        w, v = np.linalg.eigh(m)  # ascending: (N, 3), (N, 3, 3) with v[:, :, k] the k-th vector
        w = np.clip(w[:, ::-1], 0.0, None)  # descending, clipped as dipy's decompose_tensor
        v1 = v[:, :, 2]
        zero = ~(w > 0).any(axis=1)
        md = w.mean(axis=1)
        norm2 = (w**2).sum(axis=1)
        dev2 = (w[:, 0] - w[:, 1]) ** 2 + (w[:, 1] - w[:, 2]) ** 2 + (w[:, 2] - w[:, 0]) ** 2
        fa = np.clip(np.sqrt(0.5 * dev2 / np.where(zero, 1.0, norm2)), 0.0, 1.0)
        values = {
            "fa": fa[None], "md": md[None], "ad": w[:, 0][None], "rd": (0.5 * (w[:, 1] + w[:, 2]))[None],
            "evec": np.where(zero[:, None], 0.0, v1).T, "rgb": (np.abs(v1) * fa[:, None]).T,
        }
        for k in names:
            out[k][:, s:s + chunk] = values[k]
        if progress is not None:
            progress(min(chunk, n - s))
    return {k: a.reshape((a.shape[0],) + t6.shape[1:]) for k, a in out.items()}
