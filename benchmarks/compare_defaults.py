"""Compare generator settings for ``configs/default.yaml`` on generated DTI.

Trains each candidate (paired_l1, width 16, 16^3 patches) on two generated subjects and scores the
whole held-out third subject with the inference pipeline (windows + inverse normalisation), against
nearest-neighbour upsampling. This is the measurement behind the default's ``norm: none,
residual: true`` choice; rerun it with::

    python benchmarks/compare_defaults.py --out /tmp/compare_defaults --steps 300
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medsr.data.synthetic import make_prepared_dataset
from medsr.inference import Predictor
from medsr.io import load_mask, load_volume
from medsr.manifest import read_manifest
from medsr.metrics import rmse
from pipelines.train import train

CANDIDATES = {
    "instance_noresid_d2": {"norm": "instance", "residual": False, "depth": 2},  # the paper's setting
    "none_resid_d0": {"norm": "none", "residual": True, "depth": 0},
    "none_resid_d2": {"norm": "none", "residual": True, "depth": 2},
    "none_resid_d4": {"norm": "none", "residual": True, "depth": 4},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/compare_defaults"), help="work folder")
    p.add_argument("--steps", type=int, default=300, help="training steps per candidate")
    a = p.parse_args()
    m = make_prepared_dataset(a.out / "data", 3, (48, 48, 48), "dti", patch_size=16, seed=10)
    test = read_manifest(m).iloc[2]
    hr, lr_up, mask = load_volume(test.hr), load_volume(test.lr_up), load_mask(test["mask"])
    base = rmse(lr_up.data, hr.data, mask)
    print(f"nearest-neighbour lr_up RMSE on held-out {test.subject}: {base:.4e}", flush=True)
    res = {"nn": base}
    for name, kw in CANDIDATES.items():
        cfg = {
            "output_dir": str(a.out / f"run_{name}"),
            "data": {"manifest": str(m), "subjects": ["sub00", "sub01"], "patch_size": 16},
            "model": {"name": "rev_srcnn3d", "kwargs": {"width": 16, "memory_efficient": False, **kw}},
            "train": {"mode": "paired_l1", "batch_size": 4, "max_steps": a.steps, "n_epochs": 100, "lr": 2e-4,
                      "threads": 1, "samples": False, "log_every": 50, "checkpoint_every": 100000},
        }
        t = time.time()
        run_dir = train(cfg, overwrite=True)
        pred = Predictor.from_checkpoint(run_dir / "last.pt", "cpu").predict(lr_up)
        res[name] = r = rmse(pred.data, hr.data, mask)
        print(f"{name}: held-out RMSE {r:.4e} ({r / base:.3f} x NN) after {a.steps} steps, "
              f"{time.time() - t:.0f} s", flush=True)
    (a.out / "result.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
