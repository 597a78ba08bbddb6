"""An exclusive lock between processes: ``fcntl.flock`` on a lock file.

Used where several independent processes (DDP ranks, prep jobs of a SLURM array, two trainings)
update one shared file: the manifest of an output folder, a subject's cache. ``flock`` locks are
released by the kernel when the holder exits or is killed, so a crashed job never leaves a folder
locked. The lock file itself is left in place: removing it while another process waits on it
would let a third process lock a new file of the same name at the same time.

On NFS, Linux emulates ``flock`` with POSIX byte-range locks, which the server arbitrates between
machines (NFSv4, or v3 with lockd): jobs on several nodes sharing one disk exclude each other too.
Where ``fcntl`` does not exist (Windows) the lock is a no-op: one writer at a time is then the
user's to ensure.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from medsr.utils.atomic import current_umask

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class LockHeld(OSError):
    """The lock is held by another live process (raised by ``file_lock(..., wait=False)``)."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if absent, with its folder) for the ``with`` block.

    Args:
        path: the lock file.
        wait: block until every other holder has released it; False raises :class:`LockHeld` at once.

    A holder may remove the lock file when it is done with what the lock guards (a refused run
    removing the folder it created): a process that locked the removed file notices that the path now
    names another file (or none) and locks again, so two processes never both hold ``path``.

    Raises:
        OSError: the lock file cannot be created (e.g. a read-only folder), naming the path.
        LockHeld: ``wait`` is False and another process holds the lock.
    """
    path = Path(path)
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        except OSError as e:
            raise OSError(e.errno, f"cannot create the lock file ({e.strerror})", str(path)) from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise LockHeld(errno.EWOULDBLOCK, "locked by another process", str(path)) from None
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was removed (or replaced) while we waited: lock the one there now
    try:
        yield path
    finally:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
