"""DDP on gloo: 2 CPU ranks at batch b reach the weights of 1 process at batch 2b."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from conftest import free_port, train_config
from medsr.checkpoint import load_checkpoint
from medsr.config import load_config
from medsr.data.synthetic import make_prepared_dataset
from medsr.training import create_mode
from medsr.training.distributed import shutdown_distributed
from medsr.training.networks import DataFacts
from medsr.training.trainer import seed_everything
from pipelines.train import train

MODES = ("paired_l1", "paired")


def _config(manifest: Path, out: Path, mode: str, batch: int) -> dict:
    # No instance norm here: a bias before a norm has a zero gradient up to rounding, which Adam
    # amplifies to +-lr steps, so such biases would differ by rounding noise, not by a DDP error.
    return train_config(manifest, out, mode, discriminator={"norm": "none"}, batch_size=batch, max_steps=3,
                        checkpoint_every=100, device="cpu")


def _known_reverse_config(manifest: Path, out: Path) -> dict:
    return train_config(manifest, out, "unpaired", discriminator={"norm": "none"}, batch_size=2, max_steps=3,
                        checkpoint_every=100, device="cpu", reverse="degradation", pool_size=2,
                        data={"norm_stats": "shared", "domains": "disjoint"})


def _rank_main(rank: int, world: int, port: int, manifest: str, root: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    # The caller owns the process group here (as a launcher script would); train() joins it as is.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for mode in MODES:
            train(_config(Path(manifest), Path(root) / f"ddp_{mode}", mode, batch=2))
        # Unpaired with G the known degradation: G's own layers get no gradient, which DDP must have been told.
        train(_known_reverse_config(Path(manifest), Path(root) / "ddp_unpaired_known"))
        # train.max_minutes with clocks that disagree: rank 1's runs 1000x fast, so on its own it would stop
        # after one step while rank 0 trains on; a rank stopping alone would leave the other waiting in an
        # all-reduce forever. The time rides in the loss all-reduce, so both ranks stop at the same step.
        if rank == 1:
            import time

            real = time.perf_counter
            time.perf_counter = lambda: 1000.0 * real()
        cfg = _config(Path(manifest), Path(root) / "ddp_timed", "paired_l1", batch=2)
        cfg["train"].update(max_steps=10_000, n_epochs=1000, max_minutes=0.05)
        train(cfg)
    finally:
        shutdown_distributed()  # collects the runs' DDP wrappers first (a teardown race of gloo otherwise)


def _initial_generator(cfg: dict) -> dict[str, torch.Tensor]:
    """The generator's weights before any step: the mode's builder under the run's seed, as the Trainer runs it."""
    config = load_config(cfg)
    seed_everything(config.train.seed)
    nets = create_mode(config).build_networks(DataFacts(channels=6, factor=2, patch_size=8))
    return nets["generator"].module.state_dict()


def test_two_ranks_equal_one_process_at_double_batch(tmp_path):
    manifest = make_prepared_dataset(tmp_path / "prep", 2, (24, 24, 24), "dti", patch_size=8)
    mp.spawn(_rank_main, args=(2, free_port(), str(manifest), str(tmp_path)), nprocs=2, join=True)
    for mode in MODES:
        cfg = _config(manifest, tmp_path / f"single_{mode}", mode, batch=4)
        single = train(cfg)
        a = load_checkpoint(single / "last.pt")
        b = load_checkpoint(tmp_path / f"ddp_{mode}" / "last.pt")
        assert a["step"] == b["step"] == 3 and len(b["rng"]["per_rank"]) == 2 and b["rng"]["world_size"] == 2
        nets = [("model", a["model"], b["model"])]
        nets += [(d, a["discriminators"][d], b["discriminators"][d]) for d in a["discriminators"]]
        for name, na, nb in nets:
            for k, va in na["state_dict"].items():
                torch.testing.assert_close(nb["state_dict"][k], va, rtol=1e-5, atol=1e-5, msg=f"{mode} {name}.{k}")
        # The weights really moved from their initial values, so the comparison above is not between two
        # untouched initialisations: every generator weight tensor differs from the one it was built with.
        assert a["optimizers"]["G"]["state"][0]["step"] == 3
        init = _initial_generator(cfg)
        weights = [k for k in init if k.endswith("weight")]
        moved = [k for k in weights if not torch.equal(a["model"]["state_dict"][k], init[k])]
        assert weights and moved == weights, f"{mode}: unmoved {sorted(set(weights) - set(moved))}"
    known = load_checkpoint(tmp_path / "ddp_unpaired_known" / "last.pt")
    assert known["step"] == 3 and list(known["discriminators"]) == ["D_Y"] and len(known["mode_state"]["per_rank"]) == 2
    timed = load_checkpoint(tmp_path / "ddp_timed" / "last.pt")
    assert 1 <= timed["step"] < 10_000 and timed["train_seconds"] >= 0.05 * 60
