"""``medsr infer``: upsample volumes with a trained checkpoint, writing float32 NIfTI on the HR grid."""
from __future__ import annotations

import argparse

from medsr.utils.threads import parse_threads  # torch-free

EPILOG = """\
Input grid (--input-grid auto): with the training HR voxel size stored in the checkpoint
(data.voxel_size), an input whose voxels are the training factor times larger, axis by axis, is on
the LR grid (a 1x1x4 mm input of a 1 mm model trained at factor 1 1 4); without it,
files named lr*.nii[.gz] (not lr_up*) are LR and all others HR. LR inputs are NN-upsampled
(as prep's lr_up) so the output lies on the HR grid prep would have written.

Threads (--threads auto): the prediction of a small crop of the first volume is timed at each
thread count the cores allow, and the fastest is used (again for a batch's next subject once a
minute has passed); OpenMP threads wait without spinning (OMP_WAIT_POLICY=PASSIVE, unless set).

Windows (--window, --overlap): a model with instance norm runs windows of its training patch size
(overlap 0.5); any other model runs the largest windows that fit the memory budget (the whole volume
in one pass when it fits, else slabs chosen to compute the fewest voxels) at overlap 0.25.
--window 0 forces a single pass. Windows run on --device; the volume is stitched on the CPU.

Beside each output (OUT.nii.gz): --uncertainty writes OUT_std.nii.gz (per-voxel standard deviation
over the TTA views, whose mean is then OUT: the 48 of --tta full for isotropic voxels, else the 8
flips, or those --tta flip/full asks for; docs/uncertainty.md), --maps writes OUT_FA.nii.gz, _MD, _RGB, _V1 ... (DTI
models; see 'medsr maps --help'). By default OUT holds the model's prediction everywhere, also
outside the brain, where the model was not trained and the values mean nothing: --mask zeroes it.
With --bids ROOT (a 'medsr prep bids' manifest as --input) OUT is a BIDS derivatives dataset.

Domain checks: each input is compared with what the model was trained on ('medsr info CHECKPOINT'):
voxel size and factor, an HR volume where an LR one is expected, intensities more than 10x off.
Each mismatch prints one warning line; --strict refuses instead (exit 2). A channel count the
model cannot run on is always refused.

Examples:
  medsr infer --checkpoint run/last.pt --input sub01/lr.nii.gz --output sub01_sr.nii.gz
  medsr infer --checkpoint run/last.pt --input prepped/manifest.csv --output preds/
  medsr infer --checkpoint run/last.pt --input sub01/hr.nii.gz --output sub01_G.nii.gz --reverse
  medsr infer --checkpoint run/last.pt --input sub01/lr.nii.gz --output sub01_sr.nii.gz --precision bf16
  medsr infer --checkpoint run/last.pt --input sub01/lr.nii.gz --output sub01_sr.nii.gz --tta flip
  medsr infer --checkpoint run/last.pt --input sub01/lr.nii.gz --output sub01_sr.nii.gz --maps md,fa,rgb,evec \\
      --uncertainty --mask sub01/mask.nii.gz
  medsr infer --checkpoint run/last.pt --input prep/manifest.csv --output /data/study/derivatives/medsr-sr \\
      --bids /data/study --mask --maps md,fa,rgb,evec --uncertainty
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--checkpoint", required=True, help="a medsr checkpoint (.pt)")
    parser.add_argument("--input", required=True,
                        help="a NIfTI file, a folder of NIfTIs, or a prep manifest.csv (batch: one output per subject)")
    parser.add_argument("--output", required=True,
                        help="output .nii/.nii.gz (single input) or folder receiving <subject>.nii.gz (batch)")
    parser.add_argument("--reverse", action="store_true", help="run G (HR -> LR-up) through the inverse core")
    parser.add_argument("--device", default="auto", help="where windows run: auto (cuda if available), cpu, cuda:0 ...")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="run the model under autocast in bf16 or fp16 (fp16: CUDA only); outputs are float32 "
                             "NIfTI either way (default fp32)")
    parser.add_argument("--tta", choices=["auto", "none", "flip", "full"], default="auto",
                        help="test-time augmentation: average the predictions of the 8 axis flips (flip) or of "
                             "all flips and axis permutations (full: 48 on isotropic grids; only axes of equal voxel size and "
                             "factor swap, e.g. x and y at factor 1 1 4), DTI tensors moved "
                             "with the axes, 8x / 48x the time; auto = flip for a model trained with data.flip "
                             "or data.permute, else none (default auto)")
    parser.add_argument("--window", type=int, nargs="+", default=None, metavar="N",
                        help="window edge (1 or 3 ints; 0 = whole volume); default: automatic (see below)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="window overlap fraction in [0, 1); default 0.5 with instance norm, else 0.25")
    parser.add_argument("--input-grid", choices=["auto", "lr", "hr"], default="auto",
                        help="grid of the input files (default auto; manifests are always lr_up = HR grid)")
    parser.add_argument("--subjects", nargs="+", default=None, metavar="ID",
                        help="batch mode: only these subjects (e.g. a manifest's test split)")
    parser.add_argument("--maps", default=None, metavar="LIST",
                        help="DTI models: also write these maps of each output, comma-separated from fa, md, ad, "
                             "rd, rgb, evec (e.g. md,fa,rgb,evec)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write OUT_std.nii.gz, the per-voxel standard deviation over the TTA views (with "
                             "--tta auto/none: the 48 views for isotropic voxels, else the 8 flips; OUT is then "
                             "their mean)")
    parser.add_argument("--mask", nargs="?", const="manifest", default=None, metavar="FILE",
                        help="zero every output outside this mask (on the output grid, or the LR input's grid); "
                             "without FILE, each manifest subject's own mask")
    parser.add_argument("--strict", action="store_true",
                        help="refuse (exit 2) an input outside what the model was trained on, instead of warning")
    parser.add_argument("--bids", default=None, metavar="ROOT",
                        help="the BIDS dataset a 'medsr prep bids' manifest (--input) was prepared from: write "
                             "--output as a BIDS derivatives dataset")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--threads", type=parse_threads, default="auto", metavar="N",
                        help="torch CPU threads: auto (measured, see below), a number, or 0 (torch's own count)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or window report")


def run(args: argparse.Namespace) -> int:
    from medsr.utils.paths import subject_list
    from pipelines.infer import run_inference

    subjects = subject_list(args.subjects, "--subjects") if args.subjects else None

    window = None
    if args.window is not None:
        window = args.window[0] if len(args.window) == 1 else tuple(args.window)
        if len(args.window) not in (1, 3):
            raise ValueError(f"--window takes 1 or 3 integers, got {len(args.window)}")
        if any(w < 0 for w in args.window) or (len(args.window) == 3 and 0 in args.window):
            raise ValueError(f"--window {' '.join(map(str, args.window))}: window edges must be >= 1 "
                             "(or one 0 for a single pass over the whole volume)")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise ValueError(f"--overlap {args.overlap:g}: allowed range is [0, 1)")
    written = run_inference(
        args.checkpoint, args.input, args.output, reverse=args.reverse, device=args.device, window=window,
        overlap=args.overlap, input_grid=args.input_grid, overwrite=args.overwrite, subjects=subjects,
        quiet=args.quiet, precision=args.precision, tta=args.tta, maps=args.maps or (),
        uncertainty=args.uncertainty, mask=args.mask, strict=args.strict, bids=args.bids, threads=args.threads,
    )
    if not args.quiet:
        print(f"wrote {len(written)} volume(s)" + (f": {written[0]}" if len(written) == 1 else f" to {args.output}"))
    return 0
