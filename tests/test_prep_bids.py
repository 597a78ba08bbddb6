"""``medsr prep bids``: a small BIDS dataset made of dipy's real DWI (small_64D), through the command line.

The dataset (built once per module)::

    dataset_description.json
    dwi.bval, dwi.bvec                                     inherited by series without their own
    sub-01/dwi/sub-01_dwi.*                                small_64D's own (oblique) affine
    sub-02/ses-1/dwi/sub-02_ses-1_dwi.*                    another oblique affine, 10x10x9 (cropped to 10x10x8)
    sub-02/ses-2/dwi/sub-02_ses-2_acq-b1000_run-1_dwi.*    gradients inherited from the dataset root
    sub-03/anat/sub-03_T1w.nii.gz                          no dwi: skipped, not failed
    sub-04/dwi/sub-04_dwi.*                                64 b-values for 65 volumes: failed by name
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medsr.degrade import lr_affine
from medsr.io import load_volume
from medsr.manifest import read_manifest, read_manifest_raw
from pipelines.cli import main

QUICK = Path(__file__).resolve().parents[1] / "configs" / "quick_paired_l1.yaml"
GOOD = ["sub-01", "sub-02_ses-1", "sub-02_ses-2_acq-b1000_run-1"]


@pytest.fixture(scope="module")
def small64d() -> dict:
    """dipy's real 10x10x10x65 DWI (b=0 + 64 directions at b~1000), float32, and its gradients (N, 3)."""
    from dipy.data import get_fnames

    nii, bval, bvec = get_fnames(name="small_64D")
    img = nib.load(nii)
    return {"data": np.asarray(img.dataobj).astype(np.float32), "affine": img.affine,
            "bvals": np.loadtxt(bval), "bvecs": np.loadtxt(bvec)}


def describe(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))


