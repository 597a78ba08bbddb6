"""DTI maps equal dipy's on the same tensor; ``medsr maps`` writes them as float32 NIfTI on the tensor's grid."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from dipy.reconst import dti as ddti
from scipy.spatial.transform import Rotation

from medsr.dti import lower_to_fsl
from medsr.dti_maps import MAPS, parse_maps, tensor_maps
from medsr.io import load_volume, save_dti, save_mask
from medsr.volume import Volume
from pipelines.cli import main


def _tensors(shape=(6, 5, 4), seed=0) -> np.ndarray:
    """(6, X, Y, Z) FSL tensors: rotated positive eigenvalues (mm^2/s), some with a negative one, some zero."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    evals = rng.uniform(1e-4, 3e-3, (n, 3))
    evals[::7, 2] = -2e-4  # what a network can output: a non-positive-definite tensor
    rot = Rotation.random(n, random_state=seed).as_matrix()
    m = rot @ (evals[:, :, None] * np.swapaxes(rot, 1, 2))
    m[::11] = 0.0  # outside the brain
    lower = np.stack([m[:, 0, 0], m[:, 0, 1], m[:, 1, 1], m[:, 0, 2], m[:, 1, 2], m[:, 2, 2]], 0)
    return lower_to_fsl(lower).reshape((6,) + shape).astype(np.float32)


def test_maps_equal_dipys_on_the_same_tensor():
    t6 = _tensors()
    ours = tensor_maps(t6, list(MAPS), chunk=17)  # several chunks
    lower = np.moveaxis(t6, 0, -1)[..., [0, 1, 3, 2, 4, 5]].astype(np.float64)  # FSL -> dipy's lower triangle
    evals, evecs = ddti.decompose_tensor(ddti.from_lower_triangular(lower))
    fa = ddti.fractional_anisotropy(evals)
    ref = {"fa": fa, "md": ddti.mean_diffusivity(evals), "ad": ddti.axial_diffusivity(evals),
           "rd": ddti.radial_diffusivity(evals), "rgb": np.moveaxis(ddti.color_fa(fa, evecs), -1, 0)}
    for name, want in ref.items():
        got = ours[name] if name == "rgb" else ours[name][0]
        assert got.dtype == np.float32 and got.shape == np.shape(want)
        np.testing.assert_allclose(got, want, atol=1e-6 * max(float(np.abs(want).max()), 1e-3), err_msg=name)
    assert 0.0 <= ours["fa"].min() and ours["fa"].max() <= 1.0
    # V1 up to its sign, where the tensor is not zero; 0 where it is.
    v1 = np.moveaxis(evecs[..., :, 0], -1, 0)
    nonzero = (evals > 0).any(-1)
    dots = np.abs((ours["evec"] * v1).sum(0))
    np.testing.assert_allclose(dots[nonzero], 1.0, atol=1e-5)
    assert not ours["evec"][:, ~nonzero].any() and not ours["fa"][0][~nonzero].any()


def test_parse_maps_refuses_unknown_names():
    assert parse_maps("md, FA,md") == ("md", "fa")
    with pytest.raises(ValueError, match="unknown map 'adc'.*choose from fa, md"):
        parse_maps("fa,adc")


def test_maps_cli_writes_float32_maps_on_the_tensor_grid(tmp_path, oblique, capsys):
    t6 = _tensors((6, 7, 5))
    tensor = Volume(t6, oblique, name="t")
    save_dti(tensor, tmp_path / "dti.nii.gz", layout="symmatrix")  # dipy's order, read back as FSL's
    mask = np.zeros((6, 7, 5), bool)
    mask[1:5, 1:6, 1:4] = True
    save_mask(mask, oblique, tmp_path / "mask.nii.gz")
    assert main(["maps", str(tmp_path / "dti.nii.gz"), "--maps", "fa,md,rgb,evec", "--mask",
                 str(tmp_path / "mask.nii.gz"), "--output", str(tmp_path / "out" / "s1"), "--quiet"]) == 0
    ref = tensor_maps(t6, ["fa", "md", "rgb", "evec"])
    for name, suffix, shape in (("fa", "FA", (6, 7, 5)), ("md", "MD", (6, 7, 5)), ("rgb", "RGB", (6, 7, 5, 3)),
                                ("evec", "V1", (6, 7, 5, 3))):
        img = nib.load(tmp_path / "out" / f"s1_{suffix}.nii.gz")
        assert img.get_data_dtype() == np.float32 and img.shape == shape
        assert np.allclose(img.affine, oblique, atol=1e-5)
        vol = load_volume(tmp_path / "out" / f"s1_{suffix}.nii.gz")
        np.testing.assert_allclose(vol.data, ref[name] * mask[None], atol=1e-7)
    # An existing map is refused before anything is computed; a scalar file is refused by name.
    assert main(["maps", str(tmp_path / "dti.nii.gz"), "--maps", "fa", "--output", str(tmp_path / "out" / "s1")]) == 2
    assert "already exists" in capsys.readouterr().err
    save_mask(mask, oblique, tmp_path / "scalar.nii.gz")
    assert main(["maps", str(tmp_path / "scalar.nii.gz")]) == 2
    assert "6 or 9 components" in capsys.readouterr().err
