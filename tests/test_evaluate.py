"""``medsr evaluate`` / ``medsr report`` end to end on a small prepped DTI set, and their bad-input errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsr import metrics
from medsr.baselines import upsample
from medsr.degrade import block_mean, nn_upsample
from medsr.io import load_mask, load_volume, save_mask, save_volume
from medsr.manifest import write_manifest
from medsr.volume import Volume
from pipelines.cli import main

SHAPE = (20, 24, 20)


def _dti_field(seed: int) -> np.ndarray:
    """A smooth positive-definite-ish tensor field (6, X, Y, Z) in mm^2/s."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(0, 1, s) for s in SHAPE], indexing="ij"))
    ph = rng.uniform(0, 3, size=6)
    t = np.empty((6,) + SHAPE)
    for c, diag in zip(range(6), (1, 0, 0, 1, 0, 1)):
        wave = np.sin(3 * g[0] + ph[c]) * np.cos(2 * g[1] - ph[c]) + 0.5 * np.sin(4 * g[2] + ph[c])
        t[c] = (1e-3 * (1.2 + 0.3 * wave)) if diag else 1e-4 * wave
    return t.astype(np.float32)


@pytest.fixture
def prepped(tmp_path, oblique) -> Path:
    """Two subjects in prep's layout + manifest.csv; returns the manifest path."""
    rows = []
    for i, s in enumerate(("sub01", "sub02")):
        d = tmp_path / "prep" / s
        hr = Volume(_dti_field(i), oblique, name=s)
        lr = block_mean(hr, 2)
        mask = np.zeros(SHAPE, np.uint8)
        mask[2:-2, 3:-3, 2:-2] = 1
        save_volume(hr, d / "hr.nii.gz")
        save_volume(lr, d / "lr.nii.gz")
        save_volume(nn_upsample(lr, 2), d / "lr_up.nii.gz")
        save_mask(mask, hr.affine, d / "mask.nii.gz")
        rows.append({"subject": s, "hr": str(d / "hr.nii.gz"), "lr": str(d / "lr.nii.gz"),
                     "lr_up": str(d / "lr_up.nii.gz"), "mask": str(d / "mask.nii.gz"), "status": "ok",
                     "factor": 2, "kind": "dti", "shape": "x".join(map(str, SHAPE))})
    return write_manifest(tmp_path / "prep" / "manifest.csv", rows)


def _predictions(prepped: Path, out: Path, noise: float = 1e-7) -> Path:
    """Predictions = truth + small noise (a 'model' better than any interpolation)."""
    rng = np.random.default_rng(1)
    for s in ("sub01", "sub02"):
        hr = load_volume(prepped.parent / s / "hr.nii.gz")
        save_volume(hr.with_data(hr.data + noise * rng.standard_normal(hr.data.shape).astype(np.float32)),
                    out / f"{s}.nii.gz")
    return out