def write_gradients(folder: Path, stem: str, bvals: np.ndarray | None, bvecs: np.ndarray | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if bvals is not None:
        np.savetxt(folder / f"{stem}.bval", np.atleast_2d(bvals), fmt="%g")
    if bvecs is not None:
        np.savetxt(folder / f"{stem}.bvec", np.asarray(bvecs).T, fmt="%.8f")  # FSL: 3 rows


def write_series(root: Path, folder: str, stem: str, data: np.ndarray, affine: np.ndarray,
                 bvals: np.ndarray | None = None, bvecs: np.ndarray | None = None) -> Path:
    """One series ``<root>/<folder>/<stem>_dwi.nii.gz`` (+ .bval/.bvec when given, + a .json sidecar)."""
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), d / f"{stem}_dwi.nii.gz")
    write_gradients(d, f"{stem}_dwi", bvals, bvecs)
    (d / f"{stem}_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05}))
    return d / f"{stem}_dwi.nii.gz"


def build_dataset(root: Path, d: dict, oblique: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The dataset of the module docstring; returns series name -> (DWI X,Y,Z,N, affine) of the good series."""
    describe(root)
    write_gradients(root, "dwi", d["bvals"], d["bvecs"])  # the dataset-level gradients (inheritance)
    inputs = {
        "sub-01": (d["data"], d["affine"]),
        "sub-02_ses-1": (d["data"][:, :, :9], oblique),
        "sub-02_ses-2_acq-b1000_run-1": (d["data"][::-1], oblique),
    }
    write_series(root, "sub-01/dwi", "sub-01", *inputs["sub-01"], d["bvals"], d["bvecs"])
    write_series(root, "sub-02/ses-1/dwi", "sub-02_ses-1", *inputs["sub-02_ses-1"], d["bvals"], d["bvecs"])
    write_series(root, "sub-02/ses-2/dwi", "sub-02_ses-2_acq-b1000_run-1", *inputs["sub-02_ses-2_acq-b1000_run-1"])
    (root / "sub-03" / "anat").mkdir(parents=True)
    nib.save(nib.Nifti1Image(d["data"][..., 0], oblique), root / "sub-03" / "anat" / "sub-03_T1w.nii.gz")
    write_series(root, "sub-04/dwi", "sub-04", d["data"], oblique, d["bvals"][:-1], d["bvecs"][:-1])
    return inputs


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``medsr ARGV`` in-process; returns (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small64d) -> dict:
    from conftest import oblique_affine

    root = tmp_path_factory.mktemp("bids")
    inputs = build_dataset(root / "ds", small64d, oblique_affine())
    code, err = run_cli(["prep", "bids", "--input", str(root / "ds"), "--output", str(root / "out")])
    return {"root": root, "inputs": inputs, "code": code, "err": err, "out": root / "out"}


def test_prep_bids_prepares_every_series_skips_dwi_less_and_fails_broken(prepared, small64d):
    out, err = prepared["out"], prepared["err"]
    assert prepared["code"] == 1  # one series failed
    raw = read_manifest_raw(out / "manifest.csv").set_index("subject")
    assert sorted(raw.index) == sorted(GOOD + ["sub-04"])  # sub-03 (no dwi) is not a row
    assert "1 subject(s) without a dwi series, skipped: sub-03" in err

    # the broken series: failed by name, one line naming its file, no output left behind
    msg = raw.loc["sub-04", "error"]
    assert raw.loc["sub-04", "status"] == "failed" and msg.startswith("subject sub-04: ")
    assert "sub-04/dwi/sub-04_dwi.bval: has 64 b-values but sub-04_dwi.nii.gz has 65 volumes" in msg, msg
    assert "\n" not in msg and msg in err and not (out / "sub-04").exists()

    df = read_manifest(out / "manifest.csv").set_index("subject")
    assert sorted(df.index) == sorted(GOOD) and (df["kind"] == "dti").all() and (df["factor"] == 2).all()
    assert df.loc["sub-02_ses-1", "shape"] == "10x10x8"  # 9 slices cropped to a multiple of 2 at the far end


@pytest.mark.parametrize("name", GOOD)
def test_prepared_series_keep_the_input_geometry_and_fit(prepared, small64d, name):
    """World coordinates: the voxel of the output at a world point holds the fit of the input voxel there."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from dipy.segment.mask import median_otsu

    from medsr.dti import tensor6_to_matrix

    data, affine = prepared["inputs"][name]
    row = read_manifest(prepared["out"] / "manifest.csv").set_index("subject").loc[name]
    hr, lr, lr_up = (load_volume(row[c]) for c in ("hr", "lr", "lr_up"))
    mask_img = nib.load(row["mask"])
    mask = np.asarray(mask_img.dataobj).astype(bool)
    np.testing.assert_allclose(hr.affine, affine, atol=1e-5)
    np.testing.assert_allclose(mask_img.affine, affine, atol=1e-5)
    np.testing.assert_allclose(lr.affine, lr_affine(affine, 2), atol=1e-5)
    assert lr_up.same_space(hr) and mask_img.get_data_dtype() == np.uint8

    # input voxel -> world -> output voxel is the identity on every kept voxel
    shape = hr.spatial_shape
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    world = nib.affines.apply_affine(affine, ijk)
    np.testing.assert_allclose(nib.affines.apply_affine(np.linalg.inv(hr.affine), world), ijk, atol=1e-4)
    # the centre of an LR voxel is the centre of its 2x2x2 HR block, in world coordinates
    lr_centres = nib.affines.apply_affine(lr.affine, ijk[:8] // 2)
    blocks = nib.affines.apply_affine(affine, (ijk[:8] // 2)[:, None] * 2 + np.array(np.meshgrid(
        [0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T[None])
    np.testing.assert_allclose(lr_centres, blocks.mean(1), atol=1e-4)

    # the mask is dipy's median_otsu on the mean b0 of the (cropped) input, saved with the outputs
    crop = data[: shape[0], : shape[1], : shape[2]]
    b0 = small64d["bvals"] <= 50
    want = median_otsu(crop[..., b0].mean(-1), median_radius=4, numpass=4)[1]
    np.testing.assert_array_equal(mask, want)
    assert 0 < mask.sum() < mask.size and row.brain_voxels == mask.sum()

    # HR tensors at each kept voxel = dipy's WLS fit of the input signal at the same world point
    gtab = gradient_table(small64d["bvals"], bvecs=np.nan_to_num(small64d["bvecs"]), b0_threshold=50)
    ref = TensorModel(gtab, fit_method="WLS").fit(crop[mask]).quadratic_form
    np.testing.assert_allclose(tensor6_to_matrix(hr.data[:, mask]), ref, rtol=1e-3, atol=1e-8)
    assert np.all(hr.data[:, ~mask] == 0)


def test_bids_output_equals_prep_hcp_given_the_same_mask(prepared, small64d, tmp_path):
    """One DTI path: the same DWI and mask laid out as HCP give byte-equal tensors."""
    data, affine = prepared["inputs"]["sub-01"]
    folder = tmp_path / "hcp" / "sub-01" / "T1w" / "Diffusion"
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, affine), folder / "data.nii.gz")
    write_gradients(folder, "b", small64d["bvals"], small64d["bvecs"])
    (folder / "b.bval").rename(folder / "bvals")
    (folder / "b.bvec").rename(folder / "bvecs")
    mask = prepared["out"] / "sub-01" / "mask.nii.gz"
    (folder / "nodif_brain_mask.nii.gz").write_bytes(mask.read_bytes())
    assert main(["prep", "hcp", "--input", str(tmp_path / "hcp"), "--output", str(tmp_path / "o")]) == 0
    for f in ("hr", "lr", "lr_up", "mask"):
        a = np.asarray(nib.load(prepared["out"] / "sub-01" / f"{f}.nii.gz").dataobj)
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "o" / "sub-01" / f"{f}.nii.gz").dataobj), a)


