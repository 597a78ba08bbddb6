"""Run a per-subject preparation over many subjects: workers, progress bar, manifest, skip/retry.

Shared by ``medsr prep hcp`` and ``medsr prep volumes``. A subject's work is a picklable callable
``process(subject, out_dir, progress) -> dict`` returning its manifest row (``status="ok"``); any
exception it raises marks the subject ``failed`` with a one-line ``error`` naming the subject, and
the others carry on.

Guarantees:

* every output file is written through :func:`medsr.utils.atomic.atomic_path`, and a subject that
  fails has the output files this run created removed, so no partial subject is left behind (files
  that were there before the run started are never removed);
* no output path may resolve outside the output folder (a link there is refused), and the caller
  refuses an output folder overlapping an input subject folder (:func:`check_output_folder`);
* the manifest is updated (atomically) after each subject, so an interrupted run keeps its progress;
* any number of runs (``medsr prep ... --subjects ...`` jobs, e.g. a SLURM array) can prepare
  disjoint subjects into one output folder at once: each merges its own rows into the manifest
  under a lock (:func:`medsr.manifest.update_manifest`), so the manifest ends up with every subject;
* a full output disk stops the run at once (the file named, exit code 2): it is not the subject's fault
  and every other subject would fail the same way;
* a rerun skips subjects whose row is ``ok`` and whose files all exist, and retries the others
  (``overwrite=True`` redoes every subject);
* the return value is 0 when every subject is ``ok``, 1 otherwise.
"""
from __future__ import annotations

import errno
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from medsr.factor import FactorLike, factor_triple, format_factor
from medsr.manifest import LR_ONLY_EMPTY, PATH_COLUMNS, empty_row, is_lr_only, read_manifest_raw, update_manifest
from medsr.utils.paths import check_subject_name, inside
from medsr.utils.threads import worker_threads

OUTPUT_FILES: dict[str, str] = {"hr": "hr.nii.gz", "lr": "lr.nii.gz", "lr_up": "lr_up.nii.gz", "mask": "mask.nii.gz"}
MANIFEST_NAME = "manifest.csv"

Process = Callable[[str, Path, bool], dict]


def subject_outputs(out_dir: Path, subject: str) -> dict[str, Path]:
    """The four output paths of ``subject`` under ``out_dir``."""
    return {k: Path(out_dir) / subject / v for k, v in OUTPUT_FILES.items()}


def subject_folders(input_dir: str | os.PathLike, expected: str, single_subject_marker: str | None = None) -> list[str]:
    """Every non-hidden sub-folder of ``input_dir``: the subjects (a folder lacking files fails on its own later).

    Args:
        expected: the layout inside a subject folder, quoted in the error when there is none.
        single_subject_marker: a relative path that exists only inside a subject folder, to catch a
            subject folder given where its parent is expected.
    """
    root = Path(input_dir)
    if root.is_file():
        raise ValueError(f"{root}: is a file; --input expects a folder of subject folders")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    if single_subject_marker and (root / single_subject_marker).exists():
        raise ValueError(f"{root}: is a single subject folder; pass its parent folder as --input")
    subjects = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for s in subjects:
        check_subject_name(s, root)
    if not subjects:
        raise ValueError(f"{root}: no subject folders found (expected {expected})")
    return subjects


def one_line(err: BaseException) -> str:
    """An exception as one line: its message (or type name), newlines folded."""
    msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    msg = " ".join(msg.split()) or type(err).__name__
    known = (ValueError, FileNotFoundError, FileExistsError, KeyError, EOFError, OSError)
    return msg if isinstance(err, known) else f"{type(err).__name__}: {msg}"


def check_output_folder(input_dir: str | os.PathLike, subjects: list[str], out_dir: str | os.PathLike) -> None:
    """Refuse an output folder that is, contains, or lies inside one of the input subject folders.

    Prep writes ``<out>/<subject>/mask.nii.gz`` and removes its own files when a subject fails; with
    the output inside (or equal to) an input subject folder, either could replace or delete the user's
    own files (``--input D --output D`` would overwrite ``D/<subject>/mask.nii.gz``).
    """
    out = Path(out_dir).resolve()
    for s in subjects:
        folder = (Path(input_dir) / s).resolve()
        if out == folder or folder in out.parents or out in folder.parents:
            how = "is" if out == folder else ("lies inside" if folder in out.parents else "contains")
            raise ValueError(
                f"{out_dir}: the output folder {how} the input subject folder {Path(input_dir) / s}; prep would "
                "overwrite or delete input files there, choose an output folder outside the input subjects"
            )


