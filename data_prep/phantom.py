"""A DTI brain phantom written as HCP subjects, so the whole toolkit runs with no download.

Each subject is a small brain-shaped head on an HCP-like 1.25 mm grid:

* **Shape**: an ellipsoid whose radius is modulated by smooth random waves over the sphere of
  directions (a different head per subject), with a scalp, a signal-free skull gap, an outer
  CSF layer, a folded cortical ribbon (GM), two lateral ventricles (CSF), two deep-grey nuclei
  (GM) and white matter. Tissue fractions change smoothly over about one voxel (partial volume).
* **Diffusivities** (mm^2/s): MD 0.7e-3 in WM, 0.8e-3 in GM, 3.0e-3 in CSF (free water at
  37 C), 1.0e-3 in the scalp. GM and background WM are weakly anisotropic along the radial
  direction (FA 0.1 and 0.25), as cortex and subcortical WM are.
* **Tracts**: seven curved bundles (a callosal arc, two cortico-spinal, two cingulum-like and
  two inferior longitudinal arcs) built from Bezier curves with per-subject jitter. In a tract
  the principal eigenvector is the curve's tangent and the FA is 0.4-0.8, varying smoothly
  along the curve; where tracts meet, the nearest wins (a crossing region).
* **Pose and geometry**: the head is rotated inside the field of view (a random pose) and the
  voxel grid itself is oblique (a random rotation in the affine), with HCP's LAS-like voxel
  axes (negative determinant), so neither the anatomy nor the tensors line up with the axes.
* **DWIs**: HCP-like b-values (b0 = 5 s/mm^2, the shell scattering 990-1010 around 1000) with
  b0 volumes interleaved among uniformly dispersed directions, the signal
  ``S = S0 * sum_c f_c * S0_c * exp(-b g^T D_c g)`` over compartments c, a smooth coil bias
  field, then Rician noise.

**Frames.** ``bvecs`` are given in the image's voxel frame (FSL's convention; with a negative
determinant affine no x flip is needed) and the ground-truth tensors are stored in that same
frame, which is what ``dtifit`` or dipy returns when fitted with those ``bvecs``.

**Layout on disk** (real HCP layout, plus the ground truth beside it)::

    <out>/<subject>/T1w/Diffusion/data.nii.gz               (X, Y, Z, N) float32
    <out>/<subject>/T1w/Diffusion/bvals                     1 row of N b-values (s/mm^2)
    <out>/<subject>/T1w/Diffusion/bvecs                     3 rows of N unit vectors
    <out>/<subject>/T1w/Diffusion/nodif_brain_mask.nii.gz   (X, Y, Z) uint8
    <out>/<subject>/phantom/tensor.nii.gz                   (X, Y, Z, 6) truth, FSL order
    <out>/<subject>/phantom/labels.nii.gz                   (X, Y, Z) uint8, see LABELS

Use it from Python with :func:`make_subject` / :func:`generate`, or from the shell with
``python -m data_prep.phantom --output DIR --subjects N``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from medsr.utils.atomic import atomic_path

# Literature mean diffusivities (mm^2/s) and relative b0 intensities (T2-weighted: CSF bright).
MD = {"wm": 0.7e-3, "gm": 0.8e-3, "csf": 3.0e-3, "scalp": 1.0e-3}
S0_REL = {"wm": 0.55, "gm": 0.70, "csf": 1.00, "scalp": 0.45}
FA_BACKGROUND = {"wm": 0.25, "gm": 0.10}
TRACT_FA_RANGE = (0.4, 0.8)
LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3, "tract": 4, "scalp": 5}

# Tract templates: quadratic Bezier control points in brain-normalised anatomical coordinates
# (units of the brain's semi-axes; x = left->right, y = posterior->anterior, z = inferior->superior).
_TRACTS: dict[str, np.ndarray] = {
    "callosal_arc": np.array([[-0.60, 0.00, 0.15], [0.00, 0.00, 0.55], [0.60, 0.00, 0.15]]),
    "corticospinal_l": np.array([[-0.25, -0.05, -0.75], [-0.30, 0.00, 0.00], [-0.45, -0.05, 0.60]]),
    "corticospinal_r": np.array([[0.25, -0.05, -0.75], [0.30, 0.00, 0.00], [0.45, -0.05, 0.60]]),
    "cingulum_l": np.array([[-0.35, -0.60, 0.10], [-0.40, 0.00, 0.50], [-0.35, 0.60, 0.10]]),
    "cingulum_r": np.array([[0.35, -0.60, 0.10], [0.40, 0.00, 0.50], [0.35, 0.60, 0.10]]),
    "longitudinal_l": np.array([[-0.45, -0.65, -0.30], [-0.50, 0.00, -0.45], [-0.40, 0.60, -0.20]]),
    "longitudinal_r": np.array([[0.45, -0.65, -0.30], [0.50, 0.00, -0.45], [0.40, 0.60, -0.20]]),
}


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of one phantom subject (the defaults keep the demo fast on 2 CPU cores).

    Attributes:
        shape: voxel grid (X, Y, Z) of the HR image.
        voxel_size: isotropic voxel edge in mm (HCP: 1.25).
        n_b0: number of b0 volumes, interleaved among the DWIs as HCP does.
        n_dirs: number of b = ``bval`` directions (uniform on the half sphere).
        bval: nominal shell b-value in s/mm^2; the written values scatter by +-10 as HCP's do.
        snr: b0 signal-to-noise ratio of white matter (sigma = S0_wm / snr).
        s0: signal scale of the b0 images.
        brain_fraction: brain semi-axes as a fraction of the half field of view.
        max_pose_deg: largest head rotation about each anatomical axis (degrees).
        max_oblique_deg: largest rotation of the voxel grid in the affine (degrees).
        bias: amplitude of the smooth multiplicative coil bias field.
    """

    shape: tuple[int, int, int] = (56, 64, 52)
    voxel_size: float = 1.25
    n_b0: int = 6
    n_dirs: int = 60
    bval: float = 1000.0
    snr: float = 30.0
    s0: float = 1000.0
    brain_fraction: float = 0.78
    max_pose_deg: float = 15.0
    max_oblique_deg: float = 12.0
    bias: float = 0.1


