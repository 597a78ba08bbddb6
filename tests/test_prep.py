"""``medsr prep``: real DWI (dipy's small_64D) laid out as HCP subjects, end to end through the CLI."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsr import Volume
from medsr.degrade import block_mean_array, lr_affine
from medsr.dti import mean_diffusivity, tensor6_to_matrix
from medsr.io import load_mask, load_volume, save_mask, save_volume
from medsr.manifest import COLUMNS, read_manifest, read_manifest_raw
from pipelines.cli import main

DIFF = Path("T1w") / "Diffusion"


@pytest.fixture(scope="module")
def small64d():
    """dipy's real 10x10x10x65 DWI (b=0 + 64 directions at b~1000), its gradients and a tissue mask."""
    from dipy.data import get_fnames

    nii, bval, bvec = get_fnames(name="small_64D")
    img = nib.load(nii)
    data = np.asarray(img.dataobj).astype(np.float32)
    b0 = data[..., 0]
    # Tissue mask: bright b0 voxels are CSF; the darker 80% is brain tissue with MD ~ 0.7e-3 mm^2/s.
    mask = (b0 <= np.percentile(b0, 80)).astype(np.uint8)
    return {"data": data, "affine": img.affine, "bvals": np.loadtxt(bval), "bvecs": np.loadtxt(bvec), "mask": mask}


def write_subject(root: Path, name: str, d: dict, **override) -> Path:
    """Lay out one subject in the HCP layout (bvecs as 3 rows); ``override`` replaces pieces."""
    d = {**d, **override}
    folder = root / name / DIFF
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(d["data"], d["affine"]), folder / "data.nii.gz")
    np.savetxt(folder / "bvals", np.atleast_2d(d["bvals"]), fmt="%g")
    np.savetxt(folder / "bvecs", np.asarray(d["bvecs"]).T, fmt="%.8f")  # HCP/FSL: 3 rows
    nib.save(nib.Nifti1Image(d["mask"], d.get("mask_affine", d["affine"])), folder / "nodif_brain_mask.nii.gz")
    return folder


def test_prep_hcp_end_to_end(tmp_path, small64d):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    write_subject(tmp_path / "in", "100307", small64d)
    out = tmp_path / "out"
    assert main(["prep", "hcp", "--input", str(tmp_path / "in"), "--output", str(out)]) == 0

    df = read_manifest(out / "manifest.csv")
    assert list(df.columns) == list(COLUMNS) and len(df) == 1
    row = df.iloc[0]
    mask_in = small64d["mask"].astype(bool)
    assert (row.subject, row.status, row.kind, row.factor) == ("100307", "ok", "dti", 2)
    assert row["shape"] == "10x10x10" and row.voxel_size == "2x2x2" and row.brain_voxels == mask_in.sum()
    assert row.n_patches == 0  # a 10^3 volume holds no 24^3 patch

    hr, lr, lr_up = (load_volume(row[c]) for c in ("hr", "lr", "lr_up"))
    mask = load_mask(row["mask"], hr)
    assert nib.load(row["hr"]).shape == (10, 10, 10, 6) and nib.load(row["mask"]).get_data_dtype() == np.uint8
    np.testing.assert_allclose(hr.affine, small64d["affine"], atol=1e-5)
    np.testing.assert_allclose(lr.affine, lr_affine(small64d["affine"], 2), atol=1e-5)
    assert lr.spatial_shape == (5, 5, 5) and lr_up.same_space(hr)

    md = mean_diffusivity(hr.data)[mask]  # mm^2/s
    inside = (md > 1e-4) & (md < 3.5e-3)
    assert inside.mean() >= 0.98 and 5e-4 < np.median(md) < 1.2e-3  # tissue at 37 C: ~0.7e-3
    assert np.all(hr.data[:, ~mask] == 0)

    # HR equals dipy's own WLS fit, component by component (checks the lower-triangular -> FSL swap)
    gtab = gradient_table(small64d["bvals"], bvecs=np.nan_to_num(small64d["bvecs"]), b0_threshold=50)
    ref = TensorModel(gtab, fit_method="WLS").fit(small64d["data"][mask_in]).quadratic_form
    np.testing.assert_allclose(tensor6_to_matrix(hr.data[:, mask_in]), ref, rtol=1e-3, atol=1e-8)
    # LR follows image-quality transfer: fit of the block-averaged DWIs inside the LR mask
    dwi_lr = block_mean_array(np.moveaxis(small64d["data"], -1, 0), 2)
    lr_mask = block_mean_array(mask_in.astype(np.float32), 2) >= 0.5
    ref_lr = TensorModel(gtab, fit_method="WLS").fit(np.moveaxis(dwi_lr, 0, -1)[lr_mask]).quadratic_form
    np.testing.assert_allclose(tensor6_to_matrix(lr.data[:, lr_mask]), ref_lr, rtol=1e-3, atol=1e-8)
    assert np.all(lr.data[:, ~lr_mask] == 0)
    # lr_up: every HR voxel holds the LR voxel covering it
    np.testing.assert_array_equal(lr_up.data, lr.data.repeat(2, 1).repeat(2, 2).repeat(2, 3))

    # a rerun skips the finished subject
    before = Path(row["hr"]).stat().st_mtime_ns
    assert main(["prep", "hcp", "--input", str(tmp_path / "in"), "--output", str(out)]) == 0
    assert Path(row["hr"]).stat().st_mtime_ns == before


