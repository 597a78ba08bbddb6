"""What ``medsr infer`` writes beside a prediction and checks before it: model card (``medsr info``), domain
warnings and ``--strict``, ``--mask``, ``--uncertainty`` and ``--maps``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsr.checkpoint import model_entry, save_checkpoint
from medsr.degrade import nn_upsample
from medsr.dti_maps import tensor_maps
from medsr.io import load_volume, save_mask, save_volume
from medsr.manifest import write_manifest
from medsr.networks import create_model
from medsr.normalise import ChannelStats
from medsr.volume import Volume
from pipelines.cli import main

C = 6
VOX = (1.5, 1.25, 2.0)  # the oblique fixture's voxel size: the training HR grid of the card below


def _checkpoint(path, card: bool = True) -> str:
    kw = dict(in_channels=C, width=4, depth=1, factor=2, base="cubic")
    model = create_model("rev_espcn3d", **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    data = {"factor": 2, "patch_size": 8, "channels": C, "kind": "dti", "flip": True, "permute": False}
    if card:
        data.update(voxel_size=list(VOX), n_subjects=3, voxel_size_range=[list(VOX), list(VOX)],
                    intensity={k: {"p1": [0.0] * C, "p50": [1e-3] * C, "p99": [3e-3] * C, "abs_p99": 3e-3}
                               for k in "xy"})
    stats = ChannelStats(mean=[5e-4] * C, std=[1e-3] * C).to_dict()
    save_checkpoint({"model": model_entry("rev_espcn3d", kw, model), "norm": {"x": stats, "y": stats},
                     "data": data, "step": 10, "train_seconds": 60.0}, path)
    return str(path)


def _lr(oblique, scale: float = 1.0, shape=(6, 5, 4)) -> Volume:
    rng = np.random.default_rng(1)
    t = np.zeros((C,) + shape, np.float32)
    t[[0, 3, 5]] = rng.uniform(5e-4, 2.5e-3, (3,) + shape)
    t[[1, 2, 4]] = rng.normal(0, 1e-4, (3,) + shape)
    return Volume(scale * t, oblique)


def _infer(ck, src, out, *extra) -> int:
    return main(["infer", "--checkpoint", ck, "--input", str(src), "--output", str(out), "--quiet", *extra])


def test_info_prints_the_card_and_what_an_old_checkpoint_lacks(tmp_path, capsys):
    assert main(["info", _checkpoint(tmp_path / "new.pt")]) == 0
    text = capsys.readouterr().out
    assert "1.5 x 1.25 x 2" in text and "training subjects" in text and "1.0 min" in text
    assert main(["info", _checkpoint(tmp_path / "old.pt", card=False), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["factor"] == [2, 2, 2] and card["channels"] == C
    assert {"voxel_size", "intensity", "n_subjects"} <= set(card["unknown"])


def test_domain_checks_warn_and_strict_refuses(tmp_path, oblique, capsys):
    ck = _checkpoint(tmp_path / "ck.pt")
    lr_affine = oblique @ np.diag([2.0, 2.0, 2.0, 1.0])  # LR voxels = 2 x the card's HR voxels
    cases = {
        "voxel": (Volume(_lr(oblique).data, oblique), ["--input-grid", "lr"], "voxel size 1.5x1.25x2 mm"),
        "intensity": (Volume(_lr(oblique, 100.0).data, lr_affine), [], "x the training data's (99th percentile of |value|"),
        "hr": (Volume(_lr(oblique, shape=(12, 10, 8)).data, oblique), [], "not an NN-upsampled LR volume"),
    }
    for name, (vol, extra, words) in cases.items():
        save_volume(vol, tmp_path / f"{name}.nii.gz")
        assert _infer(ck, tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_sr.nii.gz", *extra) == 0, name
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "warning" in ln]
        assert len(lines) == 1 and words in lines[0] and "--strict refuses" in lines[0], (name, err)
        out = tmp_path / f"{name}_strict.nii.gz"
        assert _infer(ck, tmp_path / f"{name}.nii.gz", out, "--strict", *extra) == 2, name
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and not out.exists(), name
    # A clean LR input: no warning. A scalar volume for the DTI model: refused, --strict or not.
    save_volume(Volume(_lr(oblique).data, lr_affine), tmp_path / "ok.nii.gz")
    assert _infer(ck, tmp_path / "ok.nii.gz", tmp_path / "ok_sr.nii.gz", "--strict") == 0
    assert "warning" not in capsys.readouterr().err
    save_volume(Volume(_lr(oblique).data[:1], lr_affine), tmp_path / "scalar.nii.gz")
    assert _infer(ck, tmp_path / "scalar.nii.gz", tmp_path / "scalar_sr.nii.gz") == 2
    assert "1 channel(s) (a scalar image) but the model was trained on 6 (dti)" in capsys.readouterr().err


def test_mask_uncertainty_and_maps(tmp_path, oblique):
    ck = _checkpoint(tmp_path / "ck.pt")
    lr = Volume(_lr(oblique).data, oblique @ np.diag([2.0, 2.0, 2.0, 1.0]))
    save_volume(lr, tmp_path / "lr.nii.gz")
    mask = np.zeros((12, 10, 8), bool)
    mask[2:10, 2:8, 1:7] = True
    save_mask(mask, nn_upsample(lr, 2).affine, tmp_path / "mask.nii.gz")
    assert _infer(ck, tmp_path / "lr.nii.gz", tmp_path / "plain.nii.gz") == 0
    assert _infer(ck, tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz", "--mask", str(tmp_path / "mask.nii.gz"),
                  "--uncertainty", "--maps", "fa,md,rgb,evec") == 0
    plain, sr, std = (load_volume(tmp_path / f).data for f in ("plain.nii.gz", "sr.nii.gz", "sr_std.nii.gz"))
    assert np.abs(plain[:, ~mask]).max() > 0  # by default the prediction is not zero outside the brain
    assert not sr[:, ~mask].any() and not std[:, ~mask].any()
    np.testing.assert_allclose(sr[:, mask], plain[:, mask], atol=1e-7)  # the card's model trained with flips: tta flip
    assert std.shape == sr.shape and (std >= 0).all() and std[:, mask].max() > 0
    ref = tensor_maps(sr, ["fa", "md", "rgb", "evec"])
    for name, suffix in (("fa", "FA"), ("md", "MD"), ("rgb", "RGB"), ("evec", "V1")):
        np.testing.assert_allclose(load_volume(tmp_path / f"sr_{suffix}.nii.gz").data, ref[name], atol=1e-7)
    # A mask on the LR input's grid is NN-upsampled onto the output's.
    lr_mask = np.zeros(lr.spatial_shape, bool)
    lr_mask[1:5, 1:4, 1:3] = True
    save_mask(lr_mask, lr.affine, tmp_path / "lr_mask.nii.gz")
    assert _infer(ck, tmp_path / "lr.nii.gz", tmp_path / "lrm.nii.gz", "--mask", str(tmp_path / "lr_mask.nii.gz")) == 0
    up = np.repeat(np.repeat(np.repeat(lr_mask, 2, 0), 2, 1), 2, 2)
    lrm = load_volume(tmp_path / "lrm.nii.gz").data
    assert not lrm[:, ~up].any() and np.array_equal(lrm[:, up], plain[:, up])
    # --mask without a file takes each manifest subject's mask; a file-less --mask elsewhere is refused.
    save_volume(nn_upsample(lr, 2), tmp_path / "lr_up.nii.gz")
    write_manifest(tmp_path / "manifest.csv", [dict(subject="s1", hr=str(tmp_path / "lr_up.nii.gz"),
                   lr=str(tmp_path / "lr.nii.gz"), lr_up=str(tmp_path / "lr_up.nii.gz"),
                   mask=str(tmp_path / "mask.nii.gz"), status="ok", factor=2, kind="dti")])
    assert _infer(ck, tmp_path / "manifest.csv", tmp_path / "preds", "--mask") == 0
    np.testing.assert_allclose(load_volume(tmp_path / "preds" / "s1.nii.gz").data, sr, atol=1e-7)
    assert _infer(ck, tmp_path / "lr.nii.gz", tmp_path / "x.nii.gz", "--mask") == 2



def test_recorded_scale_calibrates_the_std(tmp_path, oblique, capsys):
    from medsr.model_card import record_uncertainty

    ck = _checkpoint(tmp_path / "ck.pt")
    save_volume(Volume(_lr(oblique).data, oblique @ np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "lr.nii.gz")
    assert _infer(ck, tmp_path / "lr.nii.gz", tmp_path / "a.nii.gz", "--uncertainty") == 0
    record_uncertainty(ck, {"flip": 3.0, "full": 5.0}, "s9", {"flip": 0.5, "full": 0.6})
    assert _infer(ck, tmp_path / "lr.nii.gz", tmp_path / "b.nii.gz", "--uncertainty") == 0  # anisotropic: flip
    raw, scaled = (load_volume(tmp_path / f"{n}_std.nii.gz").data for n in "ab")
    np.testing.assert_allclose(scaled, 3.0 * raw, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(load_volume(tmp_path / "b.nii.gz").data, load_volume(tmp_path / "a.nii.gz").data)
    assert main(["info", ck]) == 0
    assert "flip x3, full x5 (fitted on s9)" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [["--maps", "fa,adc"], ["--maps", "fa", "--reverse"]])
def test_bad_maps_requests_are_refused_before_any_output(tmp_path, oblique, flag, capsys):
    ck = _checkpoint(tmp_path / "ck.pt")
    save_volume(_lr(oblique), tmp_path / "lr.nii.gz")
    assert _infer(ck, tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz", "--input-grid", "lr", *flag) == 2
    assert not (tmp_path / "sr.nii.gz").exists()
