"""HCP diffusion MRI -> HR/LR DTI training pairs (``medsr prep hcp``).

Input: subject folders in the HCP layout::

    <input>/<subject>/T1w/Diffusion/data.nii.gz              4D DWI (X, Y, Z, N)
                                    bvals                    N b-values (s/mm^2), one row
                                    bvecs                    3 rows x N unit vectors (FSL convention)
                                    nodif_brain_mask.nii.gz  3D brain mask on the DWI grid

Per subject (the image-quality-transfer protocol, Alexander et al. 2017, used by the paper):

1. keep the b0 volumes (b <= ``B0_MAX``) and the chosen shell (``|b - shell| <= tolerance``); only those
   volumes are read, one at a time from the (compressed) stream, straight into one float32 array
   (N_sel, X, Y, Z) -- no float64 copy of the DWI ever exists;
2. crop (or edge-pad) the grid to a multiple of the factor r (per axis), as :mod:`medsr.degrade` documents;
3. **HR DTI**: dipy ``TensorModel(fit_method="WLS")`` inside the mask, in chunks of voxels;
4. **LR DTI**: block-average the *DWIs* over rx x ry x rz blocks (or, with ``profile="gaussian"``,
   weight the slice axis with a Gaussian slice profile: :mod:`medsr.slice_profile`), then fit the same
   way inside the LR mask (an LR voxel is brain when at least half its HR block is brain);
5. ``lr_up`` = the LR tensors nearest-neighbour upsampled back to the HR grid (the network input).

Tensors are 6 channels in FSL order (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz), in mm^2/s (b in s/mm^2), zero
outside the mask, expressed in the bvecs' frame exactly as FSL ``dtifit`` does. dipy's
``lower_triangular()`` order (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz) is converted by
:func:`medsr.dti.lower_to_fsl`.

Steps 1-5 are :func:`prep_dwi`, shared with ``medsr prep bids`` (:mod:`data_prep.bids`), which
differs only in where the files are and in computing the brain mask when the dataset has none.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from medsr.degrade import degrade_array, downsample_mask, fit_array, lr_affine, nn_upsample_array
from medsr.factor import FactorLike, factor_triple, factor_value, format_factor
from medsr.dti import lower_to_fsl
from medsr.io import (
    check_affine, check_binary_mask, check_fits_in_memory, check_grid, check_real, read_array, read_nifti_image,
    save_mask, save_volume,
)
from data_prep.runner import subject_folders
from medsr.manifest import format_triple
from medsr.patches import count_brain_patches
from medsr.volume import Volume

DIFFUSION = Path("T1w") / "Diffusion"
FILES = {"data": "data.nii.gz", "bvals": "bvals", "bvecs": "bvecs", "mask": "nodif_brain_mask.nii.gz"}
B0_MAX = 50.0  # HCP b0 volumes have b ~ 5 s/mm^2; dipy's default b0 threshold is 50
BVEC_TOLERANCE = 1e-2  # |norm - 1| allowed for a diffusion-weighted volume's b-vector (dipy's default atol)
CHUNK_VOXELS = 65536  # voxels per WLS fit call: ~ 65536 x N_sel x 8 bytes per float64 buffer in dipy


def find_subjects(input_dir: str | os.PathLike) -> list[str]:
    """Subject folder names under ``input_dir`` (every non-hidden sub-folder; missing files fail later)."""
    return subject_folders(input_dir, f"<subject>/{DIFFUSION.as_posix()}/data.nii.gz", DIFFUSION.as_posix())


def subject_files(subject_dir: Path) -> dict[str, Path]:
    """The four HCP input paths of one subject; FileNotFoundError names the first missing one."""
    files = {k: Path(subject_dir) / DIFFUSION / v for k, v in FILES.items()}
    for p in files.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found")
    return files


def read_gradients(bvals_path: Path, bvecs_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """b-values (N,) and unit b-vectors (N, 3) from FSL text files (bvecs 3 rows; N x 3 accepted)."""
    try:
        bvals = np.loadtxt(bvals_path, dtype=np.float64, ndmin=1).reshape(-1)
    except ValueError as e:
        raise ValueError(f"{bvals_path}: cannot parse b-values ({e})") from None
    try:
        bvecs = np.loadtxt(bvecs_path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{bvecs_path}: cannot parse b-vectors ({e})") from None
    if bvecs.shape[0] != 3 and bvecs.shape[1] == 3:  # N x 3 (dipy style): transpose to FSL's 3 rows
        bvecs = bvecs.T
    if bvecs.shape[0] != 3:
        raise ValueError(f"{bvecs_path}: expected 3 rows of b-vectors, got shape {bvecs.shape}")
    if bvecs.shape[1] != bvals.size:
        raise ValueError(f"{bvecs_path}: has {bvecs.shape[1]} vectors but {bvals_path.name} has {bvals.size} values")
    if not np.isfinite(bvals).all():
        raise ValueError(f"{bvals_path}: contains NaN or Inf")
    if (bvals < 0).any():
        i = int(np.flatnonzero(bvals < 0)[0])
        raise ValueError(f"{bvals_path}: negative b-value {bvals[i]:g} (volume {i}); b-values are >= 0 s/mm^2")
    # A b0's direction is meaningless and some tools write NaN there (dipy's small_64D does): zero it.
    bvecs = np.where(np.isfinite(bvecs) | (bvals > B0_MAX)[None, :], bvecs, 0.0)
    if not np.isfinite(bvecs).all():
        raise ValueError(f"{bvecs_path}: contains NaN or Inf for a diffusion-weighted volume")
    norms = np.linalg.norm(bvecs, axis=0)
    off = np.flatnonzero((bvals > B0_MAX) & (np.abs(norms - 1.0) > BVEC_TOLERANCE))
    if off.size:
        i = int(off[0])
        raise ValueError(f"{bvecs_path}: b-vector {i} has length {norms[i]:.4g}, not 1 ({off.size} such vector(s) "
                         f"of diffusion-weighted volumes); b-vectors must be unit vectors")
    return bvals, bvecs.T


def select_shell(bvals: np.ndarray, shell: float, tolerance: float = 100.0) -> np.ndarray:
    """Indices of b0 volumes (b <= 50) and of the shell ``|b - shell| <= tolerance``, in file order."""
    b0 = bvals <= B0_MAX
    on_shell = np.abs(bvals - shell) <= tolerance
    return np.flatnonzero(b0 | on_shell)


def read_volumes(path: Path, img, indices: np.ndarray, crop: tuple[int, int, int] | None = None,
                 progress: bool = False) -> np.ndarray:
    """Read the 3D volumes ``indices`` (increasing) of a 4D NIfTI into float32 (len(indices), X, Y, Z).

    The file is streamed once, front to back: each wanted volume is read at its byte offset and
    converted (scaled) on its own, so memory is the output array plus one volume. ``nibabel``'s
    proxy slicing would reopen a ``.gz`` file and decompress from the start for every volume.
    NaN/Inf values are reported with the volume index; the stream is then read to its end so that a
    truncated file is reported even when the cut lies after the last wanted volume.
    ``crop`` keeps ``[:cx, :cy, :cz]``.
    """
    from nibabel.openers import ImageOpener
    from tqdm import tqdm

    proxy = img.dataobj
    shape3 = tuple(int(s) for s in img.shape[:3])
    out_shape = crop or shape3
    dtype = np.dtype(proxy.dtype)
    nbytes = int(np.prod(shape3)) * dtype.itemsize
    slope, inter = float(proxy.slope), float(proxy.inter)
    check_real(path, dtype)
    check_fits_in_memory(path, (len(indices),) + tuple(out_shape))
    out = np.empty((len(indices),) + tuple(out_shape), dtype=np.float32)
    try:
        with ImageOpener(str(path), "rb") as f:
            for k, i in enumerate(tqdm(indices, desc="read DWI", unit="vol", leave=False, disable=not progress)):
                f.seek(int(proxy.offset) + int(i) * nbytes)
                buf = f.read(nbytes)
                if len(buf) != nbytes:
                    raise EOFError(f"volume {i} is cut short ({len(buf)} of {nbytes} bytes)")
                vol = np.frombuffer(buf, dtype=dtype).reshape(shape3, order=proxy.order)
                vol = vol[: out_shape[0], : out_shape[1], : out_shape[2]]
                if slope != 1.0 or inter != 0.0:
                    out[k] = vol * np.float32(slope) + np.float32(inter)
                else:
                    out[k] = vol
                bad = int(np.count_nonzero(~np.isfinite(out[k])))
                if bad:
                    raise FloatingPointError(f"{path}: {bad} NaN/Inf value(s) in volume {i}")
            # Read on to the end so a file cut after the last wanted volume is caught too (gzip
            # also checks its CRC and length there); costs only the trailing volumes' decompression.
            f.seek(int(proxy.offset) + int(img.shape[3]) * nbytes - 1)
            if len(f.read(1)) != 1:
                raise EOFError(f"the file ends before volume {int(img.shape[3]) - 1} is complete")
            f.read()
    except FloatingPointError as e:  # our own NaN/Inf report, already one line
        raise ValueError(str(e)) from None
    except Exception as e:  # EOFError, zlib.error, gzip.BadGzipFile, OSError: a cut or damaged file
        raise ValueError(
            f"{path}: cannot read image data, the file is truncated or corrupt ({type(e).__name__}: {e})"
        ) from None
    return out


def fit_dti(dwi: np.ndarray, mask: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
            chunk: int = CHUNK_VOXELS, progress: bool = False, desc: str = "fit DTI") -> np.ndarray:
    """Weighted-least-squares DTI fit inside ``mask``: DWI (N, X, Y, Z) -> tensors (6, X, Y, Z) FSL order.

    Voxels are gathered ``chunk`` at a time, so dipy's float64 work arrays stay small whatever the
    volume size. Outside the mask the tensor is 0.
    """
    import warnings

    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from tqdm import tqdm

    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_MAX)
    model = TensorModel(gtab, fit_method="WLS")
    n, spatial = dwi.shape[0], dwi.shape[1:]
    flat = dwi.reshape(n, -1)
    where = np.flatnonzero(mask.reshape(-1))
    out = np.zeros((6, flat.shape[1]), dtype=np.float32)
    for s in tqdm(range(0, where.size, chunk), desc=desc, unit="chunk", leave=False, disable=not progress):
        idx = where[s : s + chunk]
        signal = flat[:, idx].T  # (n_vox, N) float32; dipy promotes per chunk only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # log of non-positive signal is clipped by dipy
            fit = model.fit(signal)
        out[:, idx] = lower_to_fsl(fit.lower_triangular().T.astype(np.float32), axis=0)
    out[~np.isfinite(out)] = 0.0
    return out.reshape((6,) + spatial)


def prep_subject(subject: str, out_dir: Path, progress: bool = False, *, input_dir: str, shell: float = 1000.0,
                 tolerance: float = 100.0, factor: FactorLike = 2, pad: bool = False, overwrite: bool = True,
                 chunk: int = CHUNK_VOXELS, profile: str = "box") -> dict:
    """Prepare one HCP subject; returns its manifest row. Raises ValueError/FileNotFoundError naming the file."""
    files = subject_files(Path(input_dir) / subject)
    return prep_dwi(subject, out_dir, progress, data_path=files["data"], bvals_path=files["bvals"],
                    bvecs_path=files["bvecs"], mask=files["mask"], shell=shell, tolerance=tolerance, factor=factor,
                    pad=pad, overwrite=overwrite, chunk=chunk, profile=profile)


# b0 volumes (n_b0, X, Y, Z) float32 on the prepared grid -> brain mask (X, Y, Z) bool. Module-level
# functions only: ``prep_dwi`` runs in spawned workers, so the function is pickled by name.
MaskFromB0 = Callable[[np.ndarray], np.ndarray]


def _read_mask(path: Path, img, data_path: Path, factor: FactorLike, pad: bool) -> np.ndarray:
    """A user's 3D brain mask on the DWI grid, checked (grid, 3D, 0/1) and cropped/padded like the DWI."""
    mask_img = read_nifti_image(path)
    check_grid(path, mask_img.shape, mask_img.affine, img.shape, img.affine, ref_name=data_path.name)
    if len(mask_img.shape) != 3 and not (len(mask_img.shape) == 4 and mask_img.shape[3] == 1):
        raise ValueError(f"{path}: expected a 3D mask, got shape {mask_img.shape}")
    mask_raw = read_array(path, mask_img.dataobj).reshape(mask_img.shape[:3])
    check_binary_mask(path, mask_raw)
    mask = fit_array(mask_raw != 0, factor, pad=pad)
    if not mask.any():
        raise ValueError(f"{path}: mask is empty (no brain voxels)")
    return mask


