"""``medsr infer``: upsample volumes with a trained checkpoint, writing float32 NIfTI on the HR grid."""
from __future__ import annotations

import argparse

from medsr.utils.threads import parse_threads  # torch-free

EPILOG = """\
Input grid (--input-grid auto): with the training HR voxel size stored in the checkpoint
(data.voxel_size), an input whose voxels are the checkpoint's factor (data.factor, the one prep
used) times larger is on the LR grid; without it, files named lr*.nii[.gz] (not lr_up*) are LR and
all others HR. LR inputs are NN-upsampled (as prep's lr_up) so the output lies on the HR grid prep
would have written.

Threads (--threads auto): the prediction of a small crop of the first volume is timed at each
thread count the cores allow, and the fastest is used (again for a batch's next subject once a
minute has passed); OpenMP threads wait without spinning (OMP_WAIT_POLICY=PASSIVE, unless set).

Windows (--window, --overlap): a model with instance norm runs windows of its training patch size
(overlap 0.5); any other model runs the largest windows that fit the memory budget (the whole volume
in one pass when it fits, else slabs chosen to compute the fewest voxels) at overlap 0.25.
--window 0 forces a single pass. Windows run on --device; the volume is stitched on the CPU.

Examples:
  medsr infer --checkpoint run/last.pt --input sub01/lr.nii.gz --output sub01_sr.nii.gz
  medsr infer --checkpoint run/last.pt --input prepped/manifest.csv --output preds/
  medsr infer --checkpoint run/last.pt --input sub01/hr.nii.gz --output sub01_G.nii.gz --reverse
  medsr infer --checkpoint run/last.pt --input sub01/lr.nii.gz --output sub01_sr.nii.gz --precision bf16
  medsr infer --checkpoint run/last.pt --input sub01/lr.nii.gz --output sub01_sr.nii.gz --tta flip
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
                             "all 48 flips and axis permutations (full; isotropic voxels), DTI tensors moved "
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
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--threads", type=parse_threads, default="auto", metavar="N",
                        help="torch CPU threads: auto (measured, see below), a number, or 0 (torch's own count)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or window report")


def run(args: argparse.Namespace) -> int:
    from pipelines.infer import run_inference

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
        overlap=args.overlap, input_grid=args.input_grid, overwrite=args.overwrite, subjects=args.subjects,
        quiet=args.quiet, precision=args.precision, tta=args.tta, threads=args.threads,
    )
    if not args.quiet:
        print(f"wrote {len(written)} volume(s)" + (f": {written[0]}" if len(written) == 1 else f" to {args.output}"))
    return 0
