"""``medsr bench tissues``: the interior's error split by the phantom's tissue labels."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from benchmarks.tissues import labels_on, tissue_errors
from data_prep.phantom import PhantomConfig
from data_prep.phantom_dataset import prepare_phantoms
from medsr.io import load_volume, save_volume
from medsr.volume import Volume
from pipelines.cli import main


def test_split_by_tissue_by_hand() -> None:
    truth = np.zeros((2, 12, 12, 12))
    mask = np.ones((12, 12, 12), bool)  # interior: voxels 2..9 on every axis (5^3 neighbourhoods inside)
    labels = np.full((12, 12, 12), 3)
    labels[:6] = 1
    model = np.zeros_like(truth)
    model[:, :6] = 1.0  # the model errs by 1 on tissue 1 only
    cubic = np.full_like(truth, 2.0)  # cubic by 2 everywhere
    t = tissue_errors(truth, model, cubic, mask, labels, {"one": 1, "three": 3, "absent": 9}).set_index("tissue")
    assert list(t.index) == ["interior", "one", "three"]  # an absent tissue gets no row
    assert t.loc["one", "voxels"] == pytest.approx(0.5) and t.loc["three", "voxels"] == pytest.approx(0.5)
    assert t.loc["one", "ratio"] == pytest.approx(0.5) and t.loc["three", "ratio"] == 0
    assert t.loc["interior", "ratio"] == pytest.approx(np.sqrt(0.5 * 1 / 4))
    assert t.loc["one", "rmse_model"] == pytest.approx(1.0) and t.loc["three", "rmse_cubic"] == pytest.approx(2.0)
    assert t.loc["one", "share_model"] == pytest.approx(1.0) and t.loc["one", "share_cubic"] == pytest.approx(0.5)


def test_labels_come_onto_the_hr_grid_through_the_affines(oblique) -> None:
    # Oblique axes, the HR grid starting 2 voxels into the labels' grid on x and 1 on z: world coordinates decide.
    codes = np.arange(10 * 9 * 8).reshape(1, 10, 9, 8).astype(np.float32)
    labels = Volume(codes, oblique)
    start = oblique @ np.array([2, 0, 1, 1.0])
    hr_affine = oblique.copy()
    hr_affine[:3, 3] = start[:3]
    got = labels_on(Volume(np.zeros((1, 6, 9, 5), np.float32), hr_affine), labels, "labels.nii.gz")
    np.testing.assert_array_equal(got, codes[0, 2:8, 0:9, 1:6])
    half = hr_affine.copy()
    half[:3, 3] = (oblique @ np.array([0.5, 0, 0, 1.0]))[:3]
    with pytest.raises(ValueError, match="labels.nii.gz: the labels' grid is not the HR grid shifted by whole voxels"):
        labels_on(Volume(np.zeros((1, 6, 9, 5), np.float32), half), labels, "labels.nii.gz")
    with pytest.raises(ValueError, match="reaches outside"):
        labels_on(Volume(np.zeros((1, 9, 9, 5), np.float32), hr_affine), labels, "labels.nii.gz")


def test_cli_on_a_prepared_phantom(tmp_path) -> None:
    # A real phantom through prep at 1 1 4 (z cropped 34 -> 32): the truth as the "model" removes all of cubic's
    # error, and every interior voxel is one of the brain's tissues (the labels landed on the cropped grid).
    small = replace(PhantomConfig(), shape=(36, 40, 34), n_dirs=12, n_b0=2)
    manifest, (subject,) = prepare_phantoms(tmp_path / "data", 1, config=small, factor=(1, 1, 4), progress=False)
    hr = load_volume(tmp_path / "data" / "prep" / subject / "hr.nii.gz")
    assert hr.spatial_shape == (36, 40, 32)
    save_volume(hr, tmp_path / "pred" / f"{subject}.nii.gz")
    out = tmp_path / "t.csv"
    assert main(["bench", "tissues", "--manifest", str(manifest), "--phantom", str(tmp_path / "data" / "hcp"),
                 "--predictions", str(tmp_path / "pred"), "--subjects", subject, "--output", str(out)]) == 0
    t = pd.read_csv(out).set_index("tissue")
    assert (t["ratio"] == 0).all() and (t["rmse_cubic"] > 0).all()
    assert {"csf", "gm", "wm"} <= set(t.index)
    assert t.drop("interior")["share_cubic"].sum() == pytest.approx(1.0)
    assert t.drop("interior")["voxels"].sum() == pytest.approx(1.0)
