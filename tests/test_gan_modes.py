"""The GAN modes' pixel terms over brain voxels (``train.loss_region: brain``)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import train_config
from medsr.config import load_config
from medsr.data import build_dataset
from medsr.data.synthetic import make_prepared_dataset
from medsr.training.trainer import Trainer

SINGLE = SimpleNamespace(rank=0, world_size=1, is_main=True, enabled=False)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_prepared_dataset(tmp_path_factory.mktemp("prep"), 2, (24, 24, 24), "scalar", patch_size=8)


def _first_step(manifest, tmp_path, mode: str, batch_edit=None, **train) -> dict[str, float]:
    """The losses of a fresh run's first step on its first batch (optionally edited)."""
    cfg = load_config(train_config(manifest, tmp_path, mode, batch_size=2, **train))
    data = build_dataset(cfg, SINGLE)
    trainer = Trainer(cfg, data, tmp_path, SINGLE, torch.device("cpu"))
    data.sampler.set_epoch(0)
    batch = next(iter(trainer.make_loader()))
    if batch_edit is not None:
        batch = batch_edit(batch)
    return {k: float(v) for k, v in trainer.mode.train_step(batch).items()}


def test_paired_gan_l1_terms_ignore_voxels_outside_the_brain(manifest, tmp_path):
    """With loss_region brain a change of a target outside the mask leaves its L1 term as it was."""
    def outside(key):  # the target of one direction changed outside the brain (its input left alone)
        def edit(batch):
            assert "mask" in batch
            return dict(batch, **{key: batch[key] + 50.0 * (1 - batch["mask"])})
        return edit

    ref = _first_step(manifest, tmp_path / "a", "paired", loss_region="brain")
    assert _first_step(manifest, tmp_path / "b", "paired", outside("y"), loss_region="brain")["l1_F"] == \
        pytest.approx(ref["l1_F"], rel=1e-6)
    assert _first_step(manifest, tmp_path / "c", "paired", outside("x"), loss_region="brain")["l1_G"] == \
        pytest.approx(ref["l1_G"], rel=1e-6)
    whole = _first_step(manifest, tmp_path / "d", "paired", loss_region="patch")
    assert whole["l1_F"] != pytest.approx(ref["l1_F"], rel=1e-3)  # the mean over every voxel of the patch
