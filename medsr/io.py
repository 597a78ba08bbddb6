"""Read and write volumes with their geometry: NIfTI through nibabel, NRRD/MHA through SimpleITK.

In memory every image is a :class:`~medsr.volume.Volume`: float32, channel-first (C, X, Y, Z), with a
4x4 voxel-to-world affine in RAS+ millimetres (the NIfTI convention).

Conventions and conversions (each one explicit, so a file never silently changes meaning):

* **NIfTI** (``.nii``, ``.nii.gz``): 3D -> C = 1; 4D (X, Y, Z, C) -> channel-first; 5D (X, Y, Z, 1, C)
  -> C channels. The affine is nibabel's ``img.affine`` (sform if set, else qform); the header's sform and
  qform codes travel in ``meta["xform_codes"]``. Written channel-last, one channel as 3D, float32, units mm,
  ``descrip`` = ``medsr <version>``, and the same matrix in sform and qform (tools that read one or the
  other then agree) under the codes the input had (:func:`xform_codes`: scanner, aligned, template...).
* **NRRD / MetaImage** (``.nrrd``, ``.mha``; ``.mhd`` read only): ITK stores geometry in LPS+ (x to
  the left, y to the back) as origin + spacing + direction. The RAS+ affine is
  ``diag(-1, -1, 1) @ (direction @ diag(spacing))`` with origin ``diag(-1, -1, 1) @ origin``: the
  first two rows of the direction*spacing matrix and of the origin change sign. Writing applies the
  same flip back. Arrays come out of ITK as (Z, Y, X[, C]) and are transposed to (C, X, Y, Z). Tensor
  components are stored as they are: the flip changes the *grid* geometry only, never the values.
* **DTI**: medsr's order is FSL ``dtifit --save_tensor`` (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz).
  :func:`load_dti` accepts

  - a 4D 6-volume file, taken to be in FSL order already (what ``dtifit`` and ``medsr prep`` write);
  - a 9-component full tensor (4D with 9 volumes or 5D (X, Y, Z, 1, 9)), row-major
    (Dxx, Dxy, Dxz, Dyx, Dyy, Dyz, Dzx, Dzy, Dzz); the off-diagonal pairs are averaged;
  - a NIfTI with intent ``NIFTI_INTENT_SYMMATRIX`` (code 1005): 5D (X, Y, Z, 1, 6) holding the lower
    triangle row by row (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz), reordered to FSL (Dyy and Dxz swap).
    :func:`load_volume` applies this conversion itself, since the intent makes the meaning certain.

Errors (missing file, unreadable or truncated data, wrong dimensionality, grid mismatch) are raised
as one-line ``ValueError``/``FileNotFoundError`` messages that start with the file path.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from medsr import __version__
from medsr.dti import fsl_to_full9, fsl_to_lower, full9_to_fsl, lower_to_fsl
from medsr.utils.atomic import atomic_path, write_failed
from medsr.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_READ_SUFFIXES = (".nrrd", ".mha", ".mhd", ".nhdr")
ITK_WRITE_SUFFIXES = (".nrrd", ".mha")  # self-contained; .mhd would need a second (.raw) file
NIFTI_INTENT_SYMMATRIX = 1005
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None when unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(path: str | os.PathLike, shape: tuple[int, ...], itemsize: int = 4) -> None:
    """Refuse, before allocating, an image whose declared size exceeds this machine's memory.

    A corrupt or hostile header can declare billions of voxels; reading it would end in a MemoryError
    (or the kernel killing the process) after minutes of swapping instead of a message naming the file.
    """
    need = itemsize
    for s in shape:
        need *= max(int(s), 0)
    total = memory_bytes()
    if total is not None and need > total:
        raise ValueError(
            f"{path}: the header declares shape {tuple(int(s) for s in shape)} ({need / 2**30:.1f} GiB in "
            f"memory), more than this machine has ({total / 2**30:.1f} GiB); the header is corrupt or the image "
            "too large"
        )


def check_real(path: str | os.PathLike, dtype: np.dtype) -> None:
    """Refuse complex-valued data (converting it to float would silently drop the imaginary part)."""
    if np.dtype(dtype).kind == "c":
        raise ValueError(f"{path}: complex-valued image ({np.dtype(dtype)}); medsr needs real values "
                         "(save the magnitude or the real part as a separate image)")


def check_affine(path: str | os.PathLike, affine: np.ndarray) -> None:
    """Refuse a voxel-to-world affine that is non-finite or singular (no voxel size, no world grid)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ValueError(f"{path}: the affine (voxel-to-world matrix) has NaN or Inf entries")
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(spacing == 0) or abs(np.linalg.det(a[:3, :3] / spacing[None, :])) < 1e-6:
        raise ValueError(f"{path}: the affine (voxel-to-world matrix) is singular (voxel sizes "
                         f"{', '.join(f'{s:g}' for s in spacing)} mm); fix the header's sform/qform or pixdim")


