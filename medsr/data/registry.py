"""Dataset builders registered by name, selected by the config's ``data.type``.

A builder turns a :class:`medsr.config.Config` into a :class:`TrainData`: the dataset, its
resumable sampler and what the checkpoint must remember about the data. ``patches3d`` (brain
patches from a prep manifest) and ``self`` (self-supervised pairs from thick-slice scans) register
themselves here; the 2D module registers ``aligned2d``.
(Training modes have their own registry, :mod:`medsr.training.modes`, which loads the 2D
``segmentation`` mode itself.)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from medsr.normalise import ChannelStats

# Modules imported on first use so their @register_dataset decorators run.
_BUILTIN_MODULES = ("medsr.data.patch_dataset", "medsr.data.self_supervised")
_OPTIONAL_MODULES = ("medsr.twod.datasets",)
_BUILDERS: dict[str, Callable[..., "TrainData"]] = {}


@dataclass
class TrainData:
    """Everything the Trainer needs from the data side.

    Attributes:
        dataset: map-style dataset; ``dataset[item]`` for an item yielded by ``sampler`` returns
            ``{"x": (C, *S) float tensor, "y": (C_y, *S) float tensor}``.
        sampler: a batch sampler with ``steps_per_epoch`` and ``set_epoch(epoch, start_batch)``
            (see :class:`medsr.data.sampler.EpochBatchSampler`): batches are a pure function of
            (seed, epoch, batch index, rank), so a resumed run sees the same batches.
        channels: channel count of the network input x (resolves ``in_channels: auto``).
        info: the checkpoint's ``data`` entry (``factor``, ``patch_size``, ``channels``, ``kind``, ...).
        norm: ``{"x": ChannelStats, "y": ChannelStats}`` applied by the dataset (identity if absent).
        preview: ``preview(generator, device) -> [(title, 2D array), ...]``: images for the
            per-epoch PNG (input, output, target), in original units; ``None`` = no PNG.
    """

    dataset: torch.utils.data.Dataset
    sampler: Any
    channels: int
    info: dict[str, Any]
    norm: dict[str, ChannelStats] = field(default_factory=dict)
    preview: Callable[[torch.nn.Module, torch.device], list[tuple[str, np.ndarray]]] | None = None


def register_dataset(name: str) -> Callable[[Callable[..., TrainData]], Callable[..., TrainData]]:
    """Decorator registering ``builder(cfg, dist) -> TrainData`` under ``data.type == name``."""

    def deco(fn: Callable[..., TrainData]) -> Callable[..., TrainData]:
        if name in _BUILDERS:
            raise ValueError(f"dataset type {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def _ensure_loaded() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    for mod in _OPTIONAL_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def list_datasets() -> list[str]:
    _ensure_loaded()
    return sorted(_BUILDERS)


def build_dataset(cfg: Any, dist: Any) -> TrainData:
    """Build the training data named by ``cfg.data.type`` for this rank."""
    _ensure_loaded()
    name = cfg.data.type
    if name not in _BUILDERS:
        raise ValueError(f"config key 'data.type': unknown dataset type {name!r}; registered: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](cfg, dist)