def _bad_subjects(root: Path, d: dict) -> dict[str, tuple[str, str]]:
    """Write one broken subject per failure mode; returns name -> (file named, problem text)."""
    write_subject(root, "good", d)
    (write_subject(root, "missing", d) / "bvecs").unlink()
    write_subject(root, "count", d, bvals=d["bvals"][:-1], bvecs=d["bvecs"][:-1])
    write_subject(root, "not4d", d, data=d["data"][..., 0])
    write_subject(root, "maskshape", d, mask=d["mask"][:, :, :9])
    shifted = d["affine"].copy()
    shifted[:3, 3] += 2.0
    write_subject(root, "maskaffine", d, mask_affine=shifted)
    nan = d["data"].copy()
    nan[3, 4, 5, 7] = np.nan
    write_subject(root, "nan", d, data=nan)
    inf = d["data"].copy()
    inf[1, 1, 1, 30] = np.inf
    write_subject(root, "inf", d, data=inf)
    write_subject(root, "empty", d, mask=np.zeros_like(d["mask"]))
    cut = write_subject(root, "truncated", d) / "data.nii.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return {
        "missing": ("bvecs", "file not found"),
        "count": ("bvals", "has 64 b-values but data.nii.gz has 65 volumes"),
        "not4d": ("data.nii.gz", "expected a 4D DWI"),
        "maskshape": ("nodif_brain_mask.nii.gz", "shape (10, 10, 9) differs from data.nii.gz"),
        "maskaffine": ("nodif_brain_mask.nii.gz", "affine differs from data.nii.gz"),
        "nan": ("data.nii.gz", "1 NaN/Inf value(s) in volume 7"),
        "inf": ("data.nii.gz", "1 NaN/Inf value(s) in volume 30"),
        "empty": ("nodif_brain_mask.nii.gz", "mask is empty"),
        "truncated": ("data.nii.gz", "truncated or corrupt"),
    }


