"""The prepared-data manifest: one CSV row per subject, written by ``medsr prep``, read by training.

Columns (fixed; others code against them)::

    subject, hr, lr, lr_up, mask, shape, voxel_size, brain_voxels, n_patches, status, error, factor, kind

* paths (hr, lr, lr_up, mask) are stored relative to the manifest's folder, so a prepared folder can be
  moved as a whole; :func:`read_manifest` returns them absolute;
* ``shape`` is the HR spatial shape as ``"XxYxZ"``, ``voxel_size`` the HR voxel size in mm as
  ``"1.25x1.25x1.25"`` (see :func:`parse_triple`);
* ``status`` is ``ok`` or ``failed`` (then ``error`` holds the one-line reason and paths may be empty);
* ``kind`` is ``dti`` (6 channels, FSL order) or ``scalar`` (1 channel);
* ``factor`` is the downsampling factor: ``2`` when it is the same on every axis (the only form older
  manifests hold), ``1x1x4`` per axis otherwise; read back as an int or that text
  (:func:`medsr.factor.factor_triple` takes either).

Several writers (prep jobs of a SLURM array sharing one output folder) go through
:func:`update_manifest`: it merges their rows into the manifest on disk under a lock, so no job
overwrites the rows another one wrote.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from medsr.factor import factor_value, format_factor
from medsr.utils.atomic import atomic_path
from medsr.utils.lock import file_lock
from medsr.utils.paths import check_subject_name

COLUMNS: tuple[str, ...] = (
    "subject", "hr", "lr", "lr_up", "mask", "shape", "voxel_size",
    "brain_voxels", "n_patches", "status", "error", "factor", "kind",
)
PATH_COLUMNS: tuple[str, ...] = ("hr", "lr", "lr_up", "mask")
LOCK_NAME = "manifest.lock"  # beside the manifest; held while a writer merges its rows
_STR_COLUMNS = ("subject", "hr", "lr", "lr_up", "mask", "shape", "voxel_size", "status", "error", "kind")
_INT_COLUMNS = ("brain_voxels", "n_patches")


def format_triple(values: Iterable[float], fmt: str = "g") -> str:
    """(145, 174, 145) -> ``"145x174x145"``; (1.25, 1.25, 1.25) -> ``"1.25x1.25x1.25"``."""
    return "x".join(format(float(v) if fmt != "d" else int(v), fmt) for v in values)


def parse_triple(text: str, cast: type = float) -> tuple:
    """``"145x174x145"`` -> (145, 174, 145) with ``cast`` applied to each entry."""
    return tuple(cast(float(p)) if cast is int else cast(p) for p in str(text).split("x"))


def _stored_factor(value) -> int | str:
    """A factor as the manifest holds it: an int when isotropic, ``"1x1x4"`` per axis, 0 when unknown."""
    try:
        v = factor_value(value)
    except ValueError:
        return 0  # a failed row written before its factor was known
    return v if isinstance(v, int) else format_factor(v)


def empty_row(subject: str) -> dict:
    """A row with every column present (strings empty, numbers 0)."""
    row = {c: "" for c in COLUMNS}
    row.update(subject=str(subject), brain_voxels=0, n_patches=0, factor=0)
    return row


def write_manifest(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write ``rows`` (dicts with the manifest columns; absolute or relative paths) atomically.

    Relative paths in ``rows`` are read against the current working directory (as every other path a
    user passes); paths inside the manifest's folder are stored relative to it, so the stored manifest
    reads the same from any working directory. Rows are sorted by subject.
    """
    path = Path(path)
    base = path.parent.resolve()
    out = []
    for r in rows:
        row = empty_row(r.get("subject", ""))
        row.update({k: r[k] for k in COLUMNS if k in r and r[k] is not None})
        row["factor"] = _stored_factor(row["factor"])
        for c in PATH_COLUMNS:
            if row[c]:
                p = Path(row[c]).resolve()  # relative = relative to the working directory
                try:
                    p = p.relative_to(base)
                except ValueError:  # outside the folder: keep it absolute
                    pass
                row[c] = p.as_posix()
        out.append(row)
    df = pd.DataFrame(out, columns=list(COLUMNS)).sort_values("subject", kind="stable")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def update_manifest(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Merge ``rows`` into the manifest at ``path`` (created if absent): each replaces its subject's row.

    The read-merge-write runs under an exclusive lock on ``manifest.lock`` beside the manifest
    (:func:`medsr.utils.lock.file_lock`), so any number of processes can each update their own
    subjects at once and the manifest ends up with every row. Paths in ``rows`` follow
    :func:`write_manifest`; rows already in the manifest keep theirs.
    """
    path = Path(path)
    with file_lock(path.parent / LOCK_NAME):
        merged: dict[str, dict] = {}
        if path.exists():
            base = path.parent.resolve()
            for r in read_manifest_raw(path).to_dict("records"):
                for c in PATH_COLUMNS:  # stored relative to the manifest; write_manifest wants them absolute
                    if r[c] and not Path(r[c]).is_absolute():
                        r[c] = str(base / r[c])
                merged[str(r["subject"])] = r
        for r in rows:
            merged[str(r["subject"])] = dict(r)
        return write_manifest(path, merged.values())


def read_manifest_raw(path: str | os.PathLike) -> pd.DataFrame:
    """The manifest as stored (relative paths, every status); subjects stay strings ("100307")."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found (run 'medsr prep' first)")
    try:
        df = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable manifest CSV ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    for c in _INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").fillna(0).astype(int)
    df["factor"] = [_stored_factor(f) for f in df["factor"].astype(str)]
    seen: set[str] = set()
    for s in df["subject"]:  # subject names become file names downstream (infer, evaluate, report)
        check_subject_name(s, path)
        if s in seen:  # two rows would write one output file: say so before any work
            raise ValueError(f"subject {s} is listed twice in {path}")
        seen.add(s)
    return df[list(COLUMNS)]


def read_manifest(path: str | os.PathLike, ok_only: bool = True) -> pd.DataFrame:
    """Read a manifest with absolute paths.

    Args:
        path: ``manifest.csv``.
        ok_only: keep only ``status == "ok"`` rows (the default, what training wants).

    Returns:
        DataFrame with the manifest columns, index 0..n-1, paths absolute.

    Raises:
        FileNotFoundError: the manifest, or a file named by an ``ok`` row, is missing
            (the message names the subject, the column and the path).
    """
    path = Path(path)
    df = read_manifest_raw(path)
    base = path.parent.resolve()
    if ok_only:
        df = df[df["status"] == "ok"]
    df = df.reset_index(drop=True).copy()
    for c in PATH_COLUMNS:
        df[c] = [str(p if Path(p).is_absolute() else (base / p)) if p else "" for p in df[c]]
    for _, row in df[df["status"] == "ok"].iterrows():
        for c in PATH_COLUMNS:
            if not row[c] or not Path(row[c]).exists():
                raise FileNotFoundError(
                    f"{path}: subject {row['subject']}: {c} file {row[c] or '(empty)'} is missing"
                )
    return df
