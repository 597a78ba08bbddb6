"""Memory-mappable copies of prepared subjects: training memory that does not grow with the subjects.

A prepared subject is stored as compressed NIfTI (``hr.nii.gz``, ``lr_up.nii.gz``, ``mask.nii.gz``);
reading a patch from those means decompressing the whole file, so without a cache training would hold
every subject in memory (about 7 MB per 96^3 scalar subject, 176 MB per HCP DTI subject, per process).
Instead, each subject gets a cache folder beside its files, written on first use::

    <subject>/cache/hr.npy        (C, X, Y, Z) float32, C order, raw values (not normalised)
    <subject>/cache/lr_up.npy     (C, X, Y, Z) float32
    <subject>/cache/mask.npy      (X, Y, Z) bool
    <subject>/cache/brain.npy     (N, 3) int32 brain voxel coordinates (random patch centres)
    <subject>/cache/cache.json    sources (name, size, mtime), grid, channels, per-channel brain sums
    <subject>/cache/origins-*.npy the brain-rule patch grid per (patch size, stride, brain fraction)

Training maps the ``.npy`` files read-only (:mod:`medsr.data.mapped`): a patch read touches only its
own pages, the OS page cache holds the data once for every process on the node (DDP ranks,
DataLoader workers, two trainings), and a process's private memory stays flat in the number of
subjects. ``.npy`` was chosen on measurement (``benchmarks/patch_read.py``, docs/scale.md): a 16^3
patch of an HCP-size DTI volume reads in 70 us from the map with its pages released (40 us from
memory; 0.4 ms by ``pread``, 0.7 ms from chunked HDF5, 4.7 ms through nibabel's map of an
uncompressed NIfTI, 1 s from ``.nii.gz``), needs no new dependency, and its layout is the one the
dataset slices, so patches are bit-identical to before.

The normalisation statistics come from ``cache.json``'s brain sums (:class:`medsr.normalise.BrainSums`,
computed in the one streaming pass that writes the cache), pooled in manifest order: the same
float64 arithmetic as :func:`medsr.normalise.brain_stats`, so the statistics are bit-identical too.

Validity: ``cache.json`` records each source file's name, size and modification time (ns); a
prep rerun (an atomic write: a new file) changes them and the cache is rebuilt. Moving the prepared
folder as a whole keeps it valid. Writes go through :func:`medsr.utils.atomic.atomic_path`,
``cache.json`` last (it is what makes a cache valid), under :func:`medsr.utils.lock.file_lock` on
``cache/.lock``: of several processes that find a cache missing at once, one builds it and the
others wait for it and use it.

When the prepared folder is read-only, set ``MEDSR_CACHE_DIR``: caches then live under
``$MEDSR_CACHE_DIR/<hash of the subject folder's path>/``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medsr.data.mapped import NpyLayout, read_layout
from medsr.normalise import BrainSums, brain_sums
from medsr.utils.atomic import atomic_path
from medsr.utils.lock import file_lock

VERSION = 1
CACHE_FOLDER = "cache"
ENV_CACHE_DIR = "MEDSR_CACHE_DIR"
SOURCES = ("hr", "lr_up", "mask")
ARRAYS = ("hr", "lr_up", "mask", "brain")


@dataclass
class CacheEntry:
    """A valid cache of one subject.

    Attributes:
        folder: the cache folder (holds ``<name>.npy`` for each of :data:`ARRAYS`).
        shape: HR spatial shape (X, Y, Z).
        channels: C of hr and lr_up.
        affine: 4x4 HR voxel-to-world affine.
        sums: ``{"hr": BrainSums, "lr_up": BrainSums}`` over the brain mask.
        build: id of this build (files derived from the cache carry it, so a rebuild orphans them).
        layouts: the ``.npy`` header of each of :data:`ARRAYS` (parsed once, reused by every map).
    """

    folder: Path
    shape: tuple[int, int, int]
    channels: int
    affine: np.ndarray
    sums: dict[str, BrainSums]
    build: str
    layouts: dict[str, NpyLayout] = field(default_factory=dict)

    def path(self, array: str) -> Path:
        return self.folder / f"{array}.npy"

    @property
    def brain_voxels(self) -> int:
        return self.sums["hr"].n


def cache_folder(hr: str | os.PathLike) -> Path:
    """Where the cache of the subject whose ``hr`` file is given lives."""
    subject_dir = Path(hr).resolve().parent
    root = os.environ.get(ENV_CACHE_DIR)
    if root:
        key = hashlib.sha256(str(subject_dir).encode()).hexdigest()[:16]
        return Path(root) / f"{subject_dir.name}-{key}"
    return subject_dir / CACHE_FOLDER


def _identity(path: Path, base: Path) -> dict[str, Any]:
    st = path.stat()
    return {"file": os.path.relpath(path.resolve(), base), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _expected_sources(files: dict[str, str], base: Path) -> dict[str, dict[str, Any]]:
    return {k: _identity(Path(files[k]), base) for k in SOURCES}


def read_valid(folder: Path, files: dict[str, str]) -> CacheEntry | None:
    """The cache in ``folder`` if it was built from exactly ``files`` (and is complete), else None."""
    try:
        meta = json.loads((folder / "cache.json").read_text())
    except (OSError, ValueError):
        return None
    base = Path(files["hr"]).resolve().parent
    try:
        if meta.get("version") != VERSION or meta.get("sources") != _expected_sources(files, base):
            return None
        entry = CacheEntry(folder, tuple(int(v) for v in meta["shape"]), int(meta["channels"]),
                           np.asarray(meta["affine"], dtype=np.float64),
                           {k: BrainSums.from_dict(v) for k, v in meta["sums"].items()}, str(meta["build"]))
    except (OSError, KeyError, TypeError, ValueError):
        return None
    want = {"hr": (entry.channels, *entry.shape), "lr_up": (entry.channels, *entry.shape), "mask": entry.shape,
            "brain": (entry.brain_voxels, 3)}
    for name, shape in want.items():  # a deleted or foreign .npy makes the cache invalid, not an error
        try:
            entry.layouts[name] = read_layout(entry.path(name))
        except (OSError, ValueError):
            return None
        if entry.layouts[name].shape != tuple(shape):
            return None
    return entry


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:  # the temporary keeps the .npy suffix, so np.save adds none
        np.save(tmp, array, allow_pickle=False)


def build(folder: Path, files: dict[str, str], subject: str) -> CacheEntry:
    """Read one subject's NIfTI files, check them, and write its cache (the caller holds the lock).

    Raises:
        ValueError: grids or channel counts of hr / lr_up / mask disagree, or NaN/Inf values.
    """
    from medsr.io import load_mask, load_volume

    base = Path(files["hr"]).resolve().parent
    sources = _expected_sources(files, base)  # before reading: a file replaced meanwhile invalidates the cache
    hr = load_volume(files["hr"], name=f"subject {subject}: {files['hr']}")
    lr_up = load_volume(files["lr_up"], name=f"subject {subject}: {files['lr_up']}")
    hr.check_same_space(lr_up)
    if hr.channels != lr_up.channels:
        raise ValueError(f"subject {subject}: hr has {hr.channels} channels, lr_up {lr_up.channels}")
    mask = load_mask(files["mask"], like=hr)
    for vol, what in ((hr, files["hr"]), (lr_up, files["lr_up"])):
        if not np.isfinite(vol.data).all():
            raise ValueError(f"subject {subject}: {what} contains NaN or infinite values")
    sums = {"hr": brain_sums(hr.data, mask), "lr_up": brain_sums(lr_up.data, mask)}
    entry = CacheEntry(folder, hr.spatial_shape, hr.channels, np.asarray(hr.affine, dtype=np.float64), sums,
                       uuid.uuid4().hex)
    try:
        for old in folder.glob("origins-*.npy"):  # derived from an earlier build
            old.unlink(missing_ok=True)
        _save(entry.path("hr"), np.ascontiguousarray(hr.data, dtype=np.float32))
        del hr
        _save(entry.path("lr_up"), np.ascontiguousarray(lr_up.data, dtype=np.float32))
        del lr_up
        _save(entry.path("mask"), np.ascontiguousarray(mask, dtype=bool))
        _save(entry.path("brain"), np.argwhere(mask).astype(np.int32))
        meta = {"version": VERSION, "subject": subject, "build": entry.build, "sources": sources,
                "shape": list(entry.shape), "channels": entry.channels, "affine": entry.affine.tolist(),
                "sums": {k: v.to_dict() for k, v in sums.items()}}
        with atomic_path(folder / "cache.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    except OSError as e:
        raise _unwritable(subject, e) from None
    entry.layouts = {name: read_layout(entry.path(name)) for name in ARRAYS}
    return entry


def ensure(files: dict[str, str], subject: str) -> CacheEntry:
    """The valid cache of a subject, built first if missing or stale.

    Args:
        files: absolute paths ``{"hr", "lr_up", "mask"}`` (a manifest row).
        subject: its name, for messages.
    """
    folder = cache_folder(files["hr"])
    entry = read_valid(folder, files)
    if entry is not None:
        return entry
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(folder / ".lock"))
        except OSError as e:
            raise _unwritable(subject, e) from None
        entry = read_valid(folder, files)  # built by another process while this one waited
        return entry if entry is not None else build(folder, files, subject)


def _unwritable(subject: str, e: OSError) -> OSError:
    """``e`` (path and reason) with a note naming the subject and the way out (the CLI prints notes)."""
    err = OSError(e.errno, e.strerror, e.filename)
    err.add_note(f"subject {subject}: cannot write the training cache; if the prepared folder is read-only, "
                 f"set {ENV_CACHE_DIR} to a writable folder")
    return err


def cached_origins(entry: CacheEntry, size: int | Sequence[int], stride: int | None, min_fraction: float,
                   compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The brain-rule patch origins (N, 3) of a subject, computed once per cache build and parameters.

    ``compute()`` scans the whole mask (about 0.2 s for an HCP subject, per process and start: minutes
    for a thousand subjects on every rank); its result is saved beside the cache and read back next
    time. A cache folder that cannot be written only costs the recomputation.
    """
    edge = size if isinstance(size, (int, np.integer)) else "x".join(str(int(e)) for e in size)  # a cube, or a box
    path = entry.folder / f"origins-{entry.build}-{edge}-{stride}-{float(min_fraction)!r}.npy"
    try:
        origins = np.load(path)
        if origins.ndim == 2 and origins.shape[1] == 3:
            return origins
    except (OSError, ValueError):
        pass
    origins = np.asarray(compute())
    try:
        _save(path, origins)
    except OSError:
        pass
    return origins
