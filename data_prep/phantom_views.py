"""Other views of the phantom for benchmarks: scalar scans, and thick-slice scans without their HR volumes.

* :func:`scalar_phantoms`: each phantom's mean b0 image (a T2-weighted contrast: CSF bright, noise of
  the DWIs) and brain mask in the ``medsr prep volumes`` layout, prepared by ``prep volumes`` at a
  factor and slice profile: scalar HR / LR pairs of the same anatomy as the DTI phantom.
* :func:`lr_only_view`: the LR scans of a prepared scalar manifest with their masks on the LR grid
  (an LR voxel is brain when at least half its block is), prepared by ``prep volumes --lr-only``: what
  a thick-slice study holds, for self-supervised training. Its subjects' HR volumes stay in the other
  manifest, for scoring only.

Layout under ``folder``: ``scalar/<subject>/{image,mask}.nii.gz`` and ``scalar_prep/`` (the pairs);
``lr_scans/<subject>/{image,mask}.nii.gz`` and ``lr_only/`` (the LR-only manifest).

From the command line, thick-slice scans of generated phantoms, ready for ``medsr prep volumes --lr-only``::

    python -m data_prep.phantom --output thick/hcp --n-subjects 2
    python -m data_prep.phantom_views --hcp thick/hcp --output thick/scans --factor 1 1 4
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np


def scalar_phantoms(folder: str | Path, subjects: int, *, seed: int = 0, factor, profile: str = "box",
                    workers: int = 1, progress: bool = True) -> tuple[Path, list[str]]:
    """Generate ``subjects`` phantoms under ``folder/hcp`` (kept when there) and prepare their mean-b0 scans.

    Returns:
        (the ``prep volumes`` manifest ``folder/scalar_prep/manifest.csv``, subject names in order).

    Raises:
        ValueError: prep failed for a subject.
    """
    from data_prep.phantom import PhantomConfig, generate, subject_names

    folder = Path(folder).resolve()
    names = subject_names(subjects)
    hcp_dir = folder / "hcp"
    if not all((hcp_dir / n / "T1w" / "Diffusion" / "data.nii.gz").is_file() for n in names):
        generate(hcp_dir, subjects, seed=seed, config=PhantomConfig(), progress=progress, overwrite=True)
    return _scalar_prep(hcp_dir, folder, names, factor=factor, profile=profile, workers=workers), names


def _scalar_prep(hcp_dir: Path, folder: Path, names: list[str], *, factor, profile: str, workers: int) -> Path:
    """Mean-b0 scans of the HCP-layout phantoms ``names``, prepared by ``prep volumes`` at ``factor``."""
    from data_prep import volumes
    from data_prep.runner import run_subjects
    from medsr.io import save_mask, save_volume
    from medsr.volume import Volume

    folder = Path(folder)
    src, prep = folder / "scalar", folder / "scalar_prep"
    for name in names:
        image = src / name / "image.nii.gz"
        if image.is_file() and (src / name / "mask.nii.gz").is_file():
            continue
        b0, mask, affine = _mean_b0(Path(hcp_dir) / name / "T1w" / "Diffusion")
        save_volume(Volume(b0[None], affine, name=name), image)
        save_mask(mask, affine, src / name / "mask.nii.gz")
    process = functools.partial(volumes.prep_subject, input_dir=str(src), factor=factor, pad=False, profile=profile)
    if run_subjects(names, process, prep, kind="scalar", factor=factor, workers=workers, desc="prep volumes") != 0:
        raise ValueError(f"{prep / 'manifest.csv'}: prep failed for some phantom subject (see the error column)")
    return prep / "manifest.csv"


def _mean_b0(diff: Path):
    """(mean b0 image (X, Y, Z) float32, brain mask (X, Y, Z) bool, affine) of an HCP-layout Diffusion folder."""
    import nibabel as nib

    dwi = nib.load(diff / "data.nii.gz")
    bvals = np.loadtxt(diff / "bvals", ndmin=1)
    b0 = np.asarray(dwi.dataobj, dtype=np.float32)[..., bvals < 50].mean(-1)
    mask = np.asarray(nib.load(diff / "nodif_brain_mask.nii.gz").dataobj) > 0
    return b0, mask, np.asarray(dwi.affine, dtype=np.float64)


def thick_scans(hcp_dir: str | Path, output: str | Path, *, factor, profile: str = "box") -> list[Path]:
    """Thick-slice scans of the HCP-layout phantoms in ``hcp_dir``: each mean b0 image degraded as prep degrades
    (``factor``, ``profile``) on its LR grid, with its mask there, as ``output/<subject>/{image,mask}.nii.gz``.

    Returns:
        The subject folders written.
    """
    from medsr.degrade import degrade_array, downsample_mask, fit_array, lr_affine
    from medsr.io import save_mask, save_volume
    from medsr.volume import Volume

    out = []
    for folder in sorted(p for p in Path(hcp_dir).iterdir() if (p / "T1w" / "Diffusion").is_dir()):
        b0, mask, affine = _mean_b0(folder / "T1w" / "Diffusion")
        b0, mask = fit_array(b0, factor), fit_array(mask, factor)
        lr = lr_affine(affine, factor)
        save_volume(Volume(degrade_array(b0, factor, profile=profile)[None], lr, name=folder.name),
                    Path(output) / folder.name / "image.nii.gz")
        save_mask(downsample_mask(mask, factor), lr, Path(output) / folder.name / "mask.nii.gz")
        out.append(Path(output) / folder.name)
    if not out:
        raise ValueError(f"{hcp_dir}: no subject folder with T1w/Diffusion (generate them with python -m data_prep.phantom)")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.phantom_views``: thick-slice scans of generated phantoms (:func:`thick_scans`)."""
    import argparse

    from medsr.factor import factor_value
    from medsr.slice_profile import PROFILES, slice_axis

    parser = argparse.ArgumentParser(prog="python -m data_prep.phantom_views",
                                     description="Thick-slice scalar scans (mean b0, degraded as prep degrades) and "
                                                 "their masks from phantoms in the HCP layout, for 'medsr prep "
                                                 "volumes --lr-only'.")
    parser.add_argument("--hcp", required=True, type=Path, help="folder of generated phantoms (HCP layout)")
    parser.add_argument("--output", required=True, type=Path, help="writes OUTPUT/<subject>/{image,mask}.nii.gz")
    parser.add_argument("--factor", type=int, nargs="+", default=[1, 1, 4], metavar="R",
                        help="downsampling factor, one integer or three (x y z; default 1 1 4)")
    parser.add_argument("--slice-profile", choices=PROFILES, default="box",
                        help="box (block mean) or gaussian (slice profile along the thickest axis); default box")
    args = parser.parse_args(argv)
    try:
        factor = factor_value(args.factor)
        if args.slice_profile != "box":
            slice_axis(factor)
        folders = thick_scans(args.hcp, args.output, factor=factor, profile=args.slice_profile)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"{len(folders)} thick-slice scan(s) in {args.output}")
    return 0


