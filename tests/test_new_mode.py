"""A new training mode is one class and its registration: this file's tiny mode trains through the normal Trainer."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from conftest import train_config
from medsr.checkpoint import load_checkpoint, load_generator
from medsr.config import load_config
from medsr.data import build_dataset
from medsr.data.synthetic import make_prepared_dataset
from medsr.training import TrainMode, create_mode, register_mode
from medsr.training.networks import DataFacts
from medsr.training.trainer import Trainer, seed_everything
from pipelines.train import train

SINGLE = SimpleNamespace(rank=0, world_size=1, is_main=True, enabled=False)


@register_mode("test_forward_sgd")
class ForwardSGD(TrainMode):
    """F alone, by SGD with momentum on the squared error; no discriminator."""

    loss_names = ["mse"]
    find_unused = True  # G's own encoder and decoder get no gradient

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"F": torch.optim.SGD(self.generator.parameters(), lr=self.cfg.train.lr, momentum=0.9)}

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self.autocast():
            loss = nn.functional.mse_loss(self.passes(x=batch["x"])["fake_y"].float(), batch["y"])
        self.optimise("F", loss)
        return {"mse": loss.detach()}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_prepared_dataset(tmp_path_factory.mktemp("prep"), 2, (24, 24, 24), "dti", patch_size=8)


def _config(manifest, out, steps: int, lr_decay: str = "epochs") -> dict:
    return train_config(manifest, out, "test_forward_sgd", batch_size=2, max_steps=steps, checkpoint_every=2,
                        lr=0.05, lr_decay=lr_decay, deterministic=True)


def test_a_registered_mode_trains_checkpoints_and_resumes(manifest, tmp_path):
    run = train(_config(manifest, tmp_path / "cosine", 4, "cosine"))
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert list(rows[0])[:4] == ["step", "epoch", "mse", "lr"] and len(rows) == 4
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(0.05) and lrs[0] > lrs[1] > lrs[2] > lrs[3] > 0  # its optimiser, scheduled
    ck = load_checkpoint(run / "last.pt")
    assert ck["step"] == 4 and ck["mode"] == "test_forward_sgd" and ck["discriminators"] == {}
    assert set(ck["optimizers"]) == set(ck["schedulers"]) == {"F"}
    assert all("momentum_buffer" in s for s in ck["optimizers"]["F"]["state"].values())
    model, _, _, _ = load_generator(run / "last.pt")
    assert model(torch.zeros(1, 6, 8, 8, 8)).shape == (1, 6, 8, 8, 8)
    # Stopped after 2 steps and resumed: the same weights and momentum as the uninterrupted run.
    ck = load_checkpoint(train(_config(manifest, tmp_path / "whole", 4)) / "last.pt")
    half = train(_config(manifest, tmp_path / "half", 2))
    train(_config(manifest, half, 4), resume=True)
    again = load_checkpoint(half / "last.pt")
    for k, v in ck["model"]["state_dict"].items():
        assert torch.equal(again["model"]["state_dict"][k], v), k
    for i, s in ck["optimizers"]["F"]["state"].items():
        assert torch.equal(again["optimizers"]["F"]["state"][i]["momentum_buffer"], s["momentum_buffer"])


def test_the_trainer_trains_what_the_mode_builder_builds(manifest, tmp_path):
    """The public builder under the run's seed gives the Trainer's initial networks, bit for bit."""
    cfg = load_config(train_config(manifest, tmp_path, "paired"))
    data = build_dataset(cfg, SINGLE)
    trainer = Trainer(cfg, data, tmp_path, SINGLE, torch.device("cpu"))
    seed_everything(cfg.train.seed)
    built = create_mode(cfg).build_networks(DataFacts.of(data, cfg))
    assert list(built) == ["generator", "D_Y", "D_X"] == list(trainer.mode.networks)
    for name, net in built.items():
        assert net.kwargs == trainer.mode.networks[name].kwargs
        ours = trainer.mode.networks[name].module.state_dict()
        assert all(torch.equal(v, ours[k]) for k, v in net.module.state_dict().items()), name
