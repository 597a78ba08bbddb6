"""Smoke run of the memory benchmark's functions on tiny shapes (no timing assertions)."""
from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks import memory


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(variant: str, depth: int) -> dict:
    return dict(case="3d", variant=variant, depth=depth, width=8, channels=2, patch=8, device="cpu",
                channels_last=False, threads=1, seed=0)


def test_saved_bytes_flat_for_reversible_and_growing_for_plain():
    rows = {(v, d): memory.measure_memory(_cfg(v, d)) for v in ("reversible", "plain") for d in (2, 6)}
    assert rows[("reversible", 2)]["saved_MiB"] == rows[("reversible", 6)]["saved_MiB"]
    per_block = (rows[("plain", 6)]["saved_MiB"] - rows[("plain", 2)]["saved_MiB"]) / 4
    assert per_block > 0.5 * rows[("reversible", 2)]["saved_MiB"] / 4
    # The reversible step recomputes the core once, so it does more conv FLOPs than plain.
    assert rows[("reversible", 6)]["GFLOP_step"] > rows[("plain", 6)]["GFLOP_step"]


def test_conv_flops_match_the_formula():
    model, x, _ = memory._build(_cfg("plain", 1))
    total, core = memory.conv_flops(model, x)
    vox = 8**3
    enc = 2 * 27 * 2 * 8 * vox
    dec = 2 * 1 * 8 * 2 * vox
    branch = 2 * (2 * 27 * 4 * 4 * vox)  # two 3^3 convs on 4 channels
    assert core == 2 * branch and total == enc + dec + 2 * branch
    assert memory.step_flops(model, x, "reversible") == 3 * total + core


def test_subprocess_measure_timing_and_outputs(tmp_path):
    # A parent bigger than the child: the child's peak must be its own (ru_maxrss would inherit ours).
    ballast = torch.ones(100 * 2**20)  # 400 MiB, touched
    row = memory.measure_in_subprocess(_cfg("reversible", 2), timeout=120)
    assert row["peak_MiB"] > 0 and row["saved_MiB"] > 0
    assert row["peak_MiB"] < memory._vm_rss_bytes() / memory.MIB
    del ballast
    wall, cpu = memory.measure_times([_cfg("reversible", 2), _cfg("plain", 2)], repeats=2)
    assert [len(t) for t in wall] == [2, 2] and all(t > 0 for ts in wall for t in ts)
    assert [len(t) for t in cpu] == [2, 2]
    assert memory.conv_probe_gflops(4, 8, repeats=2) > 0
    assert memory.conv_probe_gflops(4, 8, repeats=2, clock="cpu") > 0

    rows = []
    for d in (0, 2, 4, 8):
        for v in ("reversible", "plain"):
            r = memory.measure_memory(_cfg(v, d))
            r.update(step_s=0.1 * (1 + d), cpu_s=0.1 * (1 + d), time_vs_plain=1.0, cpu_vs_plain=1.0,
                     GFLOP_s=1.0, GFLOP_s_cpu=1.0)
            rows.append(r)
    lines = memory.check_targets(rows)
    assert any(line.startswith("PASS plain saved memory linear") for line in lines)
    assert "saved_MiB" in memory.format_table(rows).splitlines()[0]
    memory.write_csv(rows, tmp_path / "m.csv")
    memory.write_png(rows, tmp_path / "m.png", "test")
    assert (tmp_path / "m.csv").read_text().startswith("case,") and (tmp_path / "m.png").stat().st_size > 1000


def test_cli_validates_arguments(tmp_path):
    p = argparse.ArgumentParser()
    memory.add_arguments(p)
    with pytest.raises(ValueError, match="repeats"):
        memory.run(p.parse_args(["--repeats", "2"]))
    with pytest.raises(ValueError, match="even"):
        memory.run(p.parse_args(["--width", "7"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        memory.run(p.parse_args(["--csv", str(tmp_path / "missing" / "m.csv")]))
    with pytest.raises(ValueError, match="depths"):
        memory.run(p.parse_args(["--depths", "2,x"]))
    with pytest.raises(ValueError, match="variants"):
        memory.run(p.parse_args(["--variants", "reversible,bogus"]))


def test_memcnn_variant_when_installed():
    """memcnn's per-block wrappers also keep saved memory flat in depth. memcnn is an optional extra
    (not a dependency, not installed on the test machine), so this runs only where it is installed."""
    pytest.importorskip("memcnn", reason="memcnn is not installed (optional: pip install memcnn); "
                                         "the bench's memcnn variant is untested here")
    a = memory.measure_memory(_cfg("memcnn", 4))
    b = memory.measure_memory(_cfg("memcnn", 2))
    assert a["saved_MiB"] == b["saved_MiB"]


def test_replot_draws_peak_memory_from_the_csv(tmp_path):
    """--replot redraws the PNG from a --csv file; the peak panel plots peak_MiB (not the step's rise)
    and the depth axis is ticked at the measured integer depths."""
    import pandas as pd

    from pipelines.cli import main

    rows = [dict(case="3d", variant=v, depth=d, width=8, patch=8, device="cpu", saved_MiB=1.0 + d * (v == "plain"),
                 peak_MiB=300.0 + d, step_MiB=20.0 + d, step_s=0.1 * d) for v in ("reversible", "plain") for d in (0, 2, 8)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    assert main(["bench", "memory", "--replot", str(tmp_path / "m.csv"), "--png", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").stat().st_size > 1000
    fig = memory.replot(tmp_path / "m.csv", tmp_path / "again.png")
    panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_visible()}
    peak = panels["peak memory of a training step (MiB)"]
    assert [list(line.get_ydata()) for line in peak.lines] == [[300.0, 302.0, 308.0]] * 2  # peak_MiB itself
    assert all(list(ax.get_xticks()) == [0, 2, 8] for ax in panels.values())
    assert main(["bench", "memory", "--replot", str(tmp_path / "nope.csv"), "--png", str(tmp_path / "x.png")]) == 2