def test_bad_inputs_fail_alone_with_one_line_errors(tmp_path, small64d, capsys):
    cases = _bad_subjects(tmp_path / "in", small64d)
    out = tmp_path / "out"
    args = ["prep", "hcp", "--input", str(tmp_path / "in"), "--output", str(out)]
    assert main(args + ["--workers", "2"]) == 1
    err = capsys.readouterr().err
    df = read_manifest_raw(out / "manifest.csv").set_index("subject")
    assert df.loc["good", "status"] == "ok" and (out / "good" / "hr.nii.gz").exists()
    for name, (file, problem) in cases.items():
        msg = df.loc[name, "error"]
        assert df.loc[name, "status"] == "failed", name
        assert msg.startswith(f"subject {name}: ") and f"{name}/T1w/Diffusion/{file}" in msg and problem in msg, msg
        assert "\n" not in msg and msg in err  # shown on the terminal too, one line
        assert not (out / name).exists()  # no partial outputs
        assert df.loc[name, "hr"] == ""
    assert read_manifest(out / "manifest.csv")["subject"].tolist() == ["good"]
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert leftovers == []

    # fix one subject: the rerun skips 'good', retries the failed ones, and 'empty' now succeeds
    good_mtime = (out / "good" / "hr.nii.gz").stat().st_mtime_ns
    save_mask(small64d["mask"], small64d["affine"], tmp_path / "in" / "empty" / DIFF / "nodif_brain_mask.nii.gz")
    assert main(args) == 1
    df = read_manifest_raw(out / "manifest.csv").set_index("subject")
    assert df.loc["empty", "status"] == "ok" and df.loc["nan", "status"] == "failed"
    assert (out / "good" / "hr.nii.gz").stat().st_mtime_ns == good_mtime
    assert "1 subject(s) already done" in capsys.readouterr().err


def test_read_volumes_selects_and_scales(tmp_path):
    """Volumes are read one by one from the gzip stream, with the header's scaling applied."""
    from data_prep.hcp import read_volumes, select_shell

    rng = np.random.default_rng(0)
    raw = rng.integers(-300, 300, size=(4, 5, 3, 7)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "d.nii.gz")
    img = nib.load(tmp_path / "d.nii.gz")
    idx = select_shell(np.array([5, 995, 2000, 1090, 3000, 0, 910.0]), 1000, 100)
    assert idx.tolist() == [0, 1, 3, 5, 6]
    got = read_volumes(tmp_path / "d.nii.gz", img, idx, crop=(4, 4, 2))
    want = np.moveaxis(img.get_fdata()[:4, :4, :2][..., idx], -1, 0)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # a cut after the last wanted volume is still caught (the stream is read to its end)
    raw_gz = (tmp_path / "d.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw_gz[:-10])
    with pytest.raises(ValueError, match="cut.nii.gz: cannot read image data, the file is truncated"):
        read_volumes(tmp_path / "cut.nii.gz", nib.load(tmp_path / "cut.nii.gz"), np.array([0, 1]))


def test_prep_volumes_scalar(tmp_path, oblique):
    rng = np.random.default_rng(1)
    image = rng.normal(100, 20, size=(9, 8, 7)).astype(np.float32)
    mask = np.zeros((9, 8, 7), np.uint8)
    mask[2:7, 2:6, 1:6] = 1
    for s in ("t1a", "t1b"):
        save_volume(Volume(image, oblique), tmp_path / "in" / s / "image.nii.gz")
        save_mask(mask, oblique, tmp_path / "in" / s / "mask.nii.gz")
    save_volume(Volume(np.stack([image, image]), oblique), tmp_path / "in" / "t1b" / "image.nii.gz")
    out = tmp_path / "out"
    assert main(["prep", "volumes", "--input", str(tmp_path / "in"), "--output", str(out)]) == 1
    df = read_manifest_raw(out / "manifest.csv").set_index("subject")
    assert "t1b/image.nii.gz: expected a 3D scalar image, got 2 channels" in df.loc["t1b", "error"]
    row = read_manifest(out / "manifest.csv").iloc[0]
    assert (row.subject, row.kind, row["shape"]) == ("t1a", "scalar", "8x8x6")
    hr, lr, up = (load_volume(row[c]) for c in ("hr", "lr", "lr_up"))
    assert nib.load(row["hr"]).shape == (8, 8, 6)  # one channel stored 3D
    np.testing.assert_array_equal(hr.data[0], image[:8, :8, :6])  # cropped at the far end
    np.testing.assert_allclose(lr.data[0], image[:8, :8, :6].reshape(4, 2, 4, 2, 3, 2).mean((1, 3, 5)), rtol=1e-6)
    assert up.same_space(hr) and row.brain_voxels == mask[:8, :8, :6].sum()
    np.testing.assert_allclose(lr.affine, lr_affine(oblique, 2), atol=1e-5)
    # pad mode keeps every voxel
    assert main(["prep", "volumes", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "pad"),
                 "--pad", "--subjects", "t1a"]) == 0
    assert read_manifest(tmp_path / "pad" / "manifest.csv").iloc[0]["shape"] == "10x8x8"


