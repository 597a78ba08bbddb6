"""Thick-slice and larger factors end to end through the command line: prep -> train (configs/default.yaml,
factor auto) -> infer (--input-grid auto from per-axis voxel sizes) -> evaluate, on scalar volumes and on
the DTI phantom; the output lies on the HR grid of hr.nii.gz."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from data_prep.phantom import PhantomConfig, generate
from medsr.data.synthetic import synthetic_subject
from medsr.factor import factor_triple
from medsr.io import save_mask, save_volume
from medsr.manifest import read_manifest
from medsr.patches import as_shape
from pipelines.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
TINY = replace(PhantomConfig(), shape=(26, 28, 24), n_dirs=8, n_b0=1)
# Small and fast: two steps of the shipped default config, two training patches per subject.
FAST = ["train.max_steps=2", "train.batch_size=2", "data.random_per_subject=2", "train.progress=false",
        "model.kwargs.width=8", "model.kwargs.depth=2"]


@pytest.fixture(scope="module")
def scalar_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scalar") / "in"
    for i in range(2):
        vol, mask = synthetic_subject((22, 20, 25), "scalar", seed=i)
        save_volume(vol, root / f"s{i}" / "image.nii.gz")
        save_mask(mask, vol.affine, root / f"s{i}" / "mask.nii.gz")
    return root


@pytest.fixture(scope="module")
def phantom_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "hcp"
    generate(root, 2, seed=3, config=TINY, progress=False)
    return root


def _prep_train_infer_evaluate(tmp_path: Path, source: str, src: Path, factor: list[str], train: str, test: str,
                                infer_from: str, tta: str = "none", figures: bool = False) -> None:
    r = factor_triple(" ".join(factor))
    prep, run, pred = tmp_path / "prep", tmp_path / "run", tmp_path / "pred"
    assert main(["prep", source, "--input", str(src), "--output", str(prep), "--factor", *factor]) == 0
    manifest = prep / "manifest.csv"
    assert main(["train", str(DEFAULT_CONFIG), "--set", f"data.manifest={manifest}", f"output_dir={run}",
                 f"data.subjects=[{train}]", *FAST]) == 0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert factor_triple(ck["model"]["kwargs"]["factor"]) == r == factor_triple(ck["data"]["factor"])
    assert all(e % f == 0 for e, f in zip(as_shape(ck["data"]["patch_size"]), r))  # whole LR blocks per axis
    # From lr.nii.gz, --input-grid auto tells the LR grid by its per-axis voxel sizes; from the manifest, lr_up.
    src_in = manifest if infer_from == "manifest" else prep / test / "lr.nii.gz"
    assert main(["infer", "--checkpoint", str(run / "last.pt"), "--input", str(src_in), "--output", str(pred),
                 "--subjects", test, "--tta", tta, "--quiet"] if infer_from == "manifest" else
                ["infer", "--checkpoint", str(run / "last.pt"), "--input", str(src_in),
                 "--output", str(pred / f"{test}.nii.gz"), "--tta", tta, "--quiet"]) == 0
    out, hr = nib.load(pred / f"{test}.nii.gz"), nib.load(prep / test / "hr.nii.gz")
    assert out.shape == hr.shape and out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, hr.affine, atol=1e-5)  # the HR grid of the target
    lr = nib.load(prep / test / "lr.nii.gz")
    np.testing.assert_allclose(lr.header.get_zooms()[:3], np.array(hr.header.get_zooms()[:3]) * r, rtol=1e-5)
    assert np.isfinite(np.asarray(out.dataobj)).all()
    csv = tmp_path / "eval.csv"
    fig = ["--figures", str(tmp_path / "fig")] if figures else []
    assert main(["evaluate", "--manifest", str(manifest), "--predictions", str(pred), "--output", str(csv),
                 "--subjects", test, "--model-name", "rev", "--quiet", *fig]) == 0
    ev = pd.read_csv(csv).set_index("model")
    assert sorted(ev.index) == ["cubic", "linear", "nn", "rev"] and (ev["rmse_interior"] > 0).all()
    # The model starts as the cubic base and has trained two steps: it is close to cubic, not lost.
    assert ev.loc["rev", "rmse_interior"] < 1.5 * ev.loc["cubic", "rmse_interior"]
    assert not figures or len(list((tmp_path / "fig").glob(f"{test}_*.png"))) == 3  # MD, FA, colour FA
    assert factor_triple(read_manifest(manifest)["factor"][0]) == r


@pytest.mark.parametrize("factor", [["1", "1", "4"], ["3"], ["2", "2", "4"]])
def test_scalar_volumes_at_per_axis_and_larger_factors(tmp_path, scalar_input, factor):
    _prep_train_infer_evaluate(tmp_path, "volumes", scalar_input, factor, "s0", "s1", infer_from="lr")


@pytest.mark.parametrize("factor, infer_from, tta", [(["1", "1", "4"], "lr", "auto"), (["3"], "manifest", "none"),
                                                     (["2", "2", "4"], "manifest", "none")])
def test_dti_phantom_at_per_axis_and_larger_factors(tmp_path, phantom_input, factor, infer_from, tta):
    _prep_train_infer_evaluate(tmp_path, "hcp", phantom_input, factor, "phantom01", "phantom02", infer_from, tta,
                               figures=tta == "auto")


def test_demo_at_factor_1_1_4(tmp_path):
    from pipelines.cli import verb_parser
    from pipelines.demo import run_demo

    assert verb_parser("demo").parse_args(["--factor", "1", "1", "4"]).factor == [1, 1, 4]
    assert main(["demo", "--factor", "1", "4", "--output", str(tmp_path / "no")]) == 2  # two numbers: refused
    res = run_demo(tmp_path / "demo", minutes=0.05, n_subjects=2, seed=0, workers=1, quiet=True,
                   phantom_config=TINY, factor=[1, 1, 4])
    assert res.steps > 0 and (tmp_path / "demo" / "summary.txt").is_file()
    row = read_manifest(tmp_path / "demo" / "prep" / "manifest.csv").iloc[-1]
    assert factor_triple(row["factor"]) == (1, 1, 4)
    out, hr = nib.load(res.paths["prediction (NIfTI)"]), nib.load(row["hr"])
    assert out.shape == hr.shape
    np.testing.assert_allclose(out.affine, hr.affine, atol=1e-5)
    assert set(res.table["model"]) == {"rev_espcn3d", "nn", "linear", "cubic"}
