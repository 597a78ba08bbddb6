"""A DTI brain phantom written as HCP subjects, so the whole toolkit runs with no download.

Each subject is a procedurally generated head on an HCP-like 1.25 mm grid (a brain about 0.4x
the size of an adult's, with adult-sized cortex, sulci and voxels), different for every seed:

* **Outline**: a cerebral hull (an ellipsoid flattened at the base, its radius modulated by
  smooth random waves over the sphere of directions), a cerebellum under the tentorium (a ~1 mm
  signal-free dural sheet), and a
  brainstem (with a pontine bulge) leaving through the bottom of the field of view; around them
  a thin subarachnoid CSF layer (0.3-1.2 mm), a 2.5 mm signal-free skull gap and a 2.5 mm scalp.
* **Folded cortex**: a 2-3 mm grey-matter ribbon following the hull and every sulcus. Sulci are
  the zero set of band-limited random waves over the (smoothly warped) sphere: a labyrinth of
  curving, branching folds about 12 mm apart, cut 4-10 mm deep into the hull, each holding a
  0.4-1.2 mm sheet of sulcal CSF lined by cortex on both banks and capped by it at the fundus.
  An interhemispheric fissure with its own medial sulci separates the hemispheres down to the
  corpus callosum, and a Sylvian fissure reaches the insula. The cerebellum has a 1.2 mm cortex
  folded into folia (sheets fanning about a transverse axis: the arbor vitae pattern).
* **Deep structures**: C-shaped lateral ventricles (frontal, occipital and temporal horns) and
  a third ventricle (CSF); caudate, putamen, pallidum and thalamus (deep GM, its own
  compartment).
* **White matter**: a background compartment (FA 0.25, radial) plus fibre bundles built from
  fans of streamlines (each a quadratic curve through three points): the corpus callosum
  fanning into both hemispheres (forceps included), cortico-spinal tracts rising from the
  brainstem through the internal capsule and fanning to the cortex, SLF/arcuate, cingulum and
  IFOF, and the middle cerebellar peduncles crossing the CST in the pons. Each bundle's fibre
  FA is 0.4-0.8, varying along it. A voxel holds up to two fibre
  populations (the two densest bundles; where their densities sum over one, they share the
  voxel), so the centrum semiovale has real crossings (callosal x cortico-spinal x SLF).
* **Partial volume**: the cortex, sulci and fissures (the thin structures) are computed on a
  2x finer grid and block-averaged (true box-filter fractions); smooth structures use a soft
  0.5 mm step.
* **Diffusivities** (mm^2/s): MD 0.7e-3 in WM (background and fibres), 0.8e-3 in cortex,
  0.75e-3 in deep GM, 3.0e-3 in CSF (free water at 37 C), 1.0e-3 in the scalp. Cortex is weakly
  anisotropic (FA 0.1) perpendicular to its surface, deep GM FA 0.2.
* **Pose and geometry**: the head is rotated inside the field of view (a random pose) and the
  voxel grid itself is oblique (a random rotation in the affine), with HCP's LAS-like voxel
  axes (negative determinant), so neither the anatomy nor the tensors line up with the axes.
* **DWIs**: HCP-like b-values (b0 = 5 s/mm^2, the shell scattering 990-1010 around 1000) with
  b0 volumes interleaved among uniformly dispersed directions, the signal
  ``S = s0 * bias * sum_c f_c * S0_c * exp(-b g^T D_c g)`` over compartments c (CSF, cortex,
  deep GM, background WM, up to two fibre populations, scalp) with T2-weighted S0_c (CSF ~3x
  WM, as HCP's b0 at TE 89 ms), a smooth coil bias field, then Rician noise whose sigma varies
  smoothly in space (a g-factor map) and is spatially correlated (as after HCP's resampling).
  ``snr`` is the white-matter b0 SNR.

**Truth.** ``phantom/tensor.nii.gz`` holds, in every brain-mask voxel, the volume-fraction
weighted mean of the compartments' tensors: ``D = sum_c f_c D_c`` over CSF, cortex, deep GM,
background WM and the fibre populations (the scalp is outside the mask; outside the mask the
truth is zero; where the brain fills a voxel only partly, at the mask edge or beside the dural
tentorium, the rest counts as no tensor). So MD is exactly ``sum_c f_c MD_c`` and a 90-degree
crossing of two FA 0.7
fibres has an oblate truth tensor of FA ~0.3. A DTI fit of the DWIs returns the *signal*
weighted apparent tensor instead (each compartment weighted by ``f_c S0_c``, with the b = 1000
curvature on top); the two agree in pure voxels and differ in partial-volume ones, most at the
CSF borders, where the fitted MD is higher.

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

With ``layout="bids"`` (``--layout bids``) the same subjects are a BIDS dataset instead, the input of
``medsr prep bids`` (no ground truth, no mask: prep computes one)::

    <out>/dataset_description.json
    <out>/sub-<NN>/dwi/sub-<NN>_dwi.nii.gz, .bval, .bvec   (b-values / 3 rows of unit vectors, FSL format)

Use it from Python with :func:`make_subject` / :func:`generate`, or from the shell with
``python -m data_prep.phantom --output DIR --n-subjects N [--layout bids]``. Statistics: ``docs/phantom.md``.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from medsr.utils.atomic import atomic_path

# Literature mean diffusivities (mm^2/s) and relative b0 intensities (T2-weighted at HCP's TE:
# CSF bright, cortex brighter than white matter).
MD = {"wm": 0.7e-3, "gm": 0.8e-3, "deep_gm": 0.75e-3, "csf": 3.0e-3, "scalp": 1.0e-3}
S0_REL = {"wm": 0.35, "gm": 0.50, "deep_gm": 0.42, "csf": 1.00, "scalp": 0.30}
FA_BACKGROUND = {"wm": 0.25, "gm": 0.10, "deep_gm": 0.20}
TRACT_FA_RANGE = (0.4, 0.8)
LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3, "tract": 4, "scalp": 5, "deep_gm": 6, "crossing": 7}
# Brain compartments that make up the truth tensor (the scalp is outside the brain mask).
BRAIN_TISSUES = ("csf", "gm", "deep_gm", "wm")


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of one phantom subject (the defaults keep the demo fast on 2 CPU cores).

    Attributes:
        shape: voxel grid (X, Y, Z) of the HR image.
        voxel_size: isotropic voxel edge in mm (HCP: 1.25).
        n_b0: number of b0 volumes, interleaved among the DWIs as HCP does.
        n_dirs: number of b = ``bval`` directions (uniform on the half sphere).
        bval: nominal shell b-value in s/mm^2; the written values scatter by +-10 as HCP's do.
        snr: b0 signal-to-noise ratio of white matter (sigma = s0 * S0_wm / snr, before the
            g-factor map and bias field).
        s0: signal scale of the b0 images (the b0 of pure CSF).
        brain_fraction: semi-axes of the brain hull (the pial surface) as a fraction of the half
            field of view.
        max_pose_deg: largest head rotation about each anatomical axis (degrees).
        max_oblique_deg: largest rotation of the voxel grid in the affine (degrees).
        bias: amplitude of the smooth multiplicative coil bias field.
        cortex_mm: mean cortical thickness (mm); it varies by +-0.4 mm over the brain.
        fold_spacing_mm: typical distance between neighbouring sulci (mm).
        sulcus_depth_mm: (min, max) depth of the sulci below the hull (mm).
        supersample: sub-voxels per axis used for the partial volume of the cortex and sulci.
        noise_correlation: Gaussian sigma (voxels) of the spatial correlation of the noise
            (0: white noise); the noise sigma is kept at the nominal value.
        noise_variation: relative amplitude of the smooth spatial variation of the noise sigma.
    """

    shape: tuple[int, int, int] = (56, 64, 52)
    voxel_size: float = 1.25
    n_b0: int = 6
    n_dirs: int = 60
    bval: float = 1000.0
    snr: float = 30.0
    s0: float = 1000.0
    brain_fraction: float = 0.76
    max_pose_deg: float = 15.0
    max_oblique_deg: float = 12.0
    bias: float = 0.1
    cortex_mm: float = 2.4
    fold_spacing_mm: float = 12.0
    sulcus_depth_mm: tuple[float, float] = (4.0, 10.0)
    supersample: int = 2
    noise_correlation: float = 0.5
    noise_variation: float = 0.2


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
            voxel frame, mm^2/s; the volume-fraction weighted mean of the compartments' tensors.
        labels: (X, Y, Z) uint8 dominant compartment, codes in :data:`LABELS`.
        fractions: dict of (X, Y, Z) float32 volume fractions ("csf", "gm", "deep_gm", "wm",
            "scalp"); they sum to the head fraction (1 inside the brain).
        tract_weight: (X, Y, Z) float32 in [0, 1], the share of the WM compartment held by fibre
            bundles (both populations together).
        tract_fa: (X, Y, Z) float32 FA of the dominant fibre population where a bundle passes,
            else NaN.
        fibre_fractions: (X, Y, Z, 2) float32 shares of the WM compartment held by the first
            (denser) and second fibre population; a crossing has both well above zero.
        fibre_dirs: (X, Y, Z, 2, 3) float32 unit directions of the two populations in the voxel
            frame (zero where absent).
        hull_depth: (X, Y, Z) float32 depth below the brain hull (pial envelope) in mm,
            negative outside it.
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
    fibre_fractions: np.ndarray | None = None
    fibre_dirs: np.ndarray | None = None
    hull_depth: np.ndarray | None = None


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


