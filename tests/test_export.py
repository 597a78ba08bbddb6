"""``medsr export``: the TorchScript program reproduces ``medsr infer --tta none`` in a process without medsr."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from medsr.checkpoint import model_entry, save_checkpoint
from medsr.degrade import nn_upsample
from medsr.io import load_volume, save_volume
from medsr.networks import create_model
from medsr.normalise import ChannelStats
from medsr.volume import Volume
from pipelines.cli import main

C = 6
# Runs in a fresh interpreter from an empty folder with no PYTHONPATH: plain PyTorch and numpy only.
RUNNER = """
import json, sys
import numpy as np, torch
extra = {"medsr.json": ""}
model = torch.export.load(sys.argv[1], extra_files=extra).module()
x = torch.from_numpy(np.load(sys.argv[2]))[None]
with torch.no_grad():
    y = model(x)[0].numpy()
np.save(sys.argv[3], y)
print(json.dumps({"medsr_imported": any(m == "medsr" or m.startswith("medsr.") for m in sys.modules),
                  "card_channels": json.loads(extra["medsr.json"])["card"]["channels"]}))
"""


def _checkpoint(path, name: str, kwargs: dict) -> str:
    model = create_model(name, **kwargs)
    with torch.no_grad():  # weights away from the zero-initialised decoders: the core matters
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    x = ChannelStats(mean=[1e-4 * i for i in range(C)], std=[1e-3 * (1 + i) for i in range(C)])
    y = ChannelStats(mean=[2e-4 * i for i in range(C)], std=[2e-3 * (1 + i) for i in range(C)])
    save_checkpoint({"model": model_entry(name, kwargs, model), "norm": {"x": x.to_dict(), "y": y.to_dict()},
                     "data": {"factor": 2, "patch_size": 8, "channels": C, "kind": "dti"}}, path)
    return str(path)


def test_exported_program_matches_infer_without_medsr(tmp_path, oblique):
    """The default model (LR-grid core over a cubic base), odd LR sizes, run in a fresh interpreter."""
    lr = Volume(np.random.default_rng(0).normal(0, 1e-3, (C, 9, 8, 7)).astype(np.float32), oblique)
    save_volume(lr, tmp_path / "lr.nii.gz")
    np.save(tmp_path / "x.npy", nn_upsample(lr, 2).data)
    (tmp_path / "runner.py").write_text(RUNNER)
    ck = _checkpoint(tmp_path / "ck.pt", "rev_espcn3d", dict(in_channels=C, width=8, depth=2, factor=2, base="cubic"))
    model_pt = tmp_path / "model.pt"
    assert main(["export", ck, "--output", str(model_pt)]) == 0
    assert main(["infer", "--checkpoint", ck, "--input", str(tmp_path / "lr.nii.gz"), "--input-grid", "lr",
                 "--output", str(tmp_path / "sr.nii.gz"), "--tta", "none", "--quiet"]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDSR_DEBUG")}
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(model_pt), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"medsr_imported": False, "card_channels": C}
    ref = load_volume(tmp_path / "sr.nii.gz").data
    got = np.load(tmp_path / "y.npy")
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * float(ref.max() - ref.min())
    assert main(["export", ck, "--output", str(model_pt)]) == 2  # no silent overwrite


def test_exported_program_of_a_thick_slice_model_matches_infer(tmp_path, oblique):
    """A per-axis factor (1 1 4): dynamic sizes stay multiples of each axis's factor; same numbers as infer."""
    lr = Volume(np.random.default_rng(1).normal(0, 1e-3, (C, 7, 6, 5)).astype(np.float32), oblique)
    save_volume(lr, tmp_path / "lr.nii.gz")
    ck = _checkpoint(tmp_path / "ck.pt", "rev_espcn3d", dict(in_channels=C, width=8, depth=2, factor=[1, 1, 4]))
    state = torch.load(ck, weights_only=True)
    state["data"]["factor"] = [1, 1, 4]
    save_checkpoint(state, ck)
    assert main(["export", ck, "--output", str(tmp_path / "model.pt")]) == 0
    assert main(["infer", "--checkpoint", ck, "--input", str(tmp_path / "lr.nii.gz"), "--input-grid", "lr",
                 "--output", str(tmp_path / "sr.nii.gz"), "--tta", "none", "--quiet"]) == 0
    program = torch.export.load(tmp_path / "model.pt").module()
    with torch.no_grad():
        y = program(torch.from_numpy(nn_upsample(lr, (1, 1, 4)).data)[None])[0].numpy()
    assert y.shape == (C, 7, 6, 20)
    np.testing.assert_allclose(y, load_volume(tmp_path / "sr.nii.gz").data, rtol=1e-4, atol=1e-7)
