"""``python -m data_prep.phantom``: the command line of the phantom generator."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from data_prep.phantom.config import PhantomConfig
from data_prep.phantom.writing import generate


class _RefusedSubjects(argparse.Action):
    """The old ``--subjects N`` spelling: refused with a one-line hint."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error("--subjects takes subject IDs in the medsr commands; the phantom count is --n-subjects N")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.phantom",
        description="Write DTI brain phantoms as HCP subjects (<subject>/T1w/Diffusion/{data.nii.gz, bvals, "
                    "bvecs, nodif_brain_mask.nii.gz}) plus their ground-truth tensors.",
    )
    d = PhantomConfig()
    p.add_argument("--output", required=True, type=Path, help="folder to write the subjects into")
    p.add_argument("--n-subjects", type=int, default=4, metavar="N", help="how many subjects (default 4)")
    # --subjects lists subject IDs in the medsr commands; a count under that name is refused.
    p.add_argument("--subjects", nargs="*", action=_RefusedSubjects, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shape", type=int, nargs=3, default=list(d.shape), metavar=("X", "Y", "Z"),
                   help=f"voxel grid (default {' '.join(map(str, d.shape))})")
    p.add_argument("--voxel-size", type=float, default=d.voxel_size, help=f"mm (default {d.voxel_size}, as HCP)")
    p.add_argument("--directions", type=int, default=d.n_dirs, help=f"b={d.bval:g} directions (default {d.n_dirs})")
    p.add_argument("--b0", type=int, default=d.n_b0, help=f"number of b0 volumes (default {d.n_b0})")
    p.add_argument("--snr", type=float, default=d.snr, help=f"white-matter b0 SNR (default {d.snr:g})")
    p.add_argument("--layout", choices=["hcp", "bids"], default="hcp",
                   help="hcp: <subject>/T1w/Diffusion/... with the ground truth; bids: a BIDS dataset of "
                        "sub-NN/dwi series (the input of 'medsr prep bids') (default hcp)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = replace(PhantomConfig(), shape=tuple(args.shape), voxel_size=args.voxel_size, n_dirs=args.directions,
                  n_b0=args.b0, snr=args.snr)
    try:
        paths = generate(args.output, args.n_subjects, seed=args.seed, config=cfg, overwrite=args.overwrite,
                         layout=args.layout)
    except (ValueError, FileExistsError) as e:
        print(f"phantom: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} {args.layout.upper()}-layout subjects under {args.output}")
    return 0
