"""PNG figures of one subject: LR input, HR truth, each prediction and their error maps.

Layout (one PNG per subject): columns are the LR input (NN-upsampled onto the HR grid), the HR truth
and each prediction; rows are an axial slice, a sagittal slice, then the absolute error of each
column against the truth on the same two slices. For DTI the images are mean-diffusivity maps, as in
the paper's Figure 5 (sagittal and axial MD slices of LR, HR and each model); for other data the
first channel (or, with several channels, the root-mean-square over channels).

All panels share one grey scale (1st-99th percentile of the truth within the mask) and all error
panels one error scale (99th percentile of the LR input's error), so columns compare at a glance.
Slices are taken through the mask's centre of mass and drawn with the voxel aspect ratio.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medsr.utils.atomic import atomic_path
from medsr.volume import Volume


def display_map(vol: Volume, kind: str | None = None) -> np.ndarray:
    """The scalar map (X, Y, Z) shown for ``vol``: MD for DTI, else channel 0 / RMS over channels."""
    if kind is None:
        kind = "dti" if vol.channels == 6 else "scalar"
    if kind == "dti":
        from medsr.dti import mean_diffusivity

        return np.asarray(mean_diffusivity(vol.data), dtype=np.float32)
    if vol.channels == 1:
        return vol.data[0]
    return np.sqrt((vol.data.astype(np.float32) ** 2).mean(0))


def _slices(a: np.ndarray, centre: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(axial (X, Y) at z = centre[2], sagittal (Y, Z) at x = centre[0])."""
    return a[:, :, centre[2]], a[centre[0], :, :]


def subject_figure(
    path: str | os.PathLike,
    *,
    hr: Volume,
    mask: np.ndarray,
    predictions: Sequence[tuple[str, Volume]],
    lr_up: Volume | None = None,
    kind: str | None = None,
    title: str = "",
    overwrite: bool = True,
) -> Path:
    """Write the subject's PNG (see the module docstring).

    Args:
        path: the PNG to write (atomically).
        hr: the truth (C, X, Y, Z).
        mask: (X, Y, Z) brain mask; values outside are shown black.
        predictions: (label, volume) pairs on the HR grid, drawn in this order.
        lr_up: the LR input on the HR grid (NN-upsampled), first column when given.
        kind: ``"dti"`` shows MD maps; default DTI when C == 6.
        title: the figure's title (e.g. the subject id).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = np.asarray(mask, dtype=bool)
    columns: list[tuple[str, Volume]] = ([("LR input", lr_up)] if lr_up is not None else []) + [("HR truth", hr)]
    columns += list(predictions)
    for label, vol in columns:
        if vol.spatial_shape != hr.spatial_shape:
            raise ValueError(f"{vol.name}: {label} shape {vol.spatial_shape} differs from the truth {hr.spatial_shape}")
    maps = [np.where(mask, display_map(v, kind), 0.0) for _, v in columns]
    truth = maps[1 if lr_up is not None else 0]
    lo, hi = np.percentile(truth[mask], [1, 99]) if mask.any() else (float(truth.min()), float(truth.max()))
    errs = [np.where(mask, np.abs(m - truth), 0.0) for m in maps]
    ref_err = errs[0] if lr_up is not None else max(errs, key=lambda e: float(e.max()))
    emax = float(np.percentile(ref_err[mask], 99)) if mask.any() else float(ref_err.max())
    emax = emax if emax > 0 else 1.0
    centre = np.round(np.argwhere(mask).mean(0)).astype(int) if mask.any() else np.array(hr.spatial_shape) // 2
    vx, vy, vz = hr.voxel_size
    label = "MD" if (kind or ("dti" if hr.channels == 6 else "scalar")) == "dti" else "intensity"

    n = len(columns)
    fig, axes = plt.subplots(4, n, figsize=(2.4 * n, 9.0), squeeze=False)
    for j, ((name, _), m, e) in enumerate(zip(columns, maps, errs)):
        for row, (img, cmap, vmin, vmax) in enumerate(
            [(s, "gray", lo, hi) for s in _slices(m, centre)] + [(s, "magma", 0.0, emax) for s in _slices(e, centre)]
        ):
            ax = axes[row, j]
            if row >= 2 and m is truth:  # the truth's own error is zero: say so instead of a black panel
                ax.axis("off")
                ax.text(0.5, 0.5, "(reference)", ha="center", va="center", fontsize=9, transform=ax.transAxes)
                continue
            aspect = vy / vx if row % 2 == 0 else vz / vy  # axial shows (X, Y), sagittal (Y, Z)
            ax.imshow(img.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
        if j == 0:
            for row, text in enumerate([f"axial {label}", f"sagittal {label}", "axial |error|", "sagittal |error|"]):
                axes[row, 0].set_ylabel(text, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
