"""The printed comparison (evaluate, demo): every metric, the best method per metric, ratios to cubic and a
plain sentence that agrees with the table."""
from __future__ import annotations

import re

import pandas as pd

from pipelines.comparison import MM2S, format_comparison

COLS = ["model", "subject", "rmse_interior", "rmse_total", "psnr", "ssim", "md_rmse", "md_mae", "fa_rmse", "fa_mae"]


def _table(model_md: float = 2.0e-4) -> pd.DataFrame:
    rows = [("net", "s1", 1.8e-4, 1.9e-4, 26.39, 0.8, model_md, 1.5e-4, 0.058, 0.041),
            ("cubic", "s1", 2.3e-4, 3.7e-4, 20.9, 0.68, 5.1e-4, 3.8e-4, 0.067, 0.050),
            ("nn", "s1", 2.6e-4, 3.9e-4, 20.5, 0.66, 5.4e-4, 3.9e-4, 0.074, 0.055)]
    return pd.DataFrame(rows, columns=COLS)


def test_every_metric_with_unit_winner_and_ratio():
    text = format_comparison(_table(), tensor_unit=MM2S)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["metric", "better", "net", "nn", "cubic"]  # models first, then baselines
    for metric in COLS[2:]:
        assert sum(line.startswith(metric + " ") for line in lines) == 1, metric
    row = next(line for line in lines if line.startswith("rmse_interior"))
    assert "(1e-3 mm^2/s)" in row and "0.1800" in row and "0.78x cubic" in row and row.split()[-3] == "net"
    assert re.search(r"psnr \(dB\)\s+higher\s+26\.39\s+20\.50\s+20\.90\s+net\s+\+5\.49 dB", text)
    assert "ssim (unitless)" in text and "0.8000" in text  # fixed decimals, not trimmed
    assert text.rstrip().endswith("net is better than cubic on 8 of 8 metrics and the best method on 8 of 8.")


def test_sentence_names_the_metrics_cubic_wins():
    text = format_comparison(_table(model_md=6e-4), tensor_unit=MM2S)
    assert "net is better than cubic on 7 of 8 metrics and the best method on 7 of 8; worse than cubic on md_rmse." in text
    assert re.search(r"md_rmse \(1e-3 mm\^2/s\)\s+lower\s+0\.6000\s+0\.5400\s+0\.5100\s+cubic\s+1\.18x cubic", text)


def test_several_subjects_show_mean_and_std():
    df = pd.concat([_table(), _table().assign(subject="s2", rmse_interior=lambda d: d.rmse_interior * 1.2)])
    text = format_comparison(df, tensor_unit=MM2S)
    assert "0.1980 ± 0.0255" in text and "(mean ± sample std over 2 subjects)" in text


def test_scalar_errors_in_image_units_with_significant_digits():
    df = pd.DataFrame([("net", "s", 12.345, 20.1, 30.0, 0.9), ("cubic", "s", 15.0, 25.0, 28.0, 0.85)],
                      columns=COLS[:6])
    text = format_comparison(df)
    assert "rmse_interior (image units)" in text and "12.35" in text and "15.00" in text
