"""Read-only memory maps of ``.npy`` files, with bounded resident memory and bounded file descriptors.

Two limits of a plain ``np.load(mmap_mode="r")`` matter once a training run maps hundreds of subjects:

* **Resident memory.** Pages a read touches join the process's resident set (the kernel maps up to
  64 kB around each fault), so over a long run a process would count every page of every subject it
  visited. :meth:`MappedArray.release` unmaps them from the process after a read
  (``madvise(MADV_DONTNEED)``); they stay in the OS page cache, shared by every process on the node,
  and come back from there on the next touch, about 20 us more per 16^3 DTI patch (docs/scale.md).
* **File descriptors.** Python's ``mmap`` keeps a duplicate of the file's descriptor for as long as
  the map lives (before Python 3.13's ``trackfd=False``), so four maps per subject would exhaust a
  common ``ulimit -n`` of 1024 at about 250 subjects. :class:`MappedGroup` opens a subject's maps on
  first use and keeps at most :func:`max_open_groups` groups open per process, closing the least
  recently used; reopening one is an ``open`` and an ``mmap`` per file, since the ``.npy`` header is
  parsed only once (:class:`NpyLayout`).
"""
from __future__ import annotations

import mmap
import os
import resource
import sys
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Drops a mapping's pages from this process (they stay in the OS page cache); None where the OS lacks it.
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
# Python >= 3.13 can map without holding a descriptor.
_NO_FD = {"trackfd": False} if sys.version_info >= (3, 13) else {}


@dataclass(frozen=True)
class NpyLayout:
    """Where an ``.npy`` file's array lies: shape, dtype, Fortran order and the data's byte offset."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int


def read_layout(path: str | os.PathLike) -> NpyLayout:
    """The :class:`NpyLayout` in an ``.npy`` file's header (the data are not read).

    Raises:
        OSError: the file cannot be read; ValueError: it is not an ``.npy`` file.
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return NpyLayout(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), f.tell())


class MappedArray:
    """A read-only ``.npy`` file mapped into memory.

    Args:
        path: the ``.npy`` file.
        layout: its header, when already known (saves parsing it again).

    Attributes:
        array: the file's array, backed by the mapping (read-only; no copy is made).
    """

    def __init__(self, path: str | os.PathLike, layout: NpyLayout | None = None) -> None:
        layout = layout or read_layout(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ, **_NO_FD)
        finally:
            os.close(fd)
        self.array = np.ndarray(layout.shape, layout.dtype, buffer=self._map, offset=layout.offset,
                                order="F" if layout.fortran else "C")

    def release(self) -> None:
        """Drop the pages of the mapping from this process's resident set (the data stay readable)."""
        if _DONTNEED is not None:
            self._map.madvise(_DONTNEED)


def max_open_groups(files_per_group: int) -> int:
    """How many groups of ``files_per_group`` maps one process keeps open: half the descriptor limit."""
    if _NO_FD:
        return 1 << 30
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(8, soft // 2 // max(files_per_group, 1))


class _OpenGroups:
    """The groups with open maps in this process, least recently used first (weakly held)."""

    def __init__(self) -> None:
        self.order: OrderedDict[int, weakref.ref] = OrderedDict()

    def touch(self, group: "MappedGroup", capacity: int) -> None:
        key = id(group)
        if key in self.order:
            self.order.move_to_end(key)
            return
        self.order[key] = weakref.ref(group, lambda _, key=key: self.order.pop(key, None))
        while len(self.order) > capacity:
            _, ref = self.order.popitem(last=False)
            old = ref()
            if old is not None:
                old.close()

    def discard(self, group: "MappedGroup") -> None:
        self.order.pop(id(group), None)


OPEN_GROUPS = _OpenGroups()


class MappedGroup:
    """Named ``.npy`` files mapped together on first use (one subject's arrays).

    Args:
        paths: name -> ``.npy`` path.
        layouts: name -> :class:`NpyLayout` (parsed once by the caller).
        capacity: most groups open at once in this process (default :func:`max_open_groups`).

    Pickling sends the paths and layouts only; the other side maps the files when it first reads.
    """

    def __init__(self, paths: dict[str, Path], layouts: dict[str, NpyLayout], capacity: int | None = None) -> None:
        self.paths = dict(paths)
        self.layouts = dict(layouts)
        self.capacity = capacity
        self._limit = capacity  # the capacity in force while open (computed at opening when not given)
        self._maps: dict[str, MappedArray] | None = None
        self._touched: set[str] = set()  # arrays handed out since the last release

    def __getitem__(self, name: str) -> np.ndarray:
        """The mapped array ``name`` (opening the group if needed)."""
        if self._maps is None:
            self._maps = {k: MappedArray(p, self.layouts.get(k)) for k, p in self.paths.items()}
            self._limit = self.capacity or max_open_groups(len(self.paths))
        OPEN_GROUPS.touch(self, self._limit)
        self._touched.add(name)
        return self._maps[name].array

    @property
    def is_open(self) -> bool:
        return self._maps is not None

    def release(self) -> None:
        """Drop the pages reads have touched from this process's resident set (see :class:`MappedArray`)."""
        if self._maps is not None:
            for name in self._touched:
                self._maps[name].release()
        self._touched.clear()

    def close(self) -> None:
        """Forget the maps; each is unmapped (and its descriptor closed) once no array of it is referenced."""
        self._maps = None
        OPEN_GROUPS.discard(self)

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "layouts": self.layouts, "capacity": self.capacity, "_limit": self.capacity,
                "_maps": None, "_touched": set()}