def check_binary_mask(path: str | os.PathLike, values: np.ndarray) -> None:
    """Refuse a mask with NaN/Inf or with values other than 0 and 1 (naming the file and a bad value)."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return
    bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(arr.shape, bool)
    if bad.any():
        raise ValueError(f"{path}: mask has {int(bad.sum())} NaN/Inf value(s); a mask must hold only 0 and 1")
    other = (arr != 0) & (arr != 1)
    if other.any():
        found = np.unique(arr[other])
        shown = ", ".join(f"{v:g}" for v in found[:4]) + ("..." if found.size > 4 else "")
        raise ValueError(f"{path}: mask has {int(other.sum())} voxel(s) with values other than 0 and 1 ({shown}); "
                         "a mask must be binary (threshold it first)")


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected an image file")


# ----------------------------------------------------------------------------------------- reading
def load_volume(path: str | os.PathLike, *, name: str | None = None) -> Volume:
    """Load a NIfTI, NRRD or MetaImage file as a float32 (C, X, Y, Z) volume with a RAS+ affine.

    Args:
        path: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``.
        name: the volume's name for messages (default: the path).

    Returns:
        Volume with ``meta["source"]`` = the path; NIfTI symmetric-matrix files come back as 6 FSL
        components with ``meta["tensor_layout"] = "symmatrix"``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown extension, unreadable/truncated data, or unsupported dimensionality.
    """
    path = Path(path)
    _check_exists(path)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        data, affine, meta = _read_nifti(path)
    elif suffix in ITK_READ_SUFFIXES:
        data, affine, meta = _read_itk(path)
    else:
        raise ValueError(f"{path}: unsupported extension {suffix!r} (use .nii, .nii.gz, .nrrd, .mha or .mhd)")
    meta["source"] = str(path)
    check_affine(path, affine)
    return Volume(data, affine, name=str(path) if name is None else name, meta=meta)


def read_nifti_image(path: str | os.PathLike):
    """``nibabel.load`` with one-line errors naming the file (missing, not NIfTI, corrupt header)."""
    import nibabel as nib

    path = Path(path)
    _check_exists(path)
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error...
        raise ValueError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from None


def read_array(path: str | os.PathLike, dataobj, index=(), dtype=np.float32) -> np.ndarray:
    """Read ``dataobj[index]`` as ``dtype``, turning decompression errors into one-line messages.

    ``index`` slices the on-disk array before any scaling or conversion, so selecting volumes
    of a 4D DWI never materialises the whole file in memory.
    """
    check_real(path, getattr(dataobj, "dtype", np.float32))
    if index == () and hasattr(dataobj, "shape"):
        check_fits_in_memory(path, tuple(dataobj.shape), max(np.dtype(dtype).itemsize, 1))
    try:
        arr = dataobj[index] if index != () else np.asanyarray(dataobj)
        return np.asarray(arr, dtype=dtype)
    except (EOFError, zlib.error, OSError, ValueError) as e:
        raise ValueError(
            f"{path}: cannot read image data, the file is truncated or corrupt ({type(e).__name__}: {e})"
        ) from None


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    img = read_nifti_image(path)
    shape = img.shape
    meta: dict = {}
    intent = int(img.header.get("intent_code", 0)) if hasattr(img.header, "get") else 0
    data = read_array(path, img.dataobj)
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.ascontiguousarray(np.moveaxis(data, -1, 0))
    elif data.ndim == 5 and shape[3] == 1:
        data = np.ascontiguousarray(np.moveaxis(data[:, :, :, 0, :], -1, 0))
        if intent == NIFTI_INTENT_SYMMATRIX:
            if data.shape[0] != 6:
                raise ValueError(f"{path}: symmetric-matrix intent needs 6 components, got {data.shape[0]}")
            data = np.ascontiguousarray(lower_to_fsl(data, axis=0))
            meta["tensor_layout"] = "symmatrix"
            meta["kind"] = "dti"
    else:
        raise ValueError(f"{path}: expected a 3D, 4D or (X, Y, Z, 1, C) 5D image, got shape {shape}")
    meta["xform_codes"] = (int(img.header["sform_code"]), int(img.header["qform_code"]))
    return data, np.asarray(img.affine, dtype=np.float64), meta


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        check_fits_in_memory(path, tuple(reader.GetSize()) + (reader.GetNumberOfComponents(),))
        img = reader.Execute()
        arr = sitk.GetArrayFromImage(img)
        check_real(path, arr.dtype)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot read image ({first})") from None
    dim = img.GetDimension()
    ncomp = img.GetNumberOfComponentsPerPixel()
    if dim == 3 and ncomp == 1:  # (Z, Y, X)
        data = arr.transpose(2, 1, 0)[None]
    elif dim == 3:  # vector image (Z, Y, X, C)
        data = arr.transpose(3, 2, 1, 0)
    elif dim == 4 and ncomp == 1:  # a 4D scalar image (C, Z, Y, X): the 4th axis becomes channels
        data = arr.transpose(0, 3, 2, 1)
    else:
        raise ValueError(f"{path}: expected a 3D image (scalar or vector) or 4D scalar image, got dim {dim} x {ncomp}")
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)[:3]
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)[:3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]  # column j = spacing_j * direction_j
    lps[:3, 3] = origin
    return np.ascontiguousarray(data, dtype=np.float32), _LPS_RAS @ lps, {}


def load_mask(
    path: str | os.PathLike,
    like: Volume | tuple[tuple[int, int, int], np.ndarray] | None = None,
    *,
    atol: float = 1e-3,
    ref_name: str | None = None,
) -> np.ndarray:
    """Load a brain mask as a bool (X, Y, Z) array: values must be 0 or 1 (bool, integer or float).

    Args:
        path: a 3D image (or 4D/5D with a single channel).
        like: a Volume, or ``(shape, affine)``, whose grid the mask must share.
        atol: tolerance in mm on the affine entries.
        ref_name: how to call ``like`` in messages (default: the Volume's name).

    Raises:
        ValueError: more than one channel, NaN/Inf or values other than 0 and 1, or the grid differs
            from ``like`` (shape or affine).
    """
    vol = load_volume(path)
    if vol.channels != 1:
        raise ValueError(f"{path}: a mask must have one channel, got {vol.channels}")
    check_binary_mask(path, vol.data[0])
    if like is not None:
        shape, affine = (like.spatial_shape, like.affine) if isinstance(like, Volume) else like
        if ref_name is None:
            ref_name = like.name if isinstance(like, Volume) and like.name else "the reference image"
        check_grid(path, vol.spatial_shape, vol.affine, tuple(shape)[:3], affine, ref_name=ref_name, atol=atol)
    return vol.data[0] != 0


def check_grid(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    affine: np.ndarray,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    *,
    ref_name: str = "the reference image",
    atol: float = 1e-3,
) -> None:
    """Raise a one-line ValueError naming ``path`` if its (shape, affine) differ from the reference's."""
    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        raise ValueError(f"{path}: shape {tuple(shape[:3])} differs from {ref_name} {tuple(ref_shape[:3])}")
    diff = float(np.max(np.abs(np.asarray(affine) - np.asarray(ref_affine))))
    if diff > atol:
        raise ValueError(f"{path}: affine differs from {ref_name}'s (max difference {diff:.4g} mm)")


def load_dti(path: str | os.PathLike, *, layout: str = "auto") -> Volume:
    """Load a diffusion tensor image as 6 FSL-ordered channels (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz).

    Args:
        path: a NIfTI/NRRD/MHA tensor file.
        layout: ``"auto"`` (6 channels = FSL, 9 = full row-major, SYMMATRIX intent = lower
            triangle), or force ``"fsl"``, ``"lower"`` or ``"full9"``.

    Returns:
        Volume (6, X, Y, Z) with ``meta["kind"] = "dti"`` and ``meta["tensor_layout"]`` = the
        layout found in the file.
    """
    vol = load_volume(path)
    found = vol.meta.get("tensor_layout")
    data = vol.data
    if found == "symmatrix":  # load_volume already reordered it
        if layout not in ("auto", "lower"):
            raise ValueError(f"{path}: file has the symmetric-matrix intent, which is lower-triangular, not {layout!r}")
    elif layout == "auto":
        if vol.channels == 6:
            found = "fsl"
        elif vol.channels == 9:
            data, found = full9_to_fsl(data, axis=0), "full9"
        else:
            raise ValueError(f"{path}: a tensor image needs 6 or 9 components, got {vol.channels}")
    elif layout in ("fsl", "lower", "full9"):
        want = 9 if layout == "full9" else 6
        if vol.channels != want:
            raise ValueError(f"{path}: layout {layout!r} needs {want} components, got {vol.channels}")
        if layout == "lower":
            data = lower_to_fsl(data, 0)
        elif layout == "full9":
            data = full9_to_fsl(data, 0)
        found = layout
    else:
        raise ValueError(f"unknown tensor layout {layout!r}; use auto, fsl, lower or full9")
    meta = dict(vol.meta, kind="dti", tensor_layout=found)
    return Volume(np.ascontiguousarray(data), vol.affine, name=vol.name, meta=meta)


# ----------------------------------------------------------------------------------------- writing
def save_volume(
    vol: Volume,
    path: str | os.PathLike,
    *,
    overwrite: bool = True,
    dtype: np.dtype | type | None = None,
) -> Path:
    """Write ``vol`` atomically (temporary file, then rename); channel-last on disk, 1 channel as 3D.

    Args:
        vol: the volume (C, X, Y, Z).
        path: ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha``.
        overwrite: if False and ``path`` exists, raise FileExistsError.
        dtype: on-disk dtype (default float32; masks use uint8).

    Returns:
        The path written.
    """
    path = Path(path)
    data = vol.data if dtype is None else vol.data.astype(dtype)
    suffix = _suffix(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if suffix in NIFTI_SUFFIXES:
            arr = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
            _write_nifti(tmp, arr, vol.affine, codes=vol.meta.get("xform_codes"))
        elif suffix in ITK_WRITE_SUFFIXES:
            _write_itk(tmp, data, vol.affine)
        else:
            raise ValueError(f"{path}: unsupported extension {suffix!r} for writing (use .nii, .nii.gz, .nrrd or .mha)")
    return path


def save_mask(mask: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write a bool/0-1 (X, Y, Z) mask as uint8 with ``affine``, atomically."""
    return save_volume(Volume(np.asarray(mask, dtype=np.float32), affine, name=str(path)), path,
                       overwrite=overwrite, dtype=np.uint8)


def save_dti(vol: Volume, path: str | os.PathLike, *, layout: str = "fsl", overwrite: bool = True) -> Path:
    """Write a 6-channel FSL tensor volume as ``"fsl"`` (4D, 6 volumes), ``"symmatrix"`` (NIfTI 5D
    (X, Y, Z, 1, 6) lower triangle with intent 1005) or ``"full9"`` (4D, 9 volumes row-major)."""
    if vol.channels != 6:
        raise ValueError(f"{vol.name}: a DTI volume needs 6 channels, got {vol.channels}")
    if layout == "fsl":
        return save_volume(vol, path, overwrite=overwrite)
    if layout == "full9":
        return save_volume(vol.with_data(fsl_to_full9(vol.data, 0)), path, overwrite=overwrite)
    if layout != "symmatrix":
        raise ValueError(f"unknown tensor layout {layout!r}; use fsl, symmatrix or full9")
    path = Path(path)
    if _suffix(path) not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: the symmetric-matrix intent is a NIfTI feature; use .nii or .nii.gz")
    arr = np.moveaxis(fsl_to_lower(vol.data, 0), 0, -1)[:, :, :, None, :]  # (X, Y, Z, 1, 6)
    with atomic_path(path, overwrite=overwrite) as tmp:
        _write_nifti(tmp, arr, vol.affine, intent=NIFTI_INTENT_SYMMATRIX, codes=vol.meta.get("xform_codes"))
    return path


def xform_codes(codes: tuple[int, int] | None) -> tuple[int, int]:
    """The (sform, qform) codes to write for an input's ``codes`` (None: not read from a NIfTI).

    Both get the same matrix, so a code the input lacked (0, "unknown") takes the other one's, and an
    input with neither (or a NRRD/MHA, which has no codes) is written as scanner space (1).
    """
    s, q = (int(c) for c in codes) if codes else (0, 0)
    s, q = (s or q), (q or s)
    return (s or 1), (q or 1)


def _write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray, intent: int | None = None,
                 codes: tuple[int, int] | None = None) -> None:
    import nibabel as nib

    sform_code, qform_code = xform_codes(codes)
    img = nib.Nifti1Image(np.asarray(arr), np.asarray(affine, dtype=np.float64))
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = f"medsr {__version__}".encode()[:80]
    if intent is not None:
        img.header.set_intent(intent, ())
    nib.save(img, str(path))


def _write_itk(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import SimpleITK as sitk

    lps = _LPS_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    if data.shape[0] == 1:
        img = sitk.GetImageFromArray(np.ascontiguousarray(data[0].transpose(2, 1, 0)))
    else:
        img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(3, 2, 1, 0)), isVector=True)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.reshape(-1)])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    try:
        sitk.WriteImage(img, str(path), True)
    except RuntimeError as e:  # ITK reports a failed write (a full disk) as text, not as an OS error
        raise write_failed(path, e) from None
