"""Out-of-core training data: subjects memory-mapped from .npy caches (medsr.data.cache).

Properties: the dataset holds no subject data in private memory (every large array is a file
mapping), patches and statistics are bit-identical to normalising in-memory volumes, a cache is
rebuilt when its source changes, and processes that create one cache at once build it once.
"""
from __future__ import annotations

import mmap
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medsr.config import load_config
from medsr.data import build_dataset
from medsr.data import cache as subject_cache
from medsr.data.synthetic import make_prepared_dataset, synthetic_subject
from medsr.io import load_mask, load_volume, save_volume
from medsr.manifest import read_manifest
from medsr.normalise import brain_stats
from medsr.utils.atomic import is_temporary

SINGLE = SimpleNamespace(rank=0, world_size=1)


def _cfg(manifest: Path, **data) -> object:
    return load_config({"data": {"manifest": str(manifest), "patch_size": 8, **data},
                        "train": {"batch_size": 2, "loss_region": "brain"}})


def _is_mapped(a: np.ndarray) -> bool:
    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a, mmap.mmap)


def _large_arrays(obj, seen=None, limit: int = 64 * 1024):
    """Every ndarray over ``limit`` bytes reachable from ``obj`` through attributes, lists and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        if obj.nbytes > limit:
            yield obj
        return
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("medsr"):
        items = vars(obj).values()
    else:
        return
    for v in items:
        yield from _large_arrays(v, seen, limit)


@pytest.fixture(scope="module", params=["dti", "scalar"])
def prepared(request, tmp_path_factory):
    kind = request.param
    return make_prepared_dataset(tmp_path_factory.mktemp(kind), 3, (32, 32, 32), kind, patch_size=8), kind


def test_dataset_holds_mappings_not_arrays(prepared):
    manifest, kind = prepared
    td = build_dataset(_cfg(manifest, sampling="both", random_per_subject=4), SINGLE)
    ds = td.dataset
    for item in range(len(ds)):  # read every patch: every subject's maps are open now
        ds[(item, item, item, item)]
    opened = [a for s in ds.subjects for a in (s.lr_up, s.hr, s.mask, s.brain)]
    # Every subject's input, target, mask and brain coordinates are file mappings, and nothing else
    # large is held: the process's private memory does not grow with the subjects.
    assert all(_is_mapped(a) and not a.flags.writeable for a in opened)
    big = list(_large_arrays(ds))
    assert len(big) >= 3 * len(ds.subjects)
    assert all(_is_mapped(a) and not a.flags.writeable for a in big)
    # Pickling (DataLoader workers under spawn) sends paths, not voxels.
    assert len(pickle.dumps(ds)) < 64 * 1024
    again = pickle.loads(pickle.dumps(ds))
    for item in [(0, 0, 3, 3), (len(ds) - 1, len(ds) - 1, 9, 9)]:
        assert all(torch.equal(ds[item][k], again[item][k]) for k in ds[item])


def test_patches_and_statistics_equal_in_memory_normalisation(prepared):
    manifest, kind = prepared
    td = build_dataset(_cfg(manifest, norm_stats="separate"), SINGLE)
    ds = td.dataset
    df = read_manifest(manifest)
    hr = [load_volume(p).data for p in df["hr"]]
    lr_up = [load_volume(p).data for p in df["lr_up"]]
    masks = [load_mask(p) for p in df["mask"]]
    # The statistics from the cached brain sums are exactly those of a pass over the volumes.
    assert td.norm["y"] == brain_stats(zip(hr, masks))
    assert td.norm["x"] == brain_stats(zip(lr_up, masks))
    # Normalising a patch read from the map gives the bits of normalising the whole volume first.
    x_all = [td.norm["x"].normalise(v).astype(np.float32) for v in lr_up]
    y_all = [td.norm["y"].normalise(v).astype(np.float32) for v in hr]
    for item in range(0, ds.n_grid, 5):
        si, o = ds.position(item, 0)
        sl = (slice(None),) + tuple(slice(int(a), int(a) + 8) for a in o)
        sample = ds[(item, item, 0, 0)]
        assert torch.equal(sample["x"], torch.from_numpy(x_all[si][sl]))
        assert torch.equal(sample["y"], torch.from_numpy(y_all[si][sl]))
        assert torch.equal(sample["mask"][0], torch.from_numpy(masks[si][sl[1:]].astype(np.float32)))


def test_cache_is_rebuilt_when_its_source_changes(tmp_path, monkeypatch):
    manifest = make_prepared_dataset(tmp_path, 2, (24, 24, 24), "scalar", patch_size=8)
    builds = []
    real = subject_cache.build
    monkeypatch.setattr(subject_cache, "build", lambda *a: builds.append(a[2]) or real(*a))
    build_dataset(_cfg(manifest), SINGLE)
    build_dataset(_cfg(manifest), SINGLE)
    assert builds == ["sub00", "sub01"]  # built once, then found
    # A rerun of prep replaces sub01's input: its cache is rebuilt and the patches follow the new file.
    hr, _ = synthetic_subject((24, 24, 24), "scalar", seed=7)
    hr.affine = load_volume(tmp_path / "sub01" / "lr_up.nii.gz").affine
    save_volume(hr, tmp_path / "sub01" / "lr_up.nii.gz")
    td = build_dataset(_cfg(manifest), SINGLE)
    assert builds == ["sub00", "sub01", "sub01"]
    np.testing.assert_array_equal(td.dataset.subjects[1].lr_up, hr.data)
    # A cache file deleted by hand makes the cache invalid, not an error.
    (tmp_path / "sub00" / "cache" / "brain.npy").unlink()
    build_dataset(_cfg(manifest), SINGLE)
    assert builds[-1] == "sub00"
    assert not [p for p in tmp_path.rglob("*") if is_temporary(p.name)]


def test_concurrent_creation_builds_once(tmp_path, monkeypatch):
    manifest = make_prepared_dataset(tmp_path, 1, (24, 24, 24), "dti", patch_size=8)
    row = read_manifest(manifest).iloc[0]
    files = {k: row[k] for k in ("hr", "lr_up", "mask")}
    builds = []
    real = subject_cache.build
    start = threading.Barrier(4)

    def slow_build(*a):
        builds.append(a[2])
        return real(*a)

    monkeypatch.setattr(subject_cache, "build", slow_build)
    # flock excludes separate opens of the lock file even within one process, so threads stand in
    # for DDP ranks that find the cache missing at the same moment.
    results = []

    def rank():
        start.wait()
        results.append(subject_cache.ensure(files, "sub00"))

    threads = [threading.Thread(target=rank) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == ["sub00"] and len(results) == 4
    assert all(r.sums["hr"].to_dict() == results[0].sums["hr"].to_dict() for r in results)


_READER = """
import sys, hashlib
from medsr.data.patch_dataset import load_subjects
h = hashlib.sha256()
for s in load_subjects(sys.argv[1])[0]:
    for a in (s.lr_up, s.hr, s.mask, s.brain):
        h.update(a.tobytes())
