"""The shared ground: volume type, patches, atomic writes, CLI dispatch."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from medsr import Volume
from medsr.patches import brain_patch_origins, grid_origins, patch_fractions
from medsr.utils.atomic import atomic_path


def test_volume_world_and_channels(oblique):
    v = Volume(np.zeros((4, 5, 6), np.float64), oblique, name="x")
    assert v.data.dtype == np.float32 and v.data.shape == (1, 4, 5, 6)
    np.testing.assert_allclose(v.world(np.array([0, 0, 0])), oblique[:3, 3])
    np.testing.assert_allclose(v.voxel_size, (1.5, 1.25, 2.0))


def test_patch_fraction_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((30, 27, 25)) > 0.7
    origins = grid_origins(mask.shape, 8, 5)
    got = patch_fractions(mask, origins, 8)
    want = [mask[x:x + 8, y:y + 8, z:z + 8].mean() for x, y, z in origins]
    np.testing.assert_allclose(got, want)


def test_brain_rule_keeps_one_percent():
    mask = np.zeros((48, 48, 24), bool)
    mask[0, 0, 0:137] = True  # 24 voxels = 0.17% of a 24^3 patch: rejected
    mask[30:33, 30:33, 0:24] = True  # 216 voxels = 1.56%: kept
    kept = brain_patch_origins(mask, 24, None, 0.01)
    assert kept.tolist() == [[24, 24, 0]]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(FileExistsError):
        with atomic_path(target, overwrite=False):
            pass


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "prep" in out.stdout
