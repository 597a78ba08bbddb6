"""Volume I/O: geometry round trips across formats, DTI layouts, masks, manifest, bad files."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsr import Volume
from medsr.dti import (
    LOWER_TO_FSL,
    eigenvalues,
    eigh,
    fractional_anisotropy,
    fsl_to_full9,
    full9_to_fsl,
    lower_to_fsl,
    matrix_to_tensor6,
    mean_diffusivity,
    tensor6_to_matrix,
)
from medsr.io import check_grid, load_dti, load_mask, load_volume, save_dti, save_mask, save_volume
from medsr.manifest import COLUMNS, parse_triple, read_manifest, read_manifest_raw, write_manifest


def _random_spd(shape, rng) -> np.ndarray:
    """Random symmetric positive definite matrices (..., 3, 3) with diffusivity-like scale."""
    a = rng.normal(size=shape + (3, 3))
    return (a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(3)) * 1e-3


def _distinct_channels(c: int, shape=(5, 6, 7)) -> np.ndarray:
    """Each channel k holds k*10 + noise, so a channel permutation is detected."""
    rng = np.random.default_rng(1)
    return (np.arange(c)[:, None, None, None] * 10 + rng.random((c,) + shape)).astype(np.float32)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("channels", [1, 6])
def test_round_trip_keeps_affine_dtype_and_channel_order(tmp_path, oblique, ext, channels):
    vol = Volume(_distinct_channels(channels), oblique, name="x")
    path = save_volume(vol, tmp_path / f"v{ext}")
    back = load_volume(path)
    assert back.data.dtype == np.float32 and back.data.shape == vol.data.shape
    np.testing.assert_array_equal(back.data, vol.data)  # same values, same channel order
    np.testing.assert_allclose(back.affine, oblique, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [f"v{ext}"]  # no temporary left behind


def test_nifti_on_disk_is_channel_last_and_scalar_is_3d(tmp_path, oblique):
    save_volume(Volume(_distinct_channels(6), oblique), tmp_path / "t.nii.gz")
    save_volume(Volume(_distinct_channels(1), oblique), tmp_path / "s.nii.gz")
    t, s = nib.load(tmp_path / "t.nii.gz"), nib.load(tmp_path / "s.nii.gz")
    assert t.shape == (5, 6, 7, 6) and s.shape == (5, 6, 7)
    assert t.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(t.dataobj)[..., 3], _distinct_channels(6)[3])


def test_world_coordinates_agree_across_formats_via_itk(tmp_path, oblique):
    """ITK converts NIfTI (RAS) to its LPS geometry by itself; our NRRD/MHA reader must undo it exactly."""
    data = _distinct_channels(1)[0]
    nib.save(nib.Nifti1Image(data, oblique), tmp_path / "ref.nii.gz")
    itk = sitk.ReadImage(str(tmp_path / "ref.nii.gz"))
    for ext in (".nrrd", ".mha"):
        sitk.WriteImage(itk, str(tmp_path / f"ref{ext}"))
    ref = load_volume(tmp_path / "ref.nii.gz")
    ijk = np.array([[0, 0, 0], [4, 5, 6], [2, 1, 3]])
    for ext in (".nrrd", ".mha"):
        vol = load_volume(tmp_path / f"ref{ext}")
        np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
        np.testing.assert_array_equal(vol.data, ref.data)
        for p in ijk:  # ITK's own physical point, in LPS, flipped to RAS
            lps = np.array(itk.TransformIndexToPhysicalPoint([int(v) for v in p]))
            np.testing.assert_allclose(vol.world(p), lps * [-1, -1, 1], atol=1e-4)
            np.testing.assert_allclose(ref.world(p), lps * [-1, -1, 1], atol=1e-4)


def test_symmatrix_intent_is_reordered_to_fsl(tmp_path, oblique):
    rng = np.random.default_rng(2)
    m = _random_spd((4, 5, 3), rng).astype(np.float32)
    # Write the file by hand, exactly as the NIfTI-1 spec lays it out: lower triangle row by row.
    lower = np.stack([m[..., 0, 0], m[..., 1, 0], m[..., 1, 1], m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]], -1)
    img = nib.Nifti1Image(lower[:, :, :, None, :], oblique)
    img.header.set_intent("symmetric matrix", ())
    nib.save(img, tmp_path / "sym.nii.gz")
    vol = load_volume(tmp_path / "sym.nii.gz")
    want = np.stack([m[..., 0, 0], m[..., 0, 1], m[..., 0, 2], m[..., 1, 1], m[..., 1, 2], m[..., 2, 2]])
    np.testing.assert_array_equal(vol.data, want)
    assert vol.meta["tensor_layout"] == "symmatrix"
    # and our writer produces the same file layout
    save_dti(vol, tmp_path / "ours.nii.gz", layout="symmatrix")
    ours = nib.load(tmp_path / "ours.nii.gz")
    assert ours.shape == (4, 5, 3, 1, 6) and ours.header.get_intent()[0] == "symmetric matrix"
    np.testing.assert_array_equal(np.asarray(ours.dataobj), lower[:, :, :, None, :])


def test_full9_tensor_is_converted(tmp_path, oblique):
    rng = np.random.default_rng(3)
    m = _random_spd((4, 5, 3), rng).astype(np.float32)
    nib.save(nib.Nifti1Image(m.reshape(4, 5, 3, 9), oblique), tmp_path / "full.nii.gz")  # row-major
    vol = load_dti(tmp_path / "full.nii.gz")
    np.testing.assert_allclose(tensor6_to_matrix(vol.data), m, rtol=1e-6)
    assert vol.meta["tensor_layout"] == "full9" and vol.channels == 6
    np.testing.assert_allclose(full9_to_fsl(fsl_to_full9(vol.data)), vol.data)
    with pytest.raises(ValueError, match="6 or 9 components"):
        save_volume(Volume(np.zeros((4, 3, 3, 3)), oblique), tmp_path / "four.nii")
        load_dti(tmp_path / "four.nii")


def test_component_orders_match_dipy():
    from dipy.reconst.dti import from_lower_triangular, lower_triangular

    rng = np.random.default_rng(4)
    m = _random_spd((7,), rng)
    ours = matrix_to_tensor6(m)  # (6, 7) FSL order
    np.testing.assert_allclose(lower_to_fsl(lower_triangular(m).T), ours)  # dipy order -> FSL
    np.testing.assert_allclose(from_lower_triangular(np.take(ours, LOWER_TO_FSL, axis=0).T), m)
    np.testing.assert_allclose(tensor6_to_matrix(ours), m)


def test_md_fa_and_eigen_against_numpy():
    rng = np.random.default_rng(5)
    m = _random_spd((3, 4), rng)
    t6 = matrix_to_tensor6(m)
    w = np.linalg.eigvalsh(m)[..., ::-1]  # descending
    np.testing.assert_allclose(np.moveaxis(eigenvalues(t6), 0, -1), w, rtol=1e-10)
    np.testing.assert_allclose(mean_diffusivity(t6), w.mean(-1))
    fa = np.sqrt(0.5 * ((w[..., 0] - w[..., 1]) ** 2 + (w[..., 1] - w[..., 2]) ** 2 + (w[..., 2] - w[..., 0]) ** 2)
                 / (w**2).sum(-1))
    np.testing.assert_allclose(fractional_anisotropy(t6), fa, rtol=1e-10)
    vals, vecs = eigh(t6)
    for k in range(3):  # D v_k = l_k v_k
        np.testing.assert_allclose(np.einsum("...ij,j...->i...", m, vecs[:, k]), vals[k] * vecs[:, k], atol=1e-12)
    assert fractional_anisotropy(np.zeros((6, 2))).tolist() == [0.0, 0.0]
    iso = matrix_to_tensor6(np.broadcast_to(np.eye(3) * 1e-3, (2, 3, 3)).copy())
    np.testing.assert_allclose(fractional_anisotropy(iso), 0.0, atol=1e-6)


def test_mask_round_trip_and_grid_check(tmp_path, oblique):
    mask = np.zeros((5, 6, 7), bool)
    mask[1:4, 2:5, 3:6] = True
    save_mask(mask, oblique, tmp_path / "m.nii.gz")
    assert nib.load(tmp_path / "m.nii.gz").get_data_dtype() == np.uint8
    ref = Volume(np.zeros((5, 6, 7)), oblique, name="dwi")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.nii.gz", ref), mask)
    shifted = oblique.copy()
    shifted[0, 3] += 1.0
    with pytest.raises(ValueError, match=r"m\.nii\.gz: affine differs"):
        load_mask(tmp_path / "m.nii.gz", ((5, 6, 7), shifted))
    with pytest.raises(ValueError, match=r"shape \(5, 6, 7\) differs"):
        load_mask(tmp_path / "m.nii.gz", ((5, 6, 8), oblique))
    with pytest.raises(ValueError, match="differs from the DWI"):
        check_grid("m.nii", (5, 6, 7), oblique, (5, 6, 7), shifted, ref_name="the DWI")


def test_bad_files_give_one_line_errors(tmp_path, oblique):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz: file not found"):
        load_volume(tmp_path / "nope.nii.gz")
    path = save_volume(Volume(np.random.rand(2, 20, 20, 20), oblique), tmp_path / "big.nii.gz")
    raw = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.nii.gz: .*truncated") as e:
        load_volume(tmp_path / "cut.nii.gz")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not an image"))
    with pytest.raises(ValueError, match="junk.nii.gz: cannot read"):
        load_volume(tmp_path / "junk.nii.gz")
    with pytest.raises(ValueError, match="unsupported extension"):
        save_volume(Volume(np.zeros((2, 2, 2)), oblique), tmp_path / "x.png")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*"))
    with pytest.raises(FileExistsError):
        save_volume(Volume(np.zeros((2, 2, 2)), oblique), path, overwrite=False)


def test_manifest_round_trip(tmp_path):
    (tmp_path / "007").mkdir()
    for n in ("hr", "lr", "lr_up", "mask"):
        (tmp_path / "007" / f"{n}.nii.gz").write_bytes(b"x")
    ok = {"subject": "007", "status": "ok", "kind": "dti", "factor": 2, "shape": "10x12x8",
          "voxel_size": "1.25x1.25x1.25", "brain_voxels": 300, "n_patches": 1,
          **{n: tmp_path / "007" / f"{n}.nii.gz" for n in ("hr", "lr", "lr_up", "mask")}}
    bad = {"subject": "008", "status": "failed", "error": "008: data.nii.gz: not 4D", "kind": "dti"}
    write_manifest(tmp_path / "manifest.csv", [bad, ok])
    raw = read_manifest_raw(tmp_path / "manifest.csv")
    assert list(raw.columns) == list(COLUMNS)
    assert raw["subject"].tolist() == ["007", "008"] and raw.loc[0, "hr"] == "007/hr.nii.gz"
    df = read_manifest(tmp_path / "manifest.csv")
    assert len(df) == 1 and df.loc[0, "hr"] == str(tmp_path.resolve() / "007" / "hr.nii.gz")
    assert parse_triple(df.loc[0, "shape"], int) == (10, 12, 8) and df.loc[0, "n_patches"] == 1
    assert len(read_manifest(tmp_path / "manifest.csv", ok_only=False)) == 2
    (tmp_path / "007" / "lr.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"subject 007: lr file .*lr\.nii\.gz is missing"):
        read_manifest(tmp_path / "manifest.csv")


def test_forced_layouts_and_layout_errors(tmp_path, oblique):
    rng = np.random.default_rng(6)
    m = _random_spd((3, 4, 2), rng).astype(np.float32)
    fsl = matrix_to_tensor6(m)
    lower = np.stack([m[..., 0, 0], m[..., 1, 0], m[..., 1, 1], m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]])
    save_volume(Volume(lower, oblique), tmp_path / "lower.nii.gz")  # a plain 4D file in dipy's order
    np.testing.assert_array_equal(load_dti(tmp_path / "lower.nii.gz", layout="lower").data, fsl)
    np.testing.assert_array_equal(load_dti(tmp_path / "lower.nii.gz").data, lower)  # auto: 6 = FSL as stored
    with pytest.raises(ValueError, match="layout 'full9' needs 9 components, got 6"):
        load_dti(tmp_path / "lower.nii.gz", layout="full9")
    with pytest.raises(ValueError, match="unknown tensor layout"):
        load_dti(tmp_path / "lower.nii.gz", layout="upper")
