"""``medsr bench busy``: the ratios and the report it writes from measured rates (nothing timed here)."""
from __future__ import annotations

import math

import pytest

from pipelines.bench_cli import bench_module, bench_parser

busy = bench_module("busy")

RESULTS = {
    "alone": {"auto": [9.6], "1": [8.0], "2": [10.0], "2:spin": [11.0]},
    "busy": {"auto": [7.3], "1": [8.0], "2": [6.0], "2:spin": [1.0]},
    "pair": {"auto": [6.0, 5.0], "1": [7.0, 7.5], "2": [3.0, 3.2]},
    "prep": {"auto": [4.8, 0.05], "1": [6.0, float("nan")]},  # (training steps/s, prep subjects/s)
}
PREP_ALONE = 0.1


def test_ratios_compare_auto_with_the_best_fixed_count_and_pairs_with_alone():
    r = busy.ratios(RESULTS)
    assert r["auto_vs_best_alone"] == pytest.approx(0.96)  # 2:spin is shown, not a candidate
    assert r["auto_vs_best_busy"] == pytest.approx(7.3 / 8.0)
    assert r["pair_vs_alone_auto"] == pytest.approx(5.0 / 9.6)  # the slower of the two
    assert r["pair_vs_alone_2"] == pytest.approx(0.3)
    assert "prep_vs_alone_auto" not in r  # no prep rate alone: nothing to compare with
    r = busy.ratios(RESULTS, PREP_ALONE)
    assert r["prep_train_vs_alone_auto"] == pytest.approx(0.5)
    assert r["prep_vs_alone_auto"] == pytest.approx(0.5)
    assert r["prep_train_vs_alone_1"] == pytest.approx(0.75)
    assert "prep_vs_alone_1" not in r  # no prep pass ran wholly beside that training


def test_report_states_the_command_the_rates_and_the_targets():
    meta = {"machine": "2 usable CPU core(s)", "config": "configs/demo.yaml", "data": "2 generated DTI subjects",
            "seconds": "20", "wait_policy": "PASSIVE"}
    said = {"busy, threads auto": ["threads auto: 1 of 2 usable core(s) (measured 2: 6, 1: 8 steps/s)"]}
    text = busy.render(RESULTS, meta, "medsr bench busy --output docs/performance.md", "A shared machine.", said,
                       PREP_ALONE)
    assert "- busy, threads auto: `threads auto: 1 of 2 usable core(s) (measured 2: 6, 1: 8 steps/s)`" in text
    assert "    medsr bench busy --output docs/performance.md" in text
    assert "| auto | 9.60 | 7.30 | 6.00 / 5.00 | 0.52x | 4.80, 0.050 |" in text
    assert "| 2 | 10.00 | 6.00 | 3.00 / 3.20 | 0.30x |  |" in text
    assert "The prep alone (`medsr prep hcp --workers N`, 2 generated subjects per pass): 0.100 subjects/s;" in text
    assert "a prep beside an auto training: prep / prep alone: **0.500x** (target >= 0.4: met)" in text
    assert "A shared machine." in text
    assert "auto beside a busy core / best fixed count there: **0.912x** (target >= 0.9: met)" in text
    assert "auto alone / best fixed count alone: **0.960x** (target >= 0.95: met)" in text


def test_policies_and_logs_are_read_strictly(tmp_path):
    assert busy.parse_policy("auto") == ("auto", False)
    assert busy.parse_policy("2:spin") == ("2", True)
    for bad in ("0", "two", "2:fast"):
        with pytest.raises(ValueError, match="--policies"):
            busy.parse_policy(bad)
    log = tmp_path / "log.csv"
    log.write_text("step,train_s\n1,0.9\n2,1.0\n3,1.2\n12,3.0\n")
    assert busy.steps_per_second(log) == (pytest.approx(10 / 2.0), 12)  # from step 2 on
    log.write_text("step,train_s\n1,4.0\n2,8.0\n")  # too slow to leave out the first steps
    assert busy.steps_per_second(log) == (pytest.approx(0.25), 2)
    log.write_text("step,train_s\n")
    with pytest.raises(RuntimeError, match="no step"):
        busy.steps_per_second(log)
    assert bench_parser("busy").parse_args(["--seconds", "5"]).seconds == 5.0


def test_prep_loop_counts_only_passes_inside_the_window(tmp_path):
    """The prep situation's loop runs the real `medsr prep hcp --workers` on generated subjects until stopped."""
    import time

    from data_prep.phantom import PhantomConfig, generate

    generate(tmp_path / "raw", busy.PREP_SUBJECTS, config=PhantomConfig(shape=(20, 20, 18), n_dirs=6), progress=False)
    loop = busy.PrepLoop(tmp_path, "t")
    start = time.monotonic()
    while not (tmp_path / "prep-t" / "manifest.csv").is_file():  # a pass has written its subjects
        time.sleep(0.2)
    rate = loop.stop(start, float("inf"))
    assert rate > 0 and rate == rate
    assert (tmp_path / "prep-t" / "phantom02" / "lr.nii.gz").is_file()
    assert math.isnan(busy.PrepLoop(tmp_path, "u").stop(0.0, 0.0))  # no pass wholly inside an empty window
