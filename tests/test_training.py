"""Training modes, the Trainer's run folder, checkpoints and bad-input errors."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import train_config
from medsr.checkpoint import load_checkpoint, load_generator
from medsr.config import load_config
from medsr.data import build_dataset
from medsr.data.synthetic import make_prepared_dataset
from medsr.training import TrainingDiverged
from medsr.training.modes import PairedL1, register_mode
from medsr.training.schedule import LinearDecay
from medsr.training.trainer import Trainer
from pipelines.cli import main
from pipelines.train import train

SINGLE = SimpleNamespace(rank=0, world_size=1, is_main=True, enabled=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_prepared_dataset(tmp_path_factory.mktemp("prep"), 2, (32, 32, 32), "dti", patch_size=8)


@pytest.mark.parametrize("mode, term", [("paired_l1", ["l1_F", "l1_G"]), ("paired_l2", ["l2_F", "l2_G"]),
                                        ("paired", ["l1_F", "l1_G"]), ("unpaired", ["cycle_x", "cycle_y"])])
def test_each_mode_overfits_a_fixed_batch(manifest, tmp_path, mode, term):
    torch.set_num_threads(1)
    cfg = load_config(train_config(manifest, tmp_path, mode, lr=3e-3, batch_size=2))
    data = build_dataset(cfg, SINGLE)
    trainer = Trainer(cfg, data, tmp_path, SINGLE, torch.device("cpu"))
    data.sampler.set_epoch(0)
    batch = next(iter(trainer.make_loader()))
    curve = []
    for _ in range(30):
        losses = trainer.mode.train_step(batch)
        assert set(losses) == set(trainer.mode.loss_names)
        curve.append(sum(float(losses[k]) for k in term))
    assert np.mean(curve[-5:]) < 0.5 * curve[0], curve


def test_run_folder_checkpoint_and_generator(manifest, tmp_path):
    out = tmp_path / "run"
    cfg = train_config(manifest, out, "paired", max_steps=None, checkpoint_every=5, log_every=2, samples=True,
               batch_size=4)
    run_dir = train(cfg)
    assert run_dir == out
    assert {"last.pt", "log.csv", "config.yaml", "samples"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert list(rows[0]) == ["step", "epoch", "gan_F", "gan_G", "l1_F", "l1_G", "D_Y", "D_X", "lr", "patches_per_s", "train_s",
                            "threads"]
    ck = load_checkpoint(out / "last.pt")  # weights_only=True
    steps = ck["step"]
    assert steps == int(rows[-1]["step"]) and ck["epoch"] == 1 and (out / "samples" / "epoch_001.png").is_file()
    assert ck["data"]["factor"] == 2 and ck["data"]["patch_size"] == 8 and ck["data"]["channels"] == 6
    assert ck["data"]["kind"] == "dti" and set(ck["discriminators"]) == {"D_Y", "D_X"}
    assert ck["model"]["kwargs"]["in_channels"] == 6 and ck["discriminators"]["D_Y"]["kwargs"]["in_channels"] == 12
    assert set(ck["optimizers"]) == {"G", "D"} and ck["medsr_version"] and ck["config"]["train"]["mode"] == "paired"
    assert len(ck["norm"]["x"]["mean"]) == 6 and len(ck["rng"]["per_rank"]) == 1
    assert load_config(out / "config.yaml").train.checkpoint_every == 5
    model, sx, sy, _ = load_generator(out / "last.pt")
    x = torch.randn(1, 6, 8, 8, 8)
    model2, _, _, _ = load_generator(out / "last.pt")
    assert torch.equal(model(x), model2(x)) and sy.mean == ck["norm"]["y"]["mean"]
    # An existing run is refused unless resumed or overwritten.
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(cfg)
    assert main(["train", str(out / "config.yaml"), "--set", "train.max_steps=3"]) == 2
    run_dir = train(cfg, overwrite=True, overrides=["train.max_steps=3"])
    assert load_checkpoint(run_dir / "last.pt")["step"] == 3
    # Resuming a finished run with a larger budget continues from its step.
    train(cfg, resume=True, overrides=["train.max_steps=5"])
    assert load_checkpoint(run_dir / "last.pt")["step"] == 5
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [2, 3, 4, 5]


def test_bad_config_channels_and_empty_folder(manifest, tmp_path):
    cfg = train_config(manifest, tmp_path / "r1", max_steps=2)
    cfg["model"]["kwargs"]["in_channels"] = 1
    with pytest.raises(ValueError, match="model.kwargs.in_channels' is 1 but the data .* has 6 channel"):
        train(cfg)
    assert not (tmp_path / "r1").exists()  # nothing written on bad input
    cfg = train_config(manifest, tmp_path / "r2", max_steps=2)
    cfg["model"]["kwargs"]["widht"] = 3
    with pytest.raises(ValueError, match="model.kwargs.*widht"):
        train(cfg)
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="holds no medsr run"):
        train(train_config(manifest, tmp_path / "r3"), overwrite=True)
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


@register_mode("test_nan_at_3")
class _NanAtThree(PairedL1):
    """paired_l1 whose loss turns NaN at the third step (the weights are poisoned too)."""

    calls = 0

    def train_step(self, batch):
        self.calls += 1
        losses = super().train_step(batch)
        if self.calls == 3:
            with torch.no_grad():
                for p in self.generator.parameters():
                    p.fill_(float("nan"))
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(manifest, tmp_path, capsys):
    cfg = train_config(manifest, tmp_path / "run", "test_nan_at_3", max_steps=10, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 3 .*last good checkpoint .*last.pt \(step 2\)"):
        train(cfg)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"]["state_dict"].values())
    cfg_path = tmp_path / "nan.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(train_config(manifest, tmp_path / "run2", "test_nan_at_3", max_steps=10)))
    assert main(["train", str(cfg_path)]) == 1
    assert "non-finite loss at step 3" in capsys.readouterr().err


def test_linear_decay_schedule():
    f = LinearDecay(3, 2)
    assert [f(e) for e in range(5)] == pytest.approx([1, 1, 1, 2 / 3, 1 / 3])
    assert LinearDecay(20, 0)(19) == 1.0


def test_forward_only_brain_loss_and_cosine_decay(manifest, tmp_path):
    """lambda_reverse=0 trains F alone (G's own layers untouched); loss_region=brain averages the
    loss over mask voxels only (a change outside the mask costs nothing); cosine decay ends near 0."""
    from medsr.training.modes import region_loss

    cfg = train_config(manifest, tmp_path / "fwd", max_steps=3, lambda_reverse=0.0, loss_region="brain",
               lr_decay="cosine", lr=1e-2)
    cfg["model"] = {"name": "rev_espcn3d", "kwargs": {"width": 4, "depth": 1, "factor": "auto"}}
    run = train(cfg)
    ck = load_checkpoint(run / "last.pt")
    assert ck["model"]["kwargs"]["factor"] == 2  # "auto" resolved from the data
    sd = ck["model"]["state_dict"]
    assert all(float(sd[k].abs().sum()) == 0.0 for k in ("dec_x.weight", "dec_x.bias"))  # G's decoder never moved
    assert float(sd["dec_y.weight"].abs().sum()) > 0.0
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [float(r["l1_G"]) for r in rows] == [0.0, 0.0, 0.0]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] > lrs[1] > lrs[2]  # the LR logged after step s is the one step s used

    pred, target = torch.zeros(1, 2, 4, 4, 4), torch.ones(1, 2, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., :2] = 1
    target[..., 2:] = 100.0  # outside the mask: ignored
    loss = region_loss(torch.nn.functional.l1_loss, pred, target, mask)
    assert float(loss) == pytest.approx(1.0)


def test_a_schedule_resumes_from_a_lambdalr_state():
    """Checkpoints holding a ``LambdaLR`` state per optimiser resume at the rate it had set."""
    from medsr.training.schedule import LRSchedule, RunPoint

    p = torch.nn.Parameter(torch.zeros(1))
    old = torch.optim.lr_scheduler.LambdaLR(torch.optim.Adam([p], lr=0.1), LinearDecay(1, 3))
    old.step()
    old.step()
    opt = torch.optim.Adam([p], lr=0.5)
    schedule = LRSchedule(opt, LinearDecay(1, 3))
    schedule.load_state_dict(old.state_dict())
    schedule.step(RunPoint(step=20, epoch=2))
    assert opt.param_groups[0]["lr"] == old.optimizer.param_groups[0]["lr"] == 0.1 * LinearDecay(1, 3)(2)
    assert schedule.state_dict() == {"base_lrs": [0.1], "last_epoch": 2}


def test_threads_auto_is_chosen_while_training_and_logged(manifest, tmp_path, monkeypatch, capsys):
    """``train.threads: auto`` times the counts the cores allow in the first steps and says its choice;
    ``log.csv`` records the count of every row (whichever count is fastest here: nothing is timed)."""
    from medsr.utils.threads import candidates, usable_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    train(train_config(manifest, tmp_path, max_steps=16, threads="auto", batch_size=2))
    assert torch.get_num_threads() == before  # not leaked into the caller
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert {int(r["threads"]) for r in rows} <= set(candidates(usable_cores()))
    err = capsys.readouterr().err
    if usable_cores() > 1:
        assert "medsr train: threads auto: " in err and "steps/s)" in err
