"""Per-voxel predictive uncertainty of a super-resolved volume: the spread of the test-time views.

The model is run on each mirrored (``flip``: 8) or mirrored and axis-permuted (``full``: 48) copy of the
input (:mod:`medsr.data.augment`; DTI tensors moved with the axes), each prediction is moved back, and
the views' mean is the output (as ``--tta``) while their standard deviation per voxel and channel is the
uncertainty, multiplied by the scale fitted on a held-out subject when the checkpoint records one (the raw
spread is several times smaller than the error). Unless asked for ``flip`` or ``full``, the 48 views are used for isotropic voxels (their
spread ranked the error best, ``docs/uncertainty.md``) and the 8 flips otherwise. A model trained with flips and permutations should give the same answer for every view;
where the views disagree, the model extrapolates, and that is where its error is large
(``docs/uncertainty.md`` measures how well this ranks the error on a held-out subject, against the
alternatives considered there).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from medsr.data.augment import inverse_symmetry_volume, symmetries, symmetry_volume
from medsr.model_card import uncertainty_scale
from medsr.volume import Volume


def uncertainty_views(tta: str, voxel_size) -> str:
    """The views ``--uncertainty`` runs for ``--tta tta``: ``flip``/``full`` as asked, else ``full`` for
    isotropic voxels (within 5%) and ``flip`` otherwise."""
    if tta in ("auto", "none"):
        return "full" if max(voxel_size) <= 1.05 * min(voxel_size) else "flip"
    symmetries(tta)  # raises on an unknown name
    return tta


@torch.inference_mode()
def predict_with_std(predictor, vol: Volume, *, reverse: bool = False, plan=None, tta: str = "auto",
                     progress: bool = False, calibrated: bool = True) -> tuple[Volume, Volume]:
    """The TTA mean and the per-voxel standard deviation over the views.

    Args:
        predictor: a :class:`medsr.inference.Predictor`.
        vol: (C, X, Y, Z) HR-grid input (as :meth:`Predictor.predict` takes it).
        plan: windows (:meth:`Predictor.plan`); planned here when None.
        tta: ``flip`` or ``full``; ``auto`` and ``none`` (one view has no spread) use ``full`` for
            isotropic voxels (within 5%), else ``flip``.
        calibrated: multiply the std by the scale ``medsr bench uncertainty --record`` stored in the
            checkpoint for these views (:func:`medsr.model_card.uncertainty_scale`; 1 when none).

    Returns:
        (mean, std): float32 volumes on ``vol``'s grid, original units; std >= 0.
    """
    tta = uncertainty_views(tta, vol.voxel_size)
    vox = vol.voxel_size
    if tta == "full" and max(vox) > 1.05 * min(vox):
        raise ValueError(f"{vol.name}: --tta full permutes axes, which needs isotropic voxels; use --tta flip")
    if plan is None:
        plan = predictor.plan(vol.spatial_shape, None, None, reverse)
    dti = predictor.kind == "dti" and predictor.channels == 6
    mean = np.zeros(vol.data.shape, np.float64)
    m2 = np.zeros(vol.data.shape, np.float64)
    views = symmetries(tta)
    for n, (perm, axes) in enumerate(views, start=1):
        view = Volume(symmetry_volume(vol.data, perm, axes, dti), vol.affine, name=vol.name)
        view_plan = replace(plan, roi=tuple(plan.roi[p] for p in perm))
        out = predictor._predict_view(view, reverse, view_plan, 1, progress)
        y = inverse_symmetry_volume(out.data, perm, axes, dti).astype(np.float64)
        delta = y - mean  # Welford: no cancellation between two large sums of squares
        mean += delta / n
        m2 += delta * (y - mean)
    std = np.sqrt(np.maximum(m2 / len(views), 0.0))
    if calibrated:
        std *= uncertainty_scale(predictor.card, tta)
    meta = dict(vol.meta)
    return (Volume(mean.astype(np.float32), vol.affine.copy(), name=vol.name, meta=meta),
            Volume(std.astype(np.float32), vol.affine.copy(), name=vol.name, meta=dict(meta)))
