"""Prep as independent jobs: concurrent ``medsr prep`` runs on disjoint subjects share one output folder."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from medsr.data.synthetic import synthetic_subject
from medsr.io import save_mask, save_volume
from medsr.manifest import read_manifest, read_manifest_raw, update_manifest

# `medsr prep` with every subject slowed down, started together through a go-file, so the two jobs'
# manifest updates interleave (without a lock, each would overwrite the other's rows).
SLOW_PREP = """
import sys, time
from pathlib import Path
import data_prep.volumes as volumes
orig = volumes.prep_subject
def slow(*a, **k):
    time.sleep(0.3)
    return orig(*a, **k)
volumes.prep_subject = slow
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.01)
from pipelines.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _inputs(root: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        vol, mask = synthetic_subject((16, 16, 16), "scalar", seed=i)  # oblique affine
        name = f"s{i:02d}"
        save_volume(vol, root / name / "image.nii.gz")
        save_mask(mask, vol.affine, root / name / "mask.nii.gz")
        names.append(name)
    return names


def test_two_concurrent_prep_jobs_fill_one_manifest(tmp_path):
    names = _inputs(tmp_path / "in", 8)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    go = tmp_path / "go"
    jobs = []
    for k, part in enumerate((names[0::2], names[1::2])):  # a 2-task array on disjoint subjects
        cmd = [sys.executable, "-c", SLOW_PREP, str(tmp_path / f"ready{k}"), str(go), "prep", "volumes",
               "--input", str(tmp_path / "in"), "--output", str(out), "--subjects", *part]
        jobs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    logs = [j.communicate(timeout=120)[0].decode() for j in jobs]
    assert [j.returncode for j in jobs] == [0, 0], logs
    df = read_manifest(out / "manifest.csv")
    assert sorted(df["subject"]) == names and set(df["status"]) == {"ok"}
    assert all(Path(p).is_file() for c in ("hr", "lr", "lr_up", "mask") for p in df[c])
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporaries left


def test_update_manifest_merges_rows_by_subject(tmp_path):
    path = tmp_path / "manifest.csv"
    update_manifest(path, [{"subject": "a", "status": "failed", "error": "subject a: boom"}])
    update_manifest(path, [{"subject": "b", "status": "ok", "hr": str(tmp_path / "b" / "hr.nii.gz")}])
    update_manifest(path, [{"subject": "a", "status": "ok"}])
    df = read_manifest_raw(path).set_index("subject")
    assert list(df.index) == ["a", "b"] and list(df["status"]) == ["ok", "ok"]
    assert df.loc["b", "hr"] == "b/hr.nii.gz"  # still stored relative to the manifest after the merge
