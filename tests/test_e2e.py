"""End to end through the command line on a small DTI phantom: prep hcp -> train -> infer -> evaluate."""
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
MANIFEST_COLUMNS = ["subject", "hr", "lr", "lr_up", "mask", "shape", "voxel_size", "brain_voxels", "n_patches",
                    "status", "error", "factor", "kind", "slice_profile"]


def test_prep_train_infer_evaluate_through_the_cli(tmp_path):
    hcp, prep, run, pred = tmp_path / "hcp", tmp_path / "prep", tmp_path / "run", tmp_path / "pred"
    generate(hcp, 3, seed=1, config=TINY, progress=False)

    assert main(["prep", "hcp", "--input", str(hcp), "--output", str(prep)]) == 0
    manifest = prep / "manifest.csv"
    df = pd.read_csv(manifest)
    assert list(df.columns) == MANIFEST_COLUMNS
    assert (df["status"] == "ok").all() and (df["kind"] == "dti").all() and (df["factor"] == 2).all()
    for s in df["subject"]:
        for f in ("hr", "lr", "lr_up", "mask"):
            assert (prep / s / f"{f}.nii.gz").is_file()

    assert main(["train", str(DEMO_CONFIG), "--set", f"data.manifest={manifest}", f"output_dir={run}",
                 "train.max_steps=3", "train.batch_size=2", "data.patch_size=16", "data.random_per_subject=4",
                 "data.subjects=[phantom01,phantom02]", "train.progress=false"]) == 0
    for f in ("last.pt", "log.csv", "config.yaml"):
        assert (run / f).is_file()
    assert pd.read_csv(run / "log.csv")["step"].max() == 3

    assert main(["infer", "--checkpoint", str(run / "last.pt"), "--input", str(manifest), "--output", str(pred),
                 "--subjects", "phantom03", "--quiet"]) == 0
    out = nib.load(pred / "phantom03.nii.gz")
    hr = nib.load(prep / "phantom03" / "hr.nii.gz")
    assert out.shape == hr.shape and out.shape[-1] == 6
    assert out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, hr.affine, atol=1e-5)  # same world grid as the HR target
    assert np.isfinite(out.get_fdata()).all()

    csv = tmp_path / "eval.csv"
    assert main(["evaluate", "--manifest", str(manifest), "--predictions", str(pred), "--output", str(csv),
                 "--subjects", "phantom03", "--model-name", "rev", "--quiet"]) == 0
    ev = pd.read_csv(csv)
    for col in ("model", "subject", "rmse_interior", "rmse_total", "psnr", "ssim", "md_rmse", "fa_rmse"):
        assert col in ev.columns, col
    assert sorted(ev["model"]) == ["cubic", "linear", "nn", "rev"]
    assert (ev["subject"] == "phantom03").all()
    assert (ev[["rmse_interior", "rmse_total"]] > 0).all().all()
    summary = pd.read_csv(tmp_path / "eval_summary.csv")
    assert {"model", "n", "rmse_interior_mean", "rmse_interior_std"} <= set(summary.columns)