def test_bids_output_trains_and_infers_with_the_hcp_commands(prepared, tmp_path, one_thread):
    manifest, run, pred = prepared["out"] / "manifest.csv", tmp_path / "run", tmp_path / "pred"
    assert main(["train", str(QUICK), "--set", f"data.manifest={manifest}", f"output_dir={run}",
                 "data.subjects=[sub-01, sub-02_ses-1]", "train.max_steps=2", "train.batch_size=2",
                 "data.patch_size=8", "data.random_per_subject=2", "train.progress=false", "train.samples=false",
                 "train.threads=1"]) == 0
    assert pd.read_csv(run / "log.csv")["step"].max() == 2
    test = "sub-02_ses-2_acq-b1000_run-1"
    assert main(["infer", "--checkpoint", str(run / "last.pt"), "--input", str(manifest), "--output", str(pred),
                 "--subjects", test, "--quiet"]) == 0
    out, hr = nib.load(pred / f"{test}.nii.gz"), nib.load(prepared["out"] / test / "hr.nii.gz")
    assert out.shape == hr.shape == (10, 10, 10, 6)
    np.testing.assert_allclose(out.affine, hr.affine, atol=1e-5)
    assert np.isfinite(out.get_fdata()).all()


def test_broken_series_fail_alone_with_one_line_reasons(tmp_path, small64d, oblique):
    d, root = small64d, tmp_path / "ds"
    describe(root)
    write_series(root, "sub-good/dwi", "sub-good", d["data"], oblique, d["bvals"], d["bvecs"])
    write_series(root, "sub-ok/dwi", "sub-ok", d["data"], oblique, d["bvals"], d["bvecs"])
    write_series(root, "sub-nobval/dwi", "sub-nobval", d["data"], oblique, None, d["bvecs"])
    write_series(root, "sub-nobvec/dwi", "sub-nobvec", d["data"], oblique, d["bvals"], None)
    write_series(root, "sub-vecs/dwi", "sub-vecs", d["data"], oblique, d["bvals"], d["bvecs"][:-1])
    write_series(root, "sub-3d/dwi", "sub-3d", d["data"][..., 0], oblique, d["bvals"], d["bvecs"])
    write_series(root, "sub-name/dwi", "sub-other", d["data"], oblique, d["bvals"], d["bvecs"])
    write_series(root, "sub-x/dwi", "sub-ok", d["data"], oblique, d["bvals"], d["bvecs"])  # claims sub-ok's name
    cases = {
        "sub-ok": "its series name sub-ok is also the name of",
        "sub-nobval": "sub-nobval/dwi/sub-nobval_dwi.bval: file not found",
        "sub-nobvec": "sub-nobvec/dwi/sub-nobvec_dwi.bvec: file not found",
        "sub-vecs": "sub-vecs/dwi/sub-vecs_dwi.bvec: has 64 vectors but sub-vecs_dwi.bval has 65 values",
        "sub-3d": "sub-3d/dwi/sub-3d_dwi.nii.gz: expected a 4D DWI",
        "sub-other": "sub-name/dwi/sub-other_dwi.nii.gz: file name does not follow BIDS here",
    }
    code, err = run_cli(["prep", "bids", "--input", str(root), "--output", str(tmp_path / "out"), "--workers", "2"])
    assert code == 1
    df = read_manifest_raw(tmp_path / "out" / "manifest.csv").set_index("subject")
    assert df.index.tolist() == sorted(["sub-good", *cases])  # one row per series name
    assert df.loc["sub-good", "status"] == "ok" and (tmp_path / "out" / "sub-good" / "hr.nii.gz").is_file()
    for name, problem in cases.items():
        msg = df.loc[name, "error"]
        assert df.loc[name, "status"] == "failed" and msg.startswith(f"subject {name}: ") and problem in msg, msg
        assert "\n" not in msg and msg in err and not (tmp_path / "out" / name).exists()


