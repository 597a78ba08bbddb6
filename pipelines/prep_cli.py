"""``medsr prep hcp``, ``prep bids`` and ``prep volumes``: prepare subjects into HR/LR pairs and a manifest."""
from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

from pipelines.factor_flag import add_factor_flags, factor_from_args

LAYOUT_HCP = """\
input layout (HCP):
  INPUT/<subject>/T1w/Diffusion/data.nii.gz              4D DWI
  INPUT/<subject>/T1w/Diffusion/bvals                    b-values (s/mm^2)
  INPUT/<subject>/T1w/Diffusion/bvecs                    3 rows of unit vectors
  INPUT/<subject>/T1w/Diffusion/nodif_brain_mask.nii.gz  brain mask
"""
LAYOUT_BIDS = """\
input layout (BIDS; INPUT is the dataset root):
  INPUT/dataset_description.json        required (Name, BIDSVersion)
  INPUT/sub-<label>/[ses-<label>/]dwi/sub-<label>[_ses-<label>][_acq-<x>][_run-<n>]_dwi.nii.gz  4D DWI
                                      ..._dwi.bval  b-values (FSL; may be inherited from a folder above)
                                      ..._dwi.bvec  3 rows of unit vectors (likewise)
Each dwi series becomes one subject named after its entities: OUTPUT/sub-02_ses-1/, OUTPUT/sub-03_acq-hi_run-1/.
Brain mask: the file --mask-pattern names, with {name} (sub-02_ses-1), {folder} (sub-02/ses-1/dwi) and
entity keys ({sub}, {ses}, {acq}, {run}, ...), relative to INPUT; e.g.
  --mask-pattern 'derivatives/masks/{folder}/{name}_desc-brain_mask.nii.gz'
else computed from the mean b0 with dipy's median_otsu (saved as OUTPUT/<name>/mask.nii.gz).
Subjects without a dwi series are skipped and listed; a broken series is marked failed by name.
"""
LAYOUT_VOLUMES = """\
input layout:
  INPUT/<subject>/image.nii.gz   3D scalar image (.nii, .nrrd, .mha also accepted)
  INPUT/<subject>/mask.nii.gz    brain mask on the same grid
"""
OUTPUT = """\
output:
  OUTPUT/<subject>/hr.nii.gz     HR target (DTI: X,Y,Z,6 in FSL order Dxx,Dxy,Dxz,Dyy,Dyz,Dzz; scalar: 3D)
  OUTPUT/<subject>/lr.nii.gz     LR (block mean of rx x ry x rz voxels, or --slice-profile gaussian;
                                 DTI fitted on the degraded DWIs)
  OUTPUT/<subject>/lr_up.nii.gz  LR nearest-neighbour upsampled to the HR grid (network input)
  OUTPUT/<subject>/mask.nii.gz   brain mask on the HR grid (uint8)
  OUTPUT/manifest.csv            one row per subject (status ok/failed, error, shape, n_patches, ...)
Sizes that are not a multiple of the factor are cropped at the far end (or edge-padded with --pad), per axis.
Thick-slice data: --factor 1 1 4 keeps x and y and makes 4x thicker slices along z (docs/thick-slice.md).
With --lr-only (volumes): OUTPUT/<subject>/lr.nii.gz is the scan on its native grid and mask.nii.gz its mask
there; no hr or lr_up is written, and the manifest's shape and voxel_size describe the HR grid the factor implies.
A rerun skips subjects already done and retries failed ones. Exit code 1 if any subject failed.
"""


