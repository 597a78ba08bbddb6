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
import os
from pathlib import Path
from typing import Iterator

from medsr.utils.atomic import current_umask

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if absent, with its folder) for the ``with`` block.

    Blocks until every other holder has released it.

    Raises:
        OSError: the lock file cannot be created (e.g. a read-only folder), naming the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
    except OSError as e:
        raise OSError(e.errno, f"cannot create the lock file ({e.strerror})", str(path)) from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