def test_shell_selects_b0_and_that_shell(tmp_path, small64d, oblique):
    """A b=2000 shell added to the series is left out by --shell 1000: the tensors equal the single-shell fit."""
    d, root = small64d, tmp_path / "ds"
    describe(root)
    dw = d["bvals"] > 50
    extra = d["data"][..., dw][..., :8] * 0.6  # 8 volumes at b = 2000 (+- 40: inside the +-100 tolerance)
    write_series(root, "sub-a/dwi", "sub-a", d["data"], oblique, d["bvals"], d["bvecs"])
    write_series(root, "sub-b/dwi", "sub-b", np.concatenate([d["data"], extra], -1), oblique,
                 np.concatenate([d["bvals"], np.full(8, 2000.0) + np.linspace(-40, 40, 8)]),
                 np.concatenate([d["bvecs"], d["bvecs"][dw][:8]]))
    code, _ = run_cli(["prep", "bids", "--input", str(root), "--output", str(tmp_path / "out"), "--shell", "1000"])
    assert code == 0
    a, b = (np.asarray(nib.load(tmp_path / "out" / s / "hr.nii.gz").dataobj) for s in ("sub-a", "sub-b"))
    np.testing.assert_array_equal(a, b)
    code, _ = run_cli(["prep", "bids", "--input", str(root), "--output", str(tmp_path / "o2"), "--shell", "2000",
                       "--participant-label", "b"])
    assert code == 0
    assert not np.allclose(np.asarray(nib.load(tmp_path / "o2" / "sub-b" / "hr.nii.gz").dataobj), b)


def test_participant_and_session_selection(tmp_path, small64d, oblique):
    from data_prep.bids import find_series

    root = tmp_path / "ds"
    build_dataset(root, small64d, oblique)
    names = lambda ds: [s.name for s in ds.series]  # noqa: E731
    ds = find_series(root)
    assert names(ds) == sorted(GOOD + ["sub-04"]) and ds.no_dwi == ["sub-03"]
    ds = find_series(root, ["01", "sub-02"], ["1"])  # a session filter leaves out series without sessions
    assert names(ds) == ["sub-02_ses-1"] and ds.no_dwi == ["sub-01"]
    assert names(find_series(root, ["01", "sub-02"])) == GOOD
    assert names(find_series(root, ["02"], ["ses-2"])) == ["sub-02_ses-2_acq-b1000_run-1"]
    s = find_series(root, ["02"], ["2"]).series[0]  # gradients inherited from the dataset root
    assert (s.bval, s.bvec) == (root / "dwi.bval", root / "dwi.bvec") and s.entities["acq"] == "b1000"
    assert find_series(root, ["03"]).no_dwi == ["sub-03"]

    out = str(tmp_path / "out")
    code, err = run_cli(["prep", "bids", "--input", str(root), "--output", out, "--participant-label", "09"])
    assert code == 2 and "no subject folder(s) sub-09 (--participant-label)" in err
    code, err = run_cli(["prep", "bids", "--input", str(root), "--output", out, "--session", "7"])
    assert code == 2 and "no session folder(s) ses-7" in err
    code, err = run_cli(["prep", "bids", "--input", str(root), "--output", out, "--participant-label", "03"])
    assert code == 2 and "no dwi series found" in err and "skipped: sub-03" in err
    (root / "dataset_description.json").unlink()
    code, err = run_cli(["prep", "bids", "--input", str(root), "--output", out])
    assert code == 2 and "dataset_description.json: file not found" in err
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_mask_pattern_uses_the_users_mask(tmp_path, small64d, oblique):
    d, root = small64d, tmp_path / "ds"
    describe(root)
    write_series(root, "sub-01/ses-1/dwi", "sub-01_ses-1", d["data"], oblique, d["bvals"], d["bvecs"])
    write_series(root, "sub-02/ses-1/dwi", "sub-02_ses-1", d["data"], oblique, d["bvals"], d["bvecs"])
    mask = np.zeros(d["data"].shape[:3], np.uint8)
    mask[2:8, 3:9, 1:7] = 1
    masks = root / "derivatives" / "masks" / "sub-01" / "ses-1" / "dwi"
    masks.mkdir(parents=True)
    nib.save(nib.Nifti1Image(mask, oblique), masks / "sub-01_ses-1_desc-brain_mask.nii.gz")
    pattern = "derivatives/masks/{folder}/sub-{sub}_ses-{ses}_desc-brain_mask.nii.gz"
    code, err = run_cli(["prep", "bids", "--input", str(root), "--output", str(tmp_path / "out"),
                         "--mask-pattern", pattern])
    assert code == 1  # sub-02 has no mask file
    df = read_manifest_raw(tmp_path / "out" / "manifest.csv").set_index("subject")
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "out" / "sub-01_ses-1" / "mask.nii.gz").dataobj),
                                  mask)
    assert "derivatives/masks/sub-02/ses-1/dwi/sub-02_ses-1_desc-brain_mask.nii.gz: file not found" \
        in df.loc["sub-02_ses-1", "error"]
    code, err = run_cli(["prep", "bids", "--input", str(root), "--output", str(tmp_path / "o2"),
                         "--mask-pattern", "{name.x}"])
    assert code == 2 and "--mask-pattern '{name.x}': field {name.x} is not a name" in err


