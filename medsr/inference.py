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
precision (bf16 vs fp32 differences: docs/memory.md, "Mixed precision").
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

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
    VIEW_BUFFER_BUDGET, WindowPlan, _as_roi, choose_window, fewest_voxels_roi, model_norm, model_width,
    plan_windows)

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
        views_per_call: int | None = None,
    ) -> Volume:
        """Run F (or G with ``reverse``) over a whole HR-grid volume.

        Args:
            vol: (C, X, Y, Z) on the HR grid, original units.
            reverse: run ``model.reverse`` (HR -> LR-up) instead of ``model.forward``.
            plan: precomputed windows (:meth:`plan`); else :meth:`plan` with ``window``/``overlap``.
            sw_batch_size: windows per model call.
            progress: one tqdm bar over the windows (of every view).
            tta: test-time augmentation: ``none``, ``flip`` (mean over the 8 axis flips), ``full``
                (the 48 flips and axis permutations) or ``auto`` (:meth:`resolve_tta`); DTI tensors are
                moved with the axes (:mod:`medsr.data.augment`), so every view is a physically valid
                volume. Costs 8x / 48x, less where views run in batches (:meth:`predict_views`).
            views_per_call: views per model call with ``tta`` (default: :meth:`views_per_call`).

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
        total = np.zeros(vol.data.shape, np.float64)
        for _, out in self.predict_views(vol, views, reverse=reverse, plan=plan, progress=progress,
                                         views_per_call=views_per_call):
            total += out
        return check_finite_output(Volume((total / len(views)).astype(np.float32), vol.affine.copy(), name=vol.name,
                                          meta=dict(vol.meta)))

    def views_per_call(self, plan: WindowPlan, n_views: int, voxels: int,
                       memory_budget: float = DEFAULT_MEMORY_BUDGET) -> int:
        """How many test-time views of a ``voxels``-voxel volume one model call may take.

        As many as fit: their windows' activations within ``memory_budget`` (the rule
        :func:`choose_window` sizes one window by), and their stitching buffers (input, output and
        MONAI's accumulators, about ``2 * channels + 2`` float32 values per voxel and view) within
        :data:`VIEW_BUFFER_BUDGET`. A batch is faster than one view at a time (CPU: torch's 3D convs
        on a single small window take a slower path; GPU: fuller kernels).
        """
        per_voxel = ACTIVATION_BYTES_PER_VOXEL_CHANNEL * max(model_width(self.ck), 1)
        by_activations = int(memory_budget / per_voxel) // max(math.prod(plan.roi), 1)
        by_buffers = int(VIEW_BUFFER_BUDGET // (4.0 * (2 * self.channels + 2) * max(voxels, 1)))
        return max(1, min(n_views, by_activations, by_buffers))

    @torch.inference_mode()
    def predict_views(
        self,
        vol: Volume,
        views: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
        *,
        reverse: bool = False,
        plan: WindowPlan,
        progress: bool = False,
        views_per_call: int | None = None,
    ) -> Iterator[tuple[tuple[tuple[int, ...], tuple[int, ...]], np.ndarray]]:
        """Predict every view of ``vol`` and move each prediction back onto ``vol``'s axes.

        Each view is the volume moved by a symmetry of the cube, ``(perm, axes)`` of
        :func:`medsr.data.augment.symmetries` (DTI tensors moved with the axes); the model was
        trained on such views with ``data.flip`` / ``data.permute``. Views of one shape run
        together, ``views_per_call`` at a time (default :meth:`views_per_call`), under one progress
        bar over the windows of all views.

        Yields:
            ``((perm, axes), prediction)`` per view, grouped by view shape: (C, X, Y, Z) float32 on
            ``vol``'s grid, in original units.
        """
        from tqdm import tqdm

        dti = self.kind == "dti" and self.channels == 6
        groups: dict[tuple, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
        for perm, axes in views:
            roi = tuple(plan.roi[p] for p in perm)
            shape = tuple(vol.spatial_shape[p] for p in perm)
            groups.setdefault((shape, roi), []).append((perm, axes))
        per_call = views_per_call or self.views_per_call(plan, len(views), int(np.prod(vol.spatial_shape)))
        with tqdm(total=len(views) * plan.n_windows, unit="window", desc=f"{len(views)} views", leave=False,
                  disable=not progress, dynamic_ncols=True) as bar:
            for (_, roi), members in groups.items():
                view_plan = replace(plan, roi=roi)
                for i in range(0, len(members), per_call):
                    chunk = members[i:i + per_call]
                    datas = [symmetry_volume(vol.data, perm, axes, dti) for perm, axes in chunk]
                    outs = self._predict_batch(datas, reverse, view_plan, len(chunk), bar)
                    for (perm, axes), out in zip(chunk, outs):
                        yield (perm, axes), inverse_symmetry_volume(out, perm, axes, dti)

    def _predict_view(self, vol: Volume, reverse: bool, plan: WindowPlan, sw_batch_size: int,
                      progress: bool) -> Volume:
        """One sliding-window pass of :meth:`predict` (checked input, windows planned)."""
        from tqdm import tqdm

        with tqdm(total=plan.n_windows, unit="window", leave=False, disable=not progress, dynamic_ncols=True) as bar:
            (out,) = self._predict_batch([vol.data], reverse, plan, sw_batch_size, bar)
        return Volume(out, vol.affine.copy(), name=vol.name, meta=dict(vol.meta))

    def _predict_batch(self, datas: list[np.ndarray], reverse: bool, plan: WindowPlan, sw_batch_size: int,
                       bar: Any = None) -> list[np.ndarray]:
        """One sliding-window pass over same-shaped (C, X, Y, Z) volumes, run as one batch.

        ``sw_batch_size`` windows go into each model call (MONAI takes the windows of a batch in
        order: with one window per volume, one call covers every volume). ``bar`` (tqdm) advances by
        the windows of each call. Returns the de-normalised predictions, float32, in input order.
        """
        from monai.inferers import sliding_window_inference

        s_in, s_out = (self.y_stats, self.x_stats) if reverse else (self.x_stats, self.y_stats)
        fn = self.model.reverse if reverse else self.model.forward
        x = torch.from_numpy(np.stack([np.ascontiguousarray(s_in.normalise(d, channel_axis=0), dtype=np.float32)
                                       for d in datas]))
        r = lr_grid_factor(self.model)
        if r != (1, 1, 1) and not reverse:
            # An LR-grid model: windows run on the LR grid (MONAI stitches the r-times larger
            # outputs), so every window starts on an LR block boundary whatever the overlap.
            from medsr.networks.interpolate import block_mean

            x = block_mean(x, r)
            fn = self.model.forward_lr
        predictor = self._with_precision(fn)
        if bar is not None:
            inner = predictor

            def predictor(window: torch.Tensor) -> torch.Tensor:
                out = inner(window)
                bar.update(int(window.shape[0]))
                return out

        y = sliding_window_inference(
            x,
            roi_size=plan.roi,
            sw_batch_size=max(int(sw_batch_size), 1),
            predictor=predictor,
            overlap=(plan.overlap,) * 3,
            mode="gaussian",
            sw_device=self.device,
            device=torch.device("cpu"),  # stitch on the CPU: a whole volume need not fit on the GPU
        )
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by check_finite_output
            return [s_out.denormalise(y[i].float().numpy(), channel_axis=0).astype(np.float32, copy=False)
                    for i in range(len(datas))]

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
