"""A checkpoint's model card: what the model was trained on, and whether an input lies inside it.

Training records the facts of its data in the checkpoint's ``data`` entry (:func:`data_card`, called by
the dataset builder): kind, channels, factor, the HR voxel size per axis (range over the subjects),
intensity percentiles of input (``lr_up``) and target (``hr``) over brain voxels, and the subjects. The
checkpoint itself holds the model, the steps and the seconds trained; ``medsr bench quality`` adds the
held-out metrics (:func:`record_metrics`). :func:`model_card` gathers them into one flat dict
(``medsr info``), naming what an older checkpoint does not record.

:func:`domain_warnings` compares one input volume with the card before inference: one line per
mismatch (channels, voxel size and factor, an HR volume where an LR one is expected, intensities out of
range by more than :data:`INTENSITY_RATIO`). ``medsr infer`` prints them; ``--strict`` refuses.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from medsr.factor import factor_triple
from medsr.volume import Volume

PERCENTILES = (1.0, 50.0, 99.0)
SAMPLES = 200_000  # brain voxels sampled over all training subjects for the percentiles
INTENSITY_RATIO = 10.0  # an input's typical magnitude this many times above (or below) training's: a warning
VOXEL_RTOL = 0.1  # voxel sizes within 10% match (as the input-grid detection)


def intensity_summary(samples: np.ndarray) -> dict[str, Any]:
    """Percentiles of (C, N) samples: ``{"p1": [C], "p50": [C], "p99": [C], "abs_p99": float}``.

    ``abs_p99`` (the 99th percentile of |value| over all channels) is the one number the range check
    compares: it is a robust "size" of the values whatever their sign (tensor off-diagonals are centred on 0).
    """
    s = np.asarray(samples, dtype=np.float64)
    out: dict[str, Any] = {f"p{p:g}": [float(v) for v in np.percentile(s, p, axis=1)] for p in PERCENTILES}
    out["abs_p99"] = float(np.percentile(np.abs(s), 99.0)) if s.size else 0.0
    return out


def data_card(subjects: Sequence[Any], seed: int = 0) -> dict[str, Any]:
    """Facts of the training subjects (``medsr.data.patch_dataset.Subject``) for the checkpoint's ``data``.

    Intensities come from up to :data:`SAMPLES` brain voxels drawn evenly over the subjects (a fixed
    seed: the same subjects give the same card), read from their memory-mapped caches.
    """
    per = max(SAMPLES // max(len(subjects), 1), 256)
    xs, ys, sizes = [], [], []
    for i, s in enumerate(subjects):
        brain = s.brain
        pick = np.sort(np.random.default_rng([seed, i]).choice(len(brain), min(per, len(brain)), replace=False))
        ijk = tuple(np.asarray(brain[pick]).T)
        xs.append(np.asarray(s.lr_up[(slice(None),) + ijk]))
        ys.append(np.asarray(s.hr[(slice(None),) + ijk]))
        sizes.append(np.linalg.norm(s.affine[:3, :3], axis=0))
        s.release()
    sizes_a = np.asarray(sizes)
    return {
        "n_subjects": len(subjects),
        "voxel_size_range": [[float(v) for v in sizes_a.min(0)], [float(v) for v in sizes_a.max(0)]],
        "intensity": {"x": intensity_summary(np.concatenate(xs, 1)), "y": intensity_summary(np.concatenate(ys, 1))},
    }


def model_card(ck: dict[str, Any]) -> dict[str, Any]:
    """One flat dict of what ``ck`` records about its model and training data; ``unknown`` lists the gaps."""
    data = ck.get("data") or {}
    model = ck.get("model") or {}
    card: dict[str, Any] = {
        "model": model.get("name"), "model_kwargs": {k: v for k, v in (model.get("kwargs") or {}).items()},
        "mode": ck.get("mode"), "medsr_version": ck.get("medsr_version"),
        "kind": data.get("kind"), "channels": data.get("channels"),
        "factor": list(factor_triple(data["factor"])) if "factor" in data else None,
        "voxel_size": data.get("voxel_size"), "voxel_size_range": data.get("voxel_size_range"),
        "patch_size": data.get("patch_size"),
        "n_subjects": data.get("n_subjects", len(data["subjects"]) if "subjects" in data else None),
        "subjects": data.get("subjects"),
        "intensity": data.get("intensity"),
        "steps": ck.get("step"), "train_seconds": ck.get("train_seconds"), "precision": ck.get("precision"),
        "augmentation": {"flip": data.get("flip"), "permute": data.get("permute")} if "flip" in data else None,
        "heldout_metrics": ck.get("heldout_metrics"),
        "uncertainty": ck.get("uncertainty"),
    }
    card["unknown"] = [k for k, v in card.items() if v is None]
    return card


def format_card(card: dict[str, Any], path: str = "") -> str:
    """``medsr info``'s text: one fact per line, ``unknown`` where the checkpoint does not record it."""
    def fmt(v: Any) -> str:
        if v is None:
            return "unknown (not recorded by the medsr that wrote this checkpoint)"
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            return " x ".join(fmt(x) for x in v) if all(isinstance(x, (int, float)) for x in v) else ", ".join(map(fmt, v))
        return str(v)

    lines = [f"checkpoint: {path}"] if path else []
    secs = card.get("train_seconds")
    rows = [
        ("model", f"{card['model']} {card['model_kwargs']}" if card["model"] else None),
        ("training mode", card["mode"]), ("written by medsr", card["medsr_version"]),
        ("kind", card["kind"]), ("channels", card["channels"]), ("factor (per axis)", card["factor"]),
        ("HR voxel size (mm)", card["voxel_size"]),
        ("HR voxel size range (mm)", None if card["voxel_size_range"] is None else
         f"{fmt(card['voxel_size_range'][0])} .. {fmt(card['voxel_size_range'][1])}"),
        ("patch size", card["patch_size"]), ("training subjects", card["n_subjects"]),
        ("steps", card["steps"]), ("training time", None if secs is None else f"{secs / 60:.1f} min"),
        ("precision", card["precision"]),
        ("augmentation", None if card["augmentation"] is None else
         ", ".join(k for k, v in card["augmentation"].items() if v) or "none"),
    ]
    for key in ("x", "y"):
        inten = (card.get("intensity") or {}).get(key)
        what = "input (lr_up)" if key == "x" else "target (hr)"
        rows.append((f"{what} p1 / p50 / p99", None if inten is None else "; ".join(
            f"{a:.3g} / {b:.3g} / {c:.3g}" for a, b, c in zip(inten["p1"], inten["p50"], inten["p99"]))))
    metrics = card.get("heldout_metrics")
    rows.append(("held-out metrics", "not measured ('medsr bench quality' records them)" if metrics is None else
                 ", ".join(f"{k} {v:.4g}" for k, v in metrics.get("mean", {}).items())
                 + f" (subjects {', '.join(metrics.get('subjects', []))})"))
    unc = card.get("uncertainty")
    rows.append(("uncertainty std scale", "not calibrated ('medsr bench uncertainty --record' fits it)" if unc is None
                 else ", ".join(f"{k} x{v:.3g}" for k, v in unc["scale"].items()) + f" (fitted on {unc['subject']})"))
    width = max(len(k) for k, _ in rows)
    lines += [f"{k:<{width}}  {fmt(v)}" for k, v in rows]
    return "\n".join(lines)


