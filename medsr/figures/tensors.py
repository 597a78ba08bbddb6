"""The six diffusion-tensor components side by side: LR input, truth, each method (one axial slice).

Rows are Dxx, Dxy, Dxz, Dyy, Dyz, Dzz (FSL order, the voxel/bvec frame); columns follow the order of
every medsr figure: LR input (its own grid), HR truth, then models and baselines
(:func:`medsr.figures.subject.column_order`). Each row has its colour bar in 10^-3 mm^2/s (when the
tensors are in mm^2/s): diagonal components in grey from 0 (window from the truth's brain voxels),
off-diagonal components, which are signed, on a symmetric ``RdBu_r`` scale. Panels are cropped to the
brain, so the tissue fills them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medsr.figures import panels
from medsr.figures.maps import brain_window, md_units
from medsr.figures.subject import VIEWS, SliceGeometry, column_order, lr_label
from medsr.volume import Volume

DIAGONAL = (0, 3, 5)


def tensor_components_figure(
    path: str | os.PathLike,
    *,
    hr: Volume,
    mask: np.ndarray,
    methods: Sequence[tuple[str, Volume]],
    lr: Volume | None = None,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """Write the component figure (see the module docstring) for 6-channel FSL-order tensors."""
    from medsr.dti import FSL_ORDER, mean_diffusivity

    if hr.channels != 6:
        raise ValueError(f"{hr.name}: tensor components need 6 channels, got {hr.channels}")
    mask = np.asarray(mask, dtype=bool)
    geo = SliceGeometry.of(hr.affine, hr.voxel_size, mask)
    view = 0  # axial
    _, _, (h, v) = VIEWS[view]
    cols: list[tuple[str, Volume]] = ([(lr_label(lr), lr)] if lr is not None else []) + [("HR truth", hr)]
    cols += column_order(methods)
    md = mean_diffusivity(hr.data)[mask] if mask.any() else mean_diffusivity(hr.data).ravel()
    scale, unit = md_units(float(np.median(md)) if md.size else 0.0)
    m2 = geo.mask2d[view]
    slices = []
    for label, vol in cols:
        sl, ext = geo.slices(vol)
        img = sl[view].astype(np.float64) * scale
        if vol is not lr:  # the LR input keeps its own grid, unmasked
            img = np.where(m2[None], img, np.nan)
        slices.append((label, img, ext[view]))

    plt = panels.pyplot()
    n = len(cols)
    w = 1.7
    ratio = (geo.crop[v, 1] - geo.crop[v, 0]) / (geo.crop[h, 1] - geo.crop[h, 0])
    fig = plt.figure(figsize=(w * n + 1.4, 6 * w * ratio + 0.8), layout="constrained")
    gs = fig.add_gridspec(6, n + 1, width_ratios=[1.0] * n + [0.07])
    truth = hr.data * scale
    for c in range(6):
        vals = truth[c][mask] if mask.any() else truth[c].ravel()
        if c in DIAGONAL:
            lo, hi = brain_window(vals, low=0.0)
            cmap = panels.cmap_with_bad("gray", panels.VALUE_BACKGROUND)
        else:
            hi = panels.symmetric_limit([vals])
            lo, cmap = -hi, panels.cmap_with_bad(panels.ERROR_CMAP, panels.ERROR_BACKGROUND)
        im = None
        for j, (label, img, ext) in enumerate(slices):
            ax = fig.add_subplot(gs[c, j])
            ax.set_facecolor(panels.VALUE_BACKGROUND if c in DIAGONAL else panels.ERROR_BACKGROUND)
            im = panels.show(ax, img[c], ext, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xlim(*geo.crop[h])
            ax.set_ylim(*geo.crop[v])
            panels.bare(ax)
            if c == 0:
                ax.set_title(label, fontsize=9)
            if j == 0:
                ax.set_ylabel(FSL_ORDER[c], fontsize=10)
        panels.colourbar(fig, im, fig.add_subplot(gs[c, n]), f"{FSL_ORDER[c]} ({unit})")
    fig.suptitle(title or "tensor components (axial slice through the brain's centre)", fontsize=11)
    return panels.save(fig, path, dpi=dpi)