def test_prep_bids_help_shows_the_layout(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prep", "bids", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for part in ("dataset_description.json", "sub-<label>/[ses-<label>/]dwi/", "_dwi.bval", "--participant-label",
                 "--mask-pattern", "median_otsu", "OUTPUT/<subject>/hr.nii.gz"):
        assert part in text, part


def test_output_overlapping_a_subject_folder_is_refused_and_derivatives_is_fine(tmp_path, small64d, oblique):
    """The user's dataset is never written into: the root itself or a sub-* folder is refused as --output."""
    import hashlib

    root = tmp_path / "ds"
    build_dataset(root, small64d, oblique)
    digest = lambda: {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    before = digest()
    for out, how in ((root, "contains"), (root / "sub-01" / "prep", "lies inside"), (root / "sub-99", "is")):
        code, err = run_cli(["prep", "bids", "--input", str(root), "--output", str(out)])
        assert code == 2 and f"the output folder {how} the input subject folder" in err, err
    assert digest() == before and not (root / "sub-99").exists()
    # the BIDS-app place for outputs: a derivatives folder inside the dataset
    out = root / "derivatives" / "medsr"
    code, _ = run_cli(["prep", "bids", "--input", str(root), "--output", str(out), "--participant-label", "01"])
    assert code == 0 and read_manifest(out / "manifest.csv")["subject"].tolist() == ["sub-01"]
    assert {p: h for p, h in digest().items() if out not in p.parents} == before


def test_gradient_files_follow_the_inheritance_principle(tmp_path):
    """Next to the image wins; else the nearest folder up with one applicable file; two in one folder fail."""
    from data_prep.bids import find_sidecar

    root = tmp_path
    image = root / "sub-02" / "ses-1" / "dwi" / "sub-02_ses-1_acq-hi_run-1_dwi.nii.gz"
    image.parent.mkdir(parents=True)
    ents = {"sub": "02", "ses": "1", "acq": "hi", "run": "1"}
    touch = lambda rel: (root / rel).write_text("0")  # noqa: E731
    assert find_sidecar(root, image, ents, "bval") is None
    touch("dwi.bval")
    assert find_sidecar(root, image, ents, "bval") == root / "dwi.bval"
    touch("acq-lo_dwi.bval")  # does not apply (acq differs)
    touch("sub-02/sub-02_acq-hi_dwi.bval")  # nearer: wins over the dataset-level file
    assert find_sidecar(root, image, ents, "bval") == root / "sub-02" / "sub-02_acq-hi_dwi.bval"
    touch("sub-02/ses-1/dwi/sub-02_ses-1_acq-hi_run-1_dwi.bval")  # named like the image: wins
    assert find_sidecar(root, image, ents, "bval") == image.parent / "sub-02_ses-1_acq-hi_run-1_dwi.bval"
    touch("sub-02/sub-02_dwi.bvec")
    touch("sub-02/sub-02_run-1_dwi.bvec")
    with pytest.raises(ValueError, match=r"2 \.bvec files in .*sub-02 apply to sub-02_ses-1_acq-hi_run-1_dwi"):
        find_sidecar(root, image, ents, "bvec")
