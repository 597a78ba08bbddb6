"""``medsr bench prep``: seconds and peak memory of ``medsr prep hcp`` on one HCP-size subject.

A synthetic subject is written in the real HCP layout (``T1w/Diffusion/{data.nii.gz, bvals, bvecs,
nodif_brain_mask.nii.gz}``) at HCP's size by default: 145x174x145 voxels x 288 volumes, float32
(4.2 GB uncompressed), with HCP's acquisition: 18 b0 (b = 5) and 90 directions on each of the
b = 1000, 2000, 3000 shells, values scattered by +-10 s/mm^2. The signal is an ellipsoidal "brain"
(about 38% of the grid, HCP's brain fraction) of anisotropic tensors whose principal direction turns
smoothly across the volume, plus Gaussian noise. The file is generated and gzip-compressed one
volume at a time, so this process stays small too.

``medsr prep hcp`` then runs on it in a fresh subprocess (``python -m pipelines.cli prep hcp``).
Reported: wall seconds of that subprocess, its peak resident memory (``ru_maxrss`` of the child's
own rusage from ``os.wait4``, as ``getrusage(RUSAGE_CHILDREN)`` gives when it is the only child) and
the ratio to a peak-memory budget (``--target-gb``, default 12 GB: a budget to stay under, not the
measured need; on the HCP size the peak was 2.13 GB, the figure docs/prep.md and ``prep --workers`` quote).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.shape_arg import add_shape_argument

TARGET_GB = 12.0
HCP_SHAPE = (145, 174, 145)
HCP_VOLUMES = 288


class _RefusedSize(argparse.Action):
    """The old ``--size X,Y,Z,N`` spelling: refused with the new one."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parts = str(values).replace(",", " ").split()
        new = f"--shape {' '.join(parts[:3])} --volumes {parts[3]}" if len(parts) == 4 else "--shape X Y Z --volumes N"
        parser.error(f"--size X,Y,Z,N is now {new}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_argument(parser, HCP_SHAPE, "voxel grid of the generated DWI (HCP)")
    parser.add_argument("--volumes", type=int, default=HCP_VOLUMES, metavar="N",
                        help=f"DWI volumes, b0s included (default HCP: {HCP_VOLUMES})")
    # The old --size X,Y,Z,N: --size means an image side elsewhere (evaluate2d, bench memory --2d).
    parser.add_argument("--size", action=_RefusedSize, help=argparse.SUPPRESS)
    parser.add_argument("--shell", type=float, default=1000.0, help="shell passed to prep (default 1000)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to put the temporary subject (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated subject and outputs")
    parser.add_argument("--target-gb", type=float, default=TARGET_GB,
                        help=f"peak-memory target (default {TARGET_GB:g})")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")


def hcp_scheme(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HCP-like gradients for N volumes: N//16 b0s interleaved, the rest split over b = 1000/2000/3000."""
    n_b0 = max(1, n // 16)
    n_dw = n - n_b0
    is_b0 = np.zeros(n, bool)
    is_b0[np.linspace(0, n - 1, n_b0).round().astype(int)] = True
    shells = np.repeat([1000.0, 2000.0, 3000.0], int(np.ceil(n_dw / 3)))[:n_dw]
    bvals = np.full(n, 5.0)
    bvals[~is_b0] = shells + rng.choice([-10.0, -5.0, 0.0, 5.0, 10.0], size=n_dw)
    v = rng.normal(size=(n, 3))
    bvecs = v / np.linalg.norm(v, axis=1, keepdims=True)
    bvecs[is_b0] = 0.0
    return bvals, bvecs


def write_subject(folder: Path, size: tuple[int, int, int, int], seed: int = 0) -> dict:
    """Write one synthetic HCP subject under ``folder/T1w/Diffusion``, streaming one volume at a time."""
    import nibabel as nib

    x, y, z, n = size
    rng = np.random.default_rng(seed)
    d = folder / "T1w" / "Diffusion"
    d.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.25, 1.25, 1.25, 1.0])  # HCP's LAS 1.25 mm grid
    affine[:3, 3] = [90.0, -126.0, -72.0]
    bvals, bvecs = hcp_scheme(n, rng)
    np.savetxt(d / "bvals", bvals[None], fmt="%g")
    np.savetxt(d / "bvecs", bvecs.T, fmt="%.6f")

    # Ellipsoidal brain; principal direction turning smoothly with position; FA ~ 0.5; MD 0.8e-3.
    gx, gy, gz = np.meshgrid(*(np.linspace(-1, 1, s, dtype=np.float32) for s in (x, y, z)), indexing="ij", sparse=True)
    mask = (gx / 0.8) ** 2 + (gy / 0.85) ** 2 + (gz / 0.8) ** 2 <= 1.0
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), d / "nodif_brain_mask.nii.gz")
    theta, phi = np.pi * (gx + 1) / 2 + 0 * gy + 0 * gz, np.pi * (gy + 1) + 0 * gz
    v = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta) + 0 * gy], 0)
    v = np.broadcast_to(v, (3, x, y, z)).astype(np.float32)
    md, k = np.float32(0.8e-3), np.float32(0.35)  # lambda1 = md(1+2k), lambda2,3 = md(1-k)
    s0 = np.where(mask, 1000.0, 20.0).astype(np.float32)

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((x, y, z, n))
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    hdr["vox_offset"] = 352
    with gzip.open(d / "data.nii.gz", "wb", compresslevel=1) as f:
        f.write(hdr.binaryblock)
        f.write(b"\x00" * (352 - len(hdr.binaryblock)))  # empty extension flag
        for i in range(n):
            g = bvecs[i].astype(np.float32)
            adc = md * ((1 - k) + 3 * k * np.square(np.tensordot(g, v, axes=1)))
            vol = s0 * np.exp(np.float32(-bvals[i]) * adc)
            vol += rng.standard_normal(size=(x, y, z), dtype=np.float32) * np.float32(10.0)
            f.write(np.abs(vol).astype(np.float32).tobytes(order="F"))
    return {"brain_voxels": int(mask.sum()), "n_selected": int(np.sum((bvals <= 50) | (np.abs(bvals - 1000) <= 100)))}


