"""Deep structures carved from the tissue layers: lateral and third ventricles, deep grey matter."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from data_prep.phantom.fields import _soft_step, _unit


def _ellipsoid_step(q: np.ndarray, centre: Sequence[float], semi_q: Sequence[float], scale_mm: float) -> np.ndarray:
    r = np.linalg.norm((q - np.asarray(centre, np.float32)) / np.asarray(semi_q, np.float32), axis=-1)
    return _soft_step((1 - r) * scale_mm)


def _through(a: Sequence[float], m: Sequence[float], b: Sequence[float], n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 3) and unit tangents of the quadratic curve through a (t=0), m (t=0.5), b (t=1)."""
    a, m, b = (np.asarray(v, np.float64) for v in (a, m, b))
    ctrl = 2 * m - 0.5 * (a + b)
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t**2 * b
    tan = 2 * (1 - t) * (ctrl - a) + 2 * t * (b - ctrl)
    return pts, _unit(tan)


def _ventricles(q: np.ndarray, semi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CSF fraction of the lateral ventricles (C-shaped tubes, flattened) and the third ventricle."""
    pts, radii = [], []
    for s in (-1, 1):
        j = lambda: rng.normal(0, 0.015, 3)  # noqa: E731 - per-subject shape
        # (start, middle, end, radius at start, radius at end) in brain-normalised coordinates / mm
        for a, m, b, r0, r1 in (
            ((s * 0.16, 0.40, 0.0), (s * 0.17, 0.15, 0.04), (s * 0.18, -0.15, 0.05), 3.6, 3.8),   # frontal horn, body
            ((s * 0.18, -0.15, 0.05), (s * 0.25, -0.40, 0.0), (s * 0.21, -0.62, -0.06), 3.8, 2.0),  # atrium, occipital
            ((s * 0.25, -0.40, 0.0), (s * 0.36, -0.35, -0.25), (s * 0.42, 0.0, -0.38), 3.0, 1.4),  # temporal horn
        ):
            curve, _ = _through(np.add(a, j()), np.add(m, j()), np.add(b, j()), 40)
            pts.append(curve * semi)
            radii.append(np.linspace(r0, r1, 40))
    pts, radii = np.concatenate(pts), np.concatenate(radii) * rng.uniform(0.85, 1.2)
    squash = np.array([1.0, 1.0, 1 / 0.6], np.float32)  # flatter than wide (a crescent in coronal)
    near = np.linalg.norm(q, axis=-1) < 0.85
    dist, idx = cKDTree(pts * squash).query(q[near] * semi * squash)
    v = np.zeros(q.shape[:-1], np.float32)
    v[near] = _soft_step(radii[idx] - dist)
    third = _soft_step(0.7 - np.abs(q[..., 0] * semi[0])) * _ellipsoid_step(q, (0, -0.1, -0.2), (1, 0.18, 0.14), 3.0)
    return np.maximum(v, third)


def _deep_grey(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Deep-GM fraction: caudate head, putamen, pallidum and thalamus on both sides."""
    g = np.zeros(q.shape[:-1], np.float32)
    for s in (-1, 1):
        for centre, semi_q in (((0.25, 0.30, 0.10), (0.10, 0.15, 0.20)),    # caudate head
                               ((0.50, 0.05, -0.08), (0.07, 0.24, 0.24)),   # putamen
                               ((0.38, 0.03, -0.12), (0.05, 0.14, 0.14)),   # pallidum
                               ((0.16, -0.20, -0.08), (0.12, 0.22, 0.20))):  # thalamus
            c = np.asarray(centre) * [s, 1, 1] + rng.normal(0, 0.012, 3)
            g = np.maximum(g, _ellipsoid_step(q, c, np.asarray(semi_q) * rng.uniform(0.9, 1.1), 4.0))
    return g


def _carve(frac: dict, new: str, share: np.ndarray, sources: Sequence[str]) -> None:
    """Move ``share`` (0..1) of each source compartment into ``new`` (in place)."""
    for src in sources:
        moved = frac[src] * share
        frac[new] = frac.get(new, 0) + moved
        frac[src] = frac[src] - moved
