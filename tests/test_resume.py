"""A run SIGKILLed mid-epoch and resumed ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import train_config
from medsr.checkpoint import load_checkpoint
from medsr.data.synthetic import make_prepared_dataset
from pipelines.train import train

# Runs the CLI with every training step slowed down, so the test can kill it mid-epoch.
SLOW_CLI = """
import sys, time
from medsr.training import modes
orig = modes.Unpaired.train_step
def slow(self, batch):
    time.sleep(0.08)
    return orig(self, batch)
modes.Unpaired.train_step = slow
from pipelines.cli import main
sys.exit(main(["train", sys.argv[1]]))
"""


def _config(manifest: Path, out: Path) -> dict:
    # Two epochs (the LR decays in the second), the image pool fills and starts swapping.
    return train_config(manifest, out, "unpaired", data={"flip": True}, model={"norm": "instance"}, batch_size=4,
                        n_epochs_decay=1, pool_size=3, checkpoint_every=2, deterministic=True)


def _losses(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("patches_per_s", "train_s")} for r in csv.DictReader(open(path))]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    manifest = make_prepared_dataset(tmp_path / "prep", 2, (24, 24, 24), "dti", patch_size=8)
    try:
        ref = train(_config(manifest, tmp_path / "ref"))
        ref_ck = load_checkpoint(ref / "last.pt")
        total = ref_ck["step"]
        spe = total // 2
        assert total >= 8 and ref_ck["epoch"] == 2

        cfg_path = tmp_path / "killed.yaml"
        cfg_path.write_text(yaml.safe_dump(_config(manifest, tmp_path / "killed")))
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
        proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, str(cfg_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ckpt = tmp_path / "killed" / "last.pt"
        seen, deadline = 0.0, time.time() + 120
        # Kill after the checkpoint at step 2 is replaced by the one at step 4, a step into epoch 0's rest.
        writes = 0
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and ckpt.stat().st_mtime_ns != seen:
                seen = ckpt.stat().st_mtime_ns
                writes += 1
                if writes == 2:
                    time.sleep(0.12)
                    break
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = load_checkpoint(ckpt)["step"]
        assert 2 <= killed_at < spe, f"expected a mid-epoch kill, checkpoint at step {killed_at} of {spe}"

        resumed = train(cfg_path, resume=True)
        res_ck = load_checkpoint(resumed / "last.pt")
        assert res_ck["step"] == total
        for name in ("model",):
            sd_a, sd_b = ref_ck[name]["state_dict"], res_ck[name]["state_dict"]
            assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a), "generator weights differ"
        for d in ("D_Y", "D_X"):
            sd_a, sd_b = ref_ck["discriminators"][d]["state_dict"], res_ck["discriminators"][d]["state_dict"]
            assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a), f"{d} weights differ"
        for opt in ("G", "D"):
            st_a, st_b = ref_ck["optimizers"][opt]["state"], res_ck["optimizers"][opt]["state"]
            assert all(torch.equal(st_a[i]["exp_avg_sq"], st_b[i]["exp_avg_sq"]) for i in st_a)
        assert ref_ck["schedulers"]["G"]["last_epoch"] == res_ck["schedulers"]["G"]["last_epoch"] == 2
        # The log holds every step once, with the same losses.
        assert _losses(ref / "log.csv") == _losses(resumed / "log.csv")
    finally:
        torch.use_deterministic_algorithms(False)


def test_resume_refuses_another_model(tmp_path):
    manifest = make_prepared_dataset(tmp_path / "prep", 1, (24, 24, 24), "scalar", patch_size=8)
    cfg = _config(manifest, tmp_path / "run")
    cfg["train"].update(mode="paired_l1", deterministic=False, max_steps=2)
    train(cfg)
    cfg["model"]["kwargs"]["width"] = 6
    with pytest.raises(ValueError, match="differs from the config"):
        train(cfg, resume=True, overrides=["train.max_steps=4"])


def test_max_minutes_stops_with_a_checkpoint_and_resumes_exactly(tmp_path):
    """A time-limited run stops after the step that crossed the limit, checkpointed; resuming it
    (limit lifted) ends bit-identical to a run that was never stopped; an exhausted budget trains nothing."""
    manifest = make_prepared_dataset(tmp_path / "prep", 2, (24, 24, 24), "dti", patch_size=8)

    def cfg(out: str, **train_kw) -> dict:
        c = _config(manifest, tmp_path / out)
        c["train"].update(mode="paired_l1", n_epochs=1, n_epochs_decay=0, max_steps=4, checkpoint_every=100)
        c["train"].update(train_kw)
        return c

    try:
        ref = load_checkpoint(train(cfg("ref")) / "last.pt")
        assert ref["step"] == 4 and ref["train_seconds"] > 0

        # 1e-6 minutes: over the limit after the first step, whatever the machine's speed
        run = train(cfg("timed", max_minutes=1e-6))
        ck = load_checkpoint(run / "last.pt")
        assert ck["step"] == 1
        assert [int(r["step"]) for r in csv.DictReader(open(run / "log.csv"))] == [1]
        # the budget counts over resumes: a resume with the same limit trains no further step
        again = load_checkpoint(train(cfg("timed", max_minutes=1e-6), resume=True) / "last.pt")
        assert again["step"] == 1 and again["train_seconds"] == ck["train_seconds"]

        done = load_checkpoint(train(cfg("timed"), resume=True) / "last.pt")
        assert done["step"] == 4
        assert all(torch.equal(ref["model"]["state_dict"][k], done["model"]["state_dict"][k])
                   for k in ref["model"]["state_dict"])
        assert done["train_seconds"] > ck["train_seconds"]
    finally:
        torch.use_deterministic_algorithms(False)
