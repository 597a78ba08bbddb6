"""Small smooth-field maths of the phantom: soft steps, random waves, sheet distances, block means."""
from __future__ import annotations

import numpy as np


def _soft_step(x_mm: np.ndarray, width_mm: float = 0.5) -> np.ndarray:
    """A smooth 0->1 step over ~``width_mm`` (partial volume at tissue boundaries)."""
    return (0.5 * (1.0 + np.tanh(x_mm / width_mm))).astype(np.float32)


def _sphere_waves(u: np.ndarray, n: int, freq: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random function of the unit direction ``u`` (..., 3), in [-1, 1]."""
    omega = rng.normal(size=(n, 3)) * freq
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0.5, 1.0, n)
    out = np.zeros(u.shape[:-1], np.float32)
    for k in range(n):  # one wave at a time: no (..., n) temporary on the fine grid
        out += np.float32(amp[k]) * np.cos(u @ (2 * np.pi * omega[k]).astype(np.float32) + np.float32(phase[k]))
    return out / np.float32(amp.sum())


def _band_waves(p: np.ndarray, n: int, freq: float, rng: np.random.Generator) -> np.ndarray:
    """Band-limited random waves of ``p`` (..., D): ``n`` plane waves of frequency ~``freq``.

    Unlike :func:`_sphere_waves` the frequencies share one magnitude (+-10%), so the zero set is
    a labyrinth of lines about ``1 / (2 freq)`` apart: the pattern of sulci.
    """
    d = rng.normal(size=(n, p.shape[-1]))
    omega = d / np.linalg.norm(d, axis=1, keepdims=True) * freq * rng.uniform(0.9, 1.1, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, n)
    out = np.zeros(p.shape[:-1], np.float32)
    for k in range(n):
        out += np.cos(p @ (2 * np.pi * omega[k]).astype(np.float32) + np.float32(phase[k]))
    return out / np.float32(np.sqrt(n / 2))


def _sheet_distance(f: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Distance (mm) to the zero set of the smooth field ``f``: |f| / |grad f| to first order."""
    grad = np.gradient(f, spacing_mm)
    norm = np.sqrt(sum(g * g for g in grad))
    return (np.abs(f) / np.maximum(norm, 1e-6)).astype(np.float32)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, dtype=np.float32)


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k x k blocks of a 3D array (fine grid -> voxel grid)."""
    if k == 1:
        return a
    x, y, z = (s // k for s in a.shape)
    return a.reshape(x, k, y, k, z, k).mean(axis=(1, 3, 5), dtype=np.float32)

def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)).astype(np.float32)
