"""Degradation: exact block means and the LR <-> HR geometry in world coordinates."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from medsr import Volume
from medsr.degrade import (
    block_mean,
    degrade,
    degrade_array,
    downsample_mask,
    fit_to_factor,
    hr_affine,
    lr_affine,
    nn_upsample,
)
from medsr.factor import factor_triple
from medsr.slice_profile import profile_weights, slice_axis


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


# Per-axis factors: the thick-slice cases of the README and every isotropic factor.
FACTORS = [2, 3, (1, 1, 4), (2, 2, 4), (1, 2, 3)]


@pytest.mark.parametrize("factor", FACTORS)
def test_per_axis_lr_voxel_centres_are_world_centres_of_hr_blocks(oblique, factor):
    r = np.array(factor_triple(factor))
    hr = Volume(np.zeros((1, 12, 12, 12)), oblique)
    lr = block_mean(hr, factor)
    assert lr.spatial_shape == tuple(12 // r)
    np.testing.assert_allclose(lr.voxel_size, np.array(hr.voxel_size) * r)
    for ijk in [(0, 0, 0), (1, 2, 0), (2, 1, 2)]:
        ijk = np.minimum(ijk, np.array(lr.spatial_shape) - 1)
        block = np.array(list(itertools.product(*(range(v * f, (v + 1) * f) for v, f in zip(ijk, r)))))
        np.testing.assert_allclose(lr.world(ijk), hr.world(block).mean(0), atol=1e-9)
    np.testing.assert_allclose(hr_affine(lr.affine, factor), oblique, atol=1e-12)


@pytest.mark.parametrize("factor", FACTORS)
def test_per_axis_block_mean_of_nn_upsampling_is_the_identity(oblique, factor):
    r = factor_triple(factor)
    lr = Volume(np.random.default_rng(2).normal(size=(2, 3, 4, 2)), oblique)
    up = nn_upsample(lr, factor)
    assert up.spatial_shape == tuple(s * f for s, f in zip(lr.spatial_shape, r))
    back = block_mean(up, factor)
    np.testing.assert_allclose(back.data, lr.data, atol=1e-6)
    np.testing.assert_allclose(back.affine, lr.affine, atol=1e-12)
    # explicit loops: HR voxel (i, j, k) holds LR voxel (i // rx, j // ry, k // rz)
    for ijk in itertools.product(*(range(s) for s in up.spatial_shape)):
        src = tuple(v // f for v, f in zip(ijk, r))
        assert np.array_equal(up.data[(slice(None),) + ijk], lr.data[(slice(None),) + src])


@pytest.mark.parametrize("factor", [(1, 1, 4), (2, 2, 4), (1, 3, 1)])
def test_per_axis_block_mean_equals_explicit_loops_and_crops_per_axis(oblique, factor):
    r = factor_triple(factor)
    hr = Volume(np.random.default_rng(3).normal(size=(1, 7, 6, 10)), oblique)
    lr = block_mean(hr, factor)
    assert lr.spatial_shape == tuple(s // f for s, f in zip(hr.spatial_shape, r))
    assert fit_to_factor(hr, factor).spatial_shape == tuple(s - s % f for s, f in zip(hr.spatial_shape, r))
    assert fit_to_factor(hr, factor, pad=True).spatial_shape == tuple(-(-s // f) * f for s, f in zip(hr.spatial_shape, r))
    for ijk in itertools.product(*(range(s) for s in lr.spatial_shape)):
        sl = tuple(slice(v * f, (v + 1) * f) for v, f in zip(ijk, r))
        assert abs(lr.data[(0,) + ijk] - hr.data[(0,) + sl].astype(np.float64).mean()) < 1e-6


def _profile_reference(signal: np.ndarray, r: int, profile: str) -> np.ndarray:
    """LR slices by numerical integration: the HR signal piecewise constant over voxels, extended by
    its edge values, times the slice profile centred at each block centre (scipy.integrate.quad)."""
    from scipy import integrate

    sigma = r / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    n = len(signal)

    def value(t: float) -> float:
        return float(signal[int(np.clip(np.floor(t + 0.5), 0, n - 1))])

    out = []
    for k in range(n // r):
        c = k * r + (r - 1) / 2.0
        if profile == "box":
            lo, hi = c - r / 2.0, c + r / 2.0
            w = integrate.quad(value, lo, hi, points=np.arange(-1, n) + 0.5, limit=200)[0] / r
        else:
            g = lambda t: value(t) * np.exp(-0.5 * ((t - c) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))  # noqa: E731
            lo, hi = c - 12 * sigma, c + 12 * sigma
            pts = [p for p in np.arange(-1, n) + 0.5 if lo < p < hi]
            w = integrate.quad(g, lo, hi, points=pts, limit=400)[0]
        out.append(w)
    return np.array(out)


@pytest.mark.parametrize("profile", ["box", "gaussian"])
@pytest.mark.parametrize("factor", [(1, 1, 4), (2, 2, 4), (1, 3, 1)])
def test_slice_profiles_equal_numerical_integration(oblique, profile, factor):
    r = factor_triple(factor)
    axis = slice_axis(factor)
    rng = np.random.default_rng(4)
    hr = Volume(rng.normal(size=(2, 4, 6, 8)) + 3.0, oblique)
    hr = fit_to_factor(hr, factor)
    lr = degrade(hr, factor, profile=profile)
    assert lr.spatial_shape == tuple(s // f for s, f in zip(hr.spatial_shape, r))
    np.testing.assert_allclose(lr.affine, lr_affine(hr.affine, factor))  # the same grid for every profile
    # In plane: block means; through plane: the profile integrated against the signal.
    in_plane = tuple(1 if a == axis else f for a, f in enumerate(r))
    plane = block_mean(hr, in_plane).data.astype(np.float64)
    for c in range(2):
        lines = np.moveaxis(plane[c], axis, -1).reshape(-1, plane.shape[1 + axis])
        got = np.moveaxis(lr.data[c], axis, -1).reshape(-1, lr.spatial_shape[axis])
        for line, g in zip(lines, got):
            np.testing.assert_allclose(g, _profile_reference(line, r[axis], profile), rtol=1e-5, atol=1e-5)
    if profile == "box":  # the box profile is the block mean itself
        np.testing.assert_allclose(lr.data, block_mean(hr, factor).data, atol=1e-6)


def test_gaussian_profile_weights_fwhm_mean_and_refusals():
    w = profile_weights(40, 4, "gaussian")
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)  # a constant stays constant
    inner = w[5]  # far from the edges: centred on the block centre 21.5, FWHM 4 voxels
    centre = (inner * np.arange(40)).sum()
    assert abs(centre - 21.5) < 1e-9
    var = (inner * (np.arange(40) - centre) ** 2).sum()  # Gaussian variance + 1/12 of voxel averaging
    assert abs(var - ((4 / (2 * np.sqrt(2 * np.log(2)))) ** 2 + 1 / 12)) < 1e-6
    assert w[5, 16:20].sum() > 0.1 and w[5, 20:24].sum() < 0.8  # it reaches into the neighbouring slices
    np.testing.assert_allclose(profile_weights(12, 3, "box"), np.kron(np.eye(4), np.full((1, 3), 1 / 3)))
    with pytest.raises(ValueError, match="through-plane axis"):
        degrade_array(np.zeros((1, 8, 8, 8), np.float32), 2, profile="gaussian")
    with pytest.raises(ValueError, match="slice profile must be one of"):
        degrade_array(np.zeros((1, 8, 8, 8), np.float32), (1, 1, 2), profile="sinc")
