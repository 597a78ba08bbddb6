"""``medsr train CONFIG.yaml [--set key=value ...] [--resume] [--overwrite]``.

Runs unchanged under ``torchrun --nproc_per_node N`` (DDP, one process per GPU / CPU slot).
"""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  medsr train configs/quick_paired_l1.yaml --set data.manifest=prep/manifest.csv 'data.subjects=[s1, s2]' "
        "output_dir=runs/q\n"
        "  medsr train configs/table3/paired_r4.yaml --set data.manifest=hcp/manifest.csv --resume\n"
        "  torchrun --nproc_per_node 4 -m pipelines.cli train configs/default.yaml --set data.manifest=m.csv\n"
        "\ndata.subjects names the training subjects (default: every ok subject of the manifest, test subjects too)."
        "\nThe run folder (output_dir) receives last.pt, log.csv, config.yaml, samples/epoch_XXX.png at each epoch "
        "end and samples/final.png when the run stops mid-epoch."
    )
    parser.add_argument("config", help="YAML experiment config (see configs/)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. train.max_steps=100 model.kwargs.width=32 (YAML values)")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from last.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")


def run(args: argparse.Namespace) -> int:
    from medsr.training import TrainingDiverged
    from pipelines.train import train

    try:
        run_dir = train(args.config, resume=args.resume, overwrite=args.overwrite, overrides=args.overrides)
    except TrainingDiverged as e:
        print(f"medsr train: error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"medsr train: done; run folder {run_dir} (last.pt, log.csv, config.yaml)")
    return 0
