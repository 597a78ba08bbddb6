"""The GAN modes: pixel terms over brain voxels (``train.loss_region: brain``), the unpaired degradation
term and disjoint X / Y subjects (``data.domains``)."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import train_config
from medsr.checkpoint import load_checkpoint
from medsr.config import load_config
from medsr.data import build_dataset
from medsr.data.synthetic import make_prepared_dataset
from medsr.training.trainer import Trainer
from pipelines.train import train

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


def _initial_weights(cfg, run_dir) -> dict[str, torch.Tensor]:
    """The generator's weights as a run of ``cfg`` starts (no step taken)."""
    trainer = Trainer(cfg, build_dataset(cfg, SINGLE), run_dir, SINGLE, torch.device("cpu"))
    return {k: v.clone() for k, v in trainer.mode.generator.state_dict().items()}


def test_known_reverse_cycle_terms_equal_the_learned_modes_degradation_terms(manifest, tmp_path):
    """On the first batch (same weights, same patches) ``reverse: degradation``'s cycle_x and cycle_y are the learned
    G's degrade_F and degrade_Y: the same |D(F(x)) - x_lr| and |F(up(D(y))) - y|."""
    common = dict(loss_region="brain", data={"norm_stats": "shared", "domains": "disjoint"})
    known = _first_step(manifest, tmp_path / "k", "unpaired", reverse="degradation", **common)
    learned = _first_step(manifest, tmp_path / "l", "unpaired", lambda_degrade=1.0, **common)
    assert known["cycle_x"] == pytest.approx(learned["degrade_F"], rel=1e-6)
    assert known["cycle_y"] == pytest.approx(learned["degrade_Y"], rel=1e-6)


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


def test_degradation_is_preps_block_mean_and_commutes_with_shared_normalisation():
    """D on a patch is prep's block mean (numpy, float64 sums); in normalised units it is the normalised LR."""
    from medsr.degrade import block_mean_array
    from medsr.networks.degrade import Degradation

    rng = np.random.default_rng(0)
    hr = rng.normal(2.0, 1.0, (2, 3, 8, 12, 16)).astype(np.float32)
    d = Degradation(2)
    got = d(torch.from_numpy(hr)).numpy()
    np.testing.assert_allclose(got, block_mean_array(hr, 2), rtol=1e-6, atol=1e-6)
    mean, std = np.float32([0.5, -1.0, 3.0]).reshape(3, 1, 1, 1), np.float32([2.0, 0.5, 4.0]).reshape(3, 1, 1, 1)
    normed = d(torch.from_numpy((hr - mean) / std)).numpy()
    np.testing.assert_allclose(normed, (block_mean_array(hr, 2) - mean) / std, rtol=1e-5, atol=1e-5)


def test_unpaired_sampler_with_a_separate_y_set():
    """X items cover their set once per epoch, Y items come from their own set; resumable as a pure function."""
    from medsr.data.sampler import EpochBatchSampler

    s = EpochBatchSampler(10, 2, seed=3, unpaired=True, n_items_y=4)
    items = s.epoch_items(0)
    assert sorted(i[0] for i in items) == list(range(10))
    assert {i[1] for i in items} == set(range(4))
    assert items == EpochBatchSampler(10, 2, seed=3, unpaired=True, n_items_y=4).epoch_items(0)
    with pytest.raises(ValueError, match="unpaired"):
        EpochBatchSampler(10, 2, n_items_y=4)


def test_disjoint_domains_never_read_x_subjects_hr(tmp_path):
    """data.domains disjoint: X patches come from the X subjects' lr_up, Y patches from the others' hr; the
    statistics too. The X subjects' HR maps are never opened."""
    manifest = make_prepared_dataset(tmp_path / "prep", 4, (24, 24, 24), "scalar", patch_size=8)
    cfg = load_config(train_config(manifest, tmp_path / "run", "unpaired", batch_size=2, loss_region="brain",
                                   data={"domains": "disjoint", "norm_stats": "shared"}))
    data = build_dataset(cfg, SINGLE)
    xs, ys = data.info["x_subjects"], data.info["y_subjects"]
    assert xs == ["sub00", "sub02"] and ys == ["sub01", "sub03"] and data.info["subjects"] == sorted(xs + ys)
    seen: dict[str, set[str]] = {}
    for ds, key in ((data.dataset.x, "x"), (data.dataset.y, "y")):
        for subject in ds.subjects:
            orig = subject.region

            def spy(k, sl, subject=subject, orig=orig):
                seen.setdefault(subject.name, set()).add(k)
                return orig(k, sl)
            subject.region = spy
    data.sampler.set_epoch(0)
    for batch in data.sampler:
        for item in batch:
            out = data.dataset[item]
            assert set(out) == {"x", "y", "mask_x", "mask_y"}
    assert all(seen.get(s, set()) <= {"x"} for s in xs) and all(seen.get(s, set()) <= {"y"} for s in ys)
    assert seen[xs[0]] == {"x"} and seen[ys[0]] == {"y"}
    with pytest.raises(ValueError, match="data.domains"):
        build_dataset(load_config(train_config(manifest, tmp_path / "r2", "paired", data={"domains": "disjoint"})),
                      SINGLE)


