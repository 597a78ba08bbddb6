"""``medsr report``: PNG figures of slices, predictions, error maps (and MD maps for DTI) per subject."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Per subject of a manifest, one PNG: axial and sagittal slices of the LR input, HR truth and each "
        "prediction, and their absolute-error maps; DTI volumes are shown as mean-diffusivity maps (paper Fig. 5)."
    )
    parser.add_argument("--manifest", required=True, help="prep's manifest.csv")
    parser.add_argument("--predictions", nargs="*", default=[], metavar="DIR",
                        help="prediction folders (<subject>.nii.gz each); the folder name labels its column")
    parser.add_argument("--baselines", default="linear,cubic",
                        help="interpolation columns to add: nn, linear, cubic or 'none' (default linear,cubic)")
    parser.add_argument("--output", required=True, help="folder receiving <subject>.png")
    parser.add_argument("--subjects", nargs="*", default=None, help="only these subjects (default all ok subjects)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing PNGs")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from medsr.baselines import upsample
    from medsr.io import load_mask, load_volume
    from medsr.manifest import read_manifest
    from medsr.report import subject_figure
    from pipelines.evaluate import parse_baselines, prediction_paths, select_subjects

    df = select_subjects(read_manifest(args.manifest), args.subjects, args.manifest)
    subjects = [str(s) for s in df["subject"]]
    pred_dirs = [(Path(d).resolve().name, prediction_paths(subjects, d)) for d in args.predictions]
    baselines = parse_baselines(args.baselines)
    from medsr.utils.paths import inside

    out = Path(args.output)
    for s in subjects:
        inside(out, out / f"{s}.png", "figure")
    if not args.overwrite:
        for s in subjects:
            if (out / f"{s}.png").exists():
                raise FileExistsError(f"{out / (s + '.png')}: already exists (pass --overwrite to replace it)")
    for _, r in tqdm(df.iterrows(), total=len(df), desc="figures", unit="subj"):
        s = str(r["subject"])
        hr = load_volume(r["hr"])
        mask = load_mask(r["mask"], like=hr)
        lr = load_volume(r["lr"])
        factor = int(r["factor"]) or 2
        lr_up = upsample(lr, factor, "nn", out_shape=hr.spatial_shape)  # prep's lr_up, even for padded grids
        cols = [(b, upsample(lr, factor, b, out_shape=hr.spatial_shape)) for b in baselines]
        cols += [(name, load_volume(paths[s])) for name, paths in pred_dirs]
        subject_figure(out / f"{s}.png", hr=hr, mask=mask, predictions=cols, lr_up=lr_up,
                       kind=str(r["kind"]) or None, title=f"subject {s}", overwrite=args.overwrite)
    print(f"wrote {len(df)} figure(s) to {out}")
    return 0
