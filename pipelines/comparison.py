"""The printed comparison of methods: every metric, the best method per metric, each model against cubic.

Printed by ``medsr evaluate`` and ``medsr demo`` (and written to the demo's ``summary.txt``). One row
per metric, one column per method (models first, then nn, linear, cubic), so every metric is shown
with its unit and direction, e.g.::

    metric                       better  rev_espcn3d      nn  linear   cubic  best         vs cubic
    rmse_interior (1e-3 mm^2/s)  lower        0.1804  0.2553  0.2593  0.2339  rev_espcn3d  0.77x cubic
    psnr (dB)                    higher        26.39   20.46   20.38   20.90  rev_espcn3d  +5.49 dB
    ...
    rev_espcn3d is better than cubic on 8 of 8 metrics and the best method on 8 of 8.

Formatting is fixed per metric: PSNR 2 decimals, SSIM and FA errors 4, tensor and MD errors 4 in
10^-3 mm^2/s when the tensors are in mm^2/s (what prep writes), otherwise 4 significant digits of the
row's smallest value. With several subjects a cell is ``mean ± std`` and ratios compare means.
PSNR is compared as a difference in dB (a ratio of logarithms means little), every other metric as a
ratio to cubic ("0.77x cubic").
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from pipelines.evaluate import BASELINES, METRIC_ORDER

HIGHER_IS_BETTER = frozenset({"psnr", "ssim"})
REFERENCE = "cubic"
MM2S = "mm2/s"


def _unit(metric: str, kind: str, tensor_unit: str | None) -> tuple[str, float, int | None]:
    """(unit label, display scale, fixed decimals or None = from the row's magnitude)."""
    if metric == "psnr":
        return "dB", 1.0, 2
    if metric == "ssim" or metric.startswith("fa_"):
        return "unitless", 1.0, 4
    if kind == "dti":
        if tensor_unit == MM2S:
            return "1e-3 mm^2/s", 1e3, 4
        return "tensor units", 1.0, None
    return "image units", 1.0, None


def _decimals(values: Sequence[float]) -> int:
    """Decimals giving the row's smallest non-zero magnitude 4 significant digits (0 to 8)."""
    mags = [abs(v) for v in values if np.isfinite(v) and v != 0]
    if not mags:
        return 4
    return int(min(max(3 - math.floor(math.log10(min(mags))), 0), 8))


def model_order(models: Sequence[str]) -> list[str]:
    """Models first (in first-seen order), then the baselines present in nn, linear, cubic order."""
    models = list(dict.fromkeys(models))
    return [m for m in models if m not in BASELINES] + [b for b in BASELINES if b in models]


def better(metric: str, a: float, b: float) -> bool:
    """``a`` is strictly better than ``b`` on ``metric``."""
    return a > b if metric in HIGHER_IS_BETTER else a < b


def compare(df: pd.DataFrame) -> tuple[list[str], list[str], dict[str, dict[str, tuple[float, float, int]]]]:
    """(methods in display order, metrics present, metric -> method -> (mean, std, n)) of per-subject rows."""
    methods = model_order(df["model"].astype(str))
    metrics = [m for m in METRIC_ORDER if m in df.columns]
    stats: dict[str, dict[str, tuple[float, float, int]]] = {}
    for metric in metrics:
        stats[metric] = {}
        for m in methods:
            v = df.loc[df["model"].astype(str) == m, metric].astype(float)
            stats[metric][m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, int(len(v)))
    return methods, metrics, stats


def winners(metric: str, row: dict[str, tuple[float, float, int]]) -> list[str]:
    """The best method(s) on ``metric`` by mean (several when tied)."""
    vals = {m: s[0] for m, s in row.items() if np.isfinite(s[0])}
    if not vals:
        return []
    best = max(vals.values()) if metric in HIGHER_IS_BETTER else min(vals.values())
    return [m for m, v in vals.items() if v == best]


def versus(metric: str, model: float, ref: float) -> str:
    """``"0.77x cubic"`` (``"+5.49 dB"`` for PSNR)."""
    if metric == "psnr":
        return f"{model - ref:+.2f} dB"
    if ref == 0 or not (np.isfinite(model) and np.isfinite(ref)):
        return "n/a"
    return f"{model / ref:.2f}x {REFERENCE}"


def sentences(methods: list[str], metrics: list[str], stats: dict) -> list[str]:
    """One plain sentence per model: metrics better than cubic, and metrics it is the best method on."""
    out = []
    for m in [x for x in methods if x not in BASELINES]:
        best_on = [k for k in metrics if m in winners(k, stats[k])]
        tail = f"the best method on {len(best_on)} of {len(metrics)}"
        if REFERENCE not in methods:
            out.append(f"{m} is {tail} metrics.")
            continue
        wins = [k for k in metrics if better(k, stats[k][m][0], stats[k][REFERENCE][0])]
        losses = [k for k in metrics if better(k, stats[k][REFERENCE][0], stats[k][m][0])]
        text = f"{m} is better than {REFERENCE} on {len(wins)} of {len(metrics)} metrics and {tail}"
        if losses:
            text += f"; worse than {REFERENCE} on {', '.join(losses)}"
        ties = [k for k in metrics if k not in wins and k not in losses]
        if ties:
            text += f"; equal on {', '.join(ties)}"
        out.append(text + ".")
    return out


def format_comparison(df: pd.DataFrame, *, kind: str | None = None, tensor_unit: str | None = None) -> str:
    """The comparison table and sentences (see the module docstring) of per-(model, subject) rows.

    Args:
        df: ``medsr evaluate``'s rows: ``model, subject`` and metric columns (original units).
        kind: ``"dti"`` or ``"scalar"``; default DTI when MD errors are present.
        tensor_unit: ``"mm2/s"`` when the tensors are in mm^2/s (prep's output): errors are shown in
            1e-3 mm^2/s; ``None`` shows them unscaled.
    """
    if kind is None:
        kind = "dti" if "md_rmse" in df.columns else "scalar"
    methods, metrics, stats = compare(df)
    models = [m for m in methods if m not in BASELINES]
    ref = REFERENCE in methods
    several = any(s[2] > 1 for row in stats.values() for s in row.values())
    head = ["metric", "better"] + methods + ["best"]
    if ref:
        head += [f"{m} vs {REFERENCE}" if len(models) > 1 else f"vs {REFERENCE}" for m in models]
    cells = [head]
    for k in metrics:
        unit, scale, dec = _unit(k, kind, tensor_unit)
        row = stats[k]
        dec = dec if dec is not None else _decimals([row[m][0] * scale for m in methods])
        vals = [f"{row[m][0] * scale:.{dec}f}" + (f" ± {row[m][1] * scale:.{dec}f}" if several else "")
                for m in methods]
        line = [f"{k} ({unit})", "higher" if k in HIGHER_IS_BETTER else "lower"] + vals
        line.append(", ".join(winners(k, row)) or "n/a")
        if ref:
            line += [versus(k, row[m][0], row[REFERENCE][0]) for m in models]
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    numeric = set(range(2, 2 + len(methods)))
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    lines.insert(1, "-" * max(len(s) for s in lines))
    n = max(s[2] for row in stats.values() for s in row.values()) if stats else 0
    if several:
        lines.append(f"(mean ± sample std over {n} subjects)")
    return "\n".join(lines + [""] + sentences(methods, metrics, stats))
