"""Peak resident memory of a short ``medsr train`` against the number of prepared subjects.

Generates ``max(--n-subjects)`` prepared subjects once (``medsr.data.synthetic``, ``--shape``, ``--kind``),
writes one manifest per count listing the first N of them, and runs ``medsr train CONFIG`` for
``--steps`` steps on each in a fresh subprocess. The peak RSS is the child's own ``ru_maxrss`` from
``os.wait4`` (what ``/usr/bin/time -v`` prints as "Maximum resident set size"): the training process
and any data-loader workers it waited for. Each count is run twice: the first run builds the
subjects' memory-mappable caches (``medsr.data.cache``; any left by an earlier run are removed
first), the second finds them.

    python benchmarks/train_rss.py --n-subjects 4 48 --shape 96 96 96 --kind scalar --workdir /tmp/rss

The target: the peak grows by at most 100 MiB from 4 to 48 subjects (training memory must not grow with the
subjects; see ``medsr.data.cache``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate(folder: Path, n: int, shape: tuple[int, int, int], kind: str, patch_size: int) -> list[dict]:
    """``n`` prepared subjects under ``folder`` (reused when already there); their manifest rows."""
    from medsr.data.synthetic import make_prepared_dataset
    from medsr.manifest import read_manifest

    manifest = folder / "all" / "manifest.csv"
    df = read_manifest(manifest) if manifest.exists() else None
    same = df is not None and len(df) >= n and set(df["shape"][:n]) == {"x".join(map(str, shape))} \
        and set(df["kind"][:n]) == {kind}
    if not same:
        df = read_manifest(make_prepared_dataset(folder / "all", n, shape, kind, patch_size=patch_size))
    return df.to_dict("records")[:n]


def run_train(config: str, manifest: Path, out: Path, steps: int, workers: int, extra: list[str]) -> dict:
    """One ``medsr train`` subprocess; returns its wall seconds and peak RSS (MiB)."""
    sets = [f"data.manifest={manifest}", f"output_dir={out}", f"train.max_steps={steps}", "train.threads=1",
            f"train.checkpoint_every={steps}", f"data.num_workers={workers}", *extra]
    cmd = [sys.executable, "-m", "pipelines.cli", "train", config, "--overwrite", "--set", *sets]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    out_text = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"medsr train failed ({proc.returncode}):\n{out_text[-3000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "quick_paired_l1.yaml"))
    p.add_argument("--n-subjects", type=int, nargs="+", default=[4, 48], help="subject counts to compare")
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    p.add_argument("--kind", choices=["scalar", "dti"], default="scalar")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=0, help="data.num_workers")
    p.add_argument("--set", dest="extra", nargs="+", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--workdir", type=Path, default=None, help="keep the generated subjects here (reused)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from medsr.data.cache import cache_folder
    from medsr.manifest import write_manifest

    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    work = Path(args.workdir or tmp.name).resolve()  # type: ignore[union-attr]
    rows = generate(work, max(args.n_subjects), tuple(args.shape), args.kind, 16)
    results = []
    for n in args.n_subjects:
        manifest = write_manifest(work / f"n{n}" / "manifest.csv", rows[:n])
        for row in rows[:n]:  # the first run builds every cache it needs
            shutil.rmtree(cache_folder(row["hr"]), ignore_errors=True)
        for run in ("first", "cached"):
            r = run_train(args.config, manifest, work / f"run_n{n}_{run}", args.steps, args.workers, args.extra)
            results.append({"subjects": n, "run": run, **r})
            print(f"{n:4d} subjects ({run:6s} run): peak RSS {r['peak_rss_mib']:7.1f} MiB, {r['wall_s']:5.1f} s",
                  flush=True)
    by = {(r["subjects"], r["run"]): r["peak_rss_mib"] for r in results}
    lo, hi = min(args.n_subjects), max(args.n_subjects)
    for run in ("first", "cached"):
        print(f"growth {lo} -> {hi} subjects ({run} runs): {by[(hi, run)] - by[(lo, run)]:+.1f} MiB (target <= +100)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
