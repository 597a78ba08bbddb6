"""Checkpoints that rebuild their model alone.

Layout of a checkpoint file (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    {
      "format": 1,
      "medsr_version": str,
      "model": {"name": str, "kwargs": dict, "state_dict": dict},   # the generator (its weight average under train.ema)
      "ema": {"decay", "updates", "train_state_dict"},                # train.ema only: the optimiser's weights
      "discriminators": {name: {"name", "kwargs", "state_dict"}},    # GAN modes only
      "optimizers": {...}, "schedulers": {...},                      # training state
      "step": int, "epoch": int, "rng": {...},
      "precision": "fp32" | "bf16" | "fp16", "amp": {...},           # train.precision, fp16 loss scales
      "norm": {"x": {"mean": [...], "std": [...]}, "y": {...}},    # x = LR-up input, y = HR target
      "data": {"factor": int | [rx, ry, rz], "patch_size": int, "channels": int, "kind": "dti" | "scalar"},
      "config": dict,                                                 # the resolved training config
    }

Only plain containers, tensors, numbers and strings go in, so ``weights_only=True`` loads it. A factor is
stored as an int when it is the same on every axis (as every checkpoint before per-axis factors) and as a list
of three otherwise; :func:`medsr.factor.factor_triple` reads both.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import torch

from medsr import __version__
from medsr.normalise import ChannelStats
from medsr.utils.atomic import atomic_path


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` atomically (temporary file, then rename)."""
    state = dict(state)
    state.setdefault("format", 1)
    state.setdefault("medsr_version", __version__)
    # Serialised in memory, then written by Python: torch's own file writer reports a full disk as
    # "RuntimeError: [enforce fail at inline_container.cc]", where a Python write raises OSError(ENOSPC),
    # which names the file and exits with code 2 like every other full disk.
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a clear error names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        # One line: torch's weights-only message is a paragraph (advising weights_only=False, which
        # medsr never does); keep only its cause, e.g. "Unsupported operand 31".
        msg = str(e).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation of torch.load")[0]
        detail = " ".join(msg.split())[:200] or type(e).__name__
        raise ValueError(f"{path}: not a readable medsr checkpoint ({type(e).__name__}: {detail})") from e


def check_finite_weights(entry: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a network record whose weights hold NaN or inf, naming the first such tensor.

    Such weights can only produce NaN outputs (inference) or NaN losses (a resumed training), so they
    are refused when the checkpoint is read, before any work.
    """
    for name, t in entry.get("state_dict", {}).items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: weight {name!r} of {entry.get('name', 'the model')} holds NaN or inf values; "
                             "this checkpoint cannot produce finite outputs")


def model_entry(name: str, kwargs: dict[str, Any], module: torch.nn.Module) -> dict[str, Any]:
    """The ``{"name", "kwargs", "state_dict"}`` record for one network."""
    # Unwrap DDP / torch.compile so the keys match a freshly built model.
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    return {"name": name, "kwargs": dict(kwargs), "state_dict": module.state_dict()}


def build_model(entry: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a network from its record via the registry and load its weights."""
    from medsr.networks import create_model

    model = create_model(entry["name"], **entry["kwargs"])
    model.load_state_dict(entry["state_dict"])
    return model


def load_generator(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load the generator of a checkpoint for inference.

    Returns:
        (model in eval mode, x-stats, y-stats, checkpoint dict)
    """
    ck = load_checkpoint(path, map_location)
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict):
        raise ValueError(f"{path}: no 'model' entry; not a medsr checkpoint")
    try:
        model = build_model(ck["model"]).eval()
        norm = ck.get("norm") or {}
        channels = int(ck.get("data", {}).get("channels", 1))
        sx = ChannelStats.from_dict(norm["x"]) if "x" in norm else ChannelStats.identity(channels)
        sy = ChannelStats.from_dict(norm["y"]) if "y" in norm else ChannelStats.identity(channels)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as e:
        # A foreign or incomplete checkpoint: missing entries, weights of another shape, unknown model.
        detail = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())[:200]
        raise ValueError(f"{path}: not a complete medsr checkpoint ({type(e).__name__}: {detail})") from e
    check_finite_weights(ck["model"], path)
    for key, stats in (("x", sx), ("y", sy)):
        values = [*stats.mean, *stats.std]
        if not all(math.isfinite(float(v)) for v in values) or not all(float(v) > 0 for v in stats.std):
            raise ValueError(f"{path}: normalisation norm.{key} is not finite and positive "
                             f"(mean {stats.mean}, std {stats.std}); this checkpoint cannot produce finite outputs")
    return model, sx, sy, ck