@dataclass
class Phantom:
    """One simulated subject in memory.

    Attributes:
        name: subject id (the folder name on disk).
        dwi: (X, Y, Z, N) float32 diffusion-weighted signal with Rician noise.
        bvals: (N,) b-values in s/mm^2.
        bvecs: (N, 3) unit gradient directions in the voxel frame (zeros for b0s).
        mask: (X, Y, Z) bool brain mask (brain tissue + CSF, no scalp).
        affine: 4x4 voxel-to-world (RAS+, mm) affine, oblique, negative determinant.
        tensor: (X, Y, Z, 6) float32 ground-truth tensor (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz) in the
            voxel frame, mm^2/s; the fraction-weighted mean of the compartments' tensors.
        labels: (X, Y, Z) uint8 dominant compartment, codes in :data:`LABELS`.
        fractions: dict of (X, Y, Z) float32 tissue fractions ("csf", "gm", "wm", "scalp").
        tract_weight: (X, Y, Z) float32 in [0, 1], how much of the WM tensor is the tract's.
        tract_fa: (X, Y, Z) float32 FA of the tract tensor where a tract passes, else NaN.
    """

    name: str
    dwi: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    tensor: np.ndarray
    labels: np.ndarray
    fractions: dict[str, np.ndarray] = field(default_factory=dict)
    tract_weight: np.ndarray | None = None
    tract_fa: np.ndarray | None = None


# ----------------------------------------------------------------------------- acquisition

