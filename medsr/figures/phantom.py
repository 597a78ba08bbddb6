"""A phantom subject at a glance: b0, true MD, true FA and the tissue labels with their legend.

The arrays come from the caller (the demo reads the phantom's files), so this module knows nothing
about how a phantom is made; label names and codes are passed in as a mapping.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medsr.figures import panels
from medsr.figures.maps import brain_window, fa_window, md_units, ras_view, reorient

# Distinct colours for up to 10 tissue labels (tab10 without its grey), background black.
LABEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                 "#17becf", "#aec7e8")


def labels_figure(path: str | os.PathLike, *, dpi: int = 100, **drawing: Any) -> Path:
    """Write the phantom overview of :func:`draw_labels` (called with ``drawing``) into the PNG ``path``, atomically."""
    return panels.save(draw_labels(**drawing), path, dpi=dpi)


def draw_labels(
    *,
    b0: np.ndarray,
    tensor: np.ndarray,
    labels: np.ndarray,
    label_names: Mapping[str, int],
    affine: np.ndarray,
    voxel_size: tuple[float, float, float],
    title: str = "",
) -> Any:
    """The phantom overview Figure: axial slices (through the labelled tissue's centre) of four maps.

    Args:
        b0: (X, Y, Z) a b = 0 image (scanner units).
        tensor: (6, X, Y, Z) true tensors, FSL order, mm^2/s.
        labels: (X, Y, Z) integer tissue codes, 0 = background.
        label_names: name -> code of every label (the legend).
        affine: the grid's voxel-to-world affine (display orientation).
        voxel_size: (3,) voxel edges in mm.
    """
    from medsr.dti import fractional_anisotropy, mean_diffusivity

    order, flips = ras_view(affine)
    zooms = np.asarray(voxel_size, dtype=np.float64)[list(order)]
    lab = reorient(np.asarray(labels), order, flips)
    brain = lab > 0
    k = int(np.argwhere(brain)[:, 2].mean()) if brain.any() else lab.shape[2] // 2
    t = reorient(np.asarray(tensor, dtype=np.float64), order, flips)[..., k]
    md_all = mean_diffusivity(np.asarray(tensor, dtype=np.float64))[np.asarray(labels) > 0]
    scale, unit = md_units(float(np.median(md_all)) if md_all.size else 0.0)
    b0s = reorient(np.asarray(b0, dtype=np.float64), order, flips)[..., k]
    md, fa = mean_diffusivity(t) * scale, fractional_anisotropy(t)
    ext = (0.0, lab.shape[0] * zooms[0], 0.0, lab.shape[1] * zooms[1])
    brain2 = brain[..., k]
    present = sorted((code, name) for name, code in label_names.items() if code > 0 and (lab == code).any())

    plt = panels.pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 4, figsize=(15, 4.2), layout="constrained")
    gray = panels.cmap_with_bad("gray", panels.VALUE_BACKGROUND)
    maps = [("b0 (DWI volume 0)", b0s, brain_window(b0s[brain2]), "b0 signal (scanner units)"),
            ("true MD", np.where(brain2, md, np.nan), brain_window(md[brain2], low=0.0), f"MD ({unit})"),
            ("true FA", np.where(brain2, fa, np.nan), (0.0, fa_window(fa[brain2])), "FA (unitless)")]
    for ax, (name, img, (lo, hi), label) in zip(axes, maps):
        ax.set_facecolor(panels.VALUE_BACKGROUND)
        im = panels.show(ax, img, ext, cmap=gray, vmin=lo, vmax=hi)
        panels.bare(ax)
        ax.set_title(name, fontsize=10)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.set_label(label, fontsize=8)
    colours = ["black"] + [LABEL_COLOURS[i % len(LABEL_COLOURS)] for i in range(len(present))]
    lut = np.zeros(int(lab.max()) + 1, dtype=int)
    for i, (code, _) in enumerate(present):
        lut[code] = i + 1
    ax = axes[3]
    panels.show(ax, lut[lab[..., k]], ext, cmap=ListedColormap(colours),
                vmin=None, vmax=None).set_norm(BoundaryNorm(np.arange(len(colours) + 1) - 0.5, len(colours)))
    panels.bare(ax)
    ax.set_title("tissue labels (dominant compartment)", fontsize=10)
    ax.legend(handles=[Patch(color=colours[i + 1], label=f"{code} {name.replace('_', ' ')}")
                       for i, (code, name) in enumerate(present)],
              loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title or f"axial slice {k} (RAS display)", fontsize=11)
    return fig
