"""``medsr report``: per-subject PNG figures of LR input, truth, each prediction and baseline, and their errors."""
from __future__ import annotations

import argparse

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
    from pathlib import Path

    from tqdm import tqdm

    from medsr.baselines import upsample
    from medsr.figures import figure_paths, subject_figures
    from medsr.io import load_mask, load_volume
    from medsr.manifest import read_manifest
    from medsr.utils.paths import inside
    from pipelines.evaluate import parse_baselines, prediction_paths, select_subjects

    df = select_subjects(read_manifest(args.manifest), args.subjects, args.manifest)
    subjects = [str(s) for s in df["subject"]]
    pred_dirs = [(Path(d).resolve().name, prediction_paths(subjects, d)) for d in args.predictions]
    baselines = parse_baselines(args.baselines)
    clash = [n for n, _ in pred_dirs if n in baselines]
    if clash:
        raise ValueError(f"--predictions: folder name {clash[0]!r} clashes with a baseline's name; rename the folder")
    out = Path(args.output)
    for _, r in df.iterrows():  # before any drawing: every output inside its folder, none replaced unasked
        for p in figure_paths(out, str(r["subject"]), str(r["kind"]) or None):
            inside(out, p, "figure")
            if p.exists() and not args.overwrite:
                raise FileExistsError(f"{p}: already exists (pass --overwrite to replace it)")
    written = 0
    for _, r in tqdm(df.iterrows(), total=len(df), desc="figures", unit="subj"):
        s = str(r["subject"])
        hr = load_volume(r["hr"])
        mask = load_mask(r["mask"], like=hr)
        lr = load_volume(r["lr"])
        factor = int(r["factor"]) or 2
        cols = [(name, load_volume(paths[s])) for name, paths in pred_dirs]
        cols += [(b, upsample(lr, factor, b, out_shape=hr.spatial_shape)) for b in baselines]
        written += len(subject_figures(out, s, hr=hr, mask=mask, methods=cols, lr=lr, kind=str(r["kind"]) or None,
                                       overwrite=args.overwrite))
    print(f"wrote {written} figure(s) for {len(df)} subject(s) to {out}")
    return 0
