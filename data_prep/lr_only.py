"""Thick-slice scans with no HR counterpart -> self-supervised training data (``medsr prep volumes --lr-only``).

Input: the layout of ``medsr prep volumes`` (``<input>/<subject>/image.nii.gz`` and ``mask.nii.gz``, a 3D
scalar image and its brain mask on the same grid), but the image is the scan as acquired: its native,
thick-slice grid is the LR grid, and ``--factor`` says how much finer the HR grid should be on each axis
(``1 1 4``: 4x thinner slices along z).

Per subject: ``lr.nii.gz`` (the scan, float32, its own affine) and ``mask.nii.gz`` (its mask on the same
grid). Nothing is cropped or resampled: the HR grid is the one the factor implies
(:func:`medsr.degrade.hr_affine`: each LR voxel becomes a block of HR voxels whose centre is the LR
voxel's centre), and ``shape`` / ``voxel_size`` in the manifest describe that grid; ``hr`` and ``lr_up``
stay empty (:func:`medsr.manifest.is_lr_only`). ``slice_profile`` records how the scan's slices weight the
signal (``box`` or ``gaussian``): self-supervised training degrades in-plane axes the same way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.volumes import _find
from medsr.io import load_mask, load_volume, save_mask, save_volume
from medsr.manifest import format_triple


def prep_subject(subject: str, out_dir: Path, progress: bool = False, *, input_dir: str, factor,
                 profile: str = "box", overwrite: bool = True) -> dict:
    """Copy one scan and its mask to ``out_dir/<subject>/`` and return its manifest row.

    Raises:
        ValueError / FileNotFoundError: naming the file (not 3D scalar, NaN/Inf values, empty or
            mismatched mask).
    """
    from medsr.factor import factor_triple, factor_value

    r = np.asarray(factor_triple(factor), dtype=float)
    folder = Path(input_dir) / subject
    image_path, mask_path = _find(folder, "image"), _find(folder, "mask")
    image = load_volume(image_path, name=str(image_path))
    if image.channels != 1:
        raise ValueError(f"{image_path}: expected a 3D scalar image, got {image.channels} channels "
                         "(--lr-only prepares scalar volumes; DTI is not supported)")
    bad = int(np.count_nonzero(~np.isfinite(image.data)))
    if bad:
        raise ValueError(f"{image_path}: {bad} NaN/Inf values")
    mask = load_mask(mask_path, image)
    if not mask.any():
        raise ValueError(f"{mask_path}: mask is empty (no brain voxels)")
    out = {k: Path(out_dir) / subject / f"{k}.nii.gz" for k in ("lr", "mask")}
    save_volume(image, out["lr"], overwrite=overwrite)
    save_mask(mask, image.affine, out["mask"], overwrite=overwrite)
    return {
        "subject": subject, "hr": "", "lr_up": "", **{k: str(v) for k, v in out.items()},
        "shape": format_triple(np.asarray(image.spatial_shape) * r.astype(int), "d"),
        "voxel_size": format_triple(np.round(np.asarray(image.voxel_size) / r, 6)),
        "brain_voxels": int(mask.sum()), "n_patches": 0, "status": "ok", "error": "",
        "factor": factor_value(factor), "kind": "scalar", "slice_profile": profile,
    }
