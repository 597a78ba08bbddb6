"""Paths as a user types them: relative, from another working directory, and the same command run twice."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from data_prep.phantom import PhantomConfig, generate
from pipelines.cli import main

pytestmark = pytest.mark.slow

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
TINY = replace(PhantomConfig(), shape=(30, 32, 26), n_dirs=12, n_b0=2)


def test_pipeline_with_relative_paths_from_other_working_directories(tmp_path, monkeypatch):
    """prep -> train -> infer -> evaluate -> report, every path relative, each verb from another folder."""
    generate(tmp_path / "data" / "hcp", 3, seed=2, config=TINY, progress=False)
    (tmp_path / "elsewhere").mkdir()

    monkeypatch.chdir(tmp_path)
    assert main(["prep", "hcp", "--input", "data/hcp", "--output", "work/prep"]) == 0
    stored = pd.read_csv(tmp_path / "work" / "prep" / "manifest.csv")
    # stored relative to the manifest's own folder, not to the working directory of the prep run
    assert stored.loc[0, "hr"] == f"{stored.loc[0, 'subject']}/hr.nii.gz"

    # a second run of the same command skips every subject and keeps a readable manifest
    assert main(["prep", "hcp", "--input", "data/hcp", "--output", "work/prep"]) == 0
    assert pd.read_csv(tmp_path / "work" / "prep" / "manifest.csv").equals(stored)

    monkeypatch.chdir(tmp_path / "elsewhere")
    manifest = "../work/prep/manifest.csv"
    assert main(["train", str(DEMO_CONFIG), "--set", f"data.manifest={manifest}", "output_dir=../work/run",
                 "train.max_steps=2", "train.batch_size=2", "data.patch_size=16", "data.random_per_subject=2",
                 "data.subjects=[phantom01,phantom02]", "train.progress=false"]) == 0

    monkeypatch.chdir(tmp_path / "work")
    assert main(["infer", "--checkpoint", "run/last.pt", "--input", "prep/manifest.csv", "--output", "pred",
                 "--subjects", "phantom03", "--quiet"]) == 0
    out = nib.load(tmp_path / "work" / "pred" / "phantom03.nii.gz")
    hr = nib.load(tmp_path / "work" / "prep" / "phantom03" / "hr.nii.gz")
    np.testing.assert_allclose(out.affine, hr.affine, atol=1e-5)

    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["evaluate", "--manifest", manifest, "--predictions", "../work/pred", "--output", "eval.csv",
                 "--subjects", "phantom03", "--quiet"]) == 0
    assert sorted(pd.read_csv("eval.csv")["model"]) == ["cubic", "linear", "nn", "pred"]
    assert main(["report", "--manifest", manifest, "--predictions", "../work/pred", "--output", "figs",
                 "--subjects", "phantom03"]) == 0
    assert (tmp_path / "elsewhere" / "figs" / "phantom03_md.png").is_file()


def test_prep_repairs_a_manifest_with_paths_relative_to_the_old_working_directory(tmp_path, monkeypatch):
    """An older medsr stored `prep/<s>/hr.nii.gz` for --output prep; the rerun must redo and fix it."""
    generate(tmp_path / "hcp", 1, seed=3, config=TINY, progress=False)
    monkeypatch.chdir(tmp_path)
    assert main(["prep", "hcp", "--input", "hcp", "--output", "prep"]) == 0
    path = tmp_path / "prep" / "manifest.csv"
    df = pd.read_csv(path)
    for c in ("hr", "lr", "lr_up", "mask"):
        df[c] = "prep/" + df[c]
    df.to_csv(path, index=False)
    assert main(["prep", "hcp", "--input", str(tmp_path / "hcp"), "--output", str(tmp_path / "prep")]) == 0
    assert pd.read_csv(path).loc[0, "hr"] == "phantom01/hr.nii.gz"


def test_demo_with_a_relative_output_runs_again_after_success_and_failure(tmp_path, monkeypatch):
    from pipelines.demo import MARKER, run_demo

    monkeypatch.chdir(tmp_path)
    kw = dict(minutes=0.05, n_subjects=2, seed=0, workers=1, phantom_config=TINY, quiet=True)
    res = run_demo("demo_out", **kw)
    assert (tmp_path / "demo_out" / "summary.txt").is_file() and res.steps > 0
    assert (tmp_path / "demo_out" / "predictions" / f"{res.test_subject}.nii.gz").is_file()
    assert list(res.timings) == ["phantom + prep", "train", "infer", "evaluate"]  # every timed stage, in order
    assert all(Path(p).exists() for p in res.paths.values()), res.paths  # the summary names only real outputs
    assert "timings: phantom + prep " in res.summary and "MD figure" in res.summary

    # a bad config is refused before the demo writes anything: the finished demo stays as it was ...
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO_CONFIG.read_text().replace("train:", "train:\n  not_a_key: 1", 1))
    with pytest.raises(ValueError, match="not_a_key"):
        run_demo("demo_out", config=bad, **kw)
    assert (tmp_path / "demo_out" / "summary.txt").is_file()
    # ... a failure half-way (a model factor that is not the data's, found with the data) leaves a
    # marked, unfinished folder ...
    assert "factor: auto" in DEMO_CONFIG.read_text()
    bad.write_text(DEMO_CONFIG.read_text().replace("factor: auto", "factor: 3", 1))
    with pytest.raises(ValueError, match="'model.kwargs.factor'"):
        run_demo("demo_out", config=bad, **kw)
    assert (tmp_path / "demo_out" / MARKER).exists() and not (tmp_path / "demo_out" / "summary.txt").exists()
    # ... that the same command replaces without --overwrite
    run_demo("demo_out", **kw)
    assert (tmp_path / "demo_out" / "summary.txt").is_file()

    # a folder with the user's own files in it is never replaced
    (tmp_path / "demo_out" / "my_notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="my_notes.txt"):
        run_demo("demo_out", overwrite=True, **kw)
    assert (tmp_path / "demo_out" / "my_notes.txt").read_text() == "keep me"
