"""Self-supervised training from thick-slice scans alone: prep --lr-only -> data.type self -> infer.

The pairs are prep's own degradation (compared with ``medsr.degrade.degrade`` on the whole volume), no HR
file is opened by a run, resume is bit-exact, and ``medsr infer`` writes the HR grid prep would have
written (same affine as ``hr.nii.gz`` of ``prep volumes`` on the HR scan, oblique).
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medsr.checkpoint import load_checkpoint
from medsr.config import load_config
from medsr.data.self_supervised import SelfPairs, load_scans, region_permutation
from medsr.data.synthetic import synthetic_subject
from medsr.degrade import degrade, fit_to_factor, nn_upsample_array
from medsr.io import save_mask, save_volume
from medsr.manifest import read_manifest, write_manifest
from medsr.volume import Volume
from pipelines.cli import main
from pipelines.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
SELF_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "self.yaml"
FACTOR = (1, 1, 4)
# Small and fast: a few steps of the shipped config on tiny pairs.
FAST = ["train.batch_size=2", "data.random_per_subject=2", "data.patch_size=8", "train.progress=false",
        "model.kwargs.width=4", "model.kwargs.depth=2", "train.checkpoint_every=2", "train.threads=1"]


def _hr_scans(root: Path, n: int, shape=(24, 26, 32)) -> Path:
    """``n`` HR scalar scans with oblique affines in the ``prep volumes`` layout."""
    for i in range(n):
        vol, mask = synthetic_subject(shape, "scalar", seed=10 + i)
        save_volume(vol, root / f"s{i}" / "image.nii.gz")
        save_mask(mask, vol.affine, root / f"s{i}" / "mask.nii.gz")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """Paired prep of HR scans (the truth, for geometry checks only), their LR scans as thick-slice scans with
    LR masks, and the --lr-only prep of those (the only thing self-supervised runs read)."""
    root = tmp_path_factory.mktemp("self")
    hr_in = _hr_scans(root / "hr_in", 2)
    paired = root / "paired"
    assert main(["prep", "volumes", "--input", str(hr_in), "--output", str(paired), "--factor", "1", "1", "4"]) == 0
    lr_in = root / "lr_in"
    for row in read_manifest(paired / "manifest.csv").itertuples():
        lr = nib.load(row.lr)
        mask = np.asarray(nib.load(row.mask).dataobj) > 0
        lr_mask = mask.reshape(mask.shape[0], mask.shape[1], -1, 4).mean(-1) >= 0.5
        (lr_in / row.subject).mkdir(parents=True)
        nib.save(lr, lr_in / row.subject / "image.nii.gz")
        save_mask(lr_mask, lr.affine, lr_in / row.subject / "mask.nii.gz")
    lr_only = root / "lr_only"
    assert main(["prep", "volumes", "--lr-only", "--input", str(lr_in), "--output", str(lr_only),
                 "--factor", "1", "1", "4"]) == 0
    return SimpleNamespace(root=root, paired=paired / "manifest.csv", manifest=lr_only / "manifest.csv",
                           lr_in=lr_in)


def test_lr_only_manifest(data):
    df = read_manifest(data.manifest)
    paired = read_manifest(data.paired).set_index("subject")
    assert list(df["subject"]) == ["s0", "s1"]
    for row in df.itertuples():
        assert row.hr == "" and row.lr_up == "" and Path(row.lr).is_file() and Path(row.mask).is_file()
        # The grid the factor implies is the HR grid prep wrote from the HR scan.
        assert row.shape == paired.loc[row.subject, "shape"] and row.factor == "1x1x4"
        np.testing.assert_allclose([float(v) for v in row.voxel_size.split("x")],
                                   [float(v) for v in paired.loc[row.subject, "voxel_size"].split("x")], rtol=1e-5)
        assert row.slice_profile == "box" and row.kind == "scalar"
    # A rerun skips the scans already prepared.
    assert main(["prep", "volumes", "--lr-only", "--input", str(data.lr_in), "--output",
                 str(data.manifest.parent), "--factor", "1", "1", "4"]) == 0


def test_lr_only_refuses_dti_by_name(tmp_path, capsys):
    assert main(["prep", "hcp", "--lr-only", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--factor", "1", "1", "4"]) == 2
    assert "--lr-only" in capsys.readouterr().err


@pytest.mark.parametrize("profile", ["box", "gaussian"])
def test_pairs_are_preps_degradation_of_an_in_plane_axis(data, tmp_path, profile):
    """Each pair's input is what prep's degradation (medsr.degrade.degrade, the whole volume) makes of the scan
    turned so that the degraded in-plane axis lies along the slice axis; its target is the scan itself."""
    scans, info = load_scans(data.manifest)
    scan = scans[0]
    ds = SelfPairs(scans[:1], FACTOR, profile, patch_size=8, slab=2, per_scan=8, flip=False)
    checked = 0
    for seed in range(8):
        perm, outer, inner = ds._region(scan, seed)
        item = ds[(0, 0, seed, seed)]
        degraded = perm[2]
        # The reference: the scan turned, cut to start at the region (along the degraded axis: to the end).
        cut = list(inner)
        cut[degraded] = slice(inner[degraded].start, scan.data.shape[1 + degraded])
        turned = np.transpose(scan.data[(slice(None),) + tuple(cut)], (0,) + tuple(p + 1 for p in perm))
        vol = fit_to_factor(Volume(np.ascontiguousarray(turned), np.eye(4)), FACTOR)
        # A Gaussian profile's weights near the volume's start lump the mass beyond it: start the reference two
        # slices earlier when there is room, as the pair's margin does.
        m = ds.margin * 4
        if profile == "gaussian":
            cut[degraded] = slice(inner[degraded].start - m, scan.data.shape[1 + degraded])
            turned = np.transpose(scan.data[(slice(None),) + tuple(cut)], (0,) + tuple(p + 1 for p in perm))
            vol = fit_to_factor(Volume(np.ascontiguousarray(turned), np.eye(4)), FACTOR)
        ref_x = nn_upsample_array(degrade(vol, FACTOR, profile=profile).data, FACTOR)[..., m:m + 8]
        x = ds.norm.denormalise(item["x"].numpy(), channel_axis=0)
        y = ds.norm.denormalise(item["y"].numpy(), channel_axis=0)
        np.testing.assert_allclose(x, ref_x, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(y, vol.data[..., m:m + 8], rtol=1e-6, atol=1e-5)
        assert x.shape == (1, 2, 8, 8)  # slab along q = 0, patch along o = 1 and s = 2
        checked += 1
    assert checked == 8
    assert {region_permutation(a, FACTOR) for a in (0, 1)} == {(2, 1, 0), (2, 0, 1)}


def test_refuses_dti_paired_data_and_wrong_factors(data, tmp_path):
    df = read_manifest(data.manifest).to_dict("records")
    write_manifest(tmp_path / "dti.csv", [dict(r, kind="dti") for r in df])
    with pytest.raises(ValueError, match="DTI is not supported"):
        load_scans(tmp_path / "dti.csv")
    with pytest.raises(ValueError, match="has an HR volume"):
        load_scans(data.paired)
    write_manifest(tmp_path / "f2.csv", [dict(r, factor=2) for r in df])
    with pytest.raises(ValueError, match="one thick axis"):
        load_scans(tmp_path / "f2.csv")


def _config(data, out: Path, steps: int, extra: list[str] = ()) -> dict:
    cfg = yaml.safe_load(SELF_CONFIG.read_text())
    c = load_config(cfg, [f"data.manifest={data.manifest}", f"output_dir={out}", f"train.max_steps={steps}",
                          "train.deterministic=true", *FAST, *extra])
    return c.to_dict()


def test_no_hr_file_is_opened_and_resume_is_bit_exact(data, tmp_path):
    """A self-supervised run (cohort of two scans) opens no HR file of the folder's neighbours; stopped at step
    2 and resumed to 4 it ends with the weights of the uninterrupted 4-step run."""
    opened: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and _AUDIT.on and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0]))

    _AUDIT.install(hook)
    try:
        _AUDIT.on = True
        whole = train(_config(data, tmp_path / "whole", 4))
    finally:
        _AUDIT.on = False
    names = [Path(p).name for p in opened]
    assert "lr.nii.gz" in names and not any(n.startswith(("hr", "lr_up")) for n in names), sorted(set(names))
    try:
        half = train(_config(data, tmp_path / "half", 2))
        train(_config(data, tmp_path / "half", 4), resume=True)
        a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(half / "last.pt")
        assert a["step"] == b["step"] == 4 and a["data"]["self_supervised"]
        for k, v in a["model"]["state_dict"].items():
            assert torch.equal(b["model"]["state_dict"][k], v), k
        assert a["data"]["subjects"] == ["s0", "s1"]
    finally:
        torch.use_deterministic_algorithms(False)


def test_per_subject_fit_then_infer_writes_preps_hr_grid(data, tmp_path):
    """Fit to one scan, then `medsr infer` on that scan: the output lies on the HR grid `prep volumes` wrote for
    the HR scan (same shape and oblique affine), TTA included; `medsr evaluate` scores it against that HR."""
    run = train(_config(data, tmp_path / "one", 2, ["data.subjects=[s1]"]))
    lr = read_manifest(data.manifest).set_index("subject").loc["s1", "lr"]
    hr = read_manifest(data.paired).set_index("subject").loc["s1", "hr"]
    pred = tmp_path / "pred"
    for tta in ("none", "full"):
        out = pred / tta / "s1.nii.gz"
        assert main(["infer", "--checkpoint", str(run / "last.pt"), "--input", str(lr), "--output", str(out),
                     "--tta", tta, "--quiet"]) == 0
        got, want = nib.load(out), nib.load(hr)
        assert got.shape == want.shape
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-5)
        assert np.isfinite(np.asarray(got.dataobj)).all()
    # From the LR-only manifest too (its lr column), then scored against the paired prep's HR.
    assert main(["infer", "--checkpoint", str(run / "last.pt"), "--input", str(data.manifest), "--output",
                 str(pred / "m"), "--subjects", "s1", "--quiet"]) == 0
    np.testing.assert_allclose(nib.load(pred / "m" / "s1.nii.gz").affine, nib.load(hr).affine, atol=1e-5)
    assert main(["evaluate", "--manifest", str(data.paired), "--predictions", str(pred / "m"), "--subjects", "s1",
                 "--output", str(tmp_path / "ev.csv"), "--quiet"]) == 0


class _Audit:
    """One process-wide audit hook (hooks cannot be removed), switched on only while a test listens."""

    def __init__(self) -> None:
        self.on = False
        self.hook = None

    def install(self, hook) -> None:
        if self.hook is None:
            sys.addaudithook(lambda event, args: self.hook(event, args) if self.hook else None)
        self.hook = hook


_AUDIT = _Audit()


@pytest.mark.parametrize("train_on", ["train", "held-out"])
def test_bench_quality_scores_a_self_supervised_config(data, tmp_path, train_on):
    """bench quality trains self configs on the LR-only view of a paired manifest (the training scans, or the
    held-out scan itself) and scores them against the held-out HR volume."""
    import pandas as pd

    out = tmp_path / "bq"
    spec = f"{SELF_CONFIG} " + " ".join(FAST)
    assert main(["bench", "quality", "--steps", "2", "--manifest", str(data.paired), "--train", "s0", "--test", "s1",
                 "--output", str(out), "--tta", "none", "--self-train-on", train_on, "--configs", spec]) == 0
    table = pd.read_csv(out / "quality.csv")
    assert list(table["subject"]) == ["s1"] and (table["steps"] == 2).all()
    lr_only = read_manifest(next(out.glob("lr-only-*/lr_only/manifest.csv")))
    assert (lr_only["hr"] == "").all()
    run = next((out / "runs").iterdir())
    ck = load_checkpoint(run / "last.pt")
    assert ck["data"]["subjects"] == (["s0"] if train_on == "train" else ["s1"])
    assert run.name.endswith("__s1") == (train_on == "held-out")
