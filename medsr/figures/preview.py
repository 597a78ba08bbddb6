"""The training preview ``samples/<name>.png``: input, output and target of one slice, side by side.

Panels come from the data's ``preview`` function as ``(title, image)``; a title ``"name: quantity
(unit)"`` puts ``name`` above the panel and ``quantity (unit)`` on the colour bar. Grey-scale panels
share one window (1st-99th percentile over all panels) and one colour bar; RGB panels (2D photos,
values in [0, 1]) need none. The layout is constrained, so the title never overlaps a panel.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medsr.figures import panels as P


def preview_figure(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray]], *, title: str = "",
                   dpi: int = 80) -> Path:
    """Write the preview PNG atomically.

    Args:
        path: the PNG.
        panels: (title, (H, W) or (H, W, 3) image) per panel, in voxel/pixel order (shown rotated by
            90 degrees so that anterior is up in RAS-like grids).
        title: the figure's title (e.g. ``"paired_l1 step 1200"``).
    """
    plt = P.pyplot()
    names = [t.split(": ", 1) for t, _ in panels]
    labels = {n[1] for n in names if len(n) == 2}
    imgs = [np.asarray(img, dtype=np.float32) for _, img in panels]
    grey = [im for im in imgs if im.ndim == 2]
    vals = np.concatenate([im[np.isfinite(im)].ravel() for im in grey]) if grey else np.zeros(1)
    lo, hi = (np.percentile(vals, [1, 99]) if vals.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1.0
    n = len(panels)
    fig = plt.figure(figsize=(2.6 * n + (1.0 if grey else 0.0), 3.2), layout="constrained")
    gs = fig.add_gridspec(1, n + (1 if grey else 0), width_ratios=[1.0] * n + ([0.06] if grey else []))
    im = None
    for j, ((name, *_), img) in enumerate(zip(names, imgs)):
        ax = fig.add_subplot(gs[0, j])
        shown = np.rot90(img)  # rot90: anterior up in RAS-ish grids
        if img.ndim == 2:
            im = ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        else:
            ax.imshow(np.clip(shown, 0.0, 1.0), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        P.bare(ax)
    if im is not None:
        P.colourbar(fig, im, fig.add_subplot(gs[0, n]), labels.pop() if len(labels) == 1 else "value")
    if title:
        fig.suptitle(title, fontsize=10)
    return P.save(fig, path, dpi=dpi)