def _unpaired_configs(tmp_path, kind: str, **defaults):
    """(cfg(out, steps, **train): a tiny unpaired config (rev_espcn3d, disjoint domains, shared statistics, brain
    losses, deterministic) into ``tmp_path/out``, the manifest of a fresh 2-subject ``kind`` dataset)."""
    manifest = make_prepared_dataset(tmp_path / "prep", 2, (24, 24, 24), kind, patch_size=8)
    model = {"name": "rev_espcn3d", "kwargs": {"width": 4, "depth": 2, "factor": "auto", "base": "cubic"}}

    def cfg(out, steps, **train):
        opts = {"loss_region": "brain", "deterministic": True, **defaults, **train}
        c = train_config(manifest, tmp_path / out, "unpaired", batch_size=2, max_steps=steps, checkpoint_every=2,
                         data={"norm_stats": "shared", "domains": "disjoint"}, **opts)
        c["model"] = model
        return c

    return cfg, manifest


def _refuses_separate_statistics(cfg, key: str) -> None:
    c = cfg("bad", 2)
    c["data"]["norm_stats"] = "separate"
    with pytest.raises(ValueError, match=f"config key '{key}'.*norm_stats: shared"):
        train(c)


def _whole_and_resumed(cfg) -> tuple[dict, dict]:
    """Checkpoints of a 4-step run and of a 2-step run resumed to 4 (deterministic algorithms reset after)."""
    try:
        whole = load_checkpoint(train(cfg("whole", 4)) / "last.pt")
        half = train(cfg("half", 2))
        return whole, load_checkpoint(train(cfg("half", 4), resume=True) / "last.pt")
    finally:
        torch.use_deterministic_algorithms(False)


def _assert_same_weights(a: dict, b: dict) -> None:
    """The generators and every discriminator of two checkpoints are bit-identical."""
    for k, v in a["model"]["state_dict"].items():
        assert torch.equal(b["model"]["state_dict"][k], v), k
    for d in a["discriminators"]:
        for k, v in a["discriminators"][d]["state_dict"].items():
            assert torch.equal(b["discriminators"][d]["state_dict"][k], v), (d, k)


@pytest.mark.parametrize("kind", ["scalar", "dti"])
def test_unpaired_degradation_term_brain_region_and_bit_exact_resume(tmp_path, kind):
    """lambda_degrade adds |D(F(x)) - x_lr|, |G(y)_lr - D(y)| and |F(up(D(y))) - y| (logged as degrade_F / _G / _Y);
    separate statistics are refused; resume is bit-exact, for scalar data and DTI (the brain-voxel mean)."""
    cfg, _ = _unpaired_configs(tmp_path, kind, lambda_degrade=5.0)
    _refuses_separate_statistics(cfg, "train.lambda_degrade")
    whole, again = _whole_and_resumed(cfg)
    rows = list(csv.DictReader(open(tmp_path / "whole" / "log.csv")))
    assert all(float(r[f"degrade_{k}"]) >= 0 for r in rows for k in "FGY")
    assert list(whole["discriminators"]) == ["D_Y", "D_X"]
    _assert_same_weights(whole, again)


