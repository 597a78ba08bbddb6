"""``medsr bench tissues``: where a model's error lies, by the phantom's tissue labels, against cubic.

The interior RMSE of ``medsr evaluate`` is one number over the brain's interior. On the phantom every voxel
also has a known dominant tissue (``data_prep/phantom``: CSF, cortical grey matter, white matter, fibre
tracts, deep grey matter, crossings), so the interior's squared error can be split by tissue: how much of
cubic's error each tissue holds, and how much of it the model removes there. That tells a lever that moves
white matter from one that could move the sulcal CSF, which holds most of the error
(docs/anisotropic.md).

    medsr bench tissues --manifest DATA/prep/manifest.csv --phantom DATA/hcp --predictions PRED \
        --subjects phantom07 --output tissues.csv

``--phantom`` is the folder ``python -m data_prep.phantom`` (or ``medsr bench quality``) wrote the
subjects into: ``<subject>/phantom/labels.nii.gz`` on the phantom's full grid. Prep cropped the HR grid to
a multiple of the factor; the labels are brought onto it through the two affines (world coordinates: an
axis-aligned integer shift, anything else is refused).

Output: one CSV row per subject and tissue (and ``interior``, all of them): ``voxels`` (share of the
interior), ``rmse_model``, ``rmse_cubic``, ``ratio`` (model / cubic), ``share_cubic`` and ``share_model``
(the tissue's part of each method's interior squared error).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from medsr.metrics import interior_mask
from medsr.utils.atomic import atomic_path
from medsr.volume import Volume

REFERENCE = "cubic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="prep's manifest.csv of the phantom subjects")
    parser.add_argument("--phantom", required=True, type=Path,
                        help="the phantom's own folder (<subject>/phantom/labels.nii.gz), e.g. DATA/hcp")
    parser.add_argument("--predictions", required=True, type=Path, help="folder of <subject>.nii.gz (medsr infer)")
    parser.add_argument("--subjects", nargs="+", required=True, metavar="ID", help="subjects to score")
    parser.add_argument("--output", type=Path, default=Path("tissues.csv"), help="CSV to write (default tissues.csv)")


def labels_on(grid: Volume, labels: Volume, where: str) -> np.ndarray:
    """``labels`` (1, X', Y', Z') resampled onto ``grid``'s voxels: (X, Y, Z) int, by an integer shift only.

    Raises:
        ValueError: the grids differ by more than an axis-aligned whole-voxel shift, or ``grid`` reaches
            outside the labels.
    """
    to_labels = np.linalg.inv(labels.affine) @ grid.affine  # grid voxel -> label voxel
    shift = np.round(to_labels[:3, 3])
    if not (np.allclose(to_labels[:3, :3], np.eye(3), atol=1e-4) and np.allclose(to_labels[:3, 3], shift, atol=1e-3)):
        raise ValueError(f"{where}: the labels' grid is not the HR grid shifted by whole voxels")
    lo = shift.astype(int)
    hi = lo + np.array(grid.spatial_shape)
    if (lo < 0).any() or (hi > np.array(labels.spatial_shape)).any():
        raise ValueError(f"{where}: the HR grid reaches outside the labels' grid")
    return np.rint(labels.data[0, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]).astype(int)


def tissue_errors(truth: np.ndarray, model: np.ndarray, cubic: np.ndarray, mask: np.ndarray,
                  labels: np.ndarray, names: dict[str, int]) -> pd.DataFrame:
    """Interior squared error split by tissue.

    Args:
        truth, model, cubic: (C, X, Y, Z) volumes on one grid.
        mask: (X, Y, Z) brain mask; the interior is :func:`medsr.metrics.interior_mask` of it.
        labels: (X, Y, Z) integer tissue codes.
        names: tissue name -> code (tissues absent from the interior are left out).

    Returns:
        Rows ``tissue, voxels, rmse_model, rmse_cubic, ratio, share_cubic, share_model``; the first row is
        ``interior`` (every interior voxel).
    """
    inner = interior_mask(mask)
    se_model = ((model - truth) ** 2).sum(0)  # (X, Y, Z) squared error summed over channels
    se_cubic = ((cubic - truth) ** 2).sum(0)
    n_channels, n_inner = truth.shape[0], int(inner.sum())
    tot_model, tot_cubic = float(se_model[inner].sum()), float(se_cubic[inner].sum())
    rows = []
    for tissue, sel in [("interior", inner)] + [(n, inner & (labels == c)) for n, c in names.items()]:
        n = int(sel.sum())
        if n == 0:
            continue
        em, ec = float(se_model[sel].sum()), float(se_cubic[sel].sum())
        rows.append({"tissue": tissue, "voxels": n / n_inner,
                     "rmse_model": np.sqrt(em / (n * n_channels)), "rmse_cubic": np.sqrt(ec / (n * n_channels)),
                     "ratio": np.sqrt(em / ec) if ec > 0 else np.nan,
                     "share_cubic": ec / tot_cubic if tot_cubic > 0 else np.nan,
                     "share_model": em / tot_model if tot_model > 0 else np.nan})
    return pd.DataFrame(rows)


def run(args: argparse.Namespace) -> int:
    from data_prep.phantom.config import BRAIN_TISSUES, LABELS
    from medsr.io import load_volume
    from medsr.manifest import read_manifest
    from pipelines.evaluate import manifest_volumes, prediction_paths, select_subjects

    df = select_subjects(read_manifest(args.manifest), args.subjects, args.manifest)
    paths = prediction_paths(list(df["subject"].astype(str)), args.predictions)
    # The tissues inside the brain, with the fibre classes the phantom labels separately.
    names = {n: LABELS[n] for n in (*BRAIN_TISSUES, "tract", "crossing")}
    tables = []
    for v in manifest_volumes(df, [("model", paths)], (REFERENCE,), need_lr=False, desc="tissues"):
        label_path = args.phantom / v.subject / "phantom" / "labels.nii.gz"
        if not label_path.is_file():
            raise FileNotFoundError(f"{label_path}: no phantom labels for subject {v.subject}")
        labels = labels_on(v.hr, load_volume(label_path), str(label_path))
        methods = dict(v.methods)
        table = tissue_errors(v.hr.data, methods["model"].data, methods[REFERENCE].data, v.mask, labels, names)
        table.insert(0, "subject", v.subject)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as tmp:
        out.to_csv(tmp, index=False, float_format="%.6g")
    print(out.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(f"wrote {args.output}")
    return 0
