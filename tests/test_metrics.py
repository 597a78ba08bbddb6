"""Metrics on hand-built volumes with known answers, the interior mask, and bad-input errors."""
from __future__ import annotations

import numpy as np
import pytest

from medsr import metrics
from medsr.volume import Volume


def _cube_mask(n: int = 30, lo: int = 5, hi: int = 25) -> np.ndarray:
    m = np.zeros((n, n, n), bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_interior_of_a_cube_is_the_cube_shrunk_by_two() -> None:
    inner = metrics.interior_mask(_cube_mask())
    expected = _cube_mask(30, 7, 23)  # 20^3 -> 16^3
    assert inner.sum() == 16**3
    assert np.array_equal(inner, expected)


def test_interior_excludes_voxels_near_the_volume_edge() -> None:
    # A mask filling the whole volume: outside the volume counts as outside the brain.
    inner = metrics.interior_mask(np.ones((10, 10, 10), bool))
    assert inner.sum() == 6**3 and inner[2:8, 2:8, 2:8].all()


def test_rmse_known_answer_over_voxels_and_channels() -> None:
    target = np.random.rand(2, 30, 30, 30).astype(np.float32)
    pred = target.copy()
    mask = _cube_mask()
    pred[0][mask] += 2.0          # channel 0 off by 2 inside the brain
    pred[:, ~mask] += 100.0       # errors outside the mask must not count
    # mean over voxels x channels of squared error = (4 + 0) / 2.
    assert metrics.rmse_total(pred, target, mask) == pytest.approx(np.sqrt(2.0), rel=1e-6)
    assert metrics.rmse_interior(pred, target, mask) == pytest.approx(np.sqrt(2.0), rel=1e-6)


def test_interior_and_total_differ_when_errors_sit_at_the_brain_edge() -> None:
    target = np.zeros((1, 30, 30, 30), np.float32)
    mask = _cube_mask()
    inner = metrics.interior_mask(mask)
    pred = target.copy()
    pred[0][mask & ~inner] = 3.0  # only the 2-voxel shell is wrong
    n_shell, n_all = int((mask & ~inner).sum()), int(mask.sum())
    assert metrics.rmse_interior(pred, target, mask) == 0.0
    assert metrics.rmse_total(pred, target, mask) == pytest.approx(np.sqrt(9.0 * n_shell / n_all), rel=1e-6)


def test_psnr_and_ssim_known_values() -> None:
    mask = _cube_mask()
    x = np.linspace(0, 1, 30, dtype=np.float32)
    target = np.broadcast_to(x[:, None, None] * 10.0, (30, 30, 30))[None].copy()  # range in the mask: 10 * 19/29
    rng = metrics.data_range(target, mask)
    assert rng == pytest.approx(10.0 * 19 / 29, rel=1e-5)
    pred = target + 0.5 * np.where(np.random.rand(*target.shape) > 0.5, 1.0, -1.0).astype(np.float32)
    assert metrics.psnr(pred, target, mask) == pytest.approx(20 * np.log10(rng / 0.5), rel=1e-5)
    assert metrics.psnr(target, target, mask) == float("inf")
    assert metrics.ssim(target, target, mask) == pytest.approx(1.0, abs=1e-9)
    noisy = metrics.ssim(pred, target, mask)
    noisier = metrics.ssim(target + 2 * (pred - target), target, mask)
    assert 0.0 < noisier < noisy < 1.0


def test_ssim_box_equals_whole_volume_filtering() -> None:
    # The bounding-box shortcut must give the same mean as filtering the whole (brain-masked) volume.
    from scipy import ndimage

    t = np.random.rand(1, 30, 30, 30)
    p = t + 0.1 * np.random.rand(1, 30, 30, 30)
    mask = _cube_mask()
    blur = lambda a: ndimage.gaussian_filter(a, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    x, y = np.where(mask, p[0], 0.0), np.where(mask, t[0], 0.0)
    L = y[mask].max() - y[mask].min()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    mx, my = blur(x), blur(y)
    smap = ((2 * mx * my + c1) * (2 * (blur(x * y) - mx * my) + c2)) / (
        (mx**2 + my**2 + c1) * (blur(x * x) - mx**2 + blur(y * y) - my**2 + c2)
    )
    assert metrics.ssim(p, t, mask) == pytest.approx(smap[mask].mean(), rel=1e-10)


def test_dti_metrics_md_scales_fa_invariant() -> None:
    rng = np.random.default_rng(0)
    t = np.zeros((6, 12, 12, 12), np.float32)
    t[[0, 3, 5]] = (1e-3 * (1 + rng.random((3, 12, 12, 12)))).astype(np.float32)
    t[[1, 2, 4]] = (1e-4 * rng.random((3, 12, 12, 12))).astype(np.float32)
    mask = np.ones((12, 12, 12), bool)
    d = metrics.dti_metrics(t * 1.1, t, mask)
    md = (t[0] + t[3] + t[5]) / 3
    assert d["md_rmse"] == pytest.approx(0.1 * np.sqrt((md.astype(np.float64) ** 2).mean()), rel=1e-4)
    assert d["md_mae"] == pytest.approx(0.1 * md.mean(), rel=1e-4)
    assert d["fa_rmse"] < 1e-6 and d["fa_mae"] < 1e-6  # FA does not change with a global scale


def _vol(shape=(12, 12, 12), c=1, affine=None, name="v.nii.gz") -> Volume:
    return Volume(np.random.rand(c, *shape).astype(np.float32), np.eye(4) if affine is None else affine, name=name)


def test_evaluate_volumes_dti_columns() -> None:
    t = _vol(c=6, name="hr.nii.gz")
    p = t.with_data(t.data + 0.01, name="pred.nii.gz")
    out = metrics.evaluate_volumes(p, t, np.ones((12, 12, 12), bool))
    assert set(out) == {"rmse_interior", "rmse_total", "psnr", "ssim", "md_rmse", "md_mae", "fa_rmse", "fa_mae"}
    assert out["rmse_total"] == pytest.approx(0.01, rel=1e-3)
    scalar = metrics.evaluate_volumes(_vol(name="p"), _vol(name="t"), np.ones((12, 12, 12), bool))
    assert "md_rmse" not in scalar


@pytest.mark.parametrize(
    "pred,match",
    [
        (lambda: _vol(c=2, name="pred.nii.gz"), r"pred\.nii\.gz: 2 channel.*hr\.nii\.gz has 1"),
        (lambda: _vol(shape=(12, 12, 10), name="pred.nii.gz"), r"pred\.nii\.gz: shape \(12, 12, 10\) differs from target hr\.nii\.gz"),
        (lambda: _vol(affine=np.diag([2.0, 1, 1, 1]), name="pred.nii.gz"), r"pred\.nii\.gz: affine differs from target hr\.nii\.gz"),
    ],
)
def test_mismatch_errors_name_the_files(pred, match) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.evaluate_volumes(pred(), _vol(name="hr.nii.gz"), np.ones((12, 12, 12), bool))


def test_empty_mask_and_nan_prediction_are_errors() -> None:
    t = _vol(name="hr.nii.gz")
    with pytest.raises(ValueError, match=r"mask\.nii\.gz: the brain mask is empty"):
        metrics.evaluate_volumes(t, t, np.zeros((12, 12, 12), bool), mask_name="mask.nii.gz")
    bad = t.with_data(t.data.copy(), name="pred.nii.gz")
    bad.data[0, 3, 3, 3] = np.nan
    bad.data[0, 0, 0, 0] = np.nan  # outside any mask: still reported, never skipped
    with pytest.raises(ValueError, match=r"pred\.nii\.gz: prediction has 2 voxel\(s\) with NaN"):
        metrics.evaluate_volumes(bad, t, np.ones((12, 12, 12), bool))


def test_ssim_scores_the_brain_only() -> None:
    # Whatever a method writes outside the mask does not change its SSIM (as for the RMSEs).
    t = np.random.rand(1, 30, 30, 30)
    p = t + 0.1 * np.random.rand(1, 30, 30, 30)
    mask = _cube_mask()
    junk = np.where(mask, p, 5.0 * np.random.rand(1, 30, 30, 30))
    assert metrics.ssim(junk, t, mask) == metrics.ssim(p, t, mask)
