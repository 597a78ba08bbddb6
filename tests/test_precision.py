"""Mixed precision on the CPU: bf16 trains and resumes bit-exactly, fp16 is refused in one line, bf16 inference
writes float32 within the documented tolerance of fp32."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import randomise, train_config
from medsr.checkpoint import load_checkpoint, model_entry, save_checkpoint
from medsr.config import load_config
from medsr.data.synthetic import make_prepared_dataset
from medsr.io import load_volume, save_volume
from medsr.networks import create_model
from medsr.normalise import ChannelStats
from medsr.volume import Volume
from pipelines.cli import main
from pipelines.train import train

# bf16 vs fp32 whole-volume inference, in units of each output channel's SD (norm.y std): the tolerance
# documented in docs/memory.md ("Mixed precision") from `medsr bench precision`.
RMS_TOL_SD, MAX_TOL_SD = 1e-2, 1e-1


def _config(manifest: Path, out: Path, mode: str, precision: str, max_steps: int) -> dict:
    return train_config(manifest, out, mode, data={"flip": True}, batch_size=2, n_epochs_decay=1, max_steps=max_steps,
                        pool_size=2, checkpoint_every=100, deterministic=True, precision=precision)


def _weights_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("prep"), 2, (24, 24, 24), "dti", patch_size=8)


def test_config_accepts_the_precisions_and_refuses_others_by_name():
    assert load_config({}).train.precision == "fp32"
    assert load_config({}, ["train.precision=bf16"]).train.precision == "bf16"
    with pytest.raises(ValueError, match=r"config key 'train.precision': 'fp8' is not one of fp32, bf16, fp16"):
        load_config({}, ["train.precision=fp8"])


@pytest.mark.parametrize("mode", ["paired_l1", "paired", "unpaired"])
def test_bf16_trains_and_resumes_exactly(tmp_path, manifest, mode):
    """A bf16 run stopped at step 2 and resumed to 4 ends bit-identical to one run to 4 (weights of the
    generator and discriminators, optimiser state, logged losses); bf16 really ran (it differs from fp32)."""
    try:
        whole = load_checkpoint(train(_config(manifest, tmp_path / "whole", mode, "bf16", 4)) / "last.pt")
        train(_config(manifest, tmp_path / "split", mode, "bf16", 2))
        resumed = train(_config(manifest, tmp_path / "split", mode, "bf16", 4), resume=True)
        split = load_checkpoint(resumed / "last.pt")
        fp32 = load_checkpoint(train(_config(manifest, tmp_path / "fp32", mode, "fp32", 4)) / "last.pt")
    finally:
        torch.use_deterministic_algorithms(False)
    assert whole["precision"] == split["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert whole["step"] == split["step"] == 4
    assert _weights_equal(whole["model"]["state_dict"], split["model"]["state_dict"])
    for d in whole["discriminators"]:
        assert _weights_equal(whole["discriminators"][d]["state_dict"], split["discriminators"][d]["state_dict"])
    st_a, st_b = whole["optimizers"]["G"]["state"], split["optimizers"]["G"]["state"]
    assert all(torch.equal(st_a[i]["exp_avg"], st_b[i]["exp_avg"]) for i in st_a)
    drop = ("patches_per_s", "train_s")
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(open(run / "log.csv"))]
            for run in (tmp_path / "whole", tmp_path / "split")]
    assert rows[0] == rows[1]
    # Weights stay float32; bf16 changed the arithmetic, not the stored precision.
    sd = whole["model"]["state_dict"]
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    assert not _weights_equal(sd, fp32["model"]["state_dict"])
    diff = max((sd[k] - fp32["model"]["state_dict"][k]).abs().max().item() for k in sd)
    assert diff < 1e-2  # ...but only by rounding: 4 Adam steps of lr 2e-4 move a weight by at most ~1e-3


def test_resume_in_another_precision(tmp_path, manifest):
    """A bf16 run may continue in fp32 (e.g. to rule precision out of a problem); the checkpoint says so."""
    train(_config(manifest, tmp_path / "run", "paired_l1", "bf16", 2))
    ck = load_checkpoint(train(_config(manifest, tmp_path / "run", "paired_l1", "fp32", 3), resume=True) / "last.pt")
    assert ck["step"] == 3 and ck["precision"] == "fp32"


def test_fp16_on_cpu_refused_in_one_line(tmp_path, manifest, capsys):
    cfg = _config(manifest, tmp_path / "run", "paired", "fp32", 2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--set", "train.precision=fp16", "train.device=cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "'train.precision'" in err[0] and "fp16 needs a CUDA device" in err[0] and "use bf16 or fp32" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert main(["train", str(path), "--set", "train.precision=half"]) == 2
    assert "'half' is not one of fp32, bf16, fp16" in capsys.readouterr().err


C = 6
KW = dict(in_channels=C, width=8, depth=2, norm="none", residual=True)
Y_STATS = ChannelStats(mean=[-0.2 * i for i in range(C)], std=[2.0 - 0.2 * i for i in range(C)])
X_STATS = ChannelStats(mean=[0.1 * i for i in range(C)], std=[1.0 + 0.5 * i for i in range(C)])


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = randomise(create_model("rev_srcnn3d", **KW))  # the core is not the identity
    save_checkpoint({"model": model_entry("rev_srcnn3d", KW, model),
                     "norm": {"x": X_STATS.to_dict(), "y": Y_STATS.to_dict()},
                     "data": {"factor": 2, "patch_size": 8, "channels": C, "kind": "dti"}}, path)
    return path


def test_infer_bf16_writes_float32_within_tolerance(tmp_path, oblique, capsys):
    ck = _checkpoint(tmp_path / "ck.pt")
    rng = np.random.default_rng(0)
    data = np.stack([m + s * rng.standard_normal((20, 22, 18)) for m, s in zip(X_STATS.mean, X_STATS.std)])
    save_volume(Volume(data.astype(np.float32), oblique, name="in"), tmp_path / "in.nii.gz")
    outs = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / f"{prec}.nii.gz"
        assert main(["infer", "--checkpoint", str(ck), "--input", str(tmp_path / "in.nii.gz"), "--output", str(out),
                     "--input-grid", "hr", "--device", "cpu", "--precision", prec, "--window", "12", "--quiet"]) == 0
        outs[prec] = load_volume(out)
    import nibabel as nib

    assert nib.load(str(tmp_path / "bf16.nii.gz")).get_data_dtype() == np.float32
    assert np.allclose(outs["bf16"].affine, outs["fp32"].affine)
    sd = np.asarray(Y_STATS.std).reshape(-1, 1, 1, 1)
    diff = (outs["bf16"].data.astype(np.float64) - outs["fp32"].data) / sd
    assert 0 < np.sqrt((diff**2).mean()) <= RMS_TOL_SD and np.abs(diff).max() <= MAX_TOL_SD
    # fp16 on the CPU: one line, no output.
    capsys.readouterr()  # (the random input above is no NN-upsampled LR volume: infer warned about it)
    out = tmp_path / "fp16.nii.gz"
    assert main(["infer", "--checkpoint", str(ck), "--input", str(tmp_path / "in.nii.gz"), "--output", str(out),
                 "--device", "cpu", "--precision", "fp16", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision fp16 needs a CUDA device" in err[0]
    assert not out.exists()
