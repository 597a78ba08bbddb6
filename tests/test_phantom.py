"""The DTI brain phantom: literature diffusivities, tract FA, HCP layout, and a dipy fit back."""
from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from data_prep.phantom import LABELS, MD, PhantomConfig, fa_md, main, make_subject

SMALL = replace(PhantomConfig(), shape=(36, 40, 34), n_dirs=30, n_b0=4)


@pytest.fixture(scope="module")
def phantom():
    return make_subject("phantom01", seed=3, config=SMALL)


def _dipy_fit(ph):
    import dipy.reconst.dti as dti
    from dipy.core.gradients import gradient_table

    gtab = gradient_table(ph.bvals, bvecs=ph.bvecs, b0_threshold=50)
    return dti.TensorModel(gtab, fit_method="WLS").fit(ph.dwi, mask=ph.mask)


def test_truth_compartments_have_literature_md(phantom):
    _, md = fa_md(phantom.tensor)
    # MD is linear in the tensor, so across brain voxels MD = sum_c f_c MD_c exactly (partial
    # volume included); solving for MD_c recovers each compartment's diffusivity.
    tissues = ("wm", "gm", "csf")
    f = np.stack([phantom.fractions[t][phantom.mask] for t in tissues], 1)
    md_c = np.linalg.lstsq(f.astype(np.float64), md[phantom.mask].astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(md_c, [MD[t] for t in tissues], rtol=1e-3)
    assert all((phantom.fractions[t][phantom.mask] > 0.95).sum() >= 10 for t in tissues)  # pure voxels exist
    assert not phantom.tensor[~phantom.mask].any()  # no tensor outside the brain


def test_tracts_have_fa_04_08_along_the_curve(phantom):
    fa, _ = fa_md(phantom.tensor)
    core = (phantom.tract_weight > 0.99) & (phantom.fractions["wm"] > 0.99)
    assert core.sum() > 100
    assert fa[core].min() >= 0.4 - 1e-3 and fa[core].max() <= 0.8 + 1e-3
    assert np.ptp(fa[core]) > 0.1  # FA varies between and along tracts
    background = (phantom.labels == LABELS["wm"]) & (phantom.tract_weight < 0.01)
    assert np.median(fa[background]) < 0.3


def test_dipy_fits_the_dwis_back_to_the_tensors(phantom):
    fit = _dipy_fit(phantom)
    fa, md = fa_md(phantom.tensor)
    for tissue, tol in (("wm", 0.1), ("gm", 0.1), ("csf", 0.2)):  # CSF: noisy, thin sheets
        pure = (phantom.fractions[tissue] > 0.95) & phantom.mask
        assert abs(np.median(fit.md[pure]) / MD[tissue] - 1) < tol, (tissue, np.median(fit.md[pure]))
    core = (phantom.tract_weight > 0.99) & (phantom.fractions["wm"] > 0.99)
    assert abs(np.median(fit.fa[core]) - np.median(fa[core])) < 0.05
    # Principal directions agree: bvecs and truth tensors share the voxel frame.
    d = phantom.tensor[core].astype(np.float64)
    full = d[:, [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(-1, 3, 3)
    v_true = np.linalg.eigh(full)[1][..., -1]
    cos = np.abs((v_true * fit.evecs[core][..., 0]).sum(-1))
    assert np.median(cos) > 0.97


def test_subjects_differ_and_seeds_repeat():
    a = make_subject("a", seed=1, config=SMALL)
    b = make_subject("b", seed=2, config=SMALL)
    assert not np.allclose(a.affine, b.affine)
    assert (a.mask != b.mask).mean() > 0.01
    np.testing.assert_array_equal(make_subject("a", seed=1, config=SMALL).dwi, a.dwi)


def test_cli_writes_real_hcp_layout(tmp_path, capsys):
    out = tmp_path / "hcp"
    args = ["--output", str(out), "--subjects", "2", "--shape", "24", "28", "22", "--directions", "12", "--b0", "2"]
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
    # No overwrite without --overwrite: one-line error, exit 2.
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