def prep_dwi(name: str, out_dir: Path, progress: bool = False, *, data_path: Path, bvals_path: Path,
             bvecs_path: Path, mask: Path | MaskFromB0, shell: float = 1000.0, tolerance: float = 100.0,
             factor: FactorLike = 2, pad: bool = False, overwrite: bool = True, chunk: int = CHUNK_VOXELS,
             profile: str = "box") -> dict:
    """One DWI series (4D NIfTI + FSL bvals/bvecs) -> ``<out_dir>/<name>/{hr,lr,lr_up,mask}.nii.gz``; its manifest row.

    The one DTI path of ``medsr prep``: ``prep hcp`` and ``prep bids`` differ only in where the files are.

    Args:
        mask: a brain-mask file on the DWI grid (checked before the DWI is read), or a function computing
            the mask from the selected b0 volumes (n_b0, X, Y, Z) on the cropped/padded grid.
        factor: the downsampling factor, an int or one per axis.
        profile: ``box`` (block mean, the IQT protocol) or ``gaussian`` (a Gaussian slice profile along
            the axis of the largest factor: :mod:`medsr.slice_profile`).

    Raises:
        ValueError / FileNotFoundError: one line naming the file and the problem.
    """
    bvals, bvecs = read_gradients(bvals_path, bvecs_path)
    img = read_nifti_image(data_path)
    if len(img.shape) != 4:
        raise ValueError(f"{data_path}: expected a 4D DWI (X, Y, Z, volumes), got shape {img.shape}")
    check_real(data_path, img.get_data_dtype())
    check_affine(data_path, img.affine)
    if img.shape[3] != bvals.size:
        raise ValueError(f"{bvals_path}: has {bvals.size} b-values but {data_path.name} has {img.shape[3]} volumes")
    mask_arr = _read_mask(Path(mask), img, data_path, factor, pad) if isinstance(mask, (str, Path)) else None

    sel = select_shell(bvals, shell, tolerance)
    n_b0 = int(np.sum(bvals[sel] <= B0_MAX))
    if n_b0 == 0 or len(sel) - n_b0 < 6:
        found = ", ".join(str(int(round(b))) for b in np.unique(np.round(bvals, -1)))
        raise ValueError(f"{bvals_path}: need >= 1 b0 and >= 6 volumes within {shell:g}+-{tolerance:g} s/mm^2 "
                         f"(found {n_b0} b0 and {len(sel) - n_b0}; b-values present: {found})")
    crop = None if pad else tuple(s - s % f for s, f in zip(img.shape[:3], factor_triple(factor)))
    dwi = read_volumes(data_path, img, sel, crop=crop, progress=progress)
    if pad:
        dwi = fit_array(dwi, factor, pad=True)
    affine = np.asarray(img.affine, dtype=np.float64)
    del img
    if mask_arr is None:
        mask_arr = np.asarray(mask(dwi[bvals[sel] <= B0_MAX]), dtype=bool)
        if not mask_arr.any():
            raise ValueError(f"{data_path}: the brain mask computed from its b0 volumes is empty")
    mask_name = mask if isinstance(mask, (str, Path)) else data_path

    hr = fit_dti(dwi, mask_arr, bvals[sel], bvecs[sel], chunk=chunk, progress=progress, desc="fit HR DTI")
    dwi_lr = degrade_array(dwi, factor, profile=profile)  # IQT: degrade the DWIs, then fit
    del dwi
    mask_lr = downsample_mask(mask_arr, factor)
    if not mask_lr.any():
        raise ValueError(f"{mask_name}: no LR voxel is at least half brain at factor {format_factor(factor, ' ')}")
    lr = fit_dti(dwi_lr, mask_lr, bvals[sel], bvecs[sel], chunk=chunk, progress=progress, desc="fit LR DTI")
    del dwi_lr
    lr_up = nn_upsample_array(lr, factor)

    out = {k: Path(out_dir) / name / f"{k}.nii.gz" for k in ("hr", "lr", "lr_up", "mask")}
    meta = {"kind": "dti"}
    save_volume(Volume(hr, affine, name=name, meta=meta), out["hr"], overwrite=overwrite)
    save_volume(Volume(lr, lr_affine(affine, factor), name=name, meta=meta), out["lr"], overwrite=overwrite)
    save_volume(Volume(lr_up, affine, name=name, meta=meta), out["lr_up"], overwrite=overwrite)
    save_mask(mask_arr, affine, out["mask"], overwrite=overwrite)
    return {
        "subject": name, **{k: str(v) for k, v in out.items()},
        "shape": format_triple(mask_arr.shape, "d"),
        "voxel_size": format_triple(np.round(np.linalg.norm(affine[:3, :3], axis=0), 6)),
        "brain_voxels": int(mask_arr.sum()), "n_patches": count_brain_patches(mask_arr),
        "status": "ok", "error": "", "factor": factor_value(factor), "kind": "dti",
    }
