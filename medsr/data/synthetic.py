"""Small prepared datasets generated on the fly: the manifest contract without an HCP download.

Each subject is an ellipsoidal "brain" on an oblique grid holding smooth random fields: 6
positive-definite tensor components (FSL order, mm^2/s scale) for ``kind="dti"`` or one scalar
channel. The HR volume is degraded with the same block mean / nearest-neighbour upsampling as
``medsr prep``, and the folder is laid out exactly as prep writes it (``<subject>/hr.nii.gz``,
``lr.nii.gz``, ``lr_up.nii.gz``, ``mask.nii.gz`` and ``manifest.csv``). Tests, the loader
benchmark and quick config measurements use it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from medsr.degrade import block_mean, fit_array, fit_to_factor, nn_upsample
from medsr.factor import FactorLike
from medsr.io import save_mask, save_volume
from medsr.manifest import format_triple, write_manifest
from medsr.patches import count_brain_patches, patch_shape
from medsr.volume import Volume


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape), sigma)
    return f / (f.std() + 1e-12)


def synthetic_subject(shape: tuple[int, int, int] = (32, 32, 32), kind: str = "dti", seed: int = 0,
                      voxel: float = 1.25) -> tuple[Volume, np.ndarray]:
    """One HR subject: (Volume (C, X, Y, Z), mask (X, Y, Z) bool) with an oblique affine."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), 0)
    semi = 0.75 + 0.1 * rng.random(3)
    mask = ((grid / semi.reshape(3, 1, 1, 1)) ** 2).sum(0) <= 1.0
    sigma = max(shape) / 10.0
    if kind == "dti":
        a = np.stack([_smooth(rng, shape, sigma) for _ in range(9)], 0).reshape(3, 3, *shape) * 0.5
        a += np.eye(3).reshape(3, 3, 1, 1, 1)
        d = np.einsum("ik...,jk...->ij...", a, a) * 0.5e-3 + 0.1e-3 * np.eye(3).reshape(3, 3, 1, 1, 1)
        data = np.stack([d[0, 0], d[0, 1], d[0, 2], d[1, 1], d[1, 2], d[2, 2]], 0)
    elif kind == "scalar":
        data = (100.0 + 30.0 * _smooth(rng, shape, sigma) + 10.0 * _smooth(rng, shape, sigma / 3))[None]
    else:
        raise ValueError(f"kind {kind!r}: expected 'dti' or 'scalar'")
    data = data * mask  # background is zero, as in skull-stripped maps
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-0.3, 0.3, 3)).as_matrix() * voxel
    affine[:3, 3] = -np.asarray(shape) * voxel / 2
    return Volume(data.astype(np.float32), affine, name=f"synthetic{seed}", meta={"kind": kind}), mask


def make_prepared_dataset(out: str | Path, n_subjects: int = 2, shape: tuple[int, int, int] = (32, 32, 32),
                          kind: str = "dti", factor: FactorLike = 2, seed: int = 0,
                          patch_size: int | list[int] | str = 24) -> Path:
    """Write ``n_subjects`` prepared subjects and ``manifest.csv`` under ``out``; returns the manifest path.

    ``factor`` is an int or one per axis; the HR grid is cropped to a multiple of it, as prep does.
    ``patch_size`` (as ``data.patch_size``) only counts the manifest's ``n_patches``.
    """
    out = Path(out)
    rows = []
    for i in range(n_subjects):
        name = f"sub{i:02d}"
        hr, mask = synthetic_subject(shape, kind, seed + i)
        hr, mask = fit_to_factor(hr, factor), fit_array(mask, factor)
        lr = block_mean(hr, factor)
        lr_up = nn_upsample(lr, factor)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        save_volume(hr, d / "hr.nii.gz")
        save_volume(lr, d / "lr.nii.gz")
        save_volume(lr_up, d / "lr_up.nii.gz")
        save_mask(mask, hr.affine, d / "mask.nii.gz")
        rows.append({
            "subject": name, "hr": d / "hr.nii.gz", "lr": d / "lr.nii.gz", "lr_up": d / "lr_up.nii.gz",
            "mask": d / "mask.nii.gz", "shape": format_triple(hr.spatial_shape, "d"), "voxel_size": format_triple(hr.voxel_size),
            "brain_voxels": int(mask.sum()), "n_patches": count_brain_patches(mask, patch_shape(patch_size, factor)), "status": "ok",
            "error": "", "factor": factor, "kind": kind,
        })
    return write_manifest(out / "manifest.csv", rows)
