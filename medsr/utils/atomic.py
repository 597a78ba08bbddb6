"""Atomic file writes: a crash or a bad input never leaves a partial output behind.

A write goes to a hidden temporary file beside its target, named
``.<target name>.<pid>-<random>.medsr-tmp<suffixes>`` (the suffixes kept so writers that infer the
format from the extension still work), and is renamed over the target only on success. The temporary
file gets the permissions of any new file (``0666`` minus the umask), not ``mkstemp``'s private
``0600``, so outputs on a shared disk are as readable as the user's other files. A process killed in
the middle of a write leaves its temporary file behind; the next write to the same target removes
the temporaries of writers that are no longer running.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Iterator

TEMP_TAG = ".medsr-tmp"
_UMASK_LOCK = threading.Lock()


def _suffix(path: Path) -> str:
    return "".join(path.suffixes) or ".tmp"


def current_umask() -> int:
    """The process umask (read from /proc on Linux; elsewhere set and restored under a lock)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or unknown: keep its file
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files of earlier writes to ``path`` whose writing process is gone (killed or crashed)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[^/]*{re.escape(TEMP_TAG + _suffix(path))}")
    found = []
    for q in path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_TAG}*"):
        m = pattern.fullmatch(q.name)
        if m and q.is_file() and not q.is_symlink() and not _pid_alive(int(m.group(1))):
            found.append(q)
    return found


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_path`'s temporaries."""
    return name.startswith(".") and TEMP_TAG in name


def write_failed(path: str | os.PathLike, error: BaseException) -> OSError:
    """An OSError naming ``path`` for a write a C++ library reported only as text (SimpleITK).

    ``ENOSPC`` when the file system has no space left, else ``EIO`` with the library's last line.
    """
    try:
        st = os.statvfs(Path(path).parent)
        full = st.f_bavail * st.f_frsize < 1 << 20 or (st.f_files and st.f_favail == 0)
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    last = next((ln.strip() for ln in reversed(str(error).splitlines()) if ln.strip()), type(error).__name__)
    return OSError(errno.EIO, f"write failed ({last[:200]})", str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    for q in stale_temporaries(path):  # left by a killed write to this same output
        with contextlib.suppress(OSError):
            q.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=TEMP_TAG + _suffix(path), dir=path.parent)
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if e.errno is not None and e.filename in (None, str(tmp_path)):
            # e.g. a full disk, or a folder at the output path: name the output, not the temporary
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