def record_metrics(path: str | os.PathLike, means: dict[str, float], subjects: Iterable[str], source: str) -> None:
    """Add held-out metrics (means over ``subjects``) to the checkpoint at ``path`` (rewritten atomically)."""
    _record(path, "heldout_metrics", {"mean": {k: float(v) for k, v in means.items()},
                                      "subjects": [str(s) for s in subjects], "source": source})


def record_uncertainty(path: str | os.PathLike, scales: dict[str, float], subject: str,
                       spearman: dict[str, float]) -> None:
    """Add the uncertainty calibration (``medsr bench uncertainty --record``) to the checkpoint at ``path``.

    Args:
        scales: TTA views (``flip``, ``full``) -> RMS error / RMS std on the held-out ``subject``:
            ``medsr infer --uncertainty`` multiplies its std by it, so the std has the error's size.
    """
    _record(path, "uncertainty", {"scale": {k: float(v) for k, v in scales.items()}, "subject": str(subject),
                                  "spearman": {k: float(v) for k, v in spearman.items()}})


def uncertainty_scale(card: dict[str, Any], views: str) -> float:
    """The recorded std scale for ``views`` (1.0 when the checkpoint has no calibration for them)."""
    return float(((card.get("uncertainty") or {}).get("scale") or {}).get(views, 1.0))


