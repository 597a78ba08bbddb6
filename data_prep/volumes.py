"""Generic scalar volumes (T1, T2, ...) -> HR/LR training pairs (``medsr prep volumes``).

Input: ``<input>/<subject>/image.nii.gz`` and ``<input>/<subject>/mask.nii.gz`` (``.nii``, ``.nrrd`` or
``.mha`` also accepted for both), a 3D image and a brain mask on the same grid.

Per subject: the image is cropped (or edge-padded) to a multiple of the factor (per axis), ``lr`` is its
block mean (or, with ``profile="gaussian"``, block mean in plane and a Gaussian slice profile through
plane: :mod:`medsr.slice_profile`), ``lr_up`` the nearest-neighbour upsampling of ``lr`` back to the HR grid. The image is kept whole
(not multiplied by the mask): the mask only selects training patches and evaluation voxels. Outputs and
manifest are those of ``medsr prep hcp`` with ``kind = scalar`` and one channel (stored 3D).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsr.degrade import degrade, fit_array, fit_to_factor, nn_upsample
from medsr.factor import FactorLike, factor_value
from medsr.io import load_mask, load_volume, save_mask, save_volume
from data_prep.runner import subject_folders
from medsr.manifest import format_triple
from medsr.patches import count_brain_patches

EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


def find_subjects(input_dir: str | os.PathLike) -> list[str]:
    """Every non-hidden sub-folder of ``input_dir`` (a folder lacking files fails on its own later)."""
    return subject_folders(input_dir, "<subject>/image.nii.gz and mask.nii.gz")


def _find(folder: Path, stem: str) -> Path:
    for ext in EXTENSIONS:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    raise FileNotFoundError(f"{folder / (stem + '.nii.gz')}: file not found")


def prep_subject(subject: str, out_dir: Path, progress: bool = False, *, input_dir: str, factor: FactorLike = 2,
                 pad: bool = False, overwrite: bool = True, profile: str = "box") -> dict:
    """Prepare one scalar subject; returns its manifest row. Raises ValueError/FileNotFoundError naming the file."""
    folder = Path(input_dir) / subject
    image_path, mask_path = _find(folder, "image"), _find(folder, "mask")
    image = load_volume(image_path, name=str(image_path))
    if image.channels != 1:
        raise ValueError(f"{image_path}: expected a 3D scalar image, got {image.channels} channels")
    bad = int(np.count_nonzero(~np.isfinite(image.data)))
    if bad:
        raise ValueError(f"{image_path}: {bad} NaN/Inf values")
    mask = load_mask(mask_path, image)
    hr = fit_to_factor(image, factor, pad=pad)
    mask = fit_array(mask, factor, pad=pad)  # the same crop/pad as the image, on the bool array itself
    if not mask.any():
        raise ValueError(f"{mask_path}: mask is empty (no brain voxels)")
    lr = degrade(hr, factor, profile=profile)
    lr_up = nn_upsample(lr, factor)

    out = {k: Path(out_dir) / subject / f"{k}.nii.gz" for k in ("hr", "lr", "lr_up", "mask")}
    save_volume(hr, out["hr"], overwrite=overwrite)
    save_volume(lr, out["lr"], overwrite=overwrite)
    save_volume(lr_up, out["lr_up"], overwrite=overwrite)
    save_mask(mask, hr.affine, out["mask"], overwrite=overwrite)
    return {
        "subject": subject, **{k: str(v) for k, v in out.items()},
        "shape": format_triple(hr.spatial_shape, "d"),
        "voxel_size": format_triple(np.round(hr.voxel_size, 6)),
        "brain_voxels": int(mask.sum()), "n_patches": count_brain_patches(mask),
        "status": "ok", "error": "", "factor": factor_value(factor), "kind": "scalar",
    }
