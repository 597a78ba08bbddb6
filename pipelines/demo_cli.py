"""``medsr demo``: the whole toolkit end to end on a generated DTI brain phantom, no download."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.demo import DEFAULT_CONFIG, DEFAULT_MINUTES, run_demo  # light: its heavy imports are lazy
from pipelines.factor_flag import add_factor_flags, factor_from_args

EPILOG = """\
stages:
  1. data       N phantom subjects in the HCP layout (OUTPUT/hcp), b0s + a b=1000 shell, Rician noise;
                prep hcp at --factor: HR DTI fit, LR DTI from block-averaged DWIs, manifest (OUTPUT/prep)
  2. train      paired model (configs/demo.yaml) on N-1 subjects, stopped at --minutes (OUTPUT/run)
  3. infer      full volume of the held-out subject (OUTPUT/predictions)
  4. evaluate   interior/total RMSE, PSNR, SSIM, MD/FA errors vs nn/linear/cubic (OUTPUT/evaluation.csv),
                figures: MD, FA and colour FA of every method with error maps (OUTPUT/figures)
  5. summary    table and paths on the terminal and in OUTPUT/summary.txt
"""


class _RefusedSubjects(argparse.Action):
    """The old ``demo --subjects N`` spelling: refused with a one-line hint."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error("--subjects takes subject IDs in the other commands; the demo's subject count is "
                     "--n-subjects N")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("Generate a DTI brain phantom, prepare it like HCP data, train a RevSRCNN, upsample a "
                          "held-out subject and score it against interpolation baselines.")
    parser.epilog = EPILOG
    parser.add_argument("--output", type=Path, default=Path("medsr-demo"),
                        help="demo folder (default ./medsr-demo); must be missing, empty or a previous demo run (replaced)")
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"wall-clock budget of the training stage in minutes (default {DEFAULT_MINUTES:g}; "
                             "the rest of the demo takes about 1-2 minutes on 2 CPU cores)")
    parser.add_argument("--n-subjects", type=int, default=7, metavar="N",
                        help="how many phantom subjects, at least 2; the last is held out for testing")
    # Elsewhere --subjects lists subject IDs; a count here under that name would mislead, so it is refused.
    parser.add_argument("--subjects", nargs="*", action=_RefusedSubjects, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantom and the training (default 0)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="training config (default configs/demo.yaml)")
    parser.add_argument("--workers", type=int, default=2, help="processes for prep (default 2)")
    add_factor_flags(parser, profile=False)
    parser.add_argument("--overwrite", action="store_true", help="also replace a demo folder written by an older medsr (no .medsr-demo marker)")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    factor = factor_from_args(args.factor)
    res = run_demo(args.output, minutes=args.minutes, n_subjects=args.n_subjects, seed=args.seed, config=args.config,
                   overwrite=args.overwrite, workers=args.workers, factor=factor)
    print(res.summary)
    return 0