def gradient_scheme(n_b0: int, n_dirs: int, bval: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HCP-like b-values and b-vectors: b0s interleaved among dispersed shell directions.

    Returns:
        (bvals (N,), bvecs (N, 3)) with N = n_b0 + n_dirs; b0 rows have b = 5 and a zero vector.
    """
    from dipy.core.sphere import HemiSphere, disperse_charges

    xyz = rng.normal(size=(n_dirs, 3))
    hemi, _ = disperse_charges(HemiSphere(xyz=xyz / np.linalg.norm(xyz, axis=1, keepdims=True)), 500)
    dirs = hemi.vertices
    n = n_b0 + n_dirs
    is_b0 = np.zeros(n, bool)
    is_b0[np.linspace(0, n - 1, n_b0).round().astype(int) if n_b0 > 1 else [0] * n_b0] = True
    bvals = np.full(n, 5.0)
    bvals[~is_b0] = bval + rng.choice([-10.0, -5.0, 0.0, 5.0, 10.0], size=n_dirs)
    bvecs = np.zeros((n, 3))
    bvecs[~is_b0] = dirs
    return bvals, bvecs


def oblique_affine(shape: Sequence[int], voxel_size: float, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """An HCP-like LAS voxel grid (x flipped, det < 0) rotated by up to ``max_deg`` per axis.

    The grid centre lands near the world origin (with a random offset of a few mm).
    """
    rot = Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, 3), degrees=True).as_matrix()
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-voxel_size, voxel_size, voxel_size])
    centre_vox = (np.asarray(shape, float) - 1) / 2
    a[:3, 3] = np.array([0.0, -18.0, 10.0]) + rng.uniform(-5, 5, 3) - a[:3, :3] @ centre_vox
    return a


# ----------------------------------------------------------------------------- anatomy helpers

def _soft_step(x_mm: np.ndarray, width_mm: float = 0.5) -> np.ndarray:
    """A smooth 0->1 step over ~``width_mm`` (partial volume at tissue boundaries)."""
    return (0.5 * (1.0 + np.tanh(x_mm / width_mm))).astype(np.float32)


def _sphere_waves(u: np.ndarray, n: int, freq: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random function of the unit direction ``u`` (..., 3), in [-1, 1]."""
    omega = rng.normal(size=(n, 3)) * freq
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0.5, 1.0, n)
    out = np.cos(u @ omega.T * 2 * np.pi + phase) @ amp
    return (out / amp.sum()).astype(np.float32)


