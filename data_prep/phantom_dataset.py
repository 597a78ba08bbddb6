"""A prepared phantom dataset in one call: generate DTI phantoms in the HCP layout, then ``prep hcp`` them.

Used by ``medsr demo`` and ``medsr bench quality``, so both run the same path a real HCP study runs
(:func:`data_prep.phantom.generate`, then :func:`data_prep.runner.run_subjects` with
:func:`data_prep.hcp.prep_subject`). Layout::

    <folder>/hcp/<subject>/T1w/Diffusion/...   generated DWIs (+ phantom/ ground truth)
    <folder>/prep/<subject>/{hr,lr,lr_up,mask}.nii.gz, <folder>/prep/manifest.csv
"""
from __future__ import annotations

import functools
from pathlib import Path

from data_prep.phantom import PhantomConfig, generate, subject_names
from medsr.factor import FactorLike


def prepare_phantoms(folder: str | Path, subjects: int, *, seed: int = 0, config: PhantomConfig | None = None,
                     workers: int = 1, progress: bool = True, reuse: bool = False, factor: FactorLike = 2,
                     profile: str = "box") -> tuple[Path, list[str]]:
    """Generate and prepare ``subjects`` phantoms under ``folder``.

    Args:
        folder: receives ``hcp/`` and ``prep/``.
        subjects: number of phantom subjects.
        seed: phantom seed (subject ``i`` uses ``seed * 1000 + i``).
        config: phantom settings (default :class:`PhantomConfig`).
        workers: processes for prep.
        reuse: keep phantoms already on disk and let prep skip finished subjects (a cache for benchmarks
            that rerun on the same data; the caller keys ``folder`` on the settings).
        factor: prep's downsampling factor (an int or one per axis; the phantom grid is cropped to a
            multiple of it on each axis, as prep crops any data).
        profile: prep's slice profile (``box`` or ``gaussian``).

    Returns:
        (manifest path, subject names in order).

    Raises:
        ValueError: prep failed for a subject (the manifest's error column says why).
    """
    from data_prep import hcp
    from data_prep.runner import run_subjects

    folder = Path(folder).resolve()
    names = subject_names(subjects)
    hcp_dir, prep_dir = folder / "hcp", folder / "prep"
    if not (reuse and all((hcp_dir / n / "T1w" / "Diffusion" / "data.nii.gz").is_file() for n in names)):
        generate(hcp_dir, subjects, seed=seed, config=config or PhantomConfig(), progress=progress, overwrite=reuse)
    process = functools.partial(hcp.prep_subject, input_dir=str(hcp_dir), shell=1000.0, tolerance=100.0,
                                factor=factor, pad=False, profile=profile)
    if run_subjects(names, process, prep_dir, kind="dti", factor=factor, workers=workers, desc="prep hcp") != 0:
        raise ValueError(f"{prep_dir / 'manifest.csv'}: prep failed for some phantom subject (see the error column)")
    return prep_dir / "manifest.csv", names
