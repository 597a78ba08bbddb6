"""The DTI brain phantom: anatomy (folded cortex, sulci, deep structures, crossings), literature
diffusivities, tract FA, noise, HCP layout, and a dipy fit back."""
from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from data_prep.phantom import BRAIN_TISSUES, LABELS, MD, PhantomConfig, fa_md, main, make_subject

# The default grid (the anatomy is in mm, so smaller grids mean smaller brains), fewer directions.
TEST = replace(PhantomConfig(), n_dirs=30, n_b0=4)
SMALL = replace(PhantomConfig(), shape=(36, 40, 34), n_dirs=12, n_b0=2)


@pytest.fixture(scope="module")
def phantom():
    return make_subject("phantom01", seed=3, config=TEST)


def _dipy_fit(ph):
    import dipy.reconst.dti as dti
    from dipy.core.gradients import gradient_table

    gtab = gradient_table(ph.bvals, bvecs=ph.bvecs, b0_threshold=50)
    return dti.TensorModel(gtab, fit_method="WLS").fit(ph.dwi, mask=ph.mask)


def _faces(solid: np.ndarray) -> int:
    """Voxel faces between ``solid`` and the rest: a surface area in voxel faces."""
    return int(sum(np.count_nonzero(np.diff(solid.astype(np.int8), axis=a)) for a in range(3)))


