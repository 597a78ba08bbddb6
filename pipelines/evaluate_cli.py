"""``medsr evaluate``: interior/total RMSE, PSNR, SSIM (+MD/FA for DTI) of a model and baselines, to CSV."""
from __future__ import annotations

import argparse

from pipelines.flags import refuse_renamed

from pipelines.cli import UserError

EPILOG = """\
Manifest form: every ok subject of prep's manifest.csv is scored; the model's prediction must be
PREDICTIONS/<subject>.nii.gz (as 'medsr infer --input manifest.csv --output PREDICTIONS' writes).
Baselines (nn, linear, cubic B-spline) are computed from each subject's lr.nii.gz, grid-aligned with
prep's degradation, by the same code. Writes OUT.csv (one row per model x subject) and
OUT_summary.csv (mean and std per model) and prints every metric per method, the best method per
metric and each model against cubic (tensor errors in 1e-3 mm^2/s, the units prep writes them in).

Metrics: rmse_total over brain-mask voxels; rmse_interior over mask voxels whose whole 5x5x5
neighbourhood is brain; both sqrt(mean over voxels x channels of squared error) in original units.
psnr (peak = range of the truth in the mask) and ssim (Gaussian window, per channel, averaged over
the mask) within the mask; DTI adds md_rmse/md_mae/fa_rmse/fa_mae.

Examples:
  medsr evaluate --manifest prepped/manifest.csv --predictions preds/ --output results.csv
  medsr evaluate --pred sr.nii.gz --target hr.nii.gz --mask mask.nii.gz
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--manifest", help="prep's manifest.csv (manifest form)")
    parser.add_argument("--predictions", help="folder of <subject>.nii.gz predictions (manifest form)")
    parser.add_argument("--output", dest="csv", metavar="OUT.csv",
                        help="per-subject CSV to write; the summary goes to <stem>_summary.csv")
    refuse_renamed(parser, "--csv", "--output", "as in every command that writes a file")
    parser.add_argument("--baselines", default="nn,linear,cubic",
                        help="comma list of nn, linear, cubic, or 'none' (default nn,linear,cubic)")
    parser.add_argument("--model-name", default=None, help="model column value (default: predictions folder name)")
    parser.add_argument("--subjects", nargs="+", default=None, metavar="ID",
                        help="manifest form: only these subjects (e.g. the test split)")
    parser.add_argument("--figures", default=None,
                        help="also write figures to this folder (as 'medsr report' draws them): "
                             "<subject>_{md,fa,colour_fa}.png for DTI, <subject>_intensity.png for scalar images")
    parser.add_argument("--pred", help="single-volume form: the prediction")
    parser.add_argument("--target", help="single-volume form: the HR truth")
    parser.add_argument("--mask", help="single-volume form: the brain mask")
    parser.add_argument("--kind", choices=["dti", "scalar"], default=None,
                        help="single-volume form: dti adds MD/FA errors (default: dti when 6 channels)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing CSV files and figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from medsr.utils.paths import check_not_input, subject_list
    from pipelines.evaluate import (
        check_outputs, evaluate_manifest, evaluate_single, parse_baselines, summary_path, write_results,
    )
    from pipelines.comparison import MM2S, format_comparison

    subjects = subject_list(args.subjects, "--subjects") if args.subjects else None
    if args.csv:  # refuse before minutes of scoring, not after
        check_not_input([args.csv, summary_path(args.csv)],
                        {"the --manifest": args.manifest, "the --pred": args.pred, "the --target": args.target,
                         "the --mask": args.mask})
        check_outputs(args.csv, overwrite=args.overwrite)
    single = [args.pred, args.target, args.mask]
    if any(single):
        if args.manifest or args.predictions:
            raise UserError("use either --manifest/--predictions or --pred/--target/--mask, not both")
        if not all(single):
            raise UserError("the single-volume form needs all of --pred, --target and --mask")
        df = evaluate_single(args.pred, args.target, args.mask, kind=args.kind, model_name=args.model_name or "model")
    else:
        if not args.manifest:
            raise UserError("give --manifest (with --predictions and/or --baselines) or --pred/--target/--mask")
        baselines = parse_baselines(args.baselines)
        if not args.predictions and not baselines:
            raise UserError("nothing to score: give --predictions or --baselines")
        if args.csv is None and args.figures is None:
            raise UserError("give --output (and/or --figures) for the results")
        df = evaluate_manifest(args.manifest, args.predictions, model_name=args.model_name,
                               baselines=baselines, figures=args.figures, subjects=subjects,
                               quiet=args.quiet, overwrite_figures=args.overwrite)
    if args.csv:
        csv, summ = write_results(df, args.csv, overwrite=args.overwrite)
    # prep writes tensors in mm^2/s, so the manifest form prints them in 1e-3 mm^2/s; a single volume's units are its own
    print(format_comparison(df, kind=args.kind, tensor_unit=None if any(single) else MM2S))
    if args.csv:
        print(f"wrote {csv} ({len(df)} rows) and {summ}")
    if args.figures and not any(single):
        print(f"figures in {args.figures}")
    return 0
