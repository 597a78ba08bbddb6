"""White-matter fibre bundles as fans of streamlines, and the two fibre populations per voxel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from data_prep.phantom.config import TRACT_FA_RANGE
from data_prep.phantom.cortex import _callosal_core_top
from data_prep.phantom.deep import _through
from data_prep.phantom.fields import _soft_step, _unit


@dataclass
class _Bundle:
    """A fan of streamlines: points (mm), unit tangents, the fibre FA along them, a tube radius."""

    points: np.ndarray
    tangents: np.ndarray
    fa: np.ndarray
    radius_mm: float


def _bundle(curves: list[tuple], semi: np.ndarray, radius_mm: float, fa_mid: float, rng: np.random.Generator) -> _Bundle:
    pts, tans, fas = [], [], []
    wavenumber, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
    for a, m, b in curves:
        p, t = _through(a, m, b)
        pts.append(p * semi)
        tans.append(_unit(t * semi))
        arc = np.linspace(0, 1, len(p))
        fas.append(np.clip(fa_mid + 0.08 * np.sin(2 * np.pi * wavenumber * arc + phase), *TRACT_FA_RANGE))
    return _Bundle(np.concatenate(pts), np.concatenate(tans), np.concatenate(fas).astype(np.float32), radius_mm)


def _bundles(semi: np.ndarray, rng: np.random.Generator) -> list[_Bundle]:
    """Corpus callosum, middle cerebellar peduncles, and per side: cortico-spinal tract,
    SLF/arcuate, cingulum, IFOF."""
    jit = lambda *v: np.asarray(v) + rng.normal(0, 0.02, 3)  # noqa: E731
    cc = []
    for y in np.linspace(-0.5, 0.36, 14):
        top = float(_callosal_core_top(np.array(y)))
        for k, theta in enumerate(np.linspace(0.15, 1.25, 4)):
            mid = (0.0, y, top - 0.06 - 0.03 * k)
            y_end = float(np.clip(1.5 * y, -0.78, 0.7))
            end = lambda s: jit(s * (0.12 + 0.6 * np.cos(theta)), y_end, mid[2] + 0.55 * np.sin(theta))  # noqa: E731
            cc.append((end(-1), mid, end(1)))
    out = [_bundle(cc, semi, 1.4, rng.uniform(0.65, 0.72), rng)]
    mcp = [(jit(-0.42, -0.55, -0.72 + dz), jit(0.0, -0.06, -0.76 + dz), jit(0.42, -0.55, -0.72 + dz))
           for dz in (-0.05, 0.0, 0.05)]  # middle cerebellar peduncles, crossing the CST in the pons
    out.append(_bundle(mcp, semi, 1.6, rng.uniform(0.55, 0.65), rng))
    for s in (-1, 1):
        cst = [(jit(s * 0.08, -0.12, -1.1), jit(s * 0.31, -0.12, -0.08),
                jit(s * (0.1 + 0.6 * np.cos(phi)), y_end, 0.1 + 0.68 * np.sin(phi)))
               for phi in np.linspace(0.3, 1.35, 5) for y_end in (-0.3, -0.1, 0.1)]
        slf = [(jit(s * 0.48, 0.5, 0.18), jit(s * 0.55, -0.05, 0.33), jit(s * 0.5, -0.55, 0.18)),
               (jit(s * 0.46, 0.45, 0.12), jit(s * 0.55, -0.05, 0.28), jit(s * 0.5, -0.6, 0.12)),
               (jit(s * 0.48, 0.3, 0.15), jit(s * 0.56, -0.42, 0.22), jit(s * 0.58, -0.1, -0.35))]  # arcuate
        cing = [(jit(s * 0.17, 0.5, 0.05), jit(s * 0.17, -0.05, 0.36 + dz), jit(s * 0.17, -0.55, 0.0))
                for dz in (-0.03, 0.02)]
        ifof = [(jit(s * 0.4, -0.78, 0.0 + dz), jit(s * 0.48, 0.0, -0.15 + dz), jit(s * 0.33, 0.6, -0.02 + dz))
                for dz in (-0.05, 0.03)]
        out += [_bundle(cst, semi, 1.3, rng.uniform(0.6, 0.68), rng),
                _bundle(slf, semi, 2.0, rng.uniform(0.5, 0.6), rng),
                _bundle(cing, semi, 1.3, rng.uniform(0.5, 0.6), rng),
                _bundle(ifof, semi, 1.8, rng.uniform(0.5, 0.6), rng)]
    return out


def _fibre_populations(p: np.ndarray, bundles: list[_Bundle]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two densest bundles at points ``p`` (V, 3): their shares (V, 2), directions (V, 2, 3)
    in the anatomical frame and fibre FA (V, 2). Densities summing over one share the voxel."""
    n_b, v = len(bundles), len(p)
    dens = np.zeros((n_b, v), np.float32)
    dirs = np.zeros((n_b, v, 3), np.float32)
    fas = np.zeros((n_b, v), np.float32)
    for i, b in enumerate(bundles):
        dist, idx = cKDTree(b.points).query(p, distance_upper_bound=b.radius_mm + 3)
        hit = np.isfinite(dist)
        dens[i, hit] = _soft_step(b.radius_mm - dist[hit], 0.5)
        dirs[i, hit] = b.tangents[idx[hit]]
        fas[i, hit] = b.fa[idx[hit]]
    order = np.argsort(-dens, axis=0)[:2]                       # (2, V) two densest bundles
    cols = np.arange(v)
    top = dens[order, cols]                                     # (2, V)
    share = (top / np.maximum(1.0, top.sum(0))).T               # (V, 2)
    return share, dirs[order, cols].transpose(1, 0, 2), fas[order, cols].T
