"""Brain-patch dataset, resumable sampler and DTI-aware flips and axis permutations."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medsr.config import load_config
from medsr.data import build_dataset
from medsr.data.augment import PERMUTATIONS, flip_normalised, flip_volume, symmetry_normalised
from medsr.data.patch_dataset import load_subjects
from medsr.data.sampler import EpochBatchSampler
from medsr.data.synthetic import make_prepared_dataset
from medsr.dti import matrix_to_tensor6, tensor6_to_matrix
from medsr.io import load_mask, load_volume
from medsr.manifest import read_manifest_raw, write_manifest
from medsr.normalise import brain_stats
from medsr.patches import patch_fractions

SINGLE = SimpleNamespace(rank=0, world_size=1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_prepared_dataset(tmp_path_factory.mktemp("prep"), 2, (32, 32, 32), "dti", patch_size=8)


def _cfg(manifest, **data):
    return load_config({"data": {"manifest": str(manifest), "patch_size": 8, **data}, "train": {"batch_size": 2}})


def test_grid_patches_are_colocated_normalised_and_in_brain(manifest):
    td = build_dataset(_cfg(manifest), SINGLE)
    ds = td.dataset
    assert td.channels == 6 and td.info == {**td.info, "factor": 2, "patch_size": 8, "channels": 6, "kind": "dti"}
    df = read_manifest_raw(manifest)
    # The non-overlapping grid with the 1 % rule: the manifest's own count at this patch size.
    assert ds.n_grid == len(ds) == int(df["n_patches"].sum())
    # Statistics are over the brain voxels of the training subjects, in original units.
    subs = [(load_volume(manifest.parent / r.hr).data, load_mask(manifest.parent / r.mask)) for r in df.itertuples()]
    ref = brain_stats(subs)
    np.testing.assert_allclose(td.norm["y"].mean, ref.mean, rtol=1e-5)
    np.testing.assert_allclose(td.norm["y"].std, ref.std, rtol=1e-5)
    lr_up0 = load_volume(manifest.parent / df["lr_up"][0]).data
    hr0 = subs[0][0]
    for item in range(0, ds.n_grid, 7):
        si, o = ds.position(item, 0)
        sample = ds[(item, item, 5, 5)]
        sl = (slice(None),) + tuple(slice(int(a), int(a) + 8) for a in o)
        assert patch_fractions(subs[si][1], o[None], 8)[0] >= 0.01
        if si == 0:  # x = lr_up and y = hr at the same place, normalised
            np.testing.assert_allclose(td.norm["x"].denormalise(sample["x"].numpy()), lr_up0[sl], rtol=1e-4, atol=1e-9)
            np.testing.assert_allclose(td.norm["y"].denormalise(sample["y"].numpy()), hr0[sl], rtol=1e-4, atol=1e-9)


def test_random_positions_follow_the_brain_rule(manifest):
    td = build_dataset(_cfg(manifest, sampling="random", random_per_subject=10, min_brain_fraction=0.5), SINGLE)
    ds = td.dataset
    assert ds.n_grid == 0 and len(ds) == 20
    masks = [s.mask for s in ds.subjects]
    origins = set()
    for item in range(len(ds)):
        si, o = ds.position(item, 1000 + item)
        assert patch_fractions(masks[si], o[None], 8)[0] >= 0.5
        origins.add((si, *o.tolist()))
        assert ds[(item, item, 1000 + item, 1000 + item)]["x"].shape == (6, 8, 8, 8)
    assert len(origins) > 10  # positions really vary


def test_sampler_shards_resumes_and_pairs():
    s = EpochBatchSampler(23, 3, seed=4)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == s.steps_per_epoch == 7
    s.set_epoch(2, start_batch=4)
    assert list(s) == full[4:]  # resuming mid-epoch replays the same batches
    s.set_epoch(3)
    assert list(s) != full  # a new permutation per epoch
    assert all(ix == iy and sx == sy for b in full for ix, iy, sx, sy in b)
    # Two ranks split an epoch without overlap, and together hold what one rank at 2x batch holds.
    ranks = [EpochBatchSampler(24, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    one = EpochBatchSampler(24, 6, seed=1)
    for k in range(4):
        a = ranks[0].epoch_items(0)[3 * k:3 * k + 3]
        b = ranks[1].epoch_items(0)[3 * k:3 * k + 3]
        assert sorted(a + b) == sorted(one.epoch_items(0)[6 * k:6 * k + 6])
    assert not set(ranks[0].epoch_items(0)) & set(ranks[1].epoch_items(0))
    # Unpaired: X and Y are drawn independently and never the same item.
    u = EpochBatchSampler(30, 1, seed=0, unpaired=True)
    items = u.epoch_items(0)
    assert all(ix != iy for ix, iy, _, _ in items)
    assert sorted(iy for _, iy, _, _ in items) == list(range(30))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(3, 2, world_size=4)


def test_unpaired_dataset_draws_x_and_y_apart(manifest):
    cfg = _cfg(manifest)
    cfg.train.mode = "unpaired"
    td = build_dataset(cfg, SINGLE)
    (ix, iy, sx, sy), = next(iter(EpochBatchSampler(len(td.dataset), 1, unpaired=True)))
    pair = td.dataset[(ix, iy, sx, sy)]
    colocated = td.dataset[(ix, ix, sx, sx)]
    assert torch.equal(pair["x"], colocated["x"]) and not torch.equal(pair["y"], colocated["y"])


def _field(shape):
    """A smooth SPD tensor field D(p) (3, 3, X, Y, Z) of centred coordinates p, and p itself."""
    p = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"), 0)
    a = np.empty((3, 3) + shape)
    for i in range(3):
        for j in range(3):
            a[i, j] = np.sin(0.3 * (i + 1) * p[0] + 0.2 * (j + 2) * p[1] - 0.1 * (i + j) * p[2] + i - j)
    a += 2 * np.eye(3).reshape(3, 3, 1, 1, 1)
    return np.einsum("ik...,jk...->ij...", a, a)


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 2), (0, 1, 2)])
def test_dti_flip_equals_the_physically_reflected_field(axes):
    shape = (5, 6, 7)
    d = _field(shape)
    vol6 = matrix_to_tensor6(np.moveaxis(d, (0, 1), (-2, -1))).astype(np.float32)  # (6, X, Y, Z) FSL order
    # Physical reflection P: the tensor found at P r is P D(r) P^T.
    pm = np.diag([(-1.0 if a in axes else 1.0) for a in range(3)])
    moved = np.flip(d, axis=tuple(a + 2 for a in axes))  # D evaluated at the mirrored position
    expected = np.einsum("ia,ab...,bj->ij...", pm, moved, pm.T)
    got = flip_volume(vol6, axes, dti=True)
    got_m = np.moveaxis(tensor6_to_matrix(got), (-2, -1), (0, 1))
    np.testing.assert_allclose(got_m, expected, rtol=1e-5, atol=1e-5)
    # A plain array flip moves the tensors but leaves their orientation wrong (except for the
    # point reflection -I of all three axes, which leaves every tensor unchanged).
    plain = np.moveaxis(tensor6_to_matrix(np.flip(vol6, tuple(a + 1 for a in axes))), (-2, -1), (0, 1))
    assert np.allclose(plain, expected, atol=1e-3) == (len(axes) == 3)
    # Eigenvalues (MD, FA) are unchanged by the reflection.
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(np.moveaxis(got_m, (0, 1), (-2, -1))), -1),
                               np.sort(np.linalg.eigvalsh(np.moveaxis(expected, (0, 1), (-2, -1))), -1), rtol=1e-4)
    # In normalised space the same flip is an affine map of each negated channel.
    mean, std = vol6.mean((1, 2, 3)), vol6.std((1, 2, 3))
    norm = (vol6 - mean[:, None, None, None]) / std[:, None, None, None]
    np.testing.assert_allclose(flip_normalised(norm, axes, True, mean, std) * std[:, None, None, None] + mean[:, None, None, None],
                               got, rtol=1e-4, atol=1e-4)


def test_dataset_flip_augmentation_uses_signed_flips(manifest):
    td = build_dataset(_cfg(manifest, flip=True), SINGLE)
    ds = td.dataset
    seeds = [s for s in range(200) if ds._symmetry(s) == ((0, 1, 2), (0,))][:1]  # a seed that flips x only
    si, o = ds.position(3, seeds[0])
    sample = ds[(3, 3, seeds[0], seeds[0])]
    raw = td.norm["y"].denormalise(ds.subjects[si].y)[:, o[0]:o[0] + 8, o[1]:o[1] + 8, o[2]:o[2] + 8]
    np.testing.assert_allclose(td.norm["y"].denormalise(sample["y"].numpy()), flip_volume(raw, (0,), True),
                               rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("perm", PERMUTATIONS[1:])
@pytest.mark.parametrize("axes", [(), (1,), (0, 2)])
def test_dti_axis_permutation_equals_the_physically_rotated_field(perm, axes):
    shape = (5, 6, 7)
    d = _field(shape)
    vol6 = matrix_to_tensor6(np.moveaxis(d, (0, 1), (-2, -1))).astype(np.float32)
    # New axis i is old axis perm[i] (Q = F P, P[i, perm[i]] = 1), then the flips F: the tensor
    # found at the moved position is Q D Q^T.
    q = np.diag([(-1.0 if a in axes else 1.0) for a in range(3)]) @ np.eye(3)[list(perm)]
    moved = np.transpose(d, (0, 1) + tuple(p + 2 for p in perm))
    moved = np.flip(moved, axis=tuple(a + 2 for a in axes)) if axes else moved
    expected = np.einsum("ia,ab...,jb->ij...", q, moved, q)
    mean, std = vol6.mean((1, 2, 3)), vol6.std((1, 2, 3))
    norm = (vol6 - mean[:, None, None, None]) / std[:, None, None, None]
    got = symmetry_normalised(norm, perm, axes, True, mean, std) * std[:, None, None, None] + mean[:, None, None, None]
    got_m = np.moveaxis(tensor6_to_matrix(got), (-2, -1), (0, 1))
    np.testing.assert_allclose(got_m, expected, rtol=1e-4, atol=1e-4)
    # A plain transpose moves the tensors but leaves their orientation (and so FA's direction) wrong.
    plain = np.transpose(vol6, (0,) + tuple(p + 1 for p in perm))
    assert not np.allclose(np.moveaxis(tensor6_to_matrix(flip_volume(plain, axes, True)), (-2, -1), (0, 1)),
                           expected, atol=1e-3)


def test_dataset_permute_moves_input_target_and_mask_together(manifest):
    cfg = load_config({"data": {"manifest": str(manifest), "patch_size": 8, "flip": True, "permute": True},
                       "train": {"batch_size": 2, "loss_region": "brain"}})
    td = build_dataset(cfg, SINGLE)
    ds = td.dataset
    assert len({ds._symmetry(s) for s in range(400)}) == 48  # every symmetry of the cube is drawn
    seed = next(s for s in range(400) if ds._symmetry(s) == ((2, 0, 1), (1,)))
    si, o = ds.position(3, seed)
    sample = ds[(3, 3, seed, seed)]
    sub = ds.subjects[si]
    sl = (slice(None),) + tuple(slice(int(a), int(a) + 8) for a in o)
    for key in ("x", "y"):
        stats = td.norm[key]
        raw = stats.denormalise(getattr(sub, key)[sl])
        # Written out by hand, independently of augment.py: (x', y', z') = (z, x, y), so
        # Dx'x' = Dzz, Dx'y' = Dzx, Dx'z' = Dzy, Dy'y' = Dxx, Dy'z' = Dxy, Dz'z' = Dyy; then the
        # y' flip mirrors the patch and negates Dx'y' and Dy'z'.
        want = np.transpose(raw, (0, 3, 1, 2))[[5, 2, 4, 0, 1, 3]]
        want = np.flip(want, axis=2).copy()
        want[[1, 4]] *= -1
        np.testing.assert_allclose(stats.denormalise(sample[key].numpy()), want, rtol=1e-4, atol=1e-9)
    mask = np.flip(np.transpose(sub.mask[sl[1:]], (2, 0, 1)), 1)
    np.testing.assert_array_equal(sample["mask"][0].numpy(), mask.astype(np.float32))
    # A patch is a pure function of its item: resume stays bit-exact.
    np.testing.assert_array_equal(ds[(3, 3, seed, seed)]["y"].numpy(), sample["y"].numpy())


@pytest.mark.parametrize("voxel, factor, perms", [
    ((1.0, 1.0, 2.0), 2, [(0, 1, 2), (1, 0, 2)]),          # anisotropic voxels: x <-> y only
    ((1.25, 1.25, 1.25), (1, 1, 4), [(0, 1, 2), (1, 0, 2)]),  # thick slices of isotropic HR: x <-> y only
    ((1.25, 1.25, 1.25), (2, 3, 4), [(0, 1, 2)]),             # no two axes alike: flips only
])
def test_permute_swaps_only_axes_of_equal_voxel_size_and_factor(tmp_path, voxel, factor, perms):
    import nibabel as nib

    m = make_prepared_dataset(tmp_path, 1, (24, 24, 24), "dti", factor=factor, patch_size=12)
    for f in ("hr", "lr_up", "mask"):
        path = tmp_path / "sub00" / f"{f}.nii.gz"
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag(list(voxel) + [1.0])), path)
    td = build_dataset(_cfg(m, permute=True, flip=True, patch_size=12), SINGLE)
    ds = td.dataset
    assert [tuple(p) for p in ds.permutations] == perms
    drawn = {ds._symmetry(seed)[0] for seed in range(64)}
    assert drawn == set(perms)  # every allowed permutation is drawn, no other
    # A drawn x <-> y swap moves the DTI components with the axes (Dxz <-> Dyz, Dxx <-> Dyy).
    if (1, 0, 2) in perms:
        seed = next(s for s in range(64) if ds._symmetry(s) == ((1, 0, 2), ()))
        si, o = ds.position(0, seed)
        raw = load_volume(tmp_path / "sub00" / "hr.nii.gz").data[(slice(None),) + tuple(slice(int(a), int(a) + 12) for a in o)]
        want = np.transpose(raw, (0, 2, 1, 3))[[3, 1, 4, 0, 2, 5]]
        got = td.norm["y"].denormalise(ds[(0, 0, seed, seed)]["y"].numpy())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)


def test_bad_inputs_are_named(manifest, tmp_path):
    df = read_manifest_raw(manifest)
    rows = df.to_dict("records")
    for r in rows:
        for c in ("hr", "lr", "lr_up", "mask"):
            r[c] = str(manifest.parent / r[c])
    rows[1]["hr"] = str(tmp_path / "gone" / "hr.nii.gz")
    bad = write_manifest(tmp_path / "m1" / "manifest.csv", rows)
    with pytest.raises(FileNotFoundError, match="sub01.*hr.*missing"):
        load_subjects(bad)
    # A subject whose mask leaves no patch at the threshold is named.
    rows[1]["hr"] = str(manifest.parent / df["hr"][1])
    import nibabel as nib

    m = nib.load(rows[1]["mask"])
    empty = tmp_path / "empty_mask.nii.gz"
    small = np.zeros(m.shape, np.uint8)
    small[16, 16, 16] = 1
    nib.save(nib.Nifti1Image(small, m.affine), empty)
    rows[1]["mask"] = str(empty)
    bad2 = write_manifest(tmp_path / "m2" / "manifest.csv", rows)
    with pytest.raises(ValueError, match="sub01.*no 8\\^3 patch"):
        build_dataset(_cfg(bad2), SINGLE)
    with pytest.raises(ValueError, match="data.subjects.*nobody"):
        build_dataset(_cfg(manifest, subjects=["nobody"]), SINGLE)


@pytest.mark.parametrize("size, factor, want", [
    (16, 2, (16, 16, 16)), (16, 3, (18, 18, 18)), (16, (1, 1, 4), (16, 16, 16)),  # a cube: every factor divides it
    ([8, 8, 30], (1, 1, 4), (8, 8, 32)), ([9, 8, 8], (3, 2, 2), (9, 8, 8)),        # a box: each axis its own factor
    ("auto", 2, (16, 16, 16)), ("auto", (1, 1, 4), (8, 8, 32)), ("auto", 3, (24, 24, 24)),  # 8 LR voxels per axis
])
def test_patch_shape_tiles_whole_lr_blocks(size, factor, want):
    from medsr.factor import factor_triple
    from medsr.patches import patch_shape

    got = patch_shape(size, factor)
    assert got == want and all(e % r == 0 for e, r in zip(got, factor_triple(factor)))


@pytest.mark.parametrize("bad", [[8, 8], [8, 0, 8], "cube", [8, 8.5, 8]])
def test_bad_patch_shapes_are_named(bad):
    from medsr.patches import patch_shape

    with pytest.raises(ValueError, match="data.patch_size"):
        patch_shape(bad, 2)


def test_box_patches_of_thick_slice_data(tmp_path):
    """data.patch_size [x, y, z] at factor 1 1 4: patches, masks and the brain rule follow the box, origins sit on
    LR block boundaries, only the permutation that keeps the box (x <-> y) is drawn, and the run's data entry
    stores the box."""
    m = make_prepared_dataset(tmp_path, 1, (24, 24, 40), "dti", factor=(1, 1, 4), patch_size=[8, 8, 32])
    td = build_dataset(_cfg(m, patch_size=[8, 8, 30], permute=True, flip=True, sampling="both",
                            random_per_subject=6), SINGLE)
    ds = td.dataset
    assert td.info["patch_size"] == [8, 8, 32] and ds.shape == (8, 8, 32)
    assert ds.n_grid == int(read_manifest_raw(m)["n_patches"].sum()) > 0
    assert [tuple(p) for p in ds.permutations] == [(0, 1, 2), (1, 0, 2)]
    mask = ds.subjects[0].mask
    for item in range(len(ds)):
        si, o = ds.position(item, 77 + item)
        assert o[2] % 4 == 0 and patch_fractions(mask, o[None], (8, 8, 32))[0] >= 0.01
        sample = ds[(item, item, 77 + item, 77 + item)]
        assert sample["x"].shape == sample["y"].shape == (6, 8, 8, 32)
    # The unpermuted, unflipped item is the box at its origin.
    seed = next(s for s in range(64) if ds._symmetry(s) == ((0, 1, 2), ()))
    si, o = ds.position(0, seed)
    hr = load_volume(tmp_path / "sub00" / "hr.nii.gz").data
    want = hr[(slice(None),) + tuple(slice(int(a), int(a) + e) for a, e in zip(o, (8, 8, 32)))]
    np.testing.assert_allclose(td.norm["y"].denormalise(ds[(0, 0, seed, seed)]["y"].numpy()), want, rtol=1e-4, atol=1e-9)


def test_auto_patch_fits_the_smallest_volume(tmp_path, capsys):
    """data.patch_size auto is 8 LR voxels per axis (8 x 8 x 32 at 1 1 4); a volume with fewer slices caps the box
    at whole LR blocks, said on stderr, instead of refusing the data."""
    m = make_prepared_dataset(tmp_path, 1, (24, 24, 26), "scalar", factor=(1, 1, 4), patch_size="auto")
    td = build_dataset(_cfg(m, patch_size="auto"), SINGLE)
    assert td.info["patch_size"] == [8, 8, 24] and td.dataset.shape == (8, 8, 24)
    assert "data.patch_size auto: 8x8x24 instead of 8x8x32" in capsys.readouterr().err
    assert td.dataset[0]["x"].shape == (1, 8, 8, 24)
