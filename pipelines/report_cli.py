"""``medsr report``: per-subject PNG figures of LR input, truth, each prediction and baseline, and their errors."""
from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Per subject, one PNG per quantity: <subject>_md.png, <subject>_fa.png and <subject>_colour_fa.png
for DTI (MD in 10^-3 mm^2/s, FA, direction-encoded colour FA), <subject>_intensity.png for scalar
images. Columns: LR input (its own grid), HR truth, each prediction folder, then nn, linear, cubic.
Rows: axial, coronal and sagittal slices through the brain's centre, then the signed errors
(method - truth) on a symmetric scale; every block has its colour bar with units. These are the
same figures 'medsr evaluate --figures' writes (one implementation: medsr.figures).

Example:
  medsr report --manifest prep/manifest.csv --predictions preds/ --subjects s7 s8 --output figs/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Per subject of a manifest: axial, coronal and sagittal slices of the LR input, HR truth, each "
        "prediction and each baseline, and their signed error maps (MD, FA and colour FA for DTI)."
    )
    parser.epilog = EPILOG
    parser.add_argument("--manifest", required=True, help="prep's manifest.csv")
    parser.add_argument("--predictions", nargs="*", default=[], metavar="DIR",
                        help="prediction folders (<subject>.nii.gz each); the folder name labels its column")
    parser.add_argument("--baselines", default="nn,linear,cubic",
                        help="interpolation columns to add: nn, linear, cubic or 'none' (default nn,linear,cubic)")
    parser.add_argument("--output", required=True, help="folder receiving the PNGs")
    parser.add_argument("--subjects", nargs="*", default=None,
                        help="only these subjects (default all ok subjects; each needs a prediction in every "
                             "--predictions folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing PNGs")


def run(args: argparse.Namespace) -> int:
    from medsr.figures import subject_figures
    from medsr.manifest import read_manifest
    from medsr.utils.paths import subject_list
    from pipelines.evaluate import (
        check_figure_paths, manifest_volumes, parse_baselines, prediction_paths, select_subjects,
    )

    wanted = subject_list(args.subjects, "--subjects") if args.subjects else None
    df = select_subjects(read_manifest(args.manifest), wanted, args.manifest)
    subjects = [str(s) for s in df["subject"]]
    names = [Path(d).resolve().name for d in args.predictions]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:  # one column per folder, labelled by its name: two of one name would be one
        raise ValueError(f"--predictions: two folders are named {twice!r} ({', '.join(args.predictions)}); "
                         "the folder name labels its column, rename one")
    pred_dirs = [(name, prediction_paths(subjects, d)) for name, d in zip(names, args.predictions)]
    baselines = parse_baselines(args.baselines)
    clash = [n for n, _ in pred_dirs if n in baselines]
    if clash:
        raise ValueError(f"--predictions: folder name {clash[0]!r} clashes with a baseline's name; rename the folder")
    out = Path(args.output)
    check_figure_paths(out, df, overwrite=args.overwrite)
    written = 0
    for sv in manifest_volumes(df, pred_dirs, baselines, need_lr=True, desc="figures"):
        written += len(subject_figures(out, sv.subject, hr=sv.hr, mask=sv.mask, methods=sv.methods, lr=sv.lr,
                                       kind=sv.kind, overwrite=args.overwrite))
    print(f"wrote {written} figure(s) for {len(df)} subject(s) to {out}")
    return 0
