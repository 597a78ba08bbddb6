"""One phantom subject: anatomy, signal and truth put together (:func:`make_subject`)."""
from __future__ import annotations

import numpy as np

from data_prep.phantom.acquisition import _Frame, _head_frame, gradient_scheme
from data_prep.phantom.bundles import _bundles
from data_prep.phantom.config import LABELS, S0_REL, Phantom, PhantomConfig
from data_prep.phantom.cortex import _tissue_layers
from data_prep.phantom.deep import _carve, _deep_grey, _ventricles
from data_prep.phantom.fields import _sphere_waves, _unit
from data_prep.phantom.signal import _add_rician_noise, _compartment_tensors, _dwi_signal, _truth_tensor


def _labels(frac: dict, tract_w: np.ndarray, fibre: np.ndarray) -> np.ndarray:
    """Dominant compartment (``rest`` = skull gap and air -> background), tracts and crossings."""
    names = ["csf", "gm", "deep_gm", "wm", "scalp"]
    stack = np.stack([frac[n] for n in names], -1)
    rest = 1 - stack.sum(-1, keepdims=True)
    codes = np.array([LABELS[n] for n in names] + [LABELS["background"]], np.uint8)
    labels = codes[np.concatenate([stack, rest], -1).argmax(-1)]
    tract = (labels == LABELS["wm"]) & (tract_w >= 0.5)
    labels[tract] = LABELS["tract"]
    labels[tract & (fibre[..., 1] >= 0.25)] = LABELS["crossing"]
    return labels

def _anatomy(frame: _Frame, cfg: PhantomConfig, rng: np.random.Generator) -> tuple[dict, np.ndarray, np.ndarray]:
    """Tissue fractions (layers, then deep GM and ventricles carved from them), hull depth and
    the cortex's surface normals (voxel frame)."""
    frac, depth, c = _tissue_layers(frame, cfg, rng)
    q = frame.anat() / frame.semi
    _carve(frac, "deep_gm", _deep_grey(q, rng), ["wm"])
    _carve(frac, "csf", _ventricles(q, frame.semi, rng), ["wm", "gm", "deep_gm"])
    grad = np.stack(np.gradient(c), -1)  # voxel-index axes = the voxel frame of the tensors
    return frac, depth, _unit(grad)


def make_subject(name: str, seed: int, config: PhantomConfig = PhantomConfig()) -> Phantom:
    """Simulate one phantom subject; the same ``seed`` gives the same subject.

    All voxel work is vectorised (loops run over waves, bundles and compartments only).
    """
    rng = np.random.default_rng(seed)
    cfg = config
    frame = _head_frame(cfg, rng)
    shape = frame.shape
    bvals, bvecs = gradient_scheme(cfg.n_b0, cfg.n_dirs, cfg.bval, rng)
    frac, depth, gm_normal = _anatomy(frame, cfg, rng)
    p = frame.anat()
    comps, fib = _compartment_tensors(frame, frac, p, gm_normal, _bundles(frame.semi, rng))

    head = sum(frac.values()) > 1e-3
    r_mean = float(frame.semi.mean())
    bias = np.ones(shape, np.float32)
    bias[head] += cfg.bias * _sphere_waves(p[head] / (2 * r_mean), 3, 0.6, rng)
    gfactor = 1.0 + cfg.noise_variation * _sphere_waves(p / (2 * r_mean), 3, 0.5, rng)
    dwi = _dwi_signal(comps, shape, bvals, bvecs)
    dwi *= (cfg.s0 * bias)[..., None]
    sigma = cfg.s0 * S0_REL["wm"] / cfg.snr * gfactor
    dwi = _add_rician_noise(dwi, sigma, cfg.noise_correlation, rng)

    mask = (frac["csf"] + frac["gm"] + frac["deep_gm"] + frac["wm"]) >= 0.5
    fibre = np.zeros(shape + (2,), np.float32)
    fibre[fib["index"]] = fib["share"]
    fibre_dirs = np.zeros(shape + (2, 3), np.float32)
    fibre_dirs[fib["index"]] = fib["dirs"] * (fib["share"][..., None] > 0)
    tract_w = fibre.sum(-1)
    tract_fa = np.full(shape, np.nan, np.float32)
    tract_fa[fib["index"]] = np.where(fib["share"][:, 0] > 0, fib["fa"][:, 0], np.nan)
    return Phantom(name=name, dwi=dwi, bvals=bvals, bvecs=bvecs, mask=mask, affine=frame.affine,
                   tensor=_truth_tensor(comps, shape, mask), labels=_labels(frac, tract_w, fibre),
                   fractions={k: v.astype(np.float32) for k, v in frac.items()}, tract_weight=tract_w,
                   tract_fa=tract_fa, fibre_fractions=fibre, fibre_dirs=fibre_dirs, hull_depth=depth)
