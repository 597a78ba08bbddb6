"""What a figure shows of a volume: MD, FA, colour FA or intensity, with units and display windows.

Every figure of medsr draws the same quantities the same way:

* **DTI** (6 tensor components, FSL order): mean diffusivity (MD) in 10^-3 mm^2/s when the tensors
  are in mm^2/s (what ``medsr prep hcp`` writes: b-values in s/mm^2), fractional anisotropy (FA,
  unitless) and direction-encoded colour FA (red, green, blue = the principal eigenvector's
  components along the displayed left-right, anterior-posterior and inferior-superior axes,
  brightness = FA over the FA window's top).
* **scalar** images: the intensity (one channel; several channels: their root mean square).

Windows come from brain voxels of the truth, never from the extremes: the phantom's CSF (MD 3e-3
mm^2/s, about a quarter of its brain voxels) would otherwise squeeze grey and white matter into a few
grey levels. :func:`brain_window` scales the window by the darker quarter's spread (see there).

Volumes are shown in the voxel axes nearest to RAS (:func:`ras_view`): right, anterior and superior
point to the right / up of every panel, whatever the storage order of the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DTI_QUANTITIES: tuple[str, ...] = ("md", "fa", "colour_fa")
SCALAR_QUANTITIES: tuple[str, ...] = ("intensity",)
# Direction must be defined for the principal-direction error: below this truth FA it is noise.
FA_DIRECTION_MIN = 0.2
# Tensors whose brain-median MD is below this are in mm^2/s (tissue ~0.7e-3 mm^2/s); above it the
# file already uses 10^-3 mm^2/s (um^2/ms) or some other unit, shown unscaled.
MM2S_MEDIAN_MAX = 0.05


@dataclass(frozen=True)
class Quantity:
    """How one quantity is drawn.

    Attributes:
        key: file-name part (``md``, ``fa``, ``colour_fa``, ``intensity``).
        label: colour-bar label with units.
        cmap: matplotlib colour map of the values (``"rgb"`` for colour FA).
        window: (low, high) of the value colour bar.
        scale: factor applied to the stored values before display (MD: 1e3).
        error_label: colour-bar label of the error rows.
    """

    key: str
    label: str
    cmap: str
    window: tuple[float, float]
    scale: float = 1.0
    error_label: str = ""


def figure_kind(channels: int, kind: str | None = None) -> str:
    """``"dti"`` or ``"scalar"``: the manifest's kind when given, else DTI for 6 channels."""
    if kind:
        return "dti" if kind == "dti" else "scalar"
    return "dti" if channels == 6 else "scalar"


def quantities(kind: str) -> tuple[str, ...]:
    """The quantities drawn for a kind (one PNG each)."""
    return DTI_QUANTITIES if kind == "dti" else SCALAR_QUANTITIES


def brain_window(values: np.ndarray, *, low: float | None = None) -> tuple[float, float]:
    """Display window of brain-voxel ``values``: (1st percentile, min(99th, p25 + 6 x (p25 - p2))).

    The darker quarter of a brain mask is tissue even where CSF and its partial volumes fill half of
    the mask (the phantom's sulci and ventricles on a small grid), so its spread, p25 - p2, scales the
    window and bright CSF saturates instead of setting it. ``low`` replaces the lower end (0 for MD).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    p1, p2, p25, p99 = np.percentile(v, [1, 2, 25, 99])
    lo = float(p1) if low is None else float(low)
    hi = float(min(p99, p25 + 6.0 * (p25 - p2)))
    if not hi > lo:
        hi = float(v.max()) if v.max() > lo else lo + 1.0
    return lo, hi


def fa_window(fa: np.ndarray) -> float:
    """Upper end of the FA window: the brain's 99th percentile rounded up to 0.1, within [0.3, 1]."""
    fa = np.asarray(fa, dtype=np.float64)
    fa = fa[np.isfinite(fa)]
    p99 = float(np.percentile(fa, 99)) if fa.size else 1.0
    return float(np.clip(np.ceil(p99 * 10 - 1e-9) / 10, 0.3, 1.0))


def md_units(median_md: float) -> tuple[float, str]:
    """(display scale, unit) for MD and tensor components from the brain's median MD."""
    if 0 < abs(median_md) < MM2S_MEDIAN_MAX:
        return 1e3, "10$^{-3}$ mm$^2$/s"
    return 1.0, "tensor units"


