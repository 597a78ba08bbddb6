"""Interpolation baselines: grid alignment with prep's degradation, exactness, ordering on smooth data."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsr import baselines, degrade, metrics
from medsr.volume import Volume


@pytest.mark.parametrize("r", [2, 3])
def test_nn_equals_prep_nn_upsample(oblique, r) -> None:
    lr = Volume(np.random.rand(2, 5, 6, 4).astype(np.float32), oblique, name="lr")
    ours = baselines.upsample(lr, r, "nn")
    ref = degrade.nn_upsample(lr, r)
    assert np.array_equal(ours.data, ref.data)
    assert np.allclose(ours.affine, ref.affine)


@pytest.mark.parametrize("method,order", [("nn", 0), ("linear", 1), ("cubic", 3)])
def test_separable_matches_scipy_map_coordinates(method, order) -> None:
    a = np.random.rand(1, 7, 9, 6)
    r = 2
    grids = np.meshgrid(*[baselines.lr_coordinates(s * r, r) for s in a.shape[1:]], indexing="ij")
    ref = ndimage.map_coordinates(a[0], grids, order=order, mode="nearest")
    assert np.allclose(baselines.upsample_array(a, r, method)[0], ref, atol=2e-5)


@pytest.mark.parametrize("method", ["linear", "cubic"])
@pytest.mark.parametrize("r", [2, 3])
def test_linear_ramp_is_reproduced_in_the_interior(method, r) -> None:
    # A ramp in world terms: the value at each voxel centre is a linear function of its position,
    # so an aligned interpolator reproduces the HR ramp exactly away from the edges.
    n = 24
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float64)] * 3, indexing="ij")
    lr = (2.0 * ii - 3.0 * jj + 0.5 * kk)[None]
    up = baselines.upsample_array(lr, r, method)[0]
    u = [baselines.lr_coordinates(n * r, r)] * 3
    U, V, W = np.meshgrid(*u, indexing="ij")
    truth = 2.0 * U - 3.0 * V + 0.5 * W
    b = 9 * r  # the cubic prefilter's edge effect decays by 0.27 per LR voxel
    err = np.abs(up - truth)[b:-b, b:-b, b:-b]
    assert err.max() < 1e-3 * np.abs(truth).max()
    if method == "linear":  # linear is exact up to the last LR voxel centre
        e = r // 2 + r
        assert np.abs(up - truth)[e:-e, e:-e, e:-e].max() < 1e-6 * np.abs(truth).max()  # float32 output


def test_baseline_ordering_on_smooth_data(oblique) -> None:
    # A smooth HR field, degraded by prep's block mean: cubic < linear < nn RMSE.
    n = 32
    x = np.stack(np.meshgrid(*[np.linspace(0, 1, n)] * 3, indexing="ij"))
    field = np.sin(3 * x[0] + 1) * np.cos(2 * x[1]) + 0.5 * np.sin(4 * x[2] + x[0])
    hr = Volume(field[None].astype(np.float32), oblique, name="hr")
    lr = degrade.block_mean(hr, 2)
    mask = np.zeros((n, n, n), bool)
    mask[4:-4, 4:-4, 4:-4] = True
    err = {}
    for m in ("nn", "linear", "cubic"):
        up = baselines.upsample(lr, 2, m, out_shape=hr.spatial_shape)
        assert np.allclose(up.affine, hr.affine)  # same grid as the truth
        err[m] = metrics.rmse_interior(up.data, hr.data, mask)
    assert err["cubic"] < err["linear"] < err["nn"]
    assert err["cubic"] < 0.5 * err["linear"]


def test_misaligned_interpolation_is_worse() -> None:
    # Guard on the convention itself: a half-LR-voxel shift (a common mistake) costs accuracy.
    n = 32
    x = np.linspace(0, 1, n)
    hr = np.sin(5 * x)[:, None, None] * np.ones((1, 4, 4))
    lr = degrade.block_mean_array(hr[None].astype(np.float32), 2)[0]
    aligned = baselines.upsample_array(lr[None], 2, "linear")[0]
    shifted = ndimage.zoom(lr, 2, order=1, mode="nearest")  # corner-aligned, the misaligned grid
    core = slice(4, -4)
    e_aligned = np.sqrt(((aligned - hr)[core] ** 2).mean())
    e_shifted = np.sqrt(((shifted - hr)[core] ** 2).mean())
    assert e_aligned < 0.5 * e_shifted


def test_upsample_world_alignment(oblique) -> None:
    lr = Volume(np.zeros((1, 4, 5, 6), np.float32), oblique, name="lr")
    for r in (2, 3):
        hr = baselines.upsample(lr, r, "cubic")
        # LR voxel (1, 2, 3)'s centre is the centre of HR block (r..2r-1, 2r..3r-1, 3r..4r-1).
        centre = np.array([1, 2, 3]) * r + (r - 1) / 2
        assert np.allclose(hr.world(centre), lr.world(np.array([1, 2, 3])), atol=1e-9)


def test_bad_method_and_factor() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'quintic'"):
        baselines.upsample_array(np.zeros((1, 2, 2, 2)), 2, "quintic")
    with pytest.raises(ValueError, match="positive integer"):
        baselines.upsample_array(np.zeros((1, 2, 2, 2)), 1.5, "nn")


@pytest.mark.parametrize("method,order", [("nn", 0), ("linear", 1), ("cubic", 3)])
@pytest.mark.parametrize("factor", [(1, 1, 4), (2, 2, 4), 3])
def test_per_axis_factor_matches_map_coordinates_on_each_axis_grid(method, order, factor) -> None:
    # The independent reference: scipy's 3D interpolation at the per-axis block-centre coordinates.
    r = factor if isinstance(factor, tuple) else (factor,) * 3
    a = np.random.default_rng(0).random((1, 6, 7, 5))
    grids = np.meshgrid(*[baselines.lr_coordinates(s * f, f) for s, f in zip(a.shape[1:], r)], indexing="ij")
    ref = ndimage.map_coordinates(a[0], grids, order=order, mode="nearest")
    up = baselines.upsample_array(a, factor, method)[0]
    assert up.shape == tuple(s * f for s, f in zip(a.shape[1:], r))
    assert np.allclose(up, ref, atol=2e-5)


def test_per_axis_upsample_world_alignment(oblique) -> None:
    lr = Volume(np.zeros((1, 4, 5, 3), np.float32), oblique, name="lr")
    r = np.array([1, 2, 4])
    hr = baselines.upsample(lr, (1, 2, 4), "cubic")
    assert hr.spatial_shape == (4, 10, 12)
    centre = np.array([1, 2, 2]) * r + (r - 1) / 2
    assert np.allclose(hr.world(centre), lr.world(np.array([1, 2, 2])), atol=1e-9)