def test_prep_help_and_bad_arguments(capsys, tmp_path):
    for argv in (["prep", "--help"], ["prep", "hcp", "--help"], ["prep", "volumes", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "nodif_brain_mask.nii.gz" in capsys.readouterr().out
    assert main(["prep", "hcp", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    assert "none: input folder not found" in capsys.readouterr().err


def test_output_inside_input_is_not_a_subject(tmp_path, small64d):
    write_subject(tmp_path / "in", "s1", small64d)
    out = tmp_path / "in" / "prepared"
    assert main(["prep", "hcp", "--input", str(tmp_path / "in"), "--output", str(out)]) == 0
    assert main(["prep", "hcp", "--input", str(tmp_path / "in"), "--output", str(out)]) == 0  # rerun too
    assert read_manifest_raw(out / "manifest.csv")["subject"].tolist() == ["s1"]


def test_interrupted_redo_is_not_left_ok(tmp_path):
    """A subject being redone is un-marked first: an interrupted --overwrite run leaves it 'failed'."""
    from data_prep.runner import run_subjects

    def ok(subject, out_dir, progress):
        for name in ("hr", "lr", "lr_up", "mask"):
            (out_dir / subject).mkdir(parents=True, exist_ok=True)
            (out_dir / subject / f"{name}.nii.gz").write_bytes(b"x")
        return {"subject": subject, "status": "ok", "kind": "scalar", "factor": 2}

    def interrupted(subject, out_dir, progress):
        raise KeyboardInterrupt

    assert run_subjects(["a", "b"], ok, tmp_path, kind="scalar", factor=2) == 0
    with pytest.raises(KeyboardInterrupt):
        run_subjects(["a", "b"], interrupted, tmp_path, kind="scalar", factor=2, overwrite=True)
    df = read_manifest_raw(tmp_path / "manifest.csv")
    assert df["status"].tolist() == ["failed", "failed"] and "interrupted" in df.loc[0, "error"]
    assert run_subjects(["a", "b"], ok, tmp_path, kind="scalar", factor=2) == 0  # retried, not skipped
    assert read_manifest_raw(tmp_path / "manifest.csv")["status"].tolist() == ["ok", "ok"]


def test_bench_prep_small(tmp_path):
    """The benchmark end to end at a tiny size: it generates, preps in a subprocess and reports."""
    import argparse
    import json

    from benchmarks import prep as bench

    args = argparse.Namespace(shape=[12, 14, 12], volumes=40, shell=1000.0, workdir=tmp_path, keep=False, target_gb=12.0,
                              json=tmp_path / "bench.json")
    assert bench.run(args) == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["exit_code"] == 0 and res["selected_volumes"] == 15 and res["prep_seconds"] > 0
    # both are rounded to 3 decimals from the unrounded peak: equal within their rounding
    assert 0.02 < res["peak_rss_gb"] < 12 and res["ratio_to_target"] == pytest.approx(res["peak_rss_gb"] / 12, abs=6e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # the temporary subject is removed