def run(args: argparse.Namespace) -> int:
    if args.volumes < 1:
        raise ValueError(f"--volumes must be at least 1, got {args.volumes}")
    size = (*args.shape, args.volumes)
    work = Path(tempfile.mkdtemp(prefix="medsr-bench-prep-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        info = write_subject(work / "in" / "bench01", size)  # type: ignore[arg-type]
        gen_s = time.perf_counter() - t0
        gz_gb = (work / "in" / "bench01" / "T1w" / "Diffusion" / "data.nii.gz").stat().st_size / 1e9
        print(f"generated {size} float32 ({np.prod(size) * 4 / 1e9:.2f} GB raw, {gz_gb:.2f} GB gz) in {gen_s:.1f} s",
              file=sys.stderr)
        cmd = [sys.executable, "-m", "pipelines.cli", "prep", "hcp", "--input", str(work / "in"),
               "--output", str(work / "out"), "--shell", f"{args.shell:g}"]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=dict(os.environ))
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would also count any earlier child of
        # the caller, e.g. inside a test run); ru_maxrss is its RSS high-water mark, in KiB on Linux.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = rc = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        peak_gb = usage.ru_maxrss * 1024 / 1e9
        result = {
            "size": "x".join(map(str, size)), "raw_gb": round(float(np.prod(size)) * 4 / 1e9, 3),
            "gz_gb": round(gz_gb, 3), "selected_volumes": info["n_selected"], "brain_voxels": info["brain_voxels"],
            "prep_seconds": round(seconds, 1), "peak_rss_gb": round(peak_gb, 3),
            "target_gb": args.target_gb, "ratio_to_target": round(peak_gb / args.target_gb, 3), "exit_code": rc,
        }
        print(json.dumps(result))
        print(f"prep hcp {result['size']}: {seconds:.1f} s, peak RSS {peak_gb:.2f} GB "
              f"= {result['ratio_to_target']:.0%} of the {args.target_gb:g} GB target", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if rc == 0 and peak_gb <= args.target_gb else 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
