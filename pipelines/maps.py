"""Orchestration of ``medsr maps`` and ``medsr infer --maps``: a tensor volume -> one NIfTI per map.

The maths lives in :mod:`medsr.dti_maps`; here are the file names and the writing. Outside BIDS a map
goes next to the tensor as ``<prefix>_<SUFFIX>.nii.gz`` with FSL dtifit's suffixes where it has one
(``_FA``, ``_MD``, ``_V1``; also ``_AD``, ``_RD``, ``_RGB``). Every map is float32 on the tensor's grid,
with its header (:func:`medsr.io.save_volume`), written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from medsr.dti_maps import MAPS, tensor_maps
from medsr.io import load_dti, load_mask, save_volume
from medsr.utils.paths import check_not_input
from medsr.volume import Volume

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti(path: str | os.PathLike) -> Path:
    """``a/b.nii.gz`` -> ``a/b`` (other names unchanged)."""
    p = Path(path)
    for suf in NIFTI_SUFFIXES:
        if p.name.lower().endswith(suf):
            return p.with_name(p.name[: -len(suf)])
    return p


def map_paths(prefix: str | os.PathLike, names: Sequence[str]) -> dict[str, Path]:
    """name -> ``<prefix>_<SUFFIX>.nii.gz`` (:data:`medsr.dti_maps.MAPS`)."""
    prefix = Path(prefix)
    return {n: prefix.with_name(f"{prefix.name}_{MAPS[n][1]}.nii.gz") for n in names}


def write_maps(tensor: Volume, paths: dict[str, Path], *, mask: np.ndarray | None = None, overwrite: bool = False,
               progress: bool = False) -> list[Path]:
    """Compute the maps of ``tensor`` (6, X, Y, Z) and write each to ``paths[name]``; 0 outside ``mask``."""
    if tensor.channels != 6:
        raise ValueError(f"{tensor.name}: maps need a 6-component tensor volume, got {tensor.channels} channel(s)")
    n = int(np.prod(tensor.spatial_shape))
    with tqdm(total=n, desc="maps", unit="vox", unit_scale=True, disable=not progress, leave=False) as bar:
        maps = tensor_maps(tensor.data, list(paths), progress=bar.update)
    written = []
    for name, path in paths.items():
        data = maps[name] if mask is None else maps[name] * mask[None]
        written.append(save_volume(tensor.with_data(data, name=str(path)), path, overwrite=overwrite))
    return written


def run_maps(tensor_path: str | os.PathLike, names: Sequence[str], *, output: str | os.PathLike | None = None,
             layout: str = "auto", mask: str | os.PathLike | None = None, overwrite: bool = False,
             quiet: bool = False) -> list[Path]:
    """``medsr maps``: read a tensor file (any layout :func:`medsr.io.load_dti` reads) and write its maps.

    Args:
        output: the prefix of the map files (default: the tensor's path without ``.nii[.gz]``).

    Raises:
        FileExistsError: a map file exists and not ``overwrite`` (checked before any is computed).
    """
    paths = map_paths(strip_nifti(output if output is not None else tensor_path), names)
    check_not_input(paths.values(), {"the TENSOR": tensor_path, "the --mask": mask})
    if not overwrite:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            raise FileExistsError(f"{existing[0]}: already exists (pass --overwrite to replace)")
    tensor = load_dti(tensor_path, layout=layout)
    m = load_mask(mask, tensor) if mask is not None else None
    return write_maps(tensor, paths, mask=m, overwrite=overwrite, progress=not quiet)
