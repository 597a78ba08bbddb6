"""Orchestration of ``medsr evaluate``: predictions + prepared subjects -> metrics CSV, summary, figures.

One row per (model, subject): the model's prediction ``<predictions>/<subject>.nii.gz`` and each
interpolation baseline (nn, linear, cubic from the subject's ``lr.nii.gz``, grid-aligned, by
:mod:`medsr.baselines`) scored by the same :func:`medsr.metrics.evaluate_volumes` against ``hr.nii.gz``
within ``mask.nii.gz``. The summary has mean and standard deviation per model: the paper's Table 3.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from medsr.baselines import upsample
from medsr.factor import factor_triple
from medsr.figures import figure_paths, subject_figures
from medsr.io import load_mask, load_volume
from medsr.manifest import read_manifest
from medsr.metrics import evaluate_volumes
from medsr.utils.atomic import atomic_path
from medsr.utils.paths import inside

METRIC_ORDER = ("rmse_interior", "rmse_total", "psnr", "ssim", "md_rmse", "md_mae", "fa_rmse", "fa_mae")
BASELINES = ("nn", "linear", "cubic")


def parse_baselines(text: str | None) -> list[str]:
    """``"nn,linear,cubic"`` -> list; ``""``/``"none"`` -> []; unknown names raise ValueError."""
    if text is None or text.strip().lower() in ("", "none"):
        return []
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise ValueError(f"--baselines: unknown baseline(s) {', '.join(bad)}; choose from {', '.join(BASELINES)}")
    return names


def select_subjects(df: pd.DataFrame, subjects: Sequence[str] | None, manifest: str | Path) -> pd.DataFrame:
    """Rows of ``subjects`` (all rows when None); an unknown subject or an empty result is an error."""
    if subjects:
        known = set(df["subject"].astype(str))
        unknown = [s for s in subjects if s not in known]
        if unknown:
            raise ValueError(f"{manifest}: no ok subject {unknown[0]!r}")
        df = df[df["subject"].astype(str).isin(list(subjects))].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{manifest}: manifest has no subject with status ok")
    return df


def prediction_paths(subjects: Sequence[str], predictions: str | Path) -> dict[str, Path]:
    """``<predictions>/<subject>.nii.gz`` (or ``.nii``) per subject; a missing one is an error naming it."""
    predictions = Path(predictions)
    if not predictions.is_dir():
        raise FileNotFoundError(f"{predictions}: predictions folder not found")
    out: dict[str, Path] = {}
    missing = []
    for s in subjects:
        for suf in (".nii.gz", ".nii"):
            p = predictions / f"{s}{suf}"
            if p.is_file():
                out[s] = p
                break
        else:
            missing.append(s)
    if missing:
        more = ""
        if len(missing) > 1:
            more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])}{'...' if len(missing) > 4 else ''})"
        raise FileNotFoundError(
            f"{predictions / (missing[0] + '.nii.gz')}: no prediction for manifest subject {missing[0]}{more}"
        )
    return out


@dataclass
class SubjectVolumes:
    """One manifest subject's volumes, as :func:`manifest_volumes` yields them.

    Attributes:
        subject: the manifest's ``subject``.
        kind: ``dti``, or None for scalar images.
        mask_name: the mask's path (named in metric errors).
        hr: the high-resolution truth.
        mask: the brain mask on ``hr``'s grid.
        lr: the low-resolution input (None when neither baselines nor figures asked for it).
        methods: ``(name, volume)`` per prediction folder holding the subject, then per baseline.
    """

    subject: str
    kind: str | None
    mask_name: str
    hr: Any
    mask: Any
    lr: Any
    methods: list[tuple[str, Any]]


def check_figure_paths(folder: str | Path, df: pd.DataFrame, *, overwrite: bool) -> None:
    """Before minutes of scoring or drawing: every subject's figures inside ``folder``, none replaced unasked."""
    for _, r in df.iterrows():
        for p in figure_paths(folder, str(r["subject"]), str(r["kind"]) or None):
            inside(folder, p, "figure")
            if p.exists() and not overwrite:
                raise FileExistsError(f"{p}: already exists (pass --overwrite to replace it)")


def manifest_volumes(
    df: pd.DataFrame,
    predictions: Sequence[tuple[str, dict[str, Path]]],
    baselines: Sequence[str],
    *,
    need_lr: bool,
    desc: str,
    quiet: bool = False,
) -> Iterator[SubjectVolumes]:
    """The one loop over a manifest's rows shared by ``medsr evaluate`` and ``medsr report``.

    Args:
        df: manifest rows (:func:`select_subjects`).
        predictions: ``(name, {subject: path})`` per prediction folder (:func:`prediction_paths`).
        baselines: interpolations of ``lr`` to add as methods (``nn``, ``linear``, ``cubic``).
        need_lr: load ``lr`` even without baselines (figures show it).
        desc: the progress bar's label.
        quiet: no progress bar.
    """
    for _, r in tqdm(df.iterrows(), total=len(df), desc=desc, unit="subj", disable=quiet):
        subject = str(r["subject"])
        factor = factor_triple(r["factor"] or 2)  # an int or "1x1x4" (per axis)
        hr = load_volume(r["hr"])
        mask = load_mask(r["mask"], like=hr)
        methods = [(name, _finite(load_volume(paths[subject]), paths[subject]))
                   for name, paths in predictions if subject in paths]
        lr = load_volume(r["lr"]) if baselines or need_lr else None
        methods += [(b, upsample(lr, factor, b, out_shape=hr.spatial_shape)) for b in baselines]
        yield SubjectVolumes(subject, str(r["kind"]) or None, str(r["mask"]), hr, mask, lr, methods)


