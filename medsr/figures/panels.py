"""Drawing primitives shared by medsr's figures: image panels in millimetres, colour bars, keys, legends.

Panels are drawn with ``imshow(img.T, origin="lower", extent=...)`` in millimetres, so voxels keep
their physical aspect ratio and an LR slice (voxels ``factor`` times larger) overlays the HR field of
view exactly. Matplotlib is imported lazily with the non-interactive Agg back end.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# Outside the brain: black under value maps, light grey under signed errors (white there means 0).
VALUE_BACKGROUND = "black"
ERROR_BACKGROUND = "0.82"
ERROR_CMAP = "RdBu_r"
DIRECTION_CMAP = "magma"


def pyplot():
    """matplotlib.pyplot on the Agg back end (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cmap_with_bad(name: str, bad: str):
    """A copy of colour map ``name`` drawing NaN (outside the mask) in ``bad``."""
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=bad)


def show(ax: Any, img: np.ndarray, extent: Sequence[float], *, cmap: Any = None, vmin: float | None = None,
         vmax: float | None = None) -> Any:
    """Draw ``img`` (A, B) or RGB (A, B, 3): first axis horizontal, second vertical, in millimetres."""
    img = np.asarray(img)
    shown = np.transpose(img, (1, 0, 2)) if img.ndim == 3 else img.T
    return ax.imshow(shown, origin="lower", extent=tuple(extent), cmap=None if img.ndim == 3 else cmap,
                     vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")


def bare(ax: Any) -> None:
    """No ticks and no frame, but the axis labels stay (row names)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def note(ax: Any, text: str) -> None:
    """An empty panel holding a short note (e.g. the truth's own error)."""
    bare(ax)
    ax.set_facecolor("none")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.35", transform=ax.transAxes)


def colour_fa_key(cax: Any, fa_max: float = 1.0, axes_names: Sequence[str] = ("R-L", "A-P", "S-I")) -> None:
    """Key of a direction-encoded colour FA map in a colour-bar axis: one column per primary colour
    (the principal direction along that axis), brightness rising with FA from 0 to ``fa_max``."""
    ramp = np.linspace(0.0, 1.0, 128)
    key = np.zeros((128, 3, 3))
    for c in range(3):
        key[:, c, c] = ramp
    cax.imshow(key, origin="lower", extent=(0, 3, 0, fa_max), aspect="auto", interpolation="nearest")
    cax.set_xticks([0.5, 1.5, 2.5])
    cax.set_xticklabels(list(axes_names), fontsize=7, rotation=90)
    cax.yaxis.tick_right()
    cax.yaxis.set_label_position("right")
    cax.tick_params(labelsize=7)
    cax.set_ylabel("FA (unitless), colour = principal direction\n(red R-L, green A-P, blue S-I)", fontsize=8)


def colourbar(fig: Any, im: Any, cax: Any, label: str) -> Any:
    """A vertical colour bar in ``cax`` with ``label`` (units) beside it."""
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


def symmetric_limit(errors: Sequence[np.ndarray], percentile: float = 99.0) -> float:
    """The error colour bar's half-range: ``percentile`` of |error| over all finite values (> 0)."""
    vals = [np.abs(e[np.isfinite(e)]) for e in errors]
    vals = [v for v in vals if v.size]
    if not vals:
        return 1.0
    lim = float(np.percentile(np.concatenate(vals), percentile))
    return lim if lim > 0 else max(float(np.concatenate(vals).max()), 1e-12)


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (closed afterwards), so several figures can be written only once all drew."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def write_png(data: bytes, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write PNG bytes atomically (:func:`medsr.utils.atomic.atomic_path`)."""
    from medsr.utils.atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def save(fig: Any, path: str | os.PathLike, *, dpi: int = 100, overwrite: bool = True) -> Path:
    """Render and write ``fig`` atomically."""
    return write_png(png_bytes(fig, dpi), path, overwrite=overwrite)
