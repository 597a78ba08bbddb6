"""Degradation: exact block means and the LR <-> HR geometry in world coordinates."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from medsr import Volume
from medsr.degrade import (
    block_mean,
    downsample_mask,
    fit_to_factor,
    hr_affine,
    lr_affine,
    nn_upsample,
)


@pytest.mark.parametrize("factor,shape", [(2, (8, 6, 10)), (3, (9, 7, 8)), (2, (7, 9, 5))])
def test_block_mean_is_exact(oblique, factor, shape):
    rng = np.random.default_rng(0)
    hr = Volume(rng.normal(size=(2,) + shape), oblique)
    lr = block_mean(hr, factor)
    r = factor
    want_shape = tuple(s // r for s in shape)
    assert lr.data.shape == (2,) + want_shape
    for c, i, j, k in itertools.product(range(2), *(range(s) for s in want_shape)):
        block = hr.data[c, i * r:(i + 1) * r, j * r:(j + 1) * r, k * r:(k + 1) * r].astype(np.float64)
        assert abs(lr.data[c, i, j, k] - block.mean()) <= 1e-6 * max(1.0, abs(block.mean()))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_lr_voxel_centre_is_world_centre_of_hr_block(oblique, factor):
    hr = Volume(np.zeros((1, 12, 12, 12)), oblique)
    lr = block_mean(hr, factor)
    np.testing.assert_allclose(lr.affine, lr_affine(oblique, factor))
    np.testing.assert_allclose(lr.voxel_size, np.array(hr.voxel_size) * factor)
    for ijk in [(0, 0, 0), (1, 2, 0), (2, 1, 1)]:
        block = np.array(list(itertools.product(*(range(v * factor, (v + 1) * factor) for v in ijk))))
        np.testing.assert_allclose(lr.world(np.array(ijk)), hr.world(block).mean(0), atol=1e-9)
    np.testing.assert_allclose(hr_affine(lr_affine(oblique, factor), factor), oblique, atol=1e-12)


@pytest.mark.parametrize("factor", [2, 3])
def test_nn_upsample_values_and_grid(oblique, factor):
    rng = np.random.default_rng(1)
    hr = fit_to_factor(Volume(rng.normal(size=(3, 10, 8, 7)), oblique), factor)
    lr = block_mean(hr, factor)
    up = nn_upsample(lr, factor)
    assert up.same_space(hr)  # back on the (cropped) HR grid, same affine
    inv = np.linalg.inv(lr.affine)
    for ijk in itertools.product(*(range(0, s, 2) for s in up.spatial_shape)):
        # the LR voxel covering this HR voxel centre, found in world coordinates
        lr_ijk = np.rint((inv @ np.append(up.world(np.array(ijk)), 1.0))[:3]).astype(int)
        np.testing.assert_array_equal(lr_ijk, np.array(ijk) // factor)
        np.testing.assert_array_equal(up.data[(slice(None),) + ijk], lr.data[(slice(None),) + tuple(lr_ijk)])


def test_odd_sizes_crop_or_pad(oblique):
    data = np.arange(5 * 4 * 3, dtype=np.float32).reshape(1, 5, 4, 3)
    hr = Volume(data, oblique)
    cropped = block_mean(hr, 2)
    assert cropped.spatial_shape == (2, 2, 1)
    padded = block_mean(hr, 2, pad=True)
    assert padded.spatial_shape == (3, 2, 2)
    # padded last block along x repeats slice 4: mean over x of (4, 4) is slice 4 itself
    np.testing.assert_allclose(padded.data[0, 2, 0, 0], data[0, 4, 0:2, 0:2].mean())
    np.testing.assert_allclose(padded.affine, cropped.affine)  # voxel 0 is unchanged either way
    assert fit_to_factor(hr, 2).spatial_shape == (4, 4, 2)
    assert fit_to_factor(hr, 2, pad=True).spatial_shape == (6, 4, 4)
    with pytest.raises(ValueError, match="positive integer"):
        block_mean(hr, 0)
    with pytest.raises(ValueError, match="smaller than the factor"):
        block_mean(hr, 4)


def test_mask_rule_half_the_block():
    mask = np.zeros((4, 2, 2), bool)
    mask[0:2, :, :] = True  # block 0 full
    mask[2, 0, :] = True  # block 1: 2 of 8 voxels
    assert downsample_mask(mask, 2).ravel().tolist() == [True, False]
    mask[2, 1, :] = True  # 4 of 8: exactly half counts as brain
    assert downsample_mask(mask, 2).ravel().tolist() == [True, True]
