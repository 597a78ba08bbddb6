"""Settings and result types of the DTI brain phantom, and its tissue constants."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