def lr_only_view(manifest: str | Path, folder: str | Path, *, workers: int = 1) -> Path:
    """The LR scans of prepared scalar ``manifest`` as an LR-only dataset (``prep volumes --lr-only``).

    Returns:
        The LR-only manifest (``folder/lr_only/manifest.csv``), subjects as in ``manifest``.
    """
    import nibabel as nib

    from data_prep import lr_only
    from data_prep.runner import run_subjects
    from medsr.degrade import downsample_mask
    from medsr.factor import factor_triple
    from medsr.io import load_volume, save_mask, save_volume
    from medsr.manifest import read_manifest

    folder = Path(folder)
    src, out = folder / "lr_scans", folder / "lr_only"
    df = read_manifest(manifest)
    factors = {factor_triple(f) for f in df["factor"]}
    profiles = set(df["slice_profile"])
    if len(factors) != 1 or len(profiles) != 1:
        raise ValueError(f"{manifest}: subjects mix factors or slice profiles")
    factor, profile = factors.pop(), profiles.pop()
    for row in df.itertuples():
        image = src / row.subject / "image.nii.gz"
        if image.is_file() and (src / row.subject / "mask.nii.gz").is_file():
            continue
        lr = load_volume(row.lr)
        mask = np.asarray(nib.load(row.mask).dataobj) > 0  # the HR-grid brain mask, made an LR scan's mask
        save_mask(downsample_mask(mask, factor), lr.affine, src / row.subject / "mask.nii.gz")
        save_volume(lr, image)
    process = functools.partial(lr_only.prep_subject, input_dir=str(src), factor=factor, profile=profile)
    names = list(df["subject"])
    if run_subjects(names, process, out, kind="scalar", factor=factor, workers=workers, desc="prep --lr-only") != 0:
        raise ValueError(f"{out / 'manifest.csv'}: LR-only prep failed for some subject (see the error column)")
    return out / "manifest.csv"


if __name__ == "__main__":
    raise SystemExit(main())
