"""Window planning for whole-volume inference: which window size and overlap, and what they cost.

With instance norm every window is normalised by its own statistics, so windows must be the training
patch size (overlap 0.5); otherwise the model is translation-equivariant and the largest window that
fits the memory budget wins (whole volume in one pass when it fits) at overlap 0.25, which hides the
seams of the windows' reflect padding. See :func:`choose_window`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from medsr.patches import format_shape

# Bytes of live activations per window voxel and per feature channel during an inference-mode
# forward of rev_srcnn3d (measured with `medsr bench infer`: peak RSS growth / (window voxels * K)).
# It sizes automatic windows; the constant is deliberately on the safe side.
ACTIVATION_BYTES_PER_VOXEL_CHANNEL = 20.0
# Bytes of activations an automatic window may use: with ~1 GB for the process and the volume's own
# buffers (input, output, MONAI's accumulators) a whole HCP volume stays under 4 GB peak RSS.
DEFAULT_MEMORY_BUDGET = 2.75e9
# Bytes the stitching buffers of test-time views run in one batch may take (see Predictor.views_per_call).
VIEW_BUFFER_BUDGET = 1.0e9
DEFAULT_OVERLAP_LARGE = 0.25
DEFAULT_OVERLAP_INSTANCE = 0.5


@dataclass
class WindowPlan:
    """The windows of one inference run.

    Attributes:
        roi: window size per axis (clamped to the volume).
        overlap: fraction of a window shared with its neighbour.
        n_windows: number of windows MONAI will run.
        overlap_factor: voxels computed / voxels output (1.0 = a single pass).
        reason: why this window was chosen (shown by the CLI).
    """

    roi: tuple[int, int, int]
    overlap: float
    n_windows: int
    overlap_factor: float
    reason: str


def plan_windows(shape: Sequence[int], roi: Sequence[int], overlap: float, reason: str = "") -> WindowPlan:
    """Count the windows MONAI's ``sliding_window_inference`` runs for ``shape`` and ``roi``.

    The count is the product of :func:`_n_windows` per axis, MONAI's rule written out (its helper is
    private); tests/test_inference.py checks it against the windows ``sliding_window_inference`` runs.
    """
    shape = tuple(int(s) for s in shape)
    roi = tuple(min(int(r), s) for r, s in zip(roi, shape))
    n = math.prod(_n_windows(s, r, float(overlap)) for s, r in zip(shape, roi))
    factor = n * float(np.prod(roi)) / float(np.prod(shape))
    return WindowPlan(roi, float(overlap), n, factor, reason)  # type: ignore[arg-type]


def model_norm(ck: dict[str, Any]) -> str:
    """The generator's normalisation ("none" or "instance") from the checkpoint's model kwargs."""
    return str(ck.get("model", {}).get("kwargs", {}).get("norm", "none"))


def model_width(ck: dict[str, Any]) -> int:
    return int(ck.get("model", {}).get("kwargs", {}).get("width", 64))


def choose_window(
    shape: Sequence[int],
    ck: dict[str, Any],
    window: int | Sequence[int] | None = None,
    overlap: float | None = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
) -> WindowPlan:
    """Pick the windows for a volume of spatial ``shape`` (see the module docstring for the rule).

    Args:
        shape: (X, Y, Z) of the HR-grid input.
        ck: the checkpoint (reads ``model.kwargs.norm``/``width`` and ``data.patch_size``).
        window: requested window edge (int or 3 ints); ``None`` = automatic; ``0`` = one pass over
            the whole volume.
        overlap: requested overlap in [0, 1); ``None`` = 0.5 with instance norm, else 0.25.
        memory_budget: bytes of activations an automatic window may use.

    Raises:
        ValueError: an instance-norm model asked for windows other than its training patch size.
    """
    shape = tuple(int(s) for s in shape)
    norm = model_norm(ck)
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if norm == "instance":
        patch = ck.get("data", {}).get("patch_size")
        if patch is None:
            raise ValueError("checkpoint uses instance norm but stores no data.patch_size to size the windows")
        roi = _as_roi(patch)
        if window is not None and _as_roi(window) != roi:
            raise ValueError(
                f"this checkpoint uses instance norm, so windows must be its training patch size {format_shape(roi)} "
                f"(got --window {window}); each window is normalised by its own statistics"
            )
        ov = DEFAULT_OVERLAP_INSTANCE if overlap is None else overlap
        return plan_windows(shape, roi, ov, f"instance norm: training patch size {format_shape(roi)}")
    ov = DEFAULT_OVERLAP_LARGE if overlap is None else overlap
    if window is not None:
        roi = shape if _as_roi(window) == (0, 0, 0) else _as_roi(window)
        return plan_windows(shape, roi, ov, "requested")
    per_voxel = ACTIVATION_BYTES_PER_VOXEL_CHANNEL * max(model_width(ck), 1)
    max_voxels = int(memory_budget / per_voxel)
    if int(np.prod(shape)) <= max_voxels:
        return plan_windows(shape, shape, ov, "whole volume fits the memory budget: one pass")
    roi = fewest_voxels_roi(shape, ov, max_voxels)
    return plan_windows(shape, roi, ov, f"least overlap within {memory_budget / 1e9:.2f} GB of activations")


def _n_windows(length: int, roi: int, overlap: float) -> int:
    """MONAI's window count along one axis: windows start every ``int(roi * (1 - overlap))`` voxels
    (at least 1) until one reaches the end (``sliding_window_inference``'s scan interval and
    ``dense_patch_slices``)."""
    if roi >= length:
        return 1
    step = max(int(roi * (1.0 - overlap)), 1)
    return int(math.ceil((length - roi) / step)) + 1


def fewest_voxels_roi(
    shape: Sequence[int], overlap: float, max_voxels: int, max_per_axis: int = 8
) -> tuple[int, int, int]:
    """The window (per-axis sizes) that computes the fewest voxels with at most ``max_voxels`` each.

    For every count of windows per axis (1..``max_per_axis``), the smallest window edge that MONAI
    tiles with that count at ``overlap`` is found; among the combinations that fit ``max_voxels``,
    the one with the least total computed voxels wins (ties: fewer windows). Slabs spanning whole axes
    usually win over cubes: a 145x174x145 volume in two 145x174x83 slabs computes 1.14x the output,
    in 104^3 cubes 2.46x.
    """
    shape = tuple(int(s) for s in shape)
    options: list[list[tuple[int, int]]] = []  # per axis: (n windows, tight roi)
    for length in shape:
        axis_opts: dict[int, int] = {}
        for n in range(1, max_per_axis + 1):
            roi = int(math.ceil(length / n))
            while roi < length and _n_windows(length, roi, overlap) > n:
                roi += 1
            n_real = _n_windows(length, roi, overlap)
            axis_opts.setdefault(n_real, roi)
        options.append(sorted(axis_opts.items()))
    best: tuple[float, int, tuple[int, int, int]] | None = None
    for nx, rx in options[0]:
        for ny, ry in options[1]:
            for nz, rz in options[2]:
                vox = rx * ry * rz
                if vox > max_voxels:
                    continue
                key = (float(nx * ny * nz * vox), nx * ny * nz, (rx, ry, rz))
                if best is None or key[:2] < best[:2]:
                    best = key
    if best is None:  # even the smallest windows do not fit: use the smallest there are
        return tuple(opts[-1][1] for opts in options)  # type: ignore[return-value]
    return best[2]


def _as_roi(window: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(window, (int, np.integer)):
        return (int(window),) * 3
    w = tuple(int(v) for v in window)
    if len(w) == 1:
        return w * 3  # type: ignore[return-value]
    if len(w) != 3:
        raise ValueError(f"window must be one or three integers, got {window}")
    return w  # type: ignore[return-value]
