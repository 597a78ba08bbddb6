"""Writing phantoms to disk in the HCP layout (with the ground truth) or as a BIDS dataset."""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.phantom.config import Phantom, PhantomConfig
from data_prep.phantom.subject import make_subject
from medsr.utils.atomic import atomic_path


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