def test_evaluate_manifest_model_vs_baselines(prepped, tmp_path, capsys) -> None:
    preds = _predictions(prepped, tmp_path / "mymodel")
    csv = tmp_path / "res" / "results.csv"
    assert main(["evaluate", "--manifest", str(prepped), "--predictions", str(preds), "--output", str(csv),
                 "--figures", str(tmp_path / "figs"), "--quiet"]) == 0
    df = pd.read_csv(csv, dtype={"subject": str})
    assert list(df.columns[:6]) == ["model", "subject", "rmse_interior", "rmse_total", "psnr", "ssim"]
    assert {"md_rmse", "md_mae", "fa_rmse", "fa_mae"} <= set(df.columns)
    assert len(df) == 8 and list(dict.fromkeys(df["model"])) == ["mymodel", "nn", "linear", "cubic"]
    mean = df.groupby("model")["rmse_interior"].mean()
    assert mean["mymodel"] < mean["cubic"] < mean["linear"] < mean["nn"]  # smooth data: interpolation order
    # The nn row is exactly the error of prep's lr_up, computed independently here.
    d = prepped.parent / "sub01"
    hr, lr_up = load_volume(d / "hr.nii.gz"), load_volume(d / "lr_up.nii.gz")
    mask = load_mask(d / "mask.nii.gz")
    row = df[(df.model == "nn") & (df.subject == "sub01")].iloc[0]
    assert row["rmse_total"] == pytest.approx(metrics.rmse_total(lr_up.data, hr.data, mask), rel=1e-5)
    assert row["rmse_interior"] == pytest.approx(metrics.rmse_interior(lr_up.data, hr.data, mask), rel=1e-5)
    # Summary: mean and std per model, the Table-3 shape, also printed.
    summ = pd.read_csv(tmp_path / "res" / "results_summary.csv")
    assert list(summ["model"]) == ["mymodel", "nn", "linear", "cubic"] and (summ["n"] == 2).all()
    sub = df[df.model == "cubic"]["rmse_total"]
    assert summ.set_index("model").loc["cubic", "rmse_total_std"] == pytest.approx(sub.std(ddof=1), rel=1e-4)
    out = capsys.readouterr().out
    assert "rmse_interior" in out and "±" in out and "cubic" in out
    # Figures: one real PNG per subject and DTI quantity.
    for s in ("sub01", "sub02"):
        for q in ("md", "fa", "colour_fa"):
            png = (tmp_path / "figs" / f"{s}_{q}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # Existing CSV refused without --overwrite.
    assert main(["evaluate", "--manifest", str(prepped), "--predictions", str(preds), "--output", str(csv), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_single_volume_form(prepped, tmp_path, capsys) -> None:
    d = prepped.parent / "sub02"
    lr = load_volume(d / "lr.nii.gz")
    save_volume(upsample(lr, 2, "cubic"), tmp_path / "cubic.nii.gz")
    csv = tmp_path / "one.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "cubic.nii.gz"), "--target", str(d / "hr.nii.gz"),
                 "--mask", str(d / "mask.nii.gz"), "--output", str(csv)]) == 0
    one = pd.read_csv(csv)
    assert len(one) == 1 and one["md_rmse"].iloc[0] > 0
    # It agrees with the manifest form's cubic baseline for the same subject.
    base = tmp_path / "base.csv"
    assert main(["evaluate", "--manifest", str(prepped), "--baselines", "cubic", "--output", str(base), "--quiet",
                 "--subjects", "sub02"]) == 0
    b = pd.read_csv(base, dtype={"subject": str})
    assert list(b["subject"]) == ["sub02"] and list(b["model"]) == ["cubic"]
    assert one["rmse_interior"].iloc[0] == pytest.approx(b[b.subject == "sub02"]["rmse_interior"].iloc[0], rel=1e-5)


def test_report_cli(prepped, tmp_path) -> None:
    preds = _predictions(prepped, tmp_path / "m")
    assert main(["report", "--manifest", str(prepped), "--predictions", str(preds), "--output", str(tmp_path / "r"),
                 "--subjects", "sub02"]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["sub02_colour_fa.png", "sub02_fa.png", "sub02_md.png"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


def test_bad_inputs_give_one_line_errors_and_no_csv(prepped, tmp_path, capsys, oblique) -> None:
    csv = tmp_path / "out.csv"
    argv = ["evaluate", "--manifest", str(prepped), "--output", str(csv), "--quiet", "--predictions"]
    # Missing prediction for a manifest subject.
    part = tmp_path / "part"
    _predictions(prepped, part)
    (part / "sub02.nii.gz").unlink()
    assert main(argv + [str(part)]) == 2
    assert "no prediction for manifest subject sub02" in _err(capsys)
    # Shape mismatch.
    bad = tmp_path / "bad_shape"
    _predictions(prepped, bad)
    v = load_volume(bad / "sub01.nii.gz")
    save_volume(Volume(v.data[:, :, :-2], v.affine, name="x"), bad / "sub01.nii.gz")
    assert main(argv + [str(bad)]) == 2
    e = _err(capsys)
    assert "bad_shape/sub01.nii.gz: shape (20, 22, 20) differs from target" in e and "hr.nii.gz" in e
    # Affine mismatch.
    bad = tmp_path / "bad_affine"
    _predictions(prepped, bad)
    v = load_volume(bad / "sub02.nii.gz")
    save_volume(Volume(v.data, v.affine @ np.diag([1, 1, 1.1, 1]), name="x"), bad / "sub02.nii.gz")
    assert main(argv + [str(bad)]) == 2
    assert "bad_affine/sub02.nii.gz: affine differs from target" in _err(capsys)
    # Channel mismatch.
    bad = tmp_path / "bad_channels"
    _predictions(prepped, bad)
    save_volume(Volume(v.data[:1], load_volume(prepped.parent / "sub01" / "hr.nii.gz").affine, name="x"),
                bad / "sub01.nii.gz")
    assert main(argv + [str(bad)]) == 2
    assert "bad_channels/sub01.nii.gz: 1 channel(s) but target" in _err(capsys)
    # NaN in a prediction: reported, never skipped.
    bad = tmp_path / "bad_nan"
    _predictions(prepped, bad)
    v = load_volume(bad / "sub02.nii.gz")
    v.data[3, 5, 5, 5] = np.nan
    save_volume(v, bad / "sub02.nii.gz")
    assert main(argv + [str(bad)]) == 2
    assert "bad_nan/sub02.nii.gz: prediction has 1 voxel(s) with NaN" in _err(capsys)
    assert not csv.exists() and not list(tmp_path.glob(".out*"))  # no partial CSV, no temp file
    # Empty mask (single-volume form).
    d = prepped.parent / "sub01"
    save_mask(np.zeros(SHAPE, np.uint8), load_volume(d / "hr.nii.gz").affine, tmp_path / "empty.nii.gz")
    assert main(["evaluate", "--pred", str(d / "lr_up.nii.gz"), "--target", str(d / "hr.nii.gz"),
                 "--mask", str(tmp_path / "empty.nii.gz")]) == 2
    assert "empty.nii.gz: the brain mask is empty" in _err(capsys)


def test_scalar_figure_without_lr_column(tmp_path, oblique) -> None:
    from medsr.figures import subject_figures
    from medsr.figures.maps import intensity

    t1 = Volume(np.random.rand(1, 16, 18, 14).astype(np.float32), oblique, name="t1")
    assert np.array_equal(intensity(t1.data), t1.data[0])  # scalar: the intensity itself
    mask = np.zeros((16, 18, 14), bool)
    mask[3:-3, 3:-3, 3:-3] = True
    (png,) = subject_figures(tmp_path, "t1", hr=t1, mask=mask, methods=[("noisy", t1.with_data(t1.data + 0.1))])
    assert png.name == "t1_intensity.png" and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="bad: noisy shape"):
        subject_figures(tmp_path / "x", "t1", hr=t1, mask=mask,
                        methods=[("noisy", Volume(np.zeros((1, 4, 4, 4)), oblique, name="bad"))])
    assert not (tmp_path / "x").exists()
