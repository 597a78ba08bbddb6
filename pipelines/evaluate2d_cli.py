"""``medsr evaluate2d``: score a 2D Maps / Cityscapes checkpoint (paper Tables 2 and 4), to CSV."""
from __future__ import annotations

import argparse

from pipelines.flags import refuse_renamed
from pathlib import Path

EPILOG = """\
Maps: mae, psnr, ssim (0-255, as the paper) for sat2map (A->B) and map2sat (B->A).
Cityscapes: pixel_acc, class_acc, class_iou for photo2label; with --fcn, the FCN-score of
label2photo (and label2photo_real: the segmenter on real photos, its ceiling). The paper used a
pretrained FCN-8s; --fcn takes a segnet2d trained by this toolkit
(medsr train configs/2d/segnet_cityscapes.yaml), so FCN-scores are comparable in trend only.

example:
  medsr evaluate2d --checkpoint runs/maps/last.pt --data datasets/maps --output maps_scores.csv
  medsr evaluate2d --checkpoint runs/city/last.pt --data datasets/cityscapes --output city.csv \\
      --fcn runs/segnet/last.pt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--checkpoint", required=True, type=Path, help="generator checkpoint (last.pt)")
    parser.add_argument("--data", required=True, type=Path, help="aligned dataset root holding train/ and val/")
    parser.add_argument("--output", dest="csv", required=True, type=Path, metavar="OUT.csv",
                        help="summary CSV to write (one row per direction)")
    refuse_renamed(parser, "--csv", "--output", "as in every command that writes a file")
    parser.add_argument("--dataset", choices=["maps", "cityscapes"], default=None,
                        help="default: from the checkpoint's config, else from the data folder's name")
    parser.add_argument("--fcn", type=Path, default=None,
                        help="segmentation checkpoint (segnet2d) for the Cityscapes label->photo FCN-score")
    parser.add_argument("--split", default="val", help="sub-folder to evaluate (default: val)")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in px (default: the training config's data.image_size)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--per-image", type=Path, default=None, help="Maps: also write per-image scores here")
    parser.add_argument("--overwrite", action="store_true", help="replace existing CSV files")


def run(args: argparse.Namespace) -> int:
    from pipelines.evaluate2d import evaluate2d

    from medsr.utils.paths import check_not_input

    check_not_input([p for p in (args.csv, args.per_image) if p is not None],
                    {"the --checkpoint": args.checkpoint, "the --fcn checkpoint": args.fcn})
    if not args.overwrite:  # refuse before the evaluation, not after it
        for p in (args.csv, args.per_image):
            if p is not None and p.exists():
                raise FileExistsError(f"{p}: already exists (pass --overwrite to replace it)")
    summary = evaluate2d(
        args.checkpoint, args.data, args.csv, dataset=args.dataset, fcn=args.fcn, split=args.split,
        size=args.size, batch_size=args.batch_size, device=args.device, limit=args.limit,
        per_image_csv=args.per_image,
    )
    with_pd_opts = summary.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    print(with_pd_opts)
    print(f"wrote {args.csv}")
    return 0