def _finite(vol: Any, path: Path) -> Any:
    """A prediction scored or drawn must be finite: a NaN voxel would silently become a NaN score or a hole."""
    bad = ~np.isfinite(vol.data)
    if bad.any():
        raise ValueError(f"{path}: prediction has {int(bad.any(axis=0).sum())} voxel(s) with NaN or inf values")
    return vol


def evaluate_manifest(
    manifest: str | Path,
    predictions: str | Path | None,
    *,
    model_name: str | None = None,
    baselines: Sequence[str] = BASELINES,
    figures: str | Path | None = None,
    subjects: Sequence[str] | None = None,
    quiet: bool = False,
    overwrite_figures: bool = True,
) -> pd.DataFrame:
    """Score a model's predictions and the baselines on every ``ok`` subject of a manifest.

    Args:
        manifest: prep's ``manifest.csv``.
        predictions: folder of ``<subject>.nii.gz``; ``None`` scores the baselines only.
        model_name: the model column's value (default: the predictions folder's name).
        baselines: any of ``nn``, ``linear``, ``cubic``.
        figures: write each subject's figures into this folder (:func:`medsr.figures.subject_figures`:
            ``<subject>_{md,fa,colour_fa}.png`` for DTI, ``<subject>_intensity.png`` for scalar images).
        subjects: only these manifest subjects (e.g. the test split); default every ``ok`` subject.
        overwrite_figures: replace existing figures (else FileExistsError before any scoring).

    Returns:
        DataFrame, one row per (model, subject), columns ``model, subject`` + metrics.
    """
    df = read_manifest(manifest)
    df = select_subjects(df, subjects, manifest)
    subjects = [str(s) for s in df["subject"]]
    if figures:
        check_figure_paths(figures, df, overwrite=overwrite_figures)
    preds = prediction_paths(subjects, predictions) if predictions is not None else {}
    name = model_name or (Path(predictions).resolve().name if predictions is not None else "")
    if name in baselines:
        raise ValueError(f"--model-name {name!r} clashes with a baseline's name; choose another")
    rows: list[dict] = []
    for sv in manifest_volumes(df, [(name, preds)], baselines, need_lr=bool(figures), desc="subjects", quiet=quiet):
        for model, vol in sv.methods:
            metrics = evaluate_volumes(vol, sv.hr, sv.mask, kind=sv.kind, mask_name=sv.mask_name)
            rows.append({"model": model, "subject": sv.subject, **metrics})
        if figures:
            subject_figures(figures, sv.subject, hr=sv.hr, mask=sv.mask, methods=sv.methods, lr=sv.lr,
                                          kind=sv.kind, overwrite=overwrite_figures)
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate([name, *baselines])}
    out["_o"] = out["model"].map(order)
    out = out.sort_values(["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
    cols = ["model", "subject"] + [c for c in METRIC_ORDER if c in out.columns]
    return out[cols]


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std per model of every metric (``<metric>_mean``, ``<metric>_std``) and ``n``."""
    metrics = [c for c in METRIC_ORDER if c in df.columns]
    models = list(dict.fromkeys(df["model"]))  # keep first-seen order
    rows = []
    for m in models:
        sub = df[df["model"] == m]
        row: dict = {"model": m, "n": int(len(sub))}
        for c in metrics:
            vals = sub[c].astype(float)
            row[f"{c}_mean"] = float(vals.mean())
            row[f"{c}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def summary_path(csv: str | Path) -> Path:
    """``OUT.csv`` -> ``OUT_summary.csv``."""
    csv = Path(csv)
    stem = csv.name[: -len(".csv")] if csv.name.lower().endswith(".csv") else csv.name
    return csv.with_name(f"{stem}_summary.csv")


def check_outputs(csv: str | Path, *, overwrite: bool = False) -> None:
    """Raise FileExistsError naming the file if the CSV or its summary exists and ``overwrite`` is False."""
    if overwrite:
        return
    for p in (Path(csv), summary_path(csv)):
        if p.exists():
            raise FileExistsError(f"{p}: already exists (pass --overwrite to replace it)")


def write_results(df: pd.DataFrame, csv: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write the per-subject CSV and its summary atomically; returns both paths."""
    csv = Path(csv)
    summ = summary_path(csv)
    check_outputs(csv, overwrite=overwrite)
    with atomic_path(csv, overwrite=overwrite) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(summ, overwrite=overwrite) as tmp:
        summarise(df).to_csv(tmp, index=False, float_format="%.6g")
    return csv, summ


def evaluate_single(pred: str | Path, target: str | Path, mask: str | Path, *, kind: str | None = None,
                    model_name: str = "model", subject: str | None = None) -> pd.DataFrame:
    """The single-volume form: one row scoring ``pred`` against ``target`` within ``mask``."""
    p, t = load_volume(pred), load_volume(target)
    m = load_mask(mask, like=t, ref_name=f"target {target}")  # one read; checks channels and grid
    metrics = evaluate_volumes(p, t, m, kind=kind, mask_name=str(mask))
    return pd.DataFrame([{"model": model_name, "subject": subject or Path(str(target)).name.split(".")[0], **metrics}])