def _record(path: str | os.PathLike, key: str, value: dict[str, Any]) -> None:
    from medsr.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(path)
    ck[key] = value
    save_checkpoint(ck, path)


def is_nn_upsampled(data: np.ndarray, factor: Sequence[int], rtol: float = 1e-4) -> bool:
    """True when (C, X, Y, Z) ``data`` is constant over every aligned block of ``factor`` voxels (an ``lr_up``)."""
    f = tuple(int(v) for v in factor)
    if f == (1, 1, 1):
        return True
    shape = data.shape[1:]
    crop = tuple(s - s % r for s, r in zip(shape, f))
    d = data[:, :crop[0], :crop[1], :crop[2]]
    blocks = d.reshape(d.shape[0], crop[0] // f[0], f[0], crop[1] // f[1], f[1], crop[2] // f[2], f[2])
    spread = blocks.max(axis=(2, 4, 6)) - blocks.min(axis=(2, 4, 6))
    scale = float(np.abs(d).max()) if d.size else 0.0
    return bool(spread.max() <= rtol * scale) if d.size else True


def domain_warnings(card: dict[str, Any], vol: Volume, grid: str, *, reverse: bool = False) -> list[str]:
    """One-line messages for each way ``vol`` lies outside what the model was trained on.

    Args:
        card: :func:`model_card` of the checkpoint (unknown facts are not checked).
        vol: the input as read (before any upsampling).
        grid: the grid it is taken to be on: ``"lr"`` (voxels ``factor`` times the HR's) or ``"hr"``.
        reverse: the input is an HR volume for G (the LR-input checks do not apply).

    A channel mismatch is returned too; the caller refuses it whatever ``--strict`` says (the model
    cannot run on it).
    """
    out: list[str] = []
    kinds = {6: "DTI tensors", 1: "a scalar image"}
    ch = card.get("channels")
    if ch is not None and vol.channels != int(ch):
        out.append(f"{vol.channels} channel(s) ({kinds.get(vol.channels, 'unknown kind')}) but the model was trained "
                   f"on {ch} ({card.get('kind') or kinds.get(int(ch), '?')})")
        return out
    factor = np.asarray(card["factor"] if card.get("factor") else (1, 1, 1), dtype=float)
    hr = card.get("voxel_size")
    if hr is not None:
        expect = np.asarray(hr, float) * (factor if grid == "lr" else 1.0)
        vs = np.asarray(vol.voxel_size)
        if not np.allclose(vs, expect, rtol=VOXEL_RTOL):
            ratio = vs / np.asarray(hr, float)
            out.append(f"voxel size {_mm(vs)} mm as an {grid.upper()}-grid input, but the model was trained on "
                       f"{_mm(expect)} mm there ({_mm(ratio)} x its HR voxels; model factor {_mm(factor)})")
    if grid == "hr" and not reverse and not is_nn_upsampled(vol.data, factor_triple(card["factor"]) if card.get("factor") else (1, 1, 1)):
        out.append(f"an HR-grid input that is not an NN-upsampled LR volume (not constant over "
                   f"{'x'.join(str(int(f)) for f in factor)} blocks): the model was trained on LR volumes (prep's "
                   "lr_up), so this one's detail is averaged down to the LR grid (LR-grid models) or read as LR "
                   "data; give the LR volume")
    inten = (card.get("intensity") or {}).get("y" if reverse else "x")
    if inten and inten.get("abs_p99"):
        values = vol.data[:, np.any(vol.data != 0, axis=0)]
        if values.size:
            mine = float(np.percentile(np.abs(values), 99.0))
            ratio = mine / float(inten["abs_p99"])
            if not 1.0 / INTENSITY_RATIO <= ratio <= INTENSITY_RATIO:
                out.append(f"intensities {ratio:.3g}x the training data's (99th percentile of |value| {mine:.3g} "
                           f"vs {float(inten['abs_p99']):.3g}); check the units and scaling")
    return out


def _mm(v: Iterable[float]) -> str:
    return "x".join(f"{float(x):.3g}" for x in v)
