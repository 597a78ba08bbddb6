"""Diffusion signal and noise: compartment tensors, the DWI signal, Rician noise and the truth tensor."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from data_prep.phantom.acquisition import _Frame
from data_prep.phantom.bundles import _Bundle, _fibre_populations
from data_prep.phantom.config import FA_BACKGROUND, MD, S0_REL
from data_prep.phantom.fields import _unit
from data_prep.phantom.tensors import _cylinder6, _isotropic6


def _compartment_tensors(frame: _Frame, frac: dict, p: np.ndarray, gm_normal: np.ndarray,
                         bundles: list[_Bundle]) -> tuple[list, dict]:
    """Per compartment: (name, S0 name, fraction map, tensors (V, 6) in the voxel frame, voxel index).

    Returns:
        (compartments, fibre info) where fibre info holds the shares, directions and FA on the
        WM voxels and their index.
    """
    rot = frame.to_vox.T
    radial = _unit(p / frame.semi) @ rot
    comps = []
    for name in ("csf", "scalp"):
        idx = frac[name] > 1e-4
        comps.append((name, name, frac[name][idx], _isotropic6(int(idx.sum()), MD[name]), idx))
    idx = frac["gm"] > 1e-4
    comps.append(("gm", "gm", frac["gm"][idx], _cylinder6(gm_normal[idx], MD["gm"], FA_BACKGROUND["gm"]), idx))
    idx = frac["deep_gm"] > 1e-4
    comps.append(("deep_gm", "deep_gm", frac["deep_gm"][idx],
                  _cylinder6(radial[idx], MD["deep_gm"], FA_BACKGROUND["deep_gm"]), idx))
    idx = frac["wm"] > 1e-4
    share, dirs, fas = _fibre_populations(p[idx], bundles)
    dirs = dirs @ rot
    f_wm = frac["wm"][idx]
    comps.append(("wm_background", "wm", f_wm * (1 - share.sum(1)),
                  _cylinder6(radial[idx], MD["wm"], FA_BACKGROUND["wm"]), idx))
    for k in range(2):
        comps.append((f"fibre{k + 1}", "wm", f_wm * share[:, k], _cylinder6(dirs[:, k], MD["wm"], fas[:, k]), idx))
    return comps, {"share": share, "dirs": dirs, "fa": fas, "index": idx}


def _dwi_signal(comps: list, shape: tuple, bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Noise-free (X, Y, Z, N) signal: sum over compartments of f_c S0_c exp(-b g^T D_c g)."""
    g = bvecs.astype(np.float32)
    gg = np.stack([g[:, 0] ** 2, 2 * g[:, 0] * g[:, 1], 2 * g[:, 0] * g[:, 2],
                   g[:, 1] ** 2, 2 * g[:, 1] * g[:, 2], g[:, 2] ** 2], 0)  # (6, N)
    b = bvals.astype(np.float32)
    dwi = np.zeros(shape + (len(bvals),), np.float32)
    for _, s0_name, f, d6, idx in comps:
        live = f > 1e-4
        sig = (f[live] * S0_REL[s0_name])[:, None] * np.exp(-b * (d6[live] @ gg))
        sub = np.zeros((int(idx.sum()), len(b)), np.float32)
        sub[live] = sig
        dwi[idx] += sub
    return dwi


def _add_rician_noise(dwi: np.ndarray, sigma: np.ndarray, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of (signal + n_re, n_im) with Gaussian n of std ``sigma`` (X, Y, Z), spatially
    correlated by a Gaussian kernel of ``correlation`` voxels (renormalised to keep the std)."""
    renorm = 1.0
    if correlation > 0:
        delta = np.zeros((9, 9, 9), np.float32)
        delta[4, 4, 4] = 1
        renorm = 1 / float(np.sqrt((gaussian_filter(delta, correlation) ** 2).sum()))
    out = np.empty_like(dwi)
    noise = np.empty_like(dwi)
    for part in range(2):
        rng.standard_normal(dwi.shape, dtype=np.float32, out=noise)
        if correlation > 0:
            noise = gaussian_filter(noise, (correlation,) * 3 + (0,))
        noise *= (sigma * renorm)[..., None]
        if part == 0:
            np.add(dwi, noise, out=out)
            np.square(out, out=out)
        else:
            out += noise**2
    return np.sqrt(out, out=out)


def _truth_tensor(comps: list, shape: tuple, mask: np.ndarray) -> np.ndarray:
    """Volume-fraction weighted mean of the brain compartments' tensors, zero outside ``mask``."""
    truth = np.zeros(shape + (6,), np.float32)
    for name, _, f, d6, idx in comps:
        if name != "scalp":
            truth[idx] += f[:, None] * d6
    return truth * mask[..., None]
