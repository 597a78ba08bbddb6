"""Per-subject comparison figures: LR input, truth and every method, values and signed errors.

One PNG per quantity (:mod:`medsr.figures.maps`): ``<subject>_md.png``, ``<subject>_fa.png`` and
``<subject>_colour_fa.png`` for DTI, ``<subject>_intensity.png`` for scalar images. Each has

* columns, always in this order: the LR input (on its own grid), the HR truth, then the methods with
  every model first (in the order given) and the interpolation baselines last (nn, linear, cubic);
* rows 1-3: axial, coronal and sagittal slices through the brain mask's centre of mass, sharing one
  window taken from the truth's brain voxels (colour bar with units on the right);
* rows 4-6: the same slices of the signed error method - truth (``RdBu_r``, limits +-E with E the 99th
  percentile of |error| over every method's slices, so columns compare at a glance); for colour FA
  the angle between the method's and the truth's principal directions where the truth's FA >= 0.2.

``medsr evaluate --figures``, ``medsr report`` and ``medsr demo`` all call :func:`subject_figures`, so
their figures are the same files for the same inputs; :func:`draw_subject` gives the Figures unwritten.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsr.figures import panels
from medsr.figures.maps import (
    FA_DIRECTION_MIN, Quantity, describe, direction_error_deg, figure_kind, quantities, ras_view, reorient, slice_maps,
)
from medsr.volume import Volume

BASELINE_ORDER: tuple[str, ...] = ("nn", "linear", "cubic")
# (name, axis sliced in the RAS-ordered array, (horizontal, vertical) axes of the panel)
VIEWS: tuple[tuple[str, int, tuple[int, int]], ...] = (
    ("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)),
)
PANEL_INCHES = 1.9
MARGIN_VOXELS = 3


def column_order(methods: Sequence[tuple[str, Volume]]) -> list[tuple[str, Volume]]:
    """Models first (in the given order), then the baselines in nn, linear, cubic order."""
    models = [(n, v) for n, v in methods if n not in BASELINE_ORDER]
    base = {n: v for n, v in methods if n in BASELINE_ORDER}
    return models + [(n, base[n]) for n in BASELINE_ORDER if n in base]


def lr_label(lr: Volume) -> str:
    """The LR column's title: its voxel size per axis (``LR input (1.25x1.25x5 mm)`` for thick slices)."""
    return f"LR input\n({'x'.join(f'{v:.3g}' for v in lr.voxel_size)} mm)"


def figure_paths(folder: str | os.PathLike, subject: str, kind: str | None) -> list[Path]:
    """The PNGs :func:`subject_figures` writes for ``subject`` (both kinds' names when ``kind`` is unknown)."""
    keys = quantities(kind) if kind in ("dti", "scalar") else quantities("dti") + quantities("scalar")
    return [Path(folder) / f"{subject}_{k}.png" for k in keys]


@dataclass
class _Column:
    label: str
    role: str                      # "input", "truth" or "method"
    maps: list[dict[str, np.ndarray]]  # per view: quantity -> slice
    extents: list[tuple[float, float, float, float]]


def _slices(vol: Volume, order, flips, centre_mm: np.ndarray) -> tuple[list[np.ndarray], list[tuple]]:
    """Per view: the (C, A, B) slice of ``vol`` through ``centre_mm`` and its extent in mm."""
    data = reorient(vol.data, order, flips)
    zooms = np.asarray(vol.voxel_size)[list(order)]
    shape = np.asarray(data.shape[1:])
    out, extents = [], []
    for _, ax, (h, v) in VIEWS:
        i = int(np.clip(np.floor(centre_mm[ax] / zooms[ax]), 0, shape[ax] - 1))
        out.append(np.take(data, i, axis=1 + ax))
        extents.append((0.0, float(shape[h] * zooms[h]), 0.0, float(shape[v] * zooms[v])))
    return out, extents


@dataclass(frozen=True)
class SliceGeometry:
    """Where a subject is sliced: RAS display order, the mask's centre and the brain's box.

    Attributes:
        order, flips: :func:`medsr.figures.maps.ras_view` of the HR affine.
        centre_mm: (3,) slice positions (mm from the RAS-ordered grid's corner): the mask's centre of mass.
        crop: (3, 2) mm limits of the brain's bounding box plus a margin.
        mask2d: the mask's slice per view (in :data:`VIEWS` order).
    """

    order: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    centre_mm: np.ndarray
    crop: np.ndarray
    mask2d: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, affine: np.ndarray, voxel_size: Sequence[float], mask: np.ndarray) -> "SliceGeometry":
        order, flips = ras_view(affine)
        zooms = np.asarray(voxel_size, dtype=np.float64)[list(order)]
        mask_r = reorient(np.asarray(mask, dtype=bool), order, flips)
        idx = np.argwhere(mask_r) if mask_r.any() else np.argwhere(np.ones_like(mask_r))
        centre = np.round(idx.mean(0)).astype(int)
        lo, hi = idx.min(0) - MARGIN_VOXELS, idx.max(0) + 1 + MARGIN_VOXELS
        crop = np.stack([np.maximum(lo, 0), np.minimum(hi, mask_r.shape)], 1) * zooms[:, None]
        mask2d = tuple(np.take(mask_r, int(centre[ax]), axis=ax) for _, ax, _ in VIEWS)
        return cls(order, flips, (centre + 0.5) * zooms, crop, mask2d)

    def slices(self, vol: Volume) -> tuple[list[np.ndarray], list[tuple]]:
        """Per view: the (C, A, B) slice of ``vol`` (any grid of the same field of view) and its extent (mm)."""
        return _slices(vol, self.order, self.flips, self.centre_mm)


