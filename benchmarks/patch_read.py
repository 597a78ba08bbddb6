"""Time to read one training patch from a subject stored in each candidate on-disk format.

The measurement behind ``medsr.data.cache``'s choice of uncompressed ``.npy`` files. One volume of
``--shape`` x ``--channels`` float32 random values is written in each format, then ``--patches``
random ``--patch``^3 patches (all channels) are read, each copied into a fresh C-ordered array,
the way the training dataset reads them:

* ``memory``: a slice of an array already in memory (what training did before: every subject held);
* ``npy mmap``: a slice of an ``.npy`` file mapped with ``np.load(mmap_mode="r")``;
* ``npy mmap + release``: the same, then ``madvise(MADV_DONTNEED)`` so the pages leave the process's
  resident set (``medsr.data.mapped.MappedArray``, what training does);
* ``npy pread``: one ``os.preadv`` per (channel, x) row block of the patch, no mapping;
* ``nii mmap``: uncompressed NIfTI through nibabel's memory map (channel-last, Fortran order);
* ``hdf5 chunked``: an HDF5 dataset in ``--patch``^3 chunks (h5py), uncompressed;
* ``nii.gz``: compressed NIfTI, the prepared files themselves (decompressed whole per read; timed on
  a few reads only).

Run from the repository root (the figures are in docs/scale.md)::

    OMP_NUM_THREADS=1 python benchmarks/patch_read.py --shape 144 174 144 --channels 6 --patch 16
"""
from __future__ import annotations

import argparse
import mmap
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=[144, 174, 144])
    p.add_argument("--channels", type=int, default=6)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--patches", type=int, default=2000)
    args = p.parse_args(argv)

    import nibabel as nib

    from medsr.data.mapped import MappedArray

    c, s = args.channels, args.patch
    x, y, z = args.shape
    rng = np.random.default_rng(0)
    data = rng.standard_normal((c, x, y, z), dtype=np.float32)
    origins = np.stack([rng.integers(0, n - s, args.patches) for n in (x, y, z)], 1)
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "v.npy"
        np.save(npy, data)
        nii = Path(tmp) / "v.nii"
        nib.save(nib.Nifti1Image(np.moveaxis(data, 0, -1), np.eye(4)), nii)
        niigz = Path(tmp) / "v.nii.gz"
        nib.save(nib.Nifti1Image(np.moveaxis(data, 0, -1), np.eye(4)), niigz)
        readers = {"memory": lambda o: data[:, o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s]}
        mm = np.load(npy, mmap_mode="r")
        readers["npy mmap"] = lambda o: mm[:, o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s]
        mapped = MappedArray(npy)

        def released(o):
            out = np.ascontiguousarray(mapped.array[:, o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s])
            mapped.release()
            return out

        readers["npy mmap + release"] = released
        offset = mm.offset

        def pread(o):
            fd = os.open(npy, os.O_RDONLY)
            try:
                buf = np.empty((c, s, s, z), np.float32)
                for ch in range(c):
                    for i in range(s):
                        os.preadv(fd, [buf[ch, i]], offset + ((ch * x + o[0] + i) * y + o[1]) * z * 4)
                return buf[..., o[2]:o[2] + s]
            finally:
                os.close(fd)

        readers["npy pread"] = pread
        img = nib.load(nii, mmap=True)
        dobj = img.dataobj
        readers["nii mmap"] = lambda o: np.moveaxis(
            np.asarray(dobj[o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s, :]), -1, 0)
        try:
            import h5py

            h5 = Path(tmp) / "v.h5"
            with h5py.File(h5, "w") as f:
                f.create_dataset("v", data=data, chunks=(c, s, s, s))
            hf = h5py.File(h5, "r")
            readers["hdf5 chunked"] = lambda o: hf["v"][:, o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s]
        except ImportError:
            hf = None
        readers["nii.gz"] = lambda o: np.moveaxis(
            np.asarray(nib.load(niigz).dataobj[o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s, :]), -1, 0)

        print(f"{c} x {x}x{y}x{z} float32 ({data.nbytes / 1e6:.1f} MB), {s}^3 patches; "
              f"npy {npy.stat().st_size / 1e6:.1f} MB, nii.gz {niigz.stat().st_size / 1e6:.1f} MB")
        for name, read in readers.items():
            o0 = origins[0]
            want = data[:, o0[0]:o0[0] + s, o0[1]:o0[1] + s, o0[2]:o0[2] + s]
            assert np.array_equal(np.ascontiguousarray(read(o0)), want), name
            n = 5 if name == "nii.gz" else len(origins)
            t0 = time.perf_counter()
            for o in origins[:n]:
                np.ascontiguousarray(read(o), dtype=np.float32)
            us = (time.perf_counter() - t0) / n * 1e6
            print(f"{name:20s} {us:10.1f} us/patch  ({n} patches)")
        if hf is not None:
            hf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
