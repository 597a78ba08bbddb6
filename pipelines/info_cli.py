"""``medsr info``: a checkpoint's model card (what the model was trained on, how long, how well)."""
from __future__ import annotations

import argparse

EPILOG = """\
Prints what the checkpoint records: model and training mode, kind (dti/scalar), channels, factor per
axis, the HR voxel size (and its range over the training subjects), percentiles of the input (lr_up)
and target (hr) intensities over brain voxels, the number of training subjects, steps, training time,
augmentation, and the held-out metrics when 'medsr bench quality' trained it. A checkpoint written
by an older medsr lacks some of these: they show as unknown, and 'medsr infer' skips the checks that
need them. 'medsr infer' compares each input with this card (see 'medsr infer --help').

Examples:
  medsr info run/last.pt
  medsr info run/last.pt --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a medsr checkpoint (.pt)")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from medsr.checkpoint import load_checkpoint
    from medsr.model_card import format_card, model_card

    ck = load_checkpoint(args.checkpoint)
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict):
        raise ValueError(f"{args.checkpoint}: no 'model' entry; not a medsr checkpoint")
    card = model_card(ck)
    print(json.dumps(card, indent=2) if args.json else format_card(card, args.checkpoint))
    return 0