def test_dti_degradation_follows_preps_fit_of_degraded_dwis():
    """For DTI, D is the mean over each block's brain voxels: against prep's own path (noise-free DWIs of the HR
    tensors, block-averaged, dipy WLS fit in the LR mask) it is several times closer than the block mean of the
    tensors where blocks are cut by the brain's edge, and as close inside."""
    from data_prep.hcp import fit_dti
    from data_prep.phantom import gradient_scheme
    from medsr.degrade import degrade_array, downsample_mask
    from medsr.networks.degrade import Degradation

    rng = np.random.default_rng(1)
    shape = (8, 8, 8)
    mask = np.zeros(shape, bool)
    mask[1:7, 1:8, 0:7] = True  # blocks cut by the edge on x and z
    tissue = np.array([0.8e-3, 0.05e-3, 0, 0.7e-3, 0, 0.6e-3])
    hr = (tissue[:, None, None, None] + rng.normal(0, 0.05e-3, (6,) + shape)) * mask  # zero outside the brain
    bvals, bvecs = gradient_scheme(2, 30, 1000.0, rng)
    d = np.stack([[hr[0], hr[1], hr[2]], [hr[1], hr[3], hr[4]], [hr[2], hr[4], hr[5]]])  # (3, 3, X, Y, Z)
    adc = np.einsum("ni,ij...,nj->n...", bvecs, d, bvecs)
    dwi = (np.exp(-bvals.reshape(-1, 1, 1, 1) * adc) * mask).astype(np.float32)  # no signal outside the brain
    mask_lr = downsample_mask(mask, 2)
    prep = fit_dti(degrade_array(dwi, 2), mask_lr, bvals, bvecs)
    ours, fraction = Degradation(2).brain_mean(torch.from_numpy(hr[None]).float(),
                                               torch.from_numpy(mask[None, None]).float())
    ours = ours[0].numpy() * mask_lr
    linear = degrade_array(hr.astype(np.float32), 2) * mask_lr
    edge = mask_lr & (fraction[0, 0].numpy() < 1)
    inside = mask_lr & ~edge
    assert edge.any() and inside.any()
    err = lambda a, sel: float(np.abs(a - prep)[:, sel].max())  # noqa: E731
    assert err(ours, edge) < 0.2 * err(linear, edge) and err(ours, edge) < 2e-5, (err(ours, edge), err(linear, edge))
    assert err(ours, inside) == pytest.approx(err(linear, inside), rel=1e-4) and err(ours, inside) < 2e-5


def test_known_input_is_preps_lr_up_of_y():
    """F's extra input is prep's lr_up of y: block means NN-upsampled (box); under a Gaussian profile the margin
    slices, whose profile leaves the patch, are edge copies and the loss leaves them out."""
    from types import SimpleNamespace as NS

    from medsr.networks.degrade import Degradation
    from medsr.training.modes import Unpaired

    def mode(degrade):  # the two methods on a stand-in holding what they read
        stub = NS(degrade=degrade, dti=False)
        stub._prep_lr = lambda hr, mask: Unpaired._prep_lr(stub, hr, mask)
        return stub

    y = torch.randn(2, 1, 8, 8, 16)
    box = mode(Degradation((1, 1, 4)))
    up = Unpaired._known_input(box, y, None)
    want = torch.nn.functional.avg_pool3d(y, (1, 1, 4)).repeat_interleave(4, -1)
    assert torch.allclose(up, want, atol=1e-6)
    gauss = mode(Degradation((1, 1, 4), "gaussian"))
    up = Unpaired._known_input(gauss, y, None)
    assert up.shape == y.shape
    inner = gauss.degrade(y).repeat_interleave(4, -1)  # the two LR slices whose profile lies inside
    assert torch.allclose(up[..., 4:12], inner, atol=1e-6)
    assert torch.equal(up[..., :4], up[..., 4:5].expand_as(up[..., :4]))


@pytest.mark.parametrize("kind", ["scalar", "dti"])
def test_known_reverse_cycles_are_the_degradation_terms_and_resume_bit_exact(tmp_path, kind):
    """``train.reverse: degradation``: G is prep's degradation, so cycle_y is F's loss on pairs made from Y and
    cycle_x F's LR consistency; only D_Y exists, G's own layers never change, resume is bit-exact, and the
    redundant lambda_degrade, separate statistics and a resume with the learned G are refused by key."""
    cfg, _ = _unpaired_configs(tmp_path, kind, lambda_cycle=10.0, reverse="degradation", lr=1e-2)
    with pytest.raises(ValueError, match="config key 'train.lambda_degrade'"):
        train(cfg("bad", 2, lambda_degrade=1.0))
    _refuses_separate_statistics(cfg, "train.reverse")
    whole, again = _whole_and_resumed(cfg)
    rows = list(csv.DictReader(open(tmp_path / "whole" / "log.csv")))
    assert set(rows[0]) >= {"gan_F", "cycle_x", "cycle_y", "D_Y"} and "D_X" not in rows[0]
    assert list(whole["discriminators"]) == ["D_Y"]
    _assert_same_weights(whole, again)
    fresh = _initial_weights(load_config(cfg("fresh", 1)), tmp_path / "fresh")
    for k, v in whole["model"]["state_dict"].items():
        if k.startswith(("enc_y.", "dec_x.")):  # G's own layers: no gradient reaches them
            assert torch.equal(v, fresh[k]), k
    assert any(not torch.equal(v, fresh[k]) for k, v in whole["model"]["state_dict"].items())
    try:
        with pytest.raises(ValueError, match=r"discriminators \['D_Y'\], the config trains \['D_Y', 'D_X'\]"):
            train(cfg("half", 6, reverse="network"), resume=True)
    finally:
        torch.use_deterministic_algorithms(False)
