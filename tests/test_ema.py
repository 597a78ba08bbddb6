"""``train.ema``: the moving average of the generator's weights is what a checkpoint serves, it follows the
warm-up rule step by step, resume stays bit-exact, and inference reads it with no other change."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import train_config
from medsr.checkpoint import build_model, load_checkpoint
from medsr.config import load_config
from medsr.data.synthetic import make_prepared_dataset
from medsr.training.ema import WeightAverage, warmup_decay
from pipelines.train import train


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("prep"), 2, (24, 24, 24), "scalar", patch_size=8)


def _config(manifest: Path, out: Path, max_steps: int, ema: float, mode: str = "paired_l1") -> dict:
    return train_config(manifest, out, mode, batch_size=2, max_steps=max_steps, n_epochs=4, pool_size=2,
                        checkpoint_every=100, deterministic=True, ema=ema, lr=1e-2)


def test_the_average_follows_the_warmup_rule_by_hand():
    """Three updates of a one-parameter model against the recurrence written out."""
    net = torch.nn.Linear(1, 1, bias=False)
    values = [1.0, 3.0, -2.0]
    avg = WeightAverage(net, decay=0.5)
    expected = None
    for n, v in enumerate(values):
        net.weight.data.fill_(v)
        avg.update(net)
        if expected is None:
            expected = v  # the first update copies
        else:
            d = min(0.5, (1 + n) / (10 + n))  # the update after n earlier ones
            expected = d * expected + (1 - d) * v
        assert avg.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert warmup_decay(0.999, 0) == pytest.approx(0.1) and warmup_decay(0.999, 10**6) == 0.999
    assert avg.updates == 3 and net.weight.requires_grad and not avg.module.weight.requires_grad


def test_config_range_is_named():
    assert load_config({}).train.ema == 0.0
    for bad in ("1", "-0.1", "1.5"):
        with pytest.raises(ValueError, match=r"config key 'train.ema'.*out of range"):
            load_config({}, [f"train.ema={bad}"])


@pytest.mark.parametrize("mode", ["paired_l1", "unpaired"])
def test_checkpoint_serves_the_average_and_resumes_bit_exact(tmp_path, manifest, mode):
    """The checkpoint's model is the average (not the optimiser's weights, kept in ``ema``), a run stopped at
    step 3 and resumed to 6 equals one run to 6 in both, and ``build_model`` (what infer uses) loads it."""
    whole = load_checkpoint(train(_config(manifest, tmp_path / "whole", 6, 0.9, mode)) / "last.pt")
    train(_config(manifest, tmp_path / "split", 3, 0.9, mode))
    split = load_checkpoint(train(_config(manifest, tmp_path / "split", 6, 0.9, mode), resume=True) / "last.pt")
    plain = load_checkpoint(train(_config(manifest, tmp_path / "plain", 6, 0.0, mode)) / "last.pt")

    assert "ema" not in plain and whole["ema"]["updates"] == 6 and split["ema"]["updates"] == 6
    for key, t in whole["model"]["state_dict"].items():
        assert torch.equal(t, split["model"]["state_dict"][key]), key
        assert torch.equal(whole["ema"]["train_state_dict"][key], split["ema"]["train_state_dict"][key]), key
        # The optimiser's weights are those of a run without the average: averaging never feeds back.
        assert torch.equal(whole["ema"]["train_state_dict"][key], plain["model"]["state_dict"][key]), key
    moved = [k for k, t in whole["model"]["state_dict"].items()
             if t.is_floating_point() and not torch.equal(t, whole["ema"]["train_state_dict"][k])]
    assert moved, "the served weights should differ from the last step's"
    model = build_model(whole["model"])
    for key, t in model.state_dict().items():
        assert torch.equal(t, whole["model"]["state_dict"][key])


def test_switching_the_average_on_at_resume_starts_it_there(tmp_path, manifest):
    first = load_checkpoint(train(_config(manifest, tmp_path / "run", 3, 0.0)) / "last.pt")
    resumed = load_checkpoint(train(_config(manifest, tmp_path / "run", 5, 0.9), resume=True) / "last.pt")
    assert "ema" not in first and resumed["ema"]["updates"] == 2
    # and off again: the run continues from the optimiser's weights, not from the average
    again = load_checkpoint(train(_config(manifest, tmp_path / "run", 6, 0.0), resume=True) / "last.pt")
    assert "ema" not in again and again["step"] == 6
