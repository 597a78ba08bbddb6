"""``benchmarks/table3.py``: the dry run end to end (tiny phantom, 2 steps per row) and the table's layout."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "table3.py"


def _load():
    spec = importlib.util.spec_from_file_location("table3", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["table3"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


table3 = _load()


def test_every_paper_row_has_a_config():
    rows = [table3.Row(m, d) for m in table3.METHODS for d in table3.DEPTHS]
    assert len(rows) == 12 and all(r.config.is_file() for r in rows)
    assert {r.label for r in rows} == {v[0] for v in table3.PAPER.values()}


def _dry_run(out, *depths: str) -> int:
    """``table3.py --dry-run`` of the paired_l1 rows at ``depths``, 1 training and 2 test subjects."""
    return table3.main(["--dry-run", "--output", str(out), "--rows", "paired_l1", "--depths", *depths,
                        "--train-subjects", "1", "--test-subjects", "2"])


def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "t3"
    assert _dry_run(out, "0", "2") == 0
    csv = pd.read_csv(out / "table3.csv")
    models = csv[csv["depth"].notna()]
    assert list(zip(models["method"], models["depth"].astype(int))) == [
        ("paired_l1", 0),
        ("paired_l1", 2),
    ]
    assert list(csv.loc[csv["depth"].isna(), "method"]) == ["cubic", "linear", "nn"]
    for col in (
        "rmse_interior_mean",
        "rmse_interior_std",
        "rmse_total_mean",
        "rmse_total_std",
        "rmse_interior_ratio",
        "rmse_total_ratio",
    ):
        assert csv[col].notna().all(), col  # two held-out subjects: a std for every line
    assert (models["steps"] == table3.DRY_STEPS).all() and (models["n_subjects"] == 2).all()
    assert csv.loc[csv["method"] == "cubic", "rmse_interior_ratio"].item() == pytest.approx(1.0)
    # Memory: R=0 has no core; with a reversible core the activations stay below plain autograd's.
    r2 = models[models["depth"] == 2].iloc[0]
    assert 0 < r2["activation_MiB"] < r2["activation_plain_MiB"]
    # The per-subject rows came from run_quality (train -> infer -> evaluate), ratios against cubic.
    subj = pd.read_csv(out / "table3_subjects.csv")
    assert len(subj) == 4 and set(subj["subject"]) == {"phantom02", "phantom03"}
    assert (subj["rmse_interior"] / subj["rmse_interior_cubic"]).tolist() == pytest.approx(
        subj["rmse_interior_ratio"].tolist()
    )
    md = (out / "table3.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| Model | R | RMSE interior | RMSE total |")
    assert len(table) == 1 + 2 + 3  # header, two rows, three baselines
    assert "| Paired+2R w/o L_GAN | 2 |" in md and "**Verdict (computed from the table).**" in md
    assert "Command: `python benchmarks/table3.py --dry-run" in md
    # A rerun with the same budget reuses the rows instead of retraining.
    before = (out / "rows" / "paired_l1_r0.csv").stat().st_mtime_ns
    assert _dry_run(out, "0") == 0
    assert (out / "rows" / "paired_l1_r0.csv").stat().st_mtime_ns == before


def _summary(values: dict[tuple[str, int], float], mem: float = 7.8) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "method": m,
                "depth": d,
                "rmse_interior_mean": v / table3.SCALE,
                "steps": 100 // (d + 1),
                "activation_MiB": 4.4 if d == 0 else mem,
            }
            for (m, d), v in values.items()
        ]
    )


def test_verdict_reads_the_numbers():
    falls = _summary(
        {("paired", 0): 10.0, ("paired", 2): 9.0, ("paired", 4): 8.0, ("paired", 8): 7.0}
    )
    text = table3.verdict(falls)
    assert (
        text.startswith("Yes at equal time") and "for 1 of 1 methods" in text and "R=2/4/8" in text
    )
    rises = _summary({("paired", 0): 7.0, ("paired", 2): 8.0, ("paired", 8): 9.0})
    assert table3.verdict(rises).startswith(
        "No at equal time"
    ) and "for 0 of 1 methods" in table3.verdict(rises)
    tie = _summary({("paired", 0): 7.0, ("paired", 2): 7.01})
    assert table3.verdict(tie).startswith("Not clearly")