def _principal(tensor6: np.ndarray) -> np.ndarray:
    full = tensor6.astype(np.float64)[..., [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(tensor6.shape[:-1] + (3, 3))
    return np.linalg.eigh(full)[1][..., -1]


def _single_fibre_core(ph):
    return (ph.fibre_fractions[..., 0] > 0.97) & (ph.fractions["wm"] > 0.99)


def _crossings(ph):
    cos = np.abs((ph.fibre_dirs[..., 0, :] * ph.fibre_dirs[..., 1, :]).sum(-1))
    return (ph.fibre_fractions[..., 1] > 0.3) & (ph.fractions["wm"] > 0.95) & (cos < np.cos(np.radians(50)))


def test_truth_compartments_have_literature_md(phantom):
    _, md = fa_md(phantom.tensor)
    # MD is linear in the tensor, so across brain voxels MD = sum_c f_c MD_c exactly (partial
    # volume included); solving for MD_c recovers each compartment's diffusivity.
    f = np.stack([phantom.fractions[t][phantom.mask] for t in BRAIN_TISSUES], 1)
    md_c = np.linalg.lstsq(f.astype(np.float64), md[phantom.mask].astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(md_c, [MD[t] for t in BRAIN_TISSUES], rtol=1e-3)
    assert all((phantom.fractions[t][phantom.mask] > 0.95).sum() >= 10 for t in BRAIN_TISSUES)  # pure voxels exist
    assert not phantom.tensor[~phantom.mask].any()  # no tensor outside the brain
    # Fractions fill the brain; the only signal void inside it is the dural tentorium sheet.
    total = sum(phantom.fractions.values())
    inside = total[phantom.mask & (phantom.hull_depth > 3)]
    assert total.max() <= 1 + 1e-5 and np.mean(np.abs(inside - 1) < 1e-4) > 0.97


def test_tissue_fractions_and_fa_md_are_brain_like(phantom):
    m = phantom.mask
    frac = {t: float(phantom.fractions[t][m].mean()) for t in BRAIN_TISSUES}
    assert 0.35 < frac["gm"] < 0.6 and 0.2 < frac["wm"] < 0.45 and 0.1 < frac["csf"] < 0.3
    assert 0.005 < frac["deep_gm"] < 0.06
    fa, md = fa_md(phantom.tensor)
    lab = phantom.labels
    med = lambda a, code: float(np.median(a[m & (lab == LABELS[code])]))  # noqa: E731
    assert med(fa, "gm") < 0.15 and 0.15 < med(fa, "deep_gm") < 0.3 and 0.2 < med(fa, "wm") < 0.35
    assert med(fa, "tract") > 0.4 and med(fa, "csf") < 0.1
    assert 2.0e-3 < med(md, "csf") and 0.75e-3 < med(md, "gm") < 0.9e-3 and 0.69e-3 < med(md, "wm") < 0.72e-3


def test_cortex_is_folded_with_sulcal_csf_inside_the_hull(phantom):
    tissue = (phantom.fractions["gm"] + phantom.fractions["wm"] + phantom.fractions["deep_gm"]) >= 0.5
    # A smooth ellipsoid of the same volume, on the same grid: the folded brain has far more surface.
    n = np.array(tissue.shape)
    semi = (tissue.sum() * 3 / (4 * np.pi) / np.prod(n / n.mean())) ** (1 / 3) * n / n.mean()
    ijk = np.stack(np.meshgrid(*[np.arange(k) - (k - 1) / 2 for k in n], indexing="ij"), -1)
    ellipsoid = (((ijk / semi) ** 2).sum(-1)) <= 1
    assert abs(ellipsoid.sum() / tissue.sum() - 1) < 0.05
    assert _faces(tissue) > 2.0 * _faces(ellipsoid)
    # Sulcal CSF: CSF voxels well inside the hull (deeper than 1.5 mm, shallower than the ventricles).
    csf = (phantom.fractions["csf"] >= 0.5) & phantom.mask
    sulcal = csf & (phantom.hull_depth > 1.5) & (phantom.hull_depth < 10)
    assert sulcal.sum() > 0.25 * csf.sum()
    # Cortex of the order of 2-3 mm: GM volume over the tissue/CSF surface (voxel faces overcount
    # a random surface by 1.5x). Ventricle walls and the thin cerebellar cortex pull it down.
    thickness = phantom.fractions["gm"][phantom.mask].sum() * 1.25 / (_faces(tissue) / 1.5)
    assert 1.4 < thickness < 3.5, thickness


def test_deep_structures_and_ventricles(phantom):
    lab = phantom.labels
    deep = phantom.hull_depth > 12
    assert (lab[deep] == LABELS["csf"]).sum() > 100     # ventricles
    assert (lab[deep] == LABELS["deep_gm"]).sum() > 100  # nuclei
    assert (lab == LABELS["deep_gm"]).sum() == (lab[deep | (phantom.hull_depth > 8)] == LABELS["deep_gm"]).sum()


def test_tracts_have_fa_04_08_and_cross(phantom):
    fa, _ = fa_md(phantom.tensor)
    core = _single_fibre_core(phantom)
    assert core.sum() > 100
    assert fa[core].min() >= 0.4 - 1e-3 and fa[core].max() <= 0.8 + 1e-3
    assert np.ptp(fa[core]) > 0.1  # FA varies between and along tracts
    background = (phantom.labels == LABELS["wm"]) & (phantom.tract_weight < 0.01)
    assert np.median(fa[background]) < 0.3
    # Crossings: two populations at a wide angle in one voxel; the truth (mean) tensor is flatter.
    cross = _crossings(phantom)
    assert cross.sum() > 50
    assert np.median(fa[cross]) < np.median(fa[core]) - 0.15
    assert (phantom.labels == LABELS["crossing"]).sum() > 50


def test_crossing_truth_is_the_mean_of_the_two_fibre_tensors(phantom):
    # The mean of two cylinders is flat: its smallest axis is the normal of the plane the two
    # fibres span (fibre_dirs and the tensor share the voxel frame).
    full = (_crossings(phantom) & (phantom.fibre_fractions.sum(-1) > 0.95)
            & (np.abs(phantom.fibre_fractions[..., 0] - phantom.fibre_fractions[..., 1]) < 0.2))
    assert full.sum() > 20
    d = phantom.tensor[full].astype(np.float64)[:, [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(-1, 3, 3)
    e3 = np.linalg.eigh(d)[1][..., 0]
    normal = np.cross(phantom.fibre_dirs[full][:, 0], phantom.fibre_dirs[full][:, 1])
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    assert np.median(np.abs((e3 * normal).sum(-1))) > 0.95


def test_partial_volume_at_tissue_borders(phantom):
    # Box-filtered fractions: border voxels hold mixtures, not a hard 0/1 edge.
    edge = phantom.mask & (np.abs(phantom.hull_depth) < 1.5)
    csf = phantom.fractions["csf"][edge]
    assert np.mean((csf > 0.1) & (csf < 0.9)) > 0.3
    gm = phantom.fractions["gm"][phantom.mask]
    assert np.mean((gm > 0.1) & (gm < 0.9)) > 0.2


def test_tract_orientations_spread(phantom):
    # Fanning bundles in every lobe: single-fibre directions cover all three axes (the mean dyadic
    # has no small eigenvalue), rather than a few straight tubes.
    dirs = phantom.fibre_dirs[..., 0, :][_single_fibre_core(phantom)].astype(np.float64)
    ev = np.linalg.eigvalsh(dirs.T @ dirs / len(dirs))
    assert ev[0] > 0.1, ev


def test_dipy_fits_the_dwis_back_to_the_tensors(phantom):
    fit = _dipy_fit(phantom)
    fa, md = fa_md(phantom.tensor)
    for tissue, tol in (("wm", 0.1), ("gm", 0.1), ("deep_gm", 0.1), ("csf", 0.2)):  # CSF: noisy, thin sheets
        pure = (phantom.fractions[tissue] > 0.95) & phantom.mask
        assert abs(np.median(fit.md[pure]) / MD[tissue] - 1) < tol, (tissue, np.median(fit.md[pure]))
    core = _single_fibre_core(phantom)
    assert abs(np.median(fit.fa[core]) - np.median(fa[core])) < 0.05
    # Principal directions agree: bvecs and truth tensors share the voxel frame.
    cos = np.abs((_principal(phantom.tensor[core]) * fit.evecs[core][..., 0]).sum(-1))
    assert np.median(cos) > 0.97
    # The fitted crossings are flat too (the DWIs hold two populations, not one averaged tensor).
    cross = _crossings(phantom)
    assert np.median(fit.fa[cross]) < np.median(fit.fa[core]) - 0.15


def test_noise_has_the_requested_wm_snr(phantom):
    b0 = phantom.dwi[..., phantom.bvals < 50]
    wm = (phantom.fractions["wm"] > 0.99) & (phantom.tract_weight < 0.01)
    diff = (b0[..., 0] - b0[..., 1])[wm]
    snr = b0[wm].mean() / (diff.std() / np.sqrt(2))
    assert 0.8 * TEST.snr < snr < 1.25 * TEST.snr, snr
    # Spatially correlated (as after resampling): neighbouring noise samples correlate.
    d = b0[..., 0] - b0[..., 1]
    inner = wm[1:] & wm[:-1]
    r = np.corrcoef(d[1:][inner], d[:-1][inner])[0, 1]
    assert 0.1 < r < 0.6, r


def test_subjects_differ_and_seeds_repeat():
    a = make_subject("a", seed=1, config=SMALL)
    b = make_subject("b", seed=2, config=SMALL)
    assert not np.allclose(a.affine, b.affine)
    assert (a.mask != b.mask).mean() > 0.01
    np.testing.assert_array_equal(make_subject("a", seed=1, config=SMALL).dwi, a.dwi)


def test_cli_writes_real_hcp_layout(tmp_path, capsys):
    out = tmp_path / "hcp"
    args = ["--output", str(out), "--n-subjects", "2", "--shape", "24", "28", "22", "--directions", "12", "--b0", "2"]
    assert main(args) == 0
    for name in ("phantom01", "phantom02"):
        diff = out / name / "T1w" / "Diffusion"
        img = nib.load(diff / "data.nii.gz")
        mask = nib.load(diff / "nodif_brain_mask.nii.gz")
        bvals = np.loadtxt(diff / "bvals")
        bvecs = np.loadtxt(diff / "bvecs")
        assert img.shape == (24, 28, 22, 14) and img.get_data_dtype() == np.float32
        assert mask.shape == (24, 28, 22) and mask.get_fdata().sum() > 100
        assert bvals.shape == (14,) and bvecs.shape == (3, 14)
        assert np.sum(bvals < 50) == 2 and np.all(np.abs(bvals[bvals > 50] - 1000) <= 10)
        np.testing.assert_allclose(np.linalg.norm(bvecs[:, bvals > 50], axis=0), 1, atol=1e-5)
        a = img.affine
        np.testing.assert_allclose(mask.affine, a)
        np.testing.assert_allclose(np.linalg.norm(a[:3, :3], axis=0), 1.25, atol=1e-6)
        assert np.abs(a[:3, :3] - np.diag(np.diag(a[:3, :3]))).max() > 0.01  # oblique
        assert np.linalg.det(a[:3, :3]) < 0  # HCP-like LAS voxel axes
        assert nib.load(out / name / "phantom" / "tensor.nii.gz").shape == (24, 28, 22, 6)
        labels = np.asarray(nib.load(out / name / "phantom" / "labels.nii.gz").dataobj)
        assert set(np.unique(labels)) <= set(LABELS.values())
    # No overwrite without --overwrite: one-line error, exit 2.
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_cli_refuses_subjects_as_a_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--output", str(tmp_path / "hcp"), "--subjects", "2"])
    assert e.value.code == 2 and "--n-subjects N" in capsys.readouterr().err
    assert not (tmp_path / "hcp").exists()
