"""BIDS diffusion datasets -> HR/LR DTI training pairs (``medsr prep bids``).

Input: a BIDS dataset (https://bids-specification.readthedocs.io), the layout of OpenNeuro and most lab archives::

    <root>/dataset_description.json                         required: Name, BIDSVersion
    <root>/sub-<label>/[ses-<label>/]dwi/sub-<label>[_ses-<label>][_acq-<x>][_run-<n>]..._dwi.nii[.gz]
                                         ..._dwi.bval       b-values, FSL format
                                         ..._dwi.bvec       b-vectors, FSL format (3 rows)

Every ``*_dwi.nii[.gz]`` is one *series* and becomes one prepared subject named after the entities of its
file name (``sub-02_ses-1_acq-b1000_dwi.nii.gz`` -> ``sub-02_ses-1_acq-b1000``), so sessions and acq/run
repeats never collide. A ``.bval`` / ``.bvec`` next to the image wins; otherwise the BIDS inheritance
principle applies: the nearest folder above (session, subject, dataset root) holding one gradient file whose
entities are a subset of the series' (``<root>/dwi.bval`` applies to every series).

The brain mask is the file ``--mask-pattern`` names for the series (e.g. a derivatives folder), else it is
computed from the mean b0 by dipy's ``median_otsu`` (dipy's defaults: median radius 4, 4 passes) and saved
as the prepared ``mask.nii.gz`` like any other mask. The DTI fit is :func:`data_prep.hcp.prep_dwi`, the one
``medsr prep hcp`` uses, so the outputs and manifest are identical in kind.

Why a glob and not pybids or bids2table (neither is installed with medsr): medsr needs one query, the dwi
images and their gradient files. pybids answers it after indexing every file of the dataset into an SQLAlchemy
(SQLite) database, and its pyproject adds SQLAlchemy, formulaic, bids-validator, bidsschematools, num2words,
click, universal_pathlib and frozendict; bids2table needs Python >= 3.11 (medsr supports 3.10), pyarrow and
bidsschematools, and tables every file. Two globs plus the inheritance rule for ``.bval``/``.bvec`` are the
small functions below (tested in ``tests/test_prep_bids.py``), add no dependency, and report a malformed
series by its file name instead of leaving it out of a query.

Conventions of BIDS apps kept: ``--participant-label 01 02`` without the ``sub-`` prefix (a prefix is
accepted too), ``--session`` likewise; subjects without a dwi series are skipped and listed, not failed;
a broken series (missing ``.bval``/``.bvec``, counts that disagree, an image that is not 4D) fails alone,
by name, with a one-line reason.
"""
from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from data_prep.hcp import CHUNK_VOXELS, prep_dwi
from medsr.factor import FactorLike
from medsr.utils.paths import check_subject_name

DWI_EXTENSIONS = (".nii.gz", ".nii")
DWI_SUFFIX = "dwi"
ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")  # BIDS: key-value, both alphanumeric
MEDIAN_RADIUS, NUMPASS = 4, 4  # dipy's median_otsu defaults ("most robust" on 1.5T/3T data, its docs say)


@dataclass(frozen=True)
class Series:
    """One dwi series: its image, gradient files (None when absent) and the problem found while listing it."""

    name: str
    data: Path
    entities: dict[str, str] = field(default_factory=dict, hash=False)
    folder: str = ""  # the dwi folder relative to the dataset root, e.g. "sub-02/ses-1/dwi"
    bval: Path | None = None
    bvec: Path | None = None
    error: str = ""  # non-empty: the series is marked failed with this one-line reason


@dataclass
class Dataset:
    """The series found (in name order) and the subject folders that hold none (skipped, reported)."""

    series: list[Series]
    no_dwi: list[str]