# ----------------------------------------------------------------------------- small maths

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


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)).astype(np.float32)


# ----------------------------------------------------------------------------- head frame

@dataclass
class _Frame:
    """Where the head sits: anatomical coordinates (mm; x left->right, y posterior->anterior,
    z inferior->superior) of every voxel, the brain hull's semi-axes, and the frame rotations."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    pose: np.ndarray      # anat -> world rotation
    to_vox: np.ndarray    # anat -> voxel-frame rotation (tensor and bvec frame)
    centre: np.ndarray    # world position of the anatomical origin
    semi: np.ndarray      # brain hull semi-axes (mm)

    def anat(self, ss: int = 1) -> np.ndarray:
        """(ss*X, ss*Y, ss*Z, 3) float32 anatomical coordinates of sub-voxel centres."""
        axes = [((np.arange(n * ss, dtype=np.float32) + 0.5) / ss - 0.5) for n in self.shape]
        ijk = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
        world = ijk @ self.affine[:3, :3].T.astype(np.float32) + (self.affine[:3, 3] - self.centre).astype(np.float32)
        return world @ self.pose.astype(np.float32)


def _head_frame(cfg: PhantomConfig, rng: np.random.Generator) -> _Frame:
    shape = tuple(int(s) for s in cfg.shape)
    affine = oblique_affine(shape, cfg.voxel_size, cfg.max_oblique_deg, rng)
    pose = Rotation.from_euler("xyz", rng.uniform(-cfg.max_pose_deg, cfg.max_pose_deg, 3), degrees=True).as_matrix()
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    vox_frame = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)  # voxel axes in world
    half_fov = np.asarray(shape, np.float32) * cfg.voxel_size / 2
    semi = (cfg.brain_fraction * half_fov * rng.uniform(0.93, 1.04, 3)).astype(np.float32)
    return _Frame(shape, affine, pose, (vox_frame.T @ pose).astype(np.float32), centre, semi)


# ----------------------------------------------------------------------------- cortex and CSF

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


# ----------------------------------------------------------------------------- deep structures

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


# ----------------------------------------------------------------------------- fibre bundles

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


# ----------------------------------------------------------------------------- signal and truth

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


# ----------------------------------------------------------------------------- one subject

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


def write_bids_subject(ph: Phantom, root: str | Path, label: str, *, overwrite: bool = False) -> Path:
    """Write ``ph``'s DWI as ``root/sub-<label>/dwi/sub-<label>_dwi.{nii.gz,bval,bvec}`` (and the dataset's
    ``dataset_description.json`` when missing); returns the subject folder."""
    root = Path(root)
    desc = root / "dataset_description.json"
    if not desc.exists():
        _save_text('{"Name": "medsr DTI phantom", "BIDSVersion": "1.10.0", "DatasetType": "raw"}\n', desc, overwrite)
    dwi = root / f"sub-{label}" / "dwi"
    stem = dwi / f"sub-{label}_dwi"
    _save_nifti(ph.dwi.astype(np.float32), ph.affine, stem.with_name(stem.name + ".nii.gz"), overwrite)
    _save_text(" ".join(f"{b:g}" for b in ph.bvals) + "\n", stem.with_name(stem.name + ".bval"), overwrite)
    _save_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in ph.bvecs.T) + "\n",
               stem.with_name(stem.name + ".bvec"), overwrite)
    return dwi.parent


def subject_names(n: int) -> list[str]:
    """Folder names of ``n`` phantom subjects: ``phantom01``, ``phantom02``, ..."""
    return [f"phantom{i + 1:02d}" for i in range(n)]


def generate(output: str | Path, subjects: int = 4, *, seed: int = 0, config: PhantomConfig = PhantomConfig(),
             overwrite: bool = False, progress: bool = True, layout: str = "hcp") -> list[Path]:
    """Simulate ``subjects`` phantoms (seeds ``seed*1000 + i``) and write them as HCP subjects (or, with
    ``layout="bids"``, as ``sub-01``, ``sub-02``, ... of a BIDS dataset).

    Returns:
        The subject folders, in order.

    Raises:
        FileExistsError: a subject file exists and ``overwrite`` is False.
        ValueError: a setting is out of range.
    """
    if subjects < 1:
        raise ValueError(f"--subjects must be >= 1, got {subjects}")
    for name, value in (("--voxel-size", config.voxel_size), ("--snr", config.snr)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, got {value:g}")
    if layout not in ("hcp", "bids"):
        raise ValueError(f"--layout {layout}: choose hcp or bids")
    if min(config.shape) < 16:
        raise ValueError(f"phantom shape {config.shape} is too small (each side must be >= 16 voxels)")
    if config.n_dirs < 6 or config.n_b0 < 1:
        raise ValueError(f"need >= 1 b0 and >= 6 directions for a tensor fit, got {config.n_b0} and {config.n_dirs}")
    from tqdm import tqdm

    out = []
    names = subject_names(subjects)
    for i, name in enumerate(tqdm(names, desc="phantom", unit="subject", disable=not progress)):
        ph = make_subject(name, seed * 1000 + i, config)
        if layout == "bids":
            out.append(write_bids_subject(ph, output, f"{i + 1:02d}", overwrite=overwrite))
        else:
            out.append(write_hcp_subject(ph, output, overwrite=overwrite))
    return out


# ----------------------------------------------------------------------------- command line

class _RefusedSubjects(argparse.Action):
    """The old ``--subjects N`` spelling: refused with a one-line hint."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error("--subjects takes subject IDs in the medsr commands; the phantom count is --n-subjects N")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.phantom",
        description="Write DTI brain phantoms as HCP subjects (<subject>/T1w/Diffusion/{data.nii.gz, bvals, "
                    "bvecs, nodif_brain_mask.nii.gz}) plus their ground-truth tensors.",
    )
    d = PhantomConfig()
    p.add_argument("--output", required=True, type=Path, help="folder to write the subjects into")
    p.add_argument("--n-subjects", type=int, default=4, metavar="N", help="how many subjects (default 4)")
    # --subjects lists subject IDs in the medsr commands; a count under that name is refused.
    p.add_argument("--subjects", nargs="*", action=_RefusedSubjects, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shape", type=int, nargs=3, default=list(d.shape), metavar=("X", "Y", "Z"),
                   help=f"voxel grid (default {' '.join(map(str, d.shape))})")
    p.add_argument("--voxel-size", type=float, default=d.voxel_size, help=f"mm (default {d.voxel_size}, as HCP)")
    p.add_argument("--directions", type=int, default=d.n_dirs, help=f"b={d.bval:g} directions (default {d.n_dirs})")
    p.add_argument("--b0", type=int, default=d.n_b0, help=f"number of b0 volumes (default {d.n_b0})")
    p.add_argument("--snr", type=float, default=d.snr, help=f"white-matter b0 SNR (default {d.snr:g})")
    p.add_argument("--layout", choices=["hcp", "bids"], default="hcp",
                   help="hcp: <subject>/T1w/Diffusion/... with the ground truth; bids: a BIDS dataset of "
                        "sub-NN/dwi series (the input of 'medsr prep bids') (default hcp)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = replace(PhantomConfig(), shape=tuple(args.shape), voxel_size=args.voxel_size, n_dirs=args.directions,
                  n_b0=args.b0, snr=args.snr)
    try:
        paths = generate(args.output, args.n_subjects, seed=args.seed, config=cfg, overwrite=args.overwrite,
                         layout=args.layout)
    except (ValueError, FileExistsError) as e:
        print(f"phantom: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} {args.layout.upper()}-layout subjects under {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