def _nearest(mask2d: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The HR mask slice sampled at the centres of a coarser grid of ``shape`` over the same field of view."""
    idx = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1) for n, m in zip(shape, mask2d.shape)]
    return mask2d[np.ix_(*idx)]


def _masked(m: np.ndarray, mask2d: np.ndarray) -> np.ndarray:
    if m.ndim == 3:  # RGB: black outside
        return np.where(mask2d[..., None], m, 0.0)
    return np.where(mask2d, m, np.nan)


def subject_figures(folder: str | os.PathLike, subject: str, *, overwrite: bool = True, dpi: int = 100,
                    **drawing: Any) -> list[Path]:
    """Write the subject's figures (see the module docstring); nothing is written unless all drew.

    Args:
        folder: receives ``<subject>_<quantity>.png``.
        subject: the subject id (file names and titles).
        overwrite: replace existing PNGs (else FileExistsError naming the first).
        dpi: the PNGs' resolution.
        drawing: what is drawn: ``hr``, ``mask``, ``methods`` and optionally ``lr`` and ``kind``, as
            :func:`draw_subject` takes them.

    Returns:
        The written paths, in :func:`figure_paths` order.

    Raises:
        ValueError: a method's grid differs from the truth's.
    """
    paths = figure_paths(folder, subject, figure_kind(drawing["hr"].channels, drawing.get("kind")))
    if not overwrite:
        for p in paths:
            if p.exists():
                raise FileExistsError(f"{p}: already exists (pass --overwrite to replace it)")
    figures = draw_subject(subject, **drawing)
    pngs = [panels.png_bytes(fig, dpi) for fig in figures.values()]
    return [panels.write_png(data, p, overwrite=overwrite) for p, data in zip(paths, pngs)]


def draw_subject(
    subject: str,
    *,
    hr: Volume,
    mask: np.ndarray,
    methods: Sequence[tuple[str, Volume]],
    lr: Volume | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """The subject's figures as matplotlib Figures, one per quantity (see the module docstring).

    Args:
        subject: the subject id (titles).
        hr: the truth (C, X, Y, Z).
        mask: (X, Y, Z) brain mask on the HR grid.
        methods: (label, volume on the HR grid) of each model and baseline; drawn in
            :func:`column_order`.
        lr: the LR input on its own grid (first column), when given.
        kind: ``"dti"`` or ``"scalar"``; default DTI for 6 channels.

    Returns:
        quantity (``md``, ``fa``, ``colour_fa`` or ``intensity``) -> Figure, in :func:`figure_paths` order.

    Raises:
        ValueError: a method's grid differs from the truth's.
    """
    kind = figure_kind(hr.channels, kind)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != hr.spatial_shape:
        raise ValueError(f"{subject}: mask shape {mask.shape} differs from the truth {hr.spatial_shape}")
    methods = column_order(methods)
    for label, vol in methods:
        if vol.spatial_shape != hr.spatial_shape or vol.channels != hr.channels:
            raise ValueError(f"{vol.name}: {label} shape {vol.channels}x{vol.spatial_shape} differs from the "
                             f"truth {hr.channels}x{hr.spatial_shape}")

    spec = describe(kind, hr.data, mask)
    geo = SliceGeometry.of(hr.affine, hr.voxel_size, mask)
    order, flips, centre_mm, crop, mask2d = geo.order, geo.flips, geo.centre_mm, geo.crop, geo.mask2d

    def column(label: str, role: str, vol: Volume) -> _Column:
        sl, ext = _slices(vol, order, flips, centre_mm)
        maps = []
        for s, m2 in zip(sl, mask2d):
            d = slice_maps(kind, s, spec, order)
            m2 = m2 if s.shape[1:] == m2.shape else _nearest(m2, s.shape[1:])  # the LR input's own grid
            maps.append({k: (v if k == "e1" else _masked(v, m2)) for k, v in d.items()})
        return _Column(label, role, maps, ext)

    cols = []
    if lr is not None:
        cols.append(column(lr_label(lr), "input", lr))
    cols.append(column("HR truth", "truth", hr))
    cols += [column(label, "method", vol) for label, vol in methods]
    return {q: _draw(q, spec[q], cols, crop, mask2d, f"subject {subject}") for q in quantities(kind)}


def _errors(q: str, cols: list[_Column], mask2d: list[np.ndarray]) -> dict[int, list[np.ndarray]]:
    """Column index -> per view error slice (signed, or direction angle for colour FA)."""
    truth = next(c for c in cols if c.role == "truth")
    out = {}
    for j, c in enumerate(cols):
        if c.role != "method":
            continue
        errs = []
        for v, m2 in enumerate(mask2d):
            if q == "colour_fa":
                ok = m2 & (np.nan_to_num(truth.maps[v]["fa"]) >= FA_DIRECTION_MIN)
                errs.append(np.where(ok, direction_error_deg(c.maps[v]["e1"], truth.maps[v]["e1"]), np.nan))
            else:
                errs.append(np.where(m2, c.maps[v][q] - truth.maps[v][q], np.nan))
        out[j] = errs
    return out


def _draw(q: str, quantity: Quantity, cols: list[_Column], crop: np.ndarray, mask2d: list[np.ndarray],
          title: str) -> Any:
    plt = panels.pyplot()
    errors = _errors(q, cols, mask2d)
    blocks = 2 if errors else 1
    n = len(cols)
    spans = [((crop[h, 1] - crop[h, 0]), (crop[v, 1] - crop[v, 0])) for _, _, (h, v) in VIEWS]
    heights = [PANEL_INCHES * sv / sh for sh, sv in spans] * blocks
    fig = plt.figure(figsize=(PANEL_INCHES * n + 1.6, sum(heights) + 1.0), layout="constrained")
    bar = 0.3 if quantity.cmap == "rgb" else 0.08  # the colour-FA key has three labelled columns
    gs = fig.add_gridspec(3 * blocks, n + 1, width_ratios=[1.0] * n + [bar], height_ratios=heights)
    value_cmap = None if quantity.cmap == "rgb" else panels.cmap_with_bad(quantity.cmap, panels.VALUE_BACKGROUND)
    if q == "colour_fa":
        emax = 90.0
        err_cmap = panels.cmap_with_bad(panels.DIRECTION_CMAP, panels.ERROR_BACKGROUND)
        elim = (0.0, emax)
    else:
        emax = panels.symmetric_limit([e for errs in errors.values() for e in errs])
        err_cmap = panels.cmap_with_bad(panels.ERROR_CMAP, panels.ERROR_BACKGROUND)
        elim = (-emax, emax)
    vim = eim = None
    for j, c in enumerate(cols):
        for v, (view, _, (h, vv)) in enumerate(VIEWS):
            ax = fig.add_subplot(gs[v, j])
            ax.set_facecolor(panels.VALUE_BACKGROUND)
            im = panels.show(ax, c.maps[v][q], c.extents[v], cmap=value_cmap, vmin=quantity.window[0],
                             vmax=quantity.window[1])
            vim = vim or im
            ax.set_xlim(*crop[h])
            ax.set_ylim(*crop[vv])
            panels.bare(ax)
            if v == 0:
                ax.set_title(c.label, fontsize=9)
            if j == 0:
                ax.set_ylabel(view, fontsize=9)
            if not errors:
                continue
            ax = fig.add_subplot(gs[3 + v, j])
            if j in errors:
                ax.set_facecolor(panels.ERROR_BACKGROUND)
                im = panels.show(ax, errors[j][v], c.extents[v], cmap=err_cmap, vmin=elim[0], vmax=elim[1])
                eim = eim or im
                ax.set_xlim(*crop[h])
                ax.set_ylim(*crop[vv])
                panels.bare(ax)
                if v == 0:
                    ax.set_title(f"{c.label} vs truth" if q == "colour_fa" else f"{c.label} - truth", fontsize=9)
            else:
                panels.note(ax, "reference" if c.role == "truth" else "input\n(its error:\nthe nn column)")
            if j == 0:
                ax.set_ylabel(f"{view}\nerror", fontsize=9)
    cax = fig.add_subplot(gs[0:3, n])
    if quantity.cmap == "rgb":
        panels.colour_fa_key(cax, quantity.window[1])
    else:
        panels.colourbar(fig, vim, cax, quantity.label + "\n(window from brain voxels of the truth)")
    if errors:
        label = quantity.error_label if q == "colour_fa" else f"{quantity.error_label}\nmethod - truth, +-99th pct of |error|"
        cax = fig.add_subplot(gs[3:6, n])
        if bar > 0.1:  # keep a plain bar as thin as the others in a column widened for the colour-FA key
            cax.axis("off")
            cax = cax.inset_axes((0.0, 0.0, 0.08 / bar, 1.0))
        panels.colourbar(fig, eim, cax, label)
    fig.suptitle(f"{title}: {quantity.label}", fontsize=11)
    return fig