def check_dataset(root: str | os.PathLike) -> dict:
    """The parsed ``dataset_description.json`` of a BIDS root; a one-line error when it is not one."""
    root = Path(root)
    if root.is_file():
        raise ValueError(f"{root}: is a file; --input expects the root folder of a BIDS dataset")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    desc = root / "dataset_description.json"
    if not desc.is_file():
        hint = ("; this looks like a subject folder, pass the dataset root (its parent)" if root.name.startswith("sub-")
                else "; --input must be the root of a BIDS dataset (the folder holding it and the sub-<label> folders)")
        raise FileNotFoundError(f"{desc}: file not found{hint}")
    try:
        meta = json.loads(desc.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{desc}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{desc}: expected a JSON object with Name and BIDSVersion, got {type(meta).__name__}")
    missing = [k for k in ("Name", "BIDSVersion") if k not in meta]
    if missing:
        raise ValueError(f"{desc}: missing required field(s) {', '.join(missing)} (BIDS requires Name and BIDSVersion)")
    return meta


def parse_entities(stem: str) -> dict[str, str] | None:
    """``"sub-02_ses-1_acq-b1000"`` -> ``{"sub": "02", "ses": "1", "acq": "b1000"}``; None if not key-value."""
    if not stem:
        return {}
    parts = [ENTITY.match(p) for p in stem.split("_")]
    if not all(parts):
        return None
    return {m.group(1): m.group(2) for m in parts}


def strip_prefix(label: str, prefix: str) -> str:
    """``"sub-01"`` or ``"01"`` -> ``"01"`` (BIDS apps take labels without the prefix; accept it anyway)."""
    return label[len(prefix):] if label.startswith(prefix) else label


def find_sidecar(root: Path, image: Path, entities: dict[str, str], ext: str) -> Path | None:
    """The ``.bval`` / ``.bvec`` (``ext``) of a series by the BIDS inheritance principle, or None.

    The file named like the image wins; otherwise, folder by folder from the image's up to the dataset
    root, the first folder holding gradient files whose entities all appear in the series' entities.
    Two such files in one folder are ambiguous (BIDS forbids it): ValueError naming both.
    """
    exact = sidecar_path(image, ext)
    if exact.is_file():
        return exact
    folder = image.parent
    while True:
        hits = []
        for p in sorted(folder.glob(f"*{DWI_SUFFIX}.{ext}")):
            prefix = p.name[: -len(f"{DWI_SUFFIX}.{ext}")]
            if p.name.startswith(".") or not (prefix == "" or prefix.endswith("_")):
                continue
            ents = parse_entities(prefix.rstrip("_"))
            if ents is not None and all(entities.get(k) == v for k, v in ents.items()):
                hits.append(p)
        if len(hits) > 1:
            raise ValueError(f"{hits[0]}: {len(hits)} .{ext} files in {folder} apply to {image.name} "
                             f"({', '.join(h.name for h in hits)}); BIDS allows one per folder")
        if hits:
            return hits[0]
        if folder == root or folder.parent == folder:
            return None
        folder = folder.parent


def sidecar_path(image: Path, ext: str) -> Path:
    """``.../sub-01_dwi.nii.gz`` -> ``.../sub-01_dwi.<ext>`` (the gradient file named like the image)."""
    return image.with_name(image.name[: -len(_dwi_ext(image.name))] + f"_{DWI_SUFFIX}.{ext}")


def _dwi_ext(filename: str) -> str:
    """The ``_dwi.nii.gz`` / ``_dwi.nii`` ending of a dwi image name ('' when it is none)."""
    for ext in DWI_EXTENSIONS:
        if filename.endswith(f"_{DWI_SUFFIX}{ext}"):
            return f"_{DWI_SUFFIX}{ext}"
    return ""


def _series_in(root: Path, dwi_dir: Path, prefix: str) -> list[Series]:
    """The dwi series of one ``dwi/`` folder; ``prefix`` is ``sub-<l>[_ses-<l>]`` their names must start with."""
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(dwi_dir.iterdir()):
        if not p.name.startswith(".") and p.is_file() and _dwi_ext(p.name):
            by_stem.setdefault(p.name[: -len(_dwi_ext(p.name))], []).append(p)
    out = []
    for stem, images in by_stem.items():
        check_subject_name(stem, dwi_dir)  # the name becomes a folder and a manifest row (as prep hcp checks)
        image, error = images[0], ""
        entities = parse_entities(stem)
        bval = bvec = None
        if len(images) > 1:
            error = f"{image}: both {images[0].name} and {images[1].name} exist; keep one"
        elif entities is None or not (stem == prefix or stem.startswith(prefix + "_")):
            error = (f"{image}: file name does not follow BIDS here (expected "
                     f"{prefix}[_<key>-<value>...]_{DWI_SUFFIX}.nii.gz)")
        else:
            try:
                bval = find_sidecar(root, image, entities, "bval")
                bvec = find_sidecar(root, image, entities, "bvec")
            except ValueError as e:
                error = str(e)
        out.append(Series(name=stem, data=image, entities=entities or {},
                          folder=dwi_dir.relative_to(root).as_posix(), bval=bval, bvec=bvec, error=error))
    return out


def find_series(root: str | os.PathLike, participants: list[str] | None = None,
                sessions: list[str] | None = None) -> Dataset:
    """Every dwi series of the selected subjects and sessions (labels with or without their prefix).

    With ``sessions`` given, series outside a session folder are left out (as pybids' ``session=`` filter
    does), so a subject without those sessions is listed in ``no_dwi``.

    Raises:
        ValueError: no ``sub-*`` folder, or a requested participant / session that is not there.
    """
    root = Path(root)
    folders = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no sub-<label> folders found (expected sub-<label>/[ses-<label>/]dwi/*_dwi.nii.gz)")
    if participants:
        labels = list(dict.fromkeys(strip_prefix(x, "sub-") for x in participants))
        missing = [f"sub-{x}" for x in labels if not (root / f"sub-{x}").is_dir()]
        if missing:
            raise ValueError(f"{root}: no subject folder(s) {', '.join(missing)} (--participant-label)")
        folders = sorted(root / f"sub-{x}" for x in labels)
    wanted = None if not sessions else {strip_prefix(x, "ses-") for x in sessions}
    seen: set[str] = set()
    series: list[Series] = []
    no_dwi: list[str] = []
    for sub in folders:
        found = []
        if wanted is None and (sub / "dwi").is_dir():
            found += _series_in(root, sub / "dwi", sub.name)
        for ses in sorted(p for p in sub.glob("ses-*") if p.is_dir()):
            label = strip_prefix(ses.name, "ses-")
            seen.add(label)
            if (wanted is None or label in wanted) and (ses / "dwi").is_dir():
                found += _series_in(root, ses / "dwi", f"{sub.name}_{ses.name}")
        series += found
        if not found:
            no_dwi.append(sub.name)
    if wanted and wanted - seen:
        raise ValueError(f"{root}: no session folder(s) {', '.join('ses-' + x for x in sorted(wanted - seen))} "
                         "in the selected subjects (--session)")
    by_name: dict[str, Series] = {}
    for s in series:  # a misnamed file can claim another series' name: keep one row, failed, naming both
        if s.name in by_name:
            first = by_name[s.name]
            s = replace(first, error=f"{first.data}: its series name {s.name} is also the name of {s.data}; "
                                     "rename the misplaced file")
        by_name[s.name] = s
    return Dataset(series=sorted(by_name.values(), key=lambda s: s.name), no_dwi=no_dwi)


def check_mask_pattern(pattern: str) -> list[str]:
    """The field names of ``--mask-pattern`` (``{name}``, ``{folder}``, ``{sub}``, any entity key); one-line errors."""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise ValueError(f"--mask-pattern {pattern!r}: {e}") from None
    for f in fields:
        if not re.fullmatch(r"[a-zA-Z0-9]+", f):
            raise ValueError(f"--mask-pattern {pattern!r}: field {{{f}}} is not a name; use {{name}}, {{folder}}, "
                             "{sub}, {ses} or another entity key")
    return fields


def mask_path(root: Path, series: Series, pattern: str) -> Path:
    """The mask file ``pattern`` names for ``series`` (relative patterns start at the dataset root)."""
    values = {**series.entities, "name": series.name, "folder": series.folder}
    missing = [f for f in check_mask_pattern(pattern) if f not in values]
    if missing:
        raise ValueError(f"--mask-pattern {pattern!r}: {series.data.name} has no {', '.join(missing)} entity")
    path = Path(pattern.format_map(values))
    return path if path.is_absolute() else root / path


def b0_brain_mask(b0s: np.ndarray) -> np.ndarray:
    """Brain mask from b0 volumes (n_b0, X, Y, Z): dipy ``median_otsu`` on their mean -> bool (X, Y, Z)."""
    from dipy.segment.mask import median_otsu

    _, mask = median_otsu(b0s.mean(axis=0), median_radius=MEDIAN_RADIUS, numpass=NUMPASS)
    return np.asarray(mask, dtype=bool)


def prep_series(name: str, out_dir: Path, progress: bool = False, *, series: dict[str, Series], input_dir: str,
                mask_pattern: str | None = None, shell: float = 1000.0, tolerance: float = 100.0, factor: FactorLike = 2,
                pad: bool = False, overwrite: bool = True, chunk: int = CHUNK_VOXELS, profile: str = "box") -> dict:
    """Prepare one BIDS dwi series; returns its manifest row. Raises a one-line error naming the file."""
    s = series[name]
    if s.error:
        raise ValueError(s.error)
    for ext, path in (("bval", s.bval), ("bvec", s.bvec)):
        if path is None:
            raise FileNotFoundError(f"{sidecar_path(s.data, ext)}: file not found "
                                    f"(nor a .{ext} inherited from a folder above)")
    mask = b0_brain_mask
    if mask_pattern:
        mask = mask_path(Path(input_dir), s, mask_pattern)
        if not mask.is_file():
            raise FileNotFoundError(f"{mask}: file not found (--mask-pattern {mask_pattern!r})")
    return prep_dwi(name, out_dir, progress, data_path=s.data, bvals_path=s.bval, bvecs_path=s.bvec, mask=mask,
                    shell=shell, tolerance=tolerance, factor=factor, pad=pad, overwrite=overwrite, chunk=chunk,
                    profile=profile)