def _common(p: argparse.ArgumentParser, input_help: str = "folder of subject folders", subjects: bool = True) -> None:
    p.add_argument("--input", required=True, type=Path, help=input_help)
    p.add_argument("--output", required=True, type=Path, help="output folder (created if missing)")
    add_factor_flags(p)
    p.add_argument("--pad", action="store_true", help="edge-pad sizes that are not a multiple of r (default: crop)")
    p.add_argument("--lr-only", action="store_true",
                   help="the images are thick-slice scans with no HR counterpart (volumes only): keep each on its "
                        "native grid as lr.nii.gz with its mask, record the factor to restore and --slice-profile, "
                        "write no HR file (for self-supervised training, configs/self.yaml)")
    p.add_argument("--workers", type=int, default=1,
                   help="subjects prepared in parallel (one HCP subject peaks at about 2.1 GB of memory, "
                        "measured by 'medsr bench prep'; default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo subjects that are already done")
    if subjects:
        p.add_argument("--subjects", nargs="+", metavar="ID", help="only these subject folders (default: all)")


def _shell(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shell", type=float, default=1000.0, help="b-value shell to fit with the b0s (default 1000)")
    p.add_argument("--shell-tolerance", type=float, default=100.0,
                   help="keep volumes with |b - shell| <= this (s/mm^2; default 100)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    fmt = argparse.RawDescriptionHelpFormatter
    hcp = sub.add_parser("hcp", help="HCP diffusion MRI -> DTI pairs (dipy WLS fit)", formatter_class=fmt,
                         description="Fit HR DTI and LR DTI (block-averaged DWIs) for HCP subjects.",
                         epilog=LAYOUT_HCP + "\n" + OUTPUT)
    _common(hcp)
    _shell(hcp)
    bids = sub.add_parser("bids", help="BIDS diffusion datasets -> DTI pairs (the fit of prep hcp)",
                          formatter_class=fmt,
                          description="Fit HR DTI and LR DTI (block-averaged DWIs) for every dwi series of a BIDS "
                                      "dataset, exactly as prep hcp does.",
                          epilog=LAYOUT_BIDS + "\n" + OUTPUT)
    _common(bids, input_help="BIDS dataset root (holds dataset_description.json)", subjects=False)
    _shell(bids)
    bids.add_argument("--participant-label", nargs="+", metavar="LABEL",
                      help="only these subjects, without the sub- prefix (default: all)")
    bids.add_argument("--session", nargs="+", metavar="LABEL",
                      help="only these sessions, without the ses- prefix (default: all)")
    bids.add_argument("--mask-pattern", metavar="PATTERN",
                      help="brain mask file per series (see below; default: median_otsu on the b0s)")
    vol = sub.add_parser("volumes", help="generic scalar volumes (T1, T2, ...) -> pairs", formatter_class=fmt,
                         description="Block-average scalar images into LR/HR pairs.",
                         epilog=LAYOUT_VOLUMES + "\n" + OUTPUT)
    _common(vol)


def run(args: argparse.Namespace) -> int:
    from data_prep.runner import check_output_folder, run_subjects
    from medsr.utils.paths import subject_list

    args.factor = factor_from_args(args.factor, args.slice_profile)  # 2 for "2" and "2 2 2"; [1, 1, 4] per axis
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.source in ("hcp", "bids") and not (args.shell > 0 and math.isfinite(args.shell)):
        raise ValueError(f"--shell must be a positive b-value (s/mm^2), got {args.shell:g}")
    if args.source in ("hcp", "bids") and not args.shell_tolerance >= 0:
        raise ValueError(f"--shell-tolerance must be >= 0, got {args.shell_tolerance:g}")
    if args.lr_only and args.source != "volumes":
        raise ValueError(f"--lr-only: self-supervised training takes scalar volumes (medsr prep volumes --lr-only); "
                         f"DTI from prep {args.source} is not supported")
    if args.lr_only and args.pad:
        raise ValueError("--pad: an --lr-only scan keeps its native grid (nothing is cropped or padded)")
    if args.source == "bids":
        return _run_bids(args)
    if args.lr_only:
        from data_prep import volumes as mod
        from data_prep import lr_only

        process = functools.partial(lr_only.prep_subject, input_dir=str(args.input), factor=args.factor,
                                    profile=args.slice_profile)
        kind = "scalar"
    elif args.source == "hcp":
        from data_prep import hcp as mod

        process = functools.partial(mod.prep_subject, input_dir=str(args.input), shell=args.shell,
                                    tolerance=args.shell_tolerance, factor=args.factor, pad=args.pad,
                                    profile=args.slice_profile)
        kind = "dti"
    else:
        from data_prep import volumes as mod

        process = functools.partial(mod.prep_subject, input_dir=str(args.input), factor=args.factor, pad=args.pad,
                                    profile=args.slice_profile)
        kind = "scalar"
    subjects = mod.find_subjects(args.input)
    # An output folder placed inside the input folder (written by an earlier prep: it holds the
    # manifest, or nothing yet) is not a subject; any other overlap is refused below.
    out = args.output.resolve()
    if out.is_dir() and ((out / "manifest.csv").is_file() or not any(out.iterdir())):
        subjects = [s for s in subjects if (args.input / s).resolve() != out]
    if args.subjects:
        wanted = subject_list(args.subjects, "--subjects")
        unknown = sorted(set(wanted) - set(subjects))
        if unknown:
            raise ValueError(f"{args.input}: no subject folder(s) {', '.join(unknown)}")
        subjects = [s for s in subjects if s in set(wanted)]
    check_output_folder(args.input, subjects, args.output)
    return run_subjects(subjects, process, args.output, kind=kind, factor=args.factor, workers=args.workers,
                        overwrite=args.overwrite, desc=f"prep {args.source}")


def _run_bids(args: argparse.Namespace) -> int:
    from data_prep import bids
    from data_prep.runner import check_output_folder, run_subjects, subject_outputs
    from medsr.utils.paths import check_not_input, subject_list

    bids.check_dataset(args.input)
    if args.mask_pattern:
        bids.check_mask_pattern(args.mask_pattern)
    labels = subject_list(args.participant_label, "--participant-label") if args.participant_label else None
    sessions = subject_list(args.session, "--session") if args.session else None
    found = bids.find_series(args.input, labels, sessions)
    if found.no_dwi:
        where = f" in session(s) {', '.join(args.session)}" if args.session else ""
        print(f"prep bids: {len(found.no_dwi)} subject(s) without a dwi series{where}, skipped: "
              f"{', '.join(found.no_dwi)}", file=sys.stderr)
    if not found.series:
        raise ValueError(f"{args.input}: no dwi series found in the selected subjects (expected "
                         "sub-<label>/[ses-<label>/]dwi/sub-<label>[_ses-<label>]..._dwi.nii.gz)")
    # Every subject folder, not just the selected ones: the output must not land in (or hold) any of them.
    folders = sorted(p.name for p in args.input.glob("sub-*") if p.is_dir())
    out = args.output.resolve()
    if out.parent == args.input.resolve() and out.name.startswith("sub-"):
        folders.append(out.name)  # it would be read as a subject folder by the next run
    check_output_folder(args.input, folders, args.output)
    series = {s.name: s for s in found.series}
    if args.mask_pattern:  # --overwrite redoes a subject's outputs: never over the mask it reads
        for s in found.series:
            try:
                mask = bids.mask_path(args.input, s, args.mask_pattern)
            except ValueError:
                continue  # a series lacking an entity of the pattern fails on its own, by name
            check_not_input(subject_outputs(args.output, s.name).values(), {"the --mask-pattern file": mask})
    process = functools.partial(bids.prep_series, series=series, input_dir=str(args.input),
                                mask_pattern=args.mask_pattern, shell=args.shell, tolerance=args.shell_tolerance,
                                factor=args.factor, pad=args.pad, profile=args.slice_profile)
    return run_subjects(list(series), process, args.output, kind="dti", factor=args.factor, workers=args.workers,
                        overwrite=args.overwrite, desc="prep bids")