def describe(kind: str, truth: np.ndarray, mask: np.ndarray) -> dict[str, Quantity]:
    """The :class:`Quantity` of each drawn map, windows from the truth's brain voxels.

    Args:
        kind: ``"dti"`` or ``"scalar"``.
        truth: (C, X, Y, Z) the HR truth.
        mask: (X, Y, Z) bool brain mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if kind == "dti":
        from medsr.dti import mean_diffusivity

        from medsr.dti import fractional_anisotropy

        sel = mask if mask.any() else np.ones(mask.shape, bool)
        md = mean_diffusivity(truth)[sel]
        scale, unit = md_units(float(np.median(md)) if md.size else 0.0)
        fa_hi = fa_window(fractional_anisotropy(truth)[sel])
        return {
            "md": Quantity("md", f"MD ({unit})", "gray", brain_window(md * scale, low=0.0), scale,
                           f"MD error ({unit})"),
            "fa": Quantity("fa", "FA (unitless)", "gray", (0.0, fa_hi), 1.0, "FA error (unitless)"),
            "colour_fa": Quantity("colour_fa", "colour FA: |e1| x FA", "rgb", (0.0, fa_hi), 1.0,
                                  f"principal-direction error (degrees)\nwhere the truth's FA >= {FA_DIRECTION_MIN:g}"),
        }
    vals = intensity(truth)[mask] if mask.any() else intensity(truth).ravel()
    return {"intensity": Quantity("intensity", "intensity (image units)", "gray", brain_window(vals), 1.0,
                                  "intensity error (image units)")}


def intensity(data: np.ndarray) -> np.ndarray:
    """Scalar map (...) of channel-first ``data`` (C, ...): the channel itself, or the RMS over channels."""
    data = np.asarray(data)
    if data.shape[0] == 1:
        return data[0].astype(np.float32, copy=False)
    return np.sqrt((data.astype(np.float32) ** 2).mean(0))


def ras_view(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(voxel axis shown as R, A, S; whether each is flipped) for the axes nearest to RAS."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    order = tuple(int(np.flatnonzero(ornt[:, 0] == j)[0]) for j in range(3))
    flips = tuple(bool(ornt[order[j], 1] < 0) for j in range(3))
    return order, flips  # type: ignore[return-value]


def reorient(a: np.ndarray, order: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """View of ``a`` (..., X, Y, Z) with its last three axes in :func:`ras_view` order (no copy)."""
    lead = a.ndim - 3
    a = np.transpose(a, tuple(range(lead)) + tuple(lead + int(o) for o in order))
    for j, f in enumerate(flips):
        if f:
            a = np.flip(a, lead + j)
    return a


def slice_maps(kind: str, data2d: np.ndarray, spec: dict[str, Quantity], order: Sequence[int]) -> dict[str, np.ndarray]:
    """Each quantity of one slice: (A, B) for scalar maps, (A, B, 3) for colour FA, plus ``e1`` (3, A, B).

    Args:
        kind: ``"dti"`` or ``"scalar"``.
        data2d: (C, A, B) one slice of the volume (reoriented).
        spec: :func:`describe`'s quantities (their scales).
        order: :func:`ras_view`'s voxel-axis order: colour channel j is the eigenvector's component
            along voxel axis ``order[j]`` (tensors live in the voxel/bvec frame, as FSL's do).
    """
    if kind != "dti":
        return {"intensity": intensity(data2d)}
    from medsr.dti import eigh, fractional_anisotropy, mean_diffusivity

    t = np.asarray(data2d, dtype=np.float64)
    fa = fractional_anisotropy(t).astype(np.float64)
    _, vecs = eigh(t)
    e1 = vecs[:, 0]  # (3, A, B) principal eigenvector, voxel frame
    e1 = e1[list(order)]
    bright = fa / spec["colour_fa"].window[1]  # FA at the top of the window is full brightness
    rgb = np.clip(np.abs(np.moveaxis(e1, 0, -1)) * bright[..., None], 0.0, 1.0)
    return {"md": mean_diffusivity(t) * spec["md"].scale, "fa": fa, "colour_fa": rgb, "e1": e1}


def direction_error_deg(e1: np.ndarray, e1_truth: np.ndarray) -> np.ndarray:
    """Angle (degrees, 0-90) between principal directions (3, ...) and the truth's; sign-free (axes)."""
    dot = np.abs((e1 * e1_truth).sum(0))
    return np.degrees(np.arccos(np.clip(dot, 0.0, 1.0)))