print(h.hexdigest())
"""


def test_two_processes_creating_the_caches_at_once_agree(tmp_path):
    manifest = make_prepared_dataset(tmp_path, 3, (24, 24, 24), "dti", patch_size=8)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _READER, str(manifest)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-800:] for o in outs]
    assert outs[0][0] == outs[1][0] and len(outs[0][0].strip()) == 64
    assert not [p for p in tmp_path.rglob("*") if is_temporary(p.name)]


def test_cache_dir_from_the_environment(tmp_path, monkeypatch):
    manifest = make_prepared_dataset(tmp_path / "prep", 1, (24, 24, 24), "scalar", patch_size=8)
    monkeypatch.setenv(subject_cache.ENV_CACHE_DIR, str(tmp_path / "elsewhere"))
    ds = build_dataset(_cfg(manifest), SINGLE).dataset
    assert not (tmp_path / "prep" / "sub00" / "cache").exists()
    assert ds.subjects[0].entry.folder.parent == tmp_path / "elsewhere"
    assert (ds.subjects[0].entry.folder / "cache.json").is_file()


def test_ranks_start_building_at_their_own_share(tmp_path, monkeypatch):
    from medsr.data.patch_dataset import load_subjects

    manifest = make_prepared_dataset(tmp_path, 4, (16, 16, 16), "scalar", patch_size=8)
    builds = []
    real = subject_cache.build
    monkeypatch.setattr(subject_cache, "build", lambda *a: builds.append(a[2]) or real(*a))
    subjects, _ = load_subjects(manifest, rank=1, world_size=2)
    assert builds == ["sub02", "sub03", "sub00", "sub01"]  # rank 1 of 2 starts half-way
    assert [s.name for s in subjects] == ["sub00", "sub01", "sub02", "sub03"]  # the manifest's order


def test_patch_grid_is_saved_with_the_cache(tmp_path, monkeypatch):
    import medsr.data.patch_dataset as pd

    manifest = make_prepared_dataset(tmp_path, 2, (24, 24, 24), "dti", patch_size=8)
    scans = []
    real = pd.brain_patch_origins
    monkeypatch.setattr(pd, "brain_patch_origins", lambda *a: scans.append(1) or real(*a))
    first = build_dataset(_cfg(manifest), SINGLE).dataset.grid
    assert len(scans) == 2
    again = build_dataset(_cfg(manifest), SINGLE).dataset.grid
    assert len(scans) == 2 and np.array_equal(first, again)  # read back, not scanned again
    build_dataset(_cfg(manifest, min_brain_fraction=0.5), SINGLE)
    assert len(scans) == 4  # other parameters: another grid


def test_unwritable_cache_folder_is_named_with_the_way_out(tmp_path, capsys):
    from pipelines.cli import main

    manifest = make_prepared_dataset(tmp_path / "prep", 1, (16, 16, 16), "scalar", patch_size=8)
    (tmp_path / "prep" / "sub00" / "cache").write_text("not a folder")  # stands in for a read-only folder
    with pytest.raises(OSError) as err:
        build_dataset(_cfg(manifest), SINGLE)
    assert "cache" in str(err.value) and "subject sub00" in err.value.__notes__[0]
    config = str(Path(__file__).parents[1] / "configs" / "quick_paired_l1.yaml")
    assert main(["train", config, "--set", f"data.manifest={manifest}", "data.patch_size=8", "train.max_steps=1",
                 f"output_dir={tmp_path / 'run'}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "sub00" in err[-1] and "MEDSR_CACHE_DIR" in err[-1]


def test_maps_beyond_the_open_limit_are_closed_and_reopened(tmp_path, monkeypatch):
    from medsr.data import mapped

    manifest = make_prepared_dataset(tmp_path, 5, (16, 16, 16), "dti", patch_size=8)
    ds = build_dataset(_cfg(manifest, sampling="both", random_per_subject=3), SINGLE).dataset
    items = [(i, i, 7 * i, 7 * i) for i in range(len(ds))]
    want = [ds[it] for it in items]  # every subject open (the default limit is far above 5)
    for s in ds.subjects:
        s.arrays.close()
    monkeypatch.setattr(mapped, "max_open_groups", lambda files: 2)  # as if ulimit -n were tiny
    fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    for it, w in zip(items, want):
        got = ds[it]
        assert all(torch.equal(got[k], w[k]) for k in w)  # closing and reopening changes no bit
        assert sum(s.arrays.is_open for s in ds.subjects) <= 2
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) <= fds + 2 * 4