Snapshot = dict[str, "tuple[int, int, int, int] | None"]


def _snapshot(out_dir: Path, subject: str) -> Snapshot:
    """Identity (device, inode, mtime, size) of each output path before a subject runs; None = absent.

    Clean-up after a failure removes only paths whose identity changed, i.e. files this run created
    (an atomic write always makes a new inode), never a file that was there before it started.
    """
    snap: Snapshot = {"<dir>": _identity(Path(out_dir) / subject)}
    for k, p in subject_outputs(out_dir, subject).items():
        snap[k] = _identity(p)
    return snap


def _identity(p: Path) -> "tuple[int, int, int, int] | None":
    try:
        st = p.lstat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def run_one(process: Process, subject: str, out_dir: Path, kind: str, factor: FactorLike, progress: bool = False,
            before: Snapshot | None = None) -> dict:
    """Run ``process`` for one subject; never raises (a failure becomes a ``failed`` row).

    Args:
        before: :func:`_snapshot` taken before the subject started (taken here when None).
    """
    before = _snapshot(out_dir, subject) if before is None else before
    try:
        for p in subject_outputs(out_dir, subject).values():
            inside(out_dir, p)  # a link placed in the output folder must not redirect writes elsewhere
        row = process(subject, out_dir, progress)
        row.setdefault("status", "ok")
        return row
    except Exception as e:  # noqa: BLE001 - one bad subject must not stop the others
        _remove_outputs(out_dir, subject, before)
        if disk_full(e):
            raise  # the output disk, not this subject: every other would fail too (exit 2, the file named)
        row = empty_row(subject)
        row.update(status="failed", error=f"subject {subject}: {one_line(e)}", kind=kind, factor=factor)
        return row


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` is the output disk refusing a write (full, over quota, a file-size limit)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _remove_outputs(out_dir: Path, subject: str, before: Snapshot) -> None:
    """Remove the output files of ``subject`` that this run created (see :func:`_snapshot`)."""
    for k, p in subject_outputs(out_dir, subject).items():
        now = _identity(p)
        if now is not None and now != before.get(k) and not p.is_symlink():
            p.unlink(missing_ok=True)
    if before.get("<dir>") is None:
        try:
            (Path(out_dir) / subject).rmdir()  # created by this run; only if now empty
        except OSError:
            pass


def _is_done(row: dict | None, out_dir: Path, subject: str) -> bool:
    """The row is ``ok``, names this subject's own output files, and they all exist.

    A row whose paths point elsewhere (e.g. a manifest written by an older medsr with a relative
    ``--output``) is redone, so a rerun repairs the manifest instead of keeping it.
    """
    if not row or row.get("status") != "ok":
        return False
    outputs = subject_outputs(out_dir, subject)
    if is_lr_only(row):  # `prep volumes --lr-only` writes the scan and its mask only
        outputs = {k: p for k, p in outputs.items() if k not in LR_ONLY_EMPTY}
    return all(p.exists() and row.get(k) and Path(row[k]).resolve() == p.resolve() for k, p in outputs.items())


def run_subjects(
    subjects: list[str],
    process: Process,
    out_dir: str | Path,
    *,
    kind: str,
    factor: FactorLike,
    workers: int = 1,
    overwrite: bool = False,
    desc: str = "prep",
) -> int:
    """Prepare ``subjects`` into ``out_dir`` and keep ``out_dir/manifest.csv`` up to date.

    Args:
        subjects: subject ids (folder names).
        process: the per-subject work (module-level, picklable, e.g. a ``functools.partial``).
        out_dir: output folder; it receives ``<subject>/{hr,lr,lr_up,mask}.nii.gz`` and the manifest.
        kind: ``"dti"`` or ``"scalar"`` (written in failed rows too).
        factor: the downsampling factor (written in failed rows too).
        workers: parallel processes (1 = in this process, with a per-subject inner progress bar).
        overwrite: redo subjects that are already done.

    Returns:
        0 if every subject's row is ``ok`` after the run, else 1.
    """
    # Absolute from here on: rows, workers and the manifest must agree whatever the working directory.
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    rows = _read_rows(manifest, out_dir)
    _check_same_factor(rows, manifest, factor, overwrite)
    todo = [s for s in subjects if overwrite or not _is_done(rows.get(s), out_dir, s)]
    skipped = len(subjects) - len(todo)
    _unmark(rows, [s for s in todo if s in rows], manifest, kind, factor)
    if skipped:
        print(f"{desc}: {skipped} subject(s) already done, skipped (use --overwrite to redo)", file=sys.stderr)

    def record(row: dict, bar: tqdm) -> None:
        rows[row["subject"]] = row
        update_manifest(manifest, [row])  # only this subject's row: other jobs may be writing theirs
        if row["status"] != "ok":
            bar.write(f"{desc}: {row['error']}", file=sys.stderr)
        bar.update(1)

    with tqdm(total=len(todo), desc=desc, unit="subject", file=sys.stderr, disable=not todo) as bar:
        if workers <= 1 or len(todo) <= 1:
            for s in todo:
                record(run_one(process, s, out_dir, kind, factor, progress=True), bar)
        else:
            for row in _run_in_workers(todo, process, out_dir, kind, factor, workers):
                record(row, bar)
    if not manifest.exists():
        update_manifest(manifest, [])
    n_failed = sum(rows[s]["status"] != "ok" for s in subjects if s in rows)
    n_ok = len(subjects) - n_failed
    print(f"{desc}: {n_ok} ok ({skipped} skipped), {n_failed} failed; manifest: {manifest}", file=sys.stderr)
    return 1 if n_failed else 0


def _check_same_factor(rows: dict[str, dict], manifest: Path, factor: FactorLike, overwrite: bool) -> None:
    """Refuse to add subjects at one factor to a manifest of subjects prepared at another (unless ``overwrite``)."""
    other = sorted({format_factor(r["factor"], " ") for r in rows.values()
                    if r.get("status") == "ok" and r.get("factor") and factor_triple(r["factor"]) != factor_triple(factor)})
    if other and not overwrite:
        raise ValueError(f"{manifest}: holds subjects prepared at factor {', '.join(other)}, not "
                         f"{format_factor(factor, ' ')}; choose another --output (or --overwrite to redo them)")


def _read_rows(manifest: Path, out_dir: Path) -> dict[str, dict]:
    """The manifest's rows by subject (none when it does not exist yet), with absolute paths."""
    if not manifest.exists():
        return {}
    rows = {str(r["subject"]): dict(r) for r in read_manifest_raw(manifest).to_dict("records")}
    for r in rows.values():  # stored relative: make them absolute again for write_manifest
        for c in PATH_COLUMNS:
            if r[c] and not Path(r[c]).is_absolute():
                r[c] = str(out_dir / r[c])
    return rows


def _unmark(rows: dict[str, dict], stale: list[str], manifest: Path, kind: str, factor: FactorLike) -> None:
    """Mark ``stale`` subjects (about to be redone) unfinished in ``rows`` and the manifest.

    So a run interrupted half-way through rewriting a subject can never leave an "ok" row over a mix of
    old and new files: the next run retries them.
    """
    for s in stale:
        rows[s] = dict(empty_row(s), status="failed", kind=kind, factor=factor,
                       error=f"subject {s}: not finished (the run preparing it was interrupted)")
    if stale:
        update_manifest(manifest, [rows[s] for s in stale])


def _run_in_workers(todo: list[str], process: Process, out_dir: Path, kind: str, factor: FactorLike,
                    workers: int) -> Iterator[dict]:
    """Run ``todo`` in worker processes; yield each subject's row as it finishes (a dead worker: a failed row)."""
    # spawn: a fresh interpreter per worker, safe with BLAS threads and any imported library; each worker
    # gets its share of the cores for those threads (worker_threads), not every core.
    ctx = multiprocessing.get_context("spawn")
    n = min(workers, len(todo))
    with worker_threads(n), ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        before = {s: _snapshot(out_dir, s) for s in todo}
        pending: dict[Future, str] = {
            pool.submit(run_one, process, s, out_dir, kind, factor, False, before[s]): s for s in todo
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                s = pending.pop(fut)
                try:
                    row = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker died (e.g. killed for memory)
                    _remove_outputs(out_dir, s, before[s])
                    if disk_full(e):
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
                    row = empty_row(s)
                    row.update(status="failed", error=f"subject {s}: worker died: {one_line(e)}",
                               kind=kind, factor=factor)
                yield row
