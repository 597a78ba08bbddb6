"""``medsr maps``: FA, MD, AD, RD, colour FA and V1 of a diffusion tensor file, as float32 NIfTI."""
from __future__ import annotations

import argparse

EPILOG = """\
Maps (--maps, comma-separated): fa (fractional anisotropy, [0, 1]), md (mean diffusivity), ad (axial,
l1), rd (radial, (l2 + l3) / 2), rgb (colour FA: |V1| * FA, red/green/blue = x/y/z), evec (V1, the
principal eigenvector). Diffusivities are in the tensor's units (mm^2/s as medsr prep writes them).
Eigenvalues are clipped at 0 as dipy's decompose_tensor does; each map equals dipy's on the same
tensor. Files: <prefix>_FA.nii.gz, _MD, _AD, _RD, _RGB, _V1 (FSL dtifit's names where it has one),
float32 on the tensor's grid with its header.

Tensor layouts read (--layout auto): 6 volumes in FSL dtifit order (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz),
9 volumes row-major, or a NIfTI with the symmetric-matrix intent (lower triangle, dipy's order).

Examples:
  medsr maps sub01_sr.nii.gz                       # sub01_sr_MD/_FA/_RGB/_V1.nii.gz
  medsr maps dti_tensor.nii.gz --maps fa,md --output out/sub01 --mask mask.nii.gz
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("tensor", metavar="TENSOR", help="a diffusion tensor image (.nii, .nii.gz, .nrrd, .mha)")
    parser.add_argument("--maps", default="md,fa,rgb,evec",
                        help="maps to write, comma-separated, from fa, md, ad, rd, rgb, evec")
    parser.add_argument("--output", default=None, metavar="PREFIX",
                        help="prefix of the map files (default: TENSOR without .nii[.gz])")
    parser.add_argument("--layout", choices=["auto", "fsl", "lower", "full9"], default="auto",
                        help="component order of TENSOR")
    parser.add_argument("--mask", default=None, help="brain mask on the tensor's grid: maps are 0 outside it")
    parser.add_argument("--overwrite", action="store_true", help="replace existing map files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary line")


def run(args: argparse.Namespace) -> int:
    from medsr.dti_maps import parse_maps
    from pipelines.maps import run_maps

    names = parse_maps(args.maps)
    written = run_maps(args.tensor, names, output=args.output, layout=args.layout, mask=args.mask,
                       overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {len(written)} map(s): " + ", ".join(str(p) for p in written))
    return 0