def _ellipsoid_radius(p: np.ndarray, centre: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    return np.linalg.norm((p - np.asarray(centre, np.float32)) / np.asarray(semi, np.float32), axis=-1)


def _cylinder_tensor(direction: np.ndarray, md: float | np.ndarray, fa: float | np.ndarray) -> np.ndarray:
    """Axially symmetric tensors with principal axis ``direction`` (..., 3), as (..., 3, 3).

    With lambda1 = md (1 + 2k), lambda2 = lambda3 = md (1 - k), FA = 3k / sqrt(3 + 6k^2), so
    k = FA sqrt(3 / (9 - 6 FA^2)).
    """
    fa = np.asarray(fa, np.float32)
    md = np.asarray(md, np.float32)
    k = fa * np.sqrt(3.0 / (9.0 - 6.0 * fa**2))
    l1, l2 = md * (1 + 2 * k), md * (1 - k)
    vv = direction[..., :, None] * direction[..., None, :]
    return (np.asarray(l2)[..., None, None] * np.eye(3, dtype=np.float32)
            + np.asarray(l1 - l2)[..., None, None] * vv).astype(np.float32)


def _bezier(ctrl: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (M, 3) and unit tangents (M, 3) of a quadratic Bezier curve at parameters t (M,)."""
    t = t[:, None]
    pts = (1 - t) ** 2 * ctrl[0] + 2 * (1 - t) * t * ctrl[1] + t**2 * ctrl[2]
    tan = 2 * (1 - t) * (ctrl[1] - ctrl[0]) + 2 * t * (ctrl[2] - ctrl[1])
    return pts, tan / np.linalg.norm(tan, axis=1, keepdims=True)


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


def _to_fsl6(full: np.ndarray) -> np.ndarray:
    """(..., 3, 3) symmetric -> (..., 6) in FSL order Dxx, Dxy, Dxz, Dyy, Dyz, Dzz."""
    return np.stack([full[..., 0, 0], full[..., 0, 1], full[..., 0, 2],
                     full[..., 1, 1], full[..., 1, 2], full[..., 2, 2]], -1)


# ----------------------------------------------------------------------------- one subject

def make_subject(name: str, seed: int, config: PhantomConfig = PhantomConfig()) -> Phantom:
    """Simulate one phantom subject; the same ``seed`` gives the same subject.

    All voxel work is vectorised over the head (no Python loop over voxels; loops run over the
    seven tracts and four compartments only).
    """
    rng = np.random.default_rng(seed)
    cfg = config
    shape = tuple(int(s) for s in cfg.shape)
    affine = oblique_affine(shape, cfg.voxel_size, cfg.max_oblique_deg, rng)
    bvals, bvecs = gradient_scheme(cfg.n_b0, cfg.n_dirs, cfg.bval, rng)

    # Voxel centres -> world -> anatomical frame (head pose P: world = P @ anat + centre).
    pose = Rotation.from_euler("xyz", rng.uniform(-cfg.max_pose_deg, cfg.max_pose_deg, 3), degrees=True).as_matrix()
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    centre_world = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    anat = ((world - centre_world.astype(np.float32)) @ pose.astype(np.float32)).astype(np.float32)

    # Brain semi-axes (mm): a fraction of the half field of view, a little different per subject.
    half_fov = np.asarray(shape, np.float32) * cfg.voxel_size / 2
    semi = (cfg.brain_fraction * half_fov * rng.uniform(0.92, 1.04, 3)).astype(np.float32)
    r_mean = float(semi.mean())
    q = anat / semi  # brain-normalised coordinates
    rho = np.linalg.norm(q, axis=-1)
    u = q / np.maximum(rho, 1e-6)[..., None]
    rho_d = rho / (1.0 + 0.07 * _sphere_waves(u, 6, 0.5, rng))   # smooth head shape
    gm_edge = 0.73 + 0.10 * _sphere_waves(u, 8, 2.5, rng)        # folded GM/WM boundary

    in_head = _soft_step((1.14 - rho_d) * r_mean)
    in_skull = _soft_step((1.06 - rho_d) * r_mean)
    in_brain = _soft_step((1.0 - rho_d) * r_mean)
    in_inner = _soft_step((0.90 - rho_d) * r_mean)
    in_wm = _soft_step((gm_edge - rho_d) * r_mean)
    frac = {
        "scalp": in_head - in_skull,
        "csf": in_brain - in_inner,
        "gm": in_inner - in_wm,
        "wm": in_wm.copy(),
    }
    # Lateral ventricles (CSF) and deep grey nuclei (GM) carved out of the white matter.
    jitter = lambda: rng.normal(0, 0.02, 3)  # noqa: E731 - small per-subject shift
    for side in (-1, 1):
        v = _soft_step((1 - _ellipsoid_radius(q, np.array([0.12 * side, 0.05, 0.08]) + jitter(), (0.09, 0.30, 0.12))) * 0.1 * r_mean)
        frac["csf"] += frac["wm"] * v
        frac["wm"] *= 1 - v
        g = _soft_step((1 - _ellipsoid_radius(q, np.array([0.19 * side, -0.05, -0.10]) + jitter(), (0.08, 0.14, 0.10))) * 0.1 * r_mean)
        frac["gm"] += frac["wm"] * g
        frac["wm"] *= 1 - g

    # Tracts: nearest curve point per WM voxel gives the distance and the tangent.
    radial = u  # (X, Y, Z, 3) anatomical radial direction, the background fibre orientation
    wm_vox = frac["wm"] > 1e-3
    p_wm = anat[wm_vox]
    best_w = np.zeros(len(p_wm), np.float32)
    best_dir = np.zeros((len(p_wm), 3), np.float32)
    best_fa = np.zeros(len(p_wm), np.float32)
    t = np.linspace(0, 1, 400)
    for ctrl in _TRACTS.values():
        pts, tan = _bezier((ctrl + rng.normal(0, 0.04, ctrl.shape)) * semi, t)
        radius = rng.uniform(3.0, 4.5)
        fa0 = rng.uniform(0.5, 0.7)
        fa_curve = np.clip(fa0 + 0.08 * np.sin(2 * np.pi * t * rng.uniform(0.5, 1.5) + rng.uniform(0, 2 * np.pi)),
                           *TRACT_FA_RANGE)
        dist, idx = cKDTree(pts).query(p_wm)
        w = _soft_step(radius - dist, 0.6)
        take = w > best_w
        best_w[take] = w[take]
        best_dir[take] = tan[idx[take]]
        best_fa[take] = fa_curve[idx[take]]

    # Tensors in the anatomical frame per compartment, then rotated into the voxel frame.
    vox_frame = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)  # Q: voxel axes in world
    to_vox = (vox_frame.T @ pose).astype(np.float32)                       # anat -> voxel frame
    radial_vox = radial @ to_vox.T
    d_wm = _cylinder_tensor(radial_vox[wm_vox], MD["wm"], FA_BACKGROUND["wm"])
    d_tract = _cylinder_tensor(best_dir @ to_vox.T, MD["wm"], best_fa)
    d_wm = (1 - best_w)[:, None, None] * d_wm + best_w[:, None, None] * d_tract
    tensors = {
        "wm": np.zeros(shape + (3, 3), np.float32),
        "gm": _cylinder_tensor(radial_vox, MD["gm"], FA_BACKGROUND["gm"]),
        "csf": np.broadcast_to(np.eye(3, dtype=np.float32) * MD["csf"], shape + (3, 3)),
        "scalp": np.broadcast_to(np.eye(3, dtype=np.float32) * MD["scalp"], shape + (3, 3)),
    }
    tensors["wm"][wm_vox] = d_wm

    # Signal: sum over compartments of f_c S0_c exp(-b g^T D_c g), on head voxels only.
    head = in_head > 1e-3
    g = bvecs.astype(np.float32)
    gg = np.stack([g[:, 0] ** 2, 2 * g[:, 0] * g[:, 1], 2 * g[:, 0] * g[:, 2],
                   g[:, 1] ** 2, 2 * g[:, 1] * g[:, 2], g[:, 2] ** 2], 0)  # (6, N)
    b = bvals.astype(np.float32)
    sig = np.zeros((int(head.sum()), len(bvals)), np.float32)
    for c, d_full in tensors.items():
        f = frac[c][head]
        live = f > 1e-4
        quad = _to_fsl6(d_full[head][live]) @ gg  # (V, N) = g^T D g
        sig[live] += (f[live] * S0_REL[c])[:, None] * np.exp(-b * quad)
    bias = 1.0 + cfg.bias * _sphere_waves(anat[head] / (2 * r_mean), 3, 0.6, rng)
    sig *= (cfg.s0 * bias)[:, None]
    dwi = np.zeros(shape + (len(bvals),), np.float32)
    dwi[head] = sig
    sigma = cfg.s0 * S0_REL["wm"] / cfg.snr
    noise = rng.standard_normal(dwi.shape, dtype=np.float32) * np.float32(sigma)
    dwi += noise
    rng.standard_normal(dwi.shape, dtype=np.float32, out=noise)
    noise *= np.float32(sigma)
    dwi = np.sqrt(dwi**2 + noise**2, out=dwi)  # Rician magnitude

    # Ground truth: fraction-weighted tensor inside the brain, dominant-compartment labels.
    mask = in_brain >= 0.5
    truth = sum(frac[c][..., None, None] * tensors[c] for c in ("wm", "gm", "csf"))
    truth = _to_fsl6(truth) * mask[..., None]
    stack = np.stack([frac["csf"], frac["gm"], frac["wm"], frac["scalp"]], -1)
    labels = np.choose(stack.argmax(-1), [LABELS["csf"], LABELS["gm"], LABELS["wm"], LABELS["scalp"]]).astype(np.uint8)
    labels[stack.max(-1) < 0.5] = LABELS["background"]
    tract_w = np.zeros(shape, np.float32)
    tract_w[wm_vox] = best_w
    labels[(labels == LABELS["wm"]) & (tract_w >= 0.5)] = LABELS["tract"]
    tract_fa = np.full(shape, np.nan, np.float32)
    tract_fa[wm_vox] = np.where(best_w > 0, best_fa, np.nan)

    return Phantom(name=name, dwi=dwi, bvals=bvals, bvecs=bvecs, mask=mask, affine=affine,
                   tensor=truth.astype(np.float32), labels=labels,
                   fractions={k: v.astype(np.float32) for k, v in frac.items()},
                   tract_weight=tract_w, tract_fa=tract_fa)


# ----------------------------------------------------------------------------- writing

def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, overwrite: bool) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # scanner-anatomical, as HCP's files carry
    img.set_sform(affine, code=1)
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, tmp)


def _save_text(text: str, path: Path, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


def write_hcp_subject(ph: Phantom, root: str | Path, *, overwrite: bool = False, truth: bool = True) -> Path:
    """Write ``ph`` in the HCP layout under ``root/<name>/``; returns the subject folder.

    Every file is written atomically. With ``truth`` the ground truth goes to
    ``<name>/phantom/{tensor,labels}.nii.gz`` (outside ``T1w/`` so HCP readers ignore it).
    """
    subj = Path(root) / ph.name
    diff = subj / "T1w" / "Diffusion"
    _save_nifti(ph.dwi.astype(np.float32), ph.affine, diff / "data.nii.gz", overwrite)
    _save_nifti(ph.mask.astype(np.uint8), ph.affine, diff / "nodif_brain_mask.nii.gz", overwrite)
    _save_text(" ".join(f"{b:g}" for b in ph.bvals) + "\n", diff / "bvals", overwrite)
    _save_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in ph.bvecs.T) + "\n", diff / "bvecs", overwrite)
    if truth:
        _save_nifti(ph.tensor.astype(np.float32), ph.affine, subj / "phantom" / "tensor.nii.gz", overwrite)
        _save_nifti(ph.labels, ph.affine, subj / "phantom" / "labels.nii.gz", overwrite)
    return subj


def subject_names(n: int) -> list[str]:
    """Folder names of ``n`` phantom subjects: ``phantom01``, ``phantom02``, ..."""
    return [f"phantom{i + 1:02d}" for i in range(n)]


def generate(output: str | Path, subjects: int = 4, *, seed: int = 0, config: PhantomConfig = PhantomConfig(),
             overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Simulate ``subjects`` phantoms (seeds ``seed*1000 + i``) and write them as HCP subjects.

    Returns:
        The subject folders, in order.

    Raises:
        FileExistsError: a subject file exists and ``overwrite`` is False.
        ValueError: a setting is out of range.
    """
    if subjects < 1:
        raise ValueError(f"--subjects must be >= 1, got {subjects}")
    if min(config.shape) < 16:
        raise ValueError(f"phantom shape {config.shape} is too small (each side must be >= 16 voxels)")
    if config.n_dirs < 6 or config.n_b0 < 1:
        raise ValueError(f"need >= 1 b0 and >= 6 directions for a tensor fit, got {config.n_b0} and {config.n_dirs}")
    from tqdm import tqdm

    out = []
    names = subject_names(subjects)
    for i, name in enumerate(tqdm(names, desc="phantom", unit="subject", disable=not progress)):
        ph = make_subject(name, seed * 1000 + i, config)
        out.append(write_hcp_subject(ph, output, overwrite=overwrite))
    return out


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.phantom",
        description="Write DTI brain phantoms as HCP subjects (<subject>/T1w/Diffusion/{data.nii.gz, bvals, "
                    "bvecs, nodif_brain_mask.nii.gz}) plus their ground-truth tensors.",
    )
    d = PhantomConfig()
    p.add_argument("--output", required=True, type=Path, help="folder to write the subjects into")
    p.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shape", type=int, nargs=3, default=list(d.shape), metavar=("X", "Y", "Z"),
                   help=f"voxel grid (default {' '.join(map(str, d.shape))})")
    p.add_argument("--voxel-size", type=float, default=d.voxel_size, help=f"mm (default {d.voxel_size}, as HCP)")
    p.add_argument("--directions", type=int, default=d.n_dirs, help=f"b={d.bval:g} directions (default {d.n_dirs})")
    p.add_argument("--b0", type=int, default=d.n_b0, help=f"number of b0 volumes (default {d.n_b0})")
    p.add_argument("--snr", type=float, default=d.snr, help=f"white-matter b0 SNR (default {d.snr:g})")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = replace(PhantomConfig(), shape=tuple(args.shape), voxel_size=args.voxel_size, n_dirs=args.directions,
                  n_b0=args.b0, snr=args.snr)
    try:
        paths = generate(args.output, args.subjects, seed=args.seed, config=cfg, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        print(f"phantom: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} HCP-layout subjects under {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
