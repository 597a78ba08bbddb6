"""The folded cortex and its CSF: hull, sulci, fissures, cerebellum and the tissue layers."""
from __future__ import annotations

import numpy as np

from data_prep.phantom.acquisition import _Frame
from data_prep.phantom.config import PhantomConfig
from data_prep.phantom.fields import _band_waves, _block_mean, _relu, _sheet_distance, _soft_step, _sphere_waves, _unit


def _hull_depth(p: np.ndarray, semi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Depth (mm) below the brain hull along the ray from the centre, and the unit direction.

    The hull is an ellipsoid flattened at the base whose radius follows smooth random waves.
    """
    q = p / semi
    q[..., 2] *= np.where(q[..., 2] < 0, 1.12, 1.0).astype(np.float32)
    rho = np.linalg.norm(q, axis=-1)
    u = q / np.maximum(rho, 1e-6)[..., None]
    rho_d = rho / (1.0 + 0.06 * _sphere_waves(u, 6, 0.5, rng))
    radius = np.linalg.norm(p, axis=-1) / np.maximum(rho_d, 1e-3)  # hull radius along the ray (mm)
    return (radius * (1.0 - rho_d)).astype(np.float32), u


def _brainstem_depth(p: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Depth (mm) inside a vertical brainstem tube (a pons bulge in front), -inf above its top."""
    z = p[..., 2]
    r = 0.2 * semi[0] * (1 + 0.3 * np.exp(-(((z + 0.75 * semi[2]) / (0.2 * semi[2])) ** 2)))
    d = r - np.hypot(p[..., 0], p[..., 1] + 0.12 * semi[1] - 0.3 * (r - 0.2 * semi[0]))
    return np.where(z < -0.3 * semi[2], d, -np.inf).astype(np.float32)


def _smooth_range(u: np.ndarray, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field over directions ``u`` spanning about [lo, hi]."""
    return (lo + (hi - lo) * np.clip(0.5 + 0.8 * _sphere_waves(u, 5, 0.7, rng), 0, 1)).astype(np.float32)


def _callosal_core_top(y_q: np.ndarray) -> np.ndarray:
    """Height (brain-normalised z) of the top of the callosal core at normalised y (-inf outside)."""
    inside = 1 - ((y_q + 0.08) / 0.52) ** 2
    return np.where(inside > 0, -0.18 + 0.44 * np.sqrt(np.maximum(inside, 0)), -np.inf)


def _lateral_sulci(p: np.ndarray, semi: np.ndarray, depth: np.ndarray, u: np.ndarray, spacing: float,
                   cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) to the CSF of the hull and its sulci, and the 3D warp field used.

    Sulci are sheets (the zero set of band-limited waves over the sphere) of half-width ``h``
    running ``D`` mm deep: ``sqrt(s^2 + relu(depth - D)^2) - h`` with ``s`` the distance to the
    sheet, so cortex lines both banks and caps the fundus. Waves over the sphere cross the hull
    obliquely on average: 1.3x the frequency gives the requested spacing. The 3D warp lets sulci
    wander and bend with depth (not radial planes).
    """
    freq = 1.3 * semi.mean() / (2 * cfg.fold_spacing_mm)  # cycles per unit of direction
    bend = np.stack([_sphere_waves(p / semi, 4, 1.4, rng) for _ in range(3)], -1)
    s = _sheet_distance(_band_waves(_unit(u + 0.2 * bend), 48, freq, rng), spacing)
    sulc_depth = _smooth_range(u, *cfg.sulcus_depth_mm, rng)
    half = _smooth_range(u, 0.2, 0.6, rng)
    return np.minimum(depth, np.sqrt(s * s + _relu(depth - sulc_depth) ** 2) - half), bend


def _fissure(p: np.ndarray, semi: np.ndarray, thickness: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Distance (mm) to the interhemispheric fissure, which runs down to the callosal core.

    Inside the core the distance grows by the cortical thickness within 0.5 mm, so white matter
    (the callosum) meets the fissure's floor directly, as under the callosal sulcus.
    """
    yz = p[..., 1:] / semi[1:]
    x_mid = 0.8 * _band_waves(yz, 4, 0.4, rng)
    core_below = (_callosal_core_top(yz[..., 0]) - yz[..., 1]) * semi[2]  # mm below the core top
    into_core = _relu(np.where(np.isfinite(core_below), core_below, -1.0))
    return np.sqrt((p[..., 0] - x_mid) ** 2 + into_core**2) - 0.6 + thickness * np.clip(2 * into_core, 0, 1)


def _medial_sulci(p: np.ndarray, fissure: np.ndarray, bend: np.ndarray, spacing: float, cfg: PhantomConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """Distance (mm) to sulci across the medial wall, cut into it from the fissure."""
    med = p[..., 1:] + 4.0 * bend[..., 1:]
    s = _sheet_distance(_band_waves(med, 24, 1.3 / (2 * cfg.fold_spacing_mm), rng), spacing)
    return np.sqrt(s * s + _relu(fissure - 0.6 * sum(cfg.sulcus_depth_mm)) ** 2) - 0.4


def _sylvian(p: np.ndarray, semi: np.ndarray, depth: np.ndarray, bend: np.ndarray) -> np.ndarray:
    """Distance (mm) to the Sylvian fissure: a lateral sheet rising posteriorly to the insula."""
    y_q = p[..., 1] / semi[1]
    s = np.abs(p[..., 2] - (-0.08 - 0.35 * y_q + 0.08 * bend[..., 2]) * semi[2])
    along = _relu(np.abs(y_q + 0.05) - 0.4) * semi[1]
    return np.sqrt(s * s + _relu(depth - 0.3 * semi[0]) ** 2 + along**2) - 0.5


def _csf_distance(p: np.ndarray, semi: np.ndarray, depth: np.ndarray, u: np.ndarray, spacing: float,
                  thickness: np.ndarray, cfg: PhantomConfig, rng: np.random.Generator) -> np.ndarray:
    """Distance (mm) from each point to the nearest cerebral CSF (negative inside it): the hull,
    a sulcus, the interhemispheric fissure, a medial sulcus or the Sylvian fissure."""
    c, bend = _lateral_sulci(p, semi, depth, u, spacing, cfg, rng)
    fis = _fissure(p, semi, thickness, rng)
    c = np.minimum(c, fis)
    c = np.minimum(c, _medial_sulci(p, fis, bend, spacing, cfg, rng))
    return np.minimum(c, _sylvian(p, semi, depth, bend)).astype(np.float32)


def _tentorium(p: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Height (mm) above the tentorium, a tent over the cerebellum (+large in front of it)."""
    q = p / semi
    z_t = -0.42 - 0.3 * (q[..., 0] / 0.6) ** 2
    return ((q[..., 2] - z_t) * semi[2] + 4 * _relu(q[..., 1] + 0.22) * semi[1]).astype(np.float32)


def _cerebellum(p: np.ndarray, semi: np.ndarray, tent: np.ndarray, spacing: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Depth (mm) inside the cerebellum (under the tentorium) and its distance to CSF (folia).

    Folia are sheets of constant angle about a transverse axis (the arbor vitae pattern in a
    sagittal slice), about 3.5 mm apart at the surface and 3 mm deep.
    """
    centre = np.array([0.0, -0.55, -0.72], np.float32) * semi
    semi_cb = np.array([0.6, 0.34, 0.3], np.float32) * semi
    d = p - centre
    r = np.linalg.norm(d / semi_cb, axis=-1)
    depth = np.linalg.norm(d, axis=-1) / np.maximum(r, 1e-3) * (1 - r)
    depth = np.minimum(depth, -tent - 1.0)
    theta = np.arctan2(d[..., 2], d[..., 1])
    wobble = _sphere_waves(p / semi, 4, 0.8, rng)
    s = _sheet_distance(np.cos(7 * theta + 3.0 * wobble + rng.uniform(0, 2 * np.pi)), spacing)
    c = np.minimum(depth, np.sqrt(s * s + _relu(depth - 3.0) ** 2) - 0.15)
    return depth.astype(np.float32), c.astype(np.float32)


def _tissue_layers(frame: _Frame, cfg: PhantomConfig, rng: np.random.Generator) -> tuple[dict, np.ndarray, np.ndarray]:
    """Volume fractions of scalp, CSF, cortex and WM on the voxel grid (computed on a finer grid).

    Returns:
        (fractions, hull depth (mm), distance to CSF (mm)) on the voxel grid.
    """
    ss = max(1, int(cfg.supersample))
    p = frame.anat(ss)
    spacing = cfg.voxel_size / ss
    hull, u = _hull_depth(p, frame.semi, rng)
    stem = _brainstem_depth(p, frame.semi)
    tent = _tentorium(p, frame.semi)
    cerebrum = np.minimum(hull, tent)
    cb, c_cb = _cerebellum(p, frame.semi, tent, spacing, rng)
    outer = np.maximum(np.maximum(cerebrum, cb), stem)
    thickness = _smooth_range(u, cfg.cortex_mm - 0.4, cfg.cortex_mm + 0.4, rng)
    c = _csf_distance(p, frame.semi, cerebrum, u, spacing, thickness, cfg, rng)
    sub_csf = _smooth_range(u, 0.3, 1.2, rng)  # subarachnoid CSF outside the hull
    w = 0.3 * cfg.voxel_size / ss
    step = lambda x: _soft_step(x, w)  # noqa: E731 - sub-voxel step, box-filtered below
    in_stem = step(stem)
    in_brain = step(outer + sub_csf)
    in_skull = step(outer + sub_csf + 2.5)
    in_head = step(outer + sub_csf + 5.0)
    tissue = np.maximum(np.maximum(step(c), step(c_cb)), in_stem)
    wm = np.maximum(np.maximum(step(c - thickness), step(c_cb - 1.2)), in_stem)  # cerebellar cortex: 1.2 mm
    fine = {"scalp": in_head - in_skull, "csf": in_brain - tissue, "gm": tissue - wm, "wm": wm}
    frac = {k: np.clip(_block_mean(v, ss), 0, 1) for k, v in fine.items()}
    envelope = np.maximum(np.maximum(hull, cb), stem)
    return frac, _block_mean(envelope, ss), _block_mean(np.maximum(c, c_cb), ss)
