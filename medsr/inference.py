"""Whole-volume inference with a trained generator: windows, Gaussian blending, original units.

The user hands a checkpoint and a volume and gets back a volume on the HR grid, in the scanner's world.
Three things must match training exactly, and each is read from the checkpoint:

* **Grid.** The network maps ``lr_up`` (the LR volume NN-upsampled onto the HR grid) to ``hr``. An
  input on the LR grid is NN-upsampled here with ``data.factor`` (per axis; :func:`medsr.degrade.nn_upsample`,
  affine :func:`medsr.degrade.hr_affine`), so the output lies on the HR grid prep would have written;
  an input already on the HR grid is used as is. See :func:`detect_grid` for ``input_grid="auto"``.
* **Normalisation.** ``norm.x`` (stats of ``lr_up``) normalise the input and ``norm.y`` (stats of
  ``hr``) de-normalise the output; ``reverse=True`` runs G = ``model.reverse`` (HR -> LR-up through
  the inverse core) with the two swapped.
* **Window.** With ``norm="instance"`` every window is normalised by its own statistics, so windows
  must be the training patch size or the model sees inputs it was never trained on. Without instance
  norm the model is translation-equivariant and windows only cost overlap: the compute is
  ``(voxels computed) / (voxels output)`` times a single pass, while MONAI's stitching is ~1% of the
  time. So the rule (:func:`choose_window`) is: instance norm -> the training patch size at overlap
  0.5; otherwise the largest window that fits the memory budget (whole volume in one pass when it fits),
  at a small overlap (0.25) that hides the seams of the windows' reflect padding.

Windows run on ``device`` (the GPU when there is one) while the stitched output is accumulated on the
CPU, so a whole HCP volume never has to fit in GPU memory (MONAI's ``sw_device`` vs ``device``).

``precision`` (``fp32``, ``bf16``, ``fp16``; :mod:`medsr.precision`) runs the model under autocast; each
window's output is cast back to float32 before blending, so the volume written is float32 whatever the
precision (bf16 vs fp32 differences: README, "Reversible networks and memory").
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medsr.data.augment import allowed_permutations, inverse_symmetry_volume, symmetries, symmetry_volume
from medsr.factor import Factor, FactorLike, factor_triple, format_factor
from medsr.model_card import model_card
from medsr.normalise import ChannelStats
from medsr.utils.device import resolve_device
from medsr.volume import Volume
from medsr.windows import (  # noqa: F401 - re-exported: the window plan is part of inference's API
    ACTIVATION_BYTES_PER_VOXEL_CHANNEL, DEFAULT_MEMORY_BUDGET, DEFAULT_OVERLAP_INSTANCE, DEFAULT_OVERLAP_LARGE,
    WindowPlan, _as_roi, choose_window, fewest_voxels_roi, model_norm, model_width, plan_windows)

_LR_NAME = re.compile(r"^lr(?!_up)[^/]*\.nii(\.gz)?$", re.IGNORECASE)


def detect_grid(vol: Volume, factor: FactorLike, train_voxel_size: Sequence[float] | None = None,
                path: str = "") -> str:
    """Decide whether ``vol`` is on the LR or the HR grid (``input_grid="auto"``).

    With the training HR voxel size stored in the checkpoint (``data.voxel_size``), the input's voxel
    size is compared, axis by axis, with it and with ``factor`` times it (per axis, within 10%: a
    1 x 1 x 4 mm input is the LR grid of a 1 mm model at factor 1 1 4); a size matching neither is an
    error asking for an explicit ``--input-grid``. Without it, a file named ``lr*.nii[.gz]`` (but not
    ``lr_up*``, prep's HR-grid input) is LR and anything else HR.

    Returns:
        ``"lr"`` or ``"hr"``.
    """
    name = Path(path or vol.name).name
    if train_voxel_size is not None:
        vs = np.asarray(vol.voxel_size)
        hr = np.asarray(train_voxel_size, dtype=float)
        if np.allclose(vs, hr, rtol=0.1):
            return "hr"
        r = np.asarray(factor_triple(factor), dtype=float)
        if np.allclose(vs, hr * r, rtol=0.1):
            return "lr"
        raise ValueError(
            f"{path or vol.name}: voxel size {tuple(round(v, 3) for v in vs)} mm matches neither the training HR "
            f"grid {tuple(round(float(v), 3) for v in hr)} nor its LR grid "
            f"{tuple(round(float(v), 3) for v in hr * r)} (factor {format_factor(factor, ' ')}); "
            "pass --input-grid lr or hr"
        )
    return "lr" if _LR_NAME.match(name) else "hr"


def to_hr_grid(vol: Volume, factor: FactorLike, grid: str) -> Volume:
    """The network input on the HR grid: NN-upsampled (prep's ``lr_up``) when ``grid == "lr"``."""
    if grid == "hr":
        return vol
    if grid != "lr":
        raise ValueError(f"input grid must be 'lr' or 'hr', got {grid!r}")
    from medsr.degrade import nn_upsample

    return nn_upsample(vol, factor)


def lr_grid_factor(model: torch.nn.Module) -> Factor:
    """r per axis for a model that computes on the LR grid (``input_factor`` and ``forward_lr``), else (1, 1, 1)."""
    r = factor_triple(getattr(model, "input_factor", 1) or 1)
    return r if r != (1, 1, 1) and hasattr(model, "forward_lr") else (1, 1, 1)


def check_finite_output(pred: Volume) -> Volume:
    """Return ``pred`` when every voxel is finite; a NaN or inf is an error, never a written volume.

    The input was checked finite, so a non-finite output means the model itself is broken (NaN
    weights, a normalisation with zero spread, an overflow in reduced precision): writing it would hand
    the user a silent all-NaN volume.

    Raises:
        ValueError: naming the input and how many voxels are not finite.
    """
    bad = ~np.isfinite(pred.data)
    if bad.any():
        n_vox = int(bad.any(axis=0).sum())
        raise ValueError(f"{pred.name}: the prediction has {n_vox} of {bad[0].size} voxel(s) NaN or inf "
                         "(the checkpoint's weights or normalisation are not finite, or reduced precision "
                         "overflowed)")
    return pred


class Predictor:
    """A loaded generator with its normalisation and training-data facts.

    Args:
        model: the generator (``forward``: X -> Y, ``reverse``: Y -> X), (B, C, X, Y, Z) both ways.
        x_stats, y_stats: per-channel stats of ``lr_up`` and ``hr``.
        ck: the checkpoint dict (``data`` and ``model`` entries are read).
        device: where windows run.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast around the model; fp16 needs CUDA).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        x_stats: ChannelStats,
        y_stats: ChannelStats,
        ck: dict[str, Any],
        device: str | torch.device | None = None,
        precision: str = "fp32",
    ) -> None:
        from medsr.precision import check_precision

        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device, "--precision")
        self.model = model.eval().to(self.device)
        self.x_stats, self.y_stats, self.ck = x_stats, y_stats, ck
        data = ck.get("data", {}) or {}
        self.factor: Factor = factor_triple(data.get("factor", 2))
        self.channels = int(data.get("channels", len(x_stats.mean)))
        self.kind = str(data.get("kind", "dti" if self.channels == 6 else "scalar"))
        vs = data.get("voxel_size")
        self.train_voxel_size = tuple(float(v) for v in vs) if vs is not None else None
        self.norm = model_norm(ck)
        self.card = model_card(ck)  # what the model was trained on: infer's domain checks read it
        # Symmetries the model was trained on (data.flip / data.permute): what --tta auto averages over.
        self.trained_flip = bool(data.get("flip", False) or data.get("permute", False))

    def resolve_tta(self, tta: str) -> str:
        """``auto`` -> ``flip`` for a model trained with flips or permutations, else ``none``."""
        if tta == "auto":
            return "flip" if self.trained_flip else "none"
        symmetries(tta)  # raises on an unknown name
        return tta

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        precision: str = "fp32") -> "Predictor":
        """Load ``path`` (``medsr.checkpoint.load_generator``) onto ``device``."""
        from medsr.checkpoint import load_generator

        model, sx, sy, ck = load_generator(path, map_location="cpu")
        return cls(model, sx, sy, ck, device, precision)

    def prepare(self, vol: Volume, input_grid: str = "auto", reverse: bool = False, path: str = "") -> Volume:
        """Check channels and bring ``vol`` onto the HR grid (``reverse`` inputs are HR already)."""
        where = path or vol.name
        if vol.channels != self.channels:
            raise ValueError(f"{where}: {vol.channels} channel(s) but the checkpoint was trained on {self.channels}")
        if reverse:
            if input_grid == "lr":
                raise ValueError(f"{where}: --reverse maps HR-grid volumes to LR-up; an LR-grid input makes no sense")
            return vol
        grid = detect_grid(vol, self.factor, self.train_voxel_size, path) if input_grid == "auto" else input_grid
        return to_hr_grid(vol, self.factor, grid)

    def plan(self, shape: Sequence[int], window: int | Sequence[int] | None = None, overlap: float | None = None,
             reverse: bool = False) -> WindowPlan:
        """The windows for an HR-grid volume of spatial ``shape``, on the grid the model runs on.

        An LR-grid model (:func:`lr_grid_factor`) runs its forward windows on the LR grid: the shape
        and a requested ``window`` (HR voxels) are divided by r per axis, and the plan is in LR voxels.
        """
        r = lr_grid_factor(self.model)
        if r != (1, 1, 1) and not reverse:
            if any(int(s) % f for s, f in zip(shape, r)):
                raise ValueError(f"volume size {tuple(shape)} is not a multiple of the model's factor "
                                 f"{format_factor(r, ' ')} (prep crops or pads to a multiple; pass an HR grid "
                                 "prep wrote)")
            shape = tuple(int(s) // f for s, f in zip(shape, r))
            if window is not None:
                window = tuple(max(-(-int(w) // f), 1) if int(w) > 0 else 0 for w, f in zip(_as_roi(window), r))
            plan = choose_window(shape, self.ck, window, overlap)
            scale = f"x{r[0]}" if len(set(r)) == 1 else f"factor {format_factor(r, ' ')}"
            return replace(plan, reason=f"{plan.reason}; LR grid, {scale} output")
        return choose_window(shape, self.ck, window, overlap)

    @torch.inference_mode()
    def predict(
        self,
        vol: Volume,
        *,
        reverse: bool = False,
        plan: WindowPlan | None = None,
        window: int | Sequence[int] | None = None,
        overlap: float | None = None,
        sw_batch_size: int = 1,
        progress: bool = False,
        tta: str = "none",
    ) -> Volume:
        """Run F (or G with ``reverse``) over a whole HR-grid volume.

        Args:
            vol: (C, X, Y, Z) on the HR grid, original units.
            reverse: run ``model.reverse`` (HR -> LR-up) instead of ``model.forward``.
            plan: precomputed windows (:meth:`plan`); else :meth:`plan` with ``window``/``overlap``.
            sw_batch_size: windows per model call.
            progress: MONAI's tqdm bar over windows.
            tta: test-time augmentation: ``none``, ``flip`` (mean over the 8 axis flips), ``full``
                (the 48 flips and axis permutations) or ``auto`` (:meth:`resolve_tta`); DTI tensors are
                moved with the axes (:mod:`medsr.data.augment`), so every view is a physically valid
                volume. Costs 8x / 48x.

        Returns:
            (C, X, Y, Z) float32 volume on ``vol``'s grid, in original units.
        """
        if vol.channels != self.channels:
            raise ValueError(f"{vol.name}: {vol.channels} channel(s) but the checkpoint was trained on {self.channels}")
        if not np.isfinite(vol.data).all():
            raise ValueError(f"{vol.name}: input has NaN or inf values")
        if plan is None:
            plan = self.plan(vol.spatial_shape, window, overlap, reverse)
        tta = self.resolve_tta(tta)
        views = symmetries(tta)
        if tta == "full":  # only axes of equal voxel size and factor swap (x <-> y at factor 1 1 4)
            views = symmetries(tta, allowed_permutations(vol.voxel_size, self.factor))
        if len(views) == 1:
            return check_finite_output(self._predict_view(vol, reverse, plan, sw_batch_size, progress))
        dti = self.kind == "dti" and self.channels == 6
        total = np.zeros(vol.data.shape, np.float64)
        for perm, axes in views:
            # Each view is the volume moved by a symmetry of the cube; its prediction is moved
            # back and averaged (the model was trained on such views with data.flip/permute).
            view = Volume(symmetry_volume(vol.data, perm, axes, dti), vol.affine, name=vol.name)
            view_plan = replace(plan, roi=tuple(plan.roi[p] for p in perm))
            out = self._predict_view(view, reverse, view_plan, sw_batch_size, progress)
            total += inverse_symmetry_volume(out.data, perm, axes, dti)
        return check_finite_output(Volume((total / len(views)).astype(np.float32), vol.affine.copy(), name=vol.name,
                                          meta=dict(vol.meta)))

    def _predict_view(self, vol: Volume, reverse: bool, plan: WindowPlan, sw_batch_size: int,
                      progress: bool) -> Volume:
        """One sliding-window pass of :meth:`predict` (checked input, windows planned)."""
        from monai.inferers import sliding_window_inference

        s_in, s_out = (self.y_stats, self.x_stats) if reverse else (self.x_stats, self.y_stats)
        fn = self.model.reverse if reverse else self.model.forward
        x = torch.from_numpy(np.ascontiguousarray(s_in.normalise(vol.data, channel_axis=0), dtype=np.float32))[None]
        r = lr_grid_factor(self.model)
        if r != (1, 1, 1) and not reverse:
            # An LR-grid model: windows run on the LR grid (MONAI stitches the r-times larger
            # outputs), so every window starts on an LR block boundary whatever the overlap.
            from medsr.networks.interpolate import block_mean

            x = block_mean(x, r)
            fn = self.model.forward_lr
        y = sliding_window_inference(
            x,
            roi_size=plan.roi,
            sw_batch_size=sw_batch_size,
            predictor=self._with_precision(fn),
            overlap=(plan.overlap,) * 3,
            mode="gaussian",
            sw_device=self.device,
            device=torch.device("cpu"),  # stitch on the CPU: a whole volume need not fit on the GPU
            progress=progress,
        )
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by check_finite_output
            out = s_out.denormalise(y[0].float().numpy(), channel_axis=0).astype(np.float32, copy=False)
        return Volume(out, vol.affine.copy(), name=vol.name, meta=dict(vol.meta))

    def _with_precision(self, fn):
        """``fn`` under ``self.precision``'s autocast, its output cast back to float32 for blending."""
        if self.precision == "fp32":
            return fn
        from medsr.precision import autocast

        def run(window: torch.Tensor) -> torch.Tensor:
            with autocast(self.precision, self.device):
                out = fn(window)
            return out.float()

        return run
