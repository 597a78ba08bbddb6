"""Names and paths that come from data (subject ids, manifest rows) checked before they become file names.

A subject id is used as a file or folder name (``<predictions>/<subject>.nii.gz``,
``<prep>/<subject>/hr.nii.gz``), so an id such as ``../x`` or ``/etc/x`` would write outside the
output folder. :func:`check_subject_name` refuses such ids where they are read, and
:func:`inside` checks every output path against its folder just before it is written (which also
catches a symbolic link placed in the output folder that points elsewhere).

Subject IDs enter through one door, :func:`subject_id` / :func:`subject_list` (config lists,
``--subjects``): HCP's numeric IDs become their digits, and an ID listed twice is refused.
:func:`check_not_input` is the one rule of ``--overwrite``: an output is never a file the same command
reads.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Mapping


def check_subject_name(name: object, where: str | os.PathLike) -> str:
    """Return ``name`` as a str when it is usable as a file name, else raise a one-line ValueError.

    Refused: empty, ``.`` or ``..``, a path separator (``/``, ``\\``), an absolute path, control
    characters (newline, tab, NUL...), leading or trailing whitespace.

    Args:
        name: the subject id.
        where: the file or folder it came from, named in the message.
    """
    text = "" if name is None else str(name)
    problem = None
    if not text:
        problem = "is empty"
    elif text in (".", ".."):
        problem = "is not a name"
    elif "/" in text or "\\" in text or os.sep in text or (os.altsep and os.altsep in text):
        problem = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in text):
        problem = "contains a control character"
    elif text != text.strip():
        problem = "has leading or trailing spaces"
    elif Path(text).is_absolute() or Path(text).drive:
        problem = "is an absolute path"
    if problem:
        raise ValueError(f"{where}: subject name {text!r} {problem}; a subject name must be a plain file name")
    return text


def subject_id(value: object, where: str | os.PathLike) -> str:
    """The one spelling of a subject ID every command uses: a name as it is, an integer as its digits.

    HCP names subjects by number (``100307``), so a YAML list or a Python list may hold integers;
    they become the same string the manifest and the folder names hold. The result is checked by
    :func:`check_subject_name`.

    Raises:
        ValueError: naming ``where``, when ``value`` is neither a str nor an int (a bool, a float, a
            list...) or is not usable as a file name.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: subject ID {value!r} is not a name or a number")
    return check_subject_name(str(value), where)


def subject_list(values: Iterable[object], where: str | os.PathLike) -> list[str]:
    """Subject IDs (:func:`subject_id`) in their order; an ID listed twice is refused, naming it."""
    out: list[str] = []
    for v in values:
        s = subject_id(v, where)
        if s in out:
            raise ValueError(f"{where}: subject {s} is listed twice")
        out.append(s)
    return out


def inside(folder: str | os.PathLike, path: str | os.PathLike, what: str = "output") -> Path:
    """Return ``path`` when it resolves inside ``folder`` (links followed), else raise a one-line ValueError."""
    root, p = Path(folder).resolve(), Path(path).resolve()
    if p != root and root not in p.parents:
        raise ValueError(f"{path}: {what} would be written outside its folder {folder} (it resolves to {p})")
    return Path(path)


def check_not_input(outputs: Iterable[str | os.PathLike],
                    inputs: Mapping[str, str | os.PathLike | Iterable[str | os.PathLike] | None],
                    flag: str = "--overwrite") -> None:
    """The one rule of ``--overwrite``: it replaces earlier outputs, never a file the same command reads.

    Checked before any work, with or without ``--overwrite`` (without it the output would only be
    refused as existing, which hides the real mistake). An output is an input when both paths resolve
    to one path (links followed) or name one existing file (a hard link).

    Args:
        outputs: every file the command is about to write (or remove, for ``train --overwrite``).
        inputs: label (``the --input``, ``the config``) -> the file(s) the command reads.
        flag: the option named in the message.

    Raises:
        ValueError: naming the output and the input it would replace.
    """
    by_path: dict[Path, tuple[str, Path]] = {}
    by_file: dict[tuple[int, int], tuple[str, Path]] = {}
    for label, paths in inputs.items():
        if paths is None:
            continue
        for q in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
            q = Path(q)
            by_path.setdefault(q.resolve(), (label, q))
            with contextlib.suppress(OSError):
                st = q.stat()
                by_file.setdefault((st.st_dev, st.st_ino), (label, q))
    for out in outputs:
        hit = by_path.get(Path(out).resolve())
        if hit is None:
            with contextlib.suppress(OSError):
                st = Path(out).stat()
                hit = by_file.get((st.st_dev, st.st_ino))
        if hit is not None:
            label, q = hit
            raise ValueError(f"{out}: is also {label} this command reads ({q}); {flag} replaces earlier "
                             "outputs, never an input: choose another output")
