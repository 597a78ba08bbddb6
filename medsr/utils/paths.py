"""Names and paths that come from data (subject ids, manifest rows) checked before they become file names.

A subject id is used as a file or folder name (``<predictions>/<subject>.nii.gz``,
``<prep>/<subject>/hr.nii.gz``), so an id such as ``../x`` or ``/etc/x`` would write outside the
output folder. :func:`check_subject_name` refuses such ids where they are read, and
:func:`inside` checks every output path against its folder just before it is written (which also
catches a symbolic link placed in the output folder that points elsewhere).
"""
from __future__ import annotations

import os
from pathlib import Path


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


def inside(folder: str | os.PathLike, path: str | os.PathLike, what: str = "output") -> Path:
    """Return ``path`` when it resolves inside ``folder`` (links followed), else raise a one-line ValueError."""
    root, p = Path(folder).resolve(), Path(path).resolve()
    if p != root and root not in p.parents:
        raise ValueError(f"{path}: {what} would be written outside its folder {folder} (it resolves to {p})")
    return Path(path)
