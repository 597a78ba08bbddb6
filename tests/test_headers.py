"""Output headers: the input's sform/qform codes, qform == sform, mm, medsr's version in ``descrip``, and the
voxel centres where nibabel and SimpleITK both say they are."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsr import __version__
from medsr.checkpoint import model_entry, save_checkpoint
from medsr.degrade import hr_affine
from medsr.networks import create_model
from medsr.normalise import ChannelStats
from pipelines.cli import main

LPS = np.diag([-1.0, -1.0, 1.0])


def tiny_checkpoint(path, channels: int = 1, **data) -> str:
    """A RevSRCNN with random weights and a small data card: a checkpoint ``medsr infer`` runs in a second."""
    kw = dict(in_channels=channels, width=4, depth=1, norm="none", residual=True)
    model = create_model("rev_srcnn3d", **kw)
    save_checkpoint({"model": model_entry("rev_srcnn3d", kw, model),
                     "norm": {k: ChannelStats.identity(channels).to_dict() for k in "xy"},
                     "data": {"factor": 2, "patch_size": 8, "channels": channels,
                              "kind": "dti" if channels == 6 else "scalar", **data}}, path)
    return str(path)


def _centres_sitk(path, shape) -> np.ndarray:
    """World (RAS mm) coordinates of voxel centres as SimpleITK reads the file, (N, 3) in ijk order."""
    img = sitk.ReadImage(str(path))
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    pts = np.array([img.TransformIndexToPhysicalPoint([int(v) for v in ijk]) for ijk in idx])
    return pts @ LPS.T, idx


@pytest.mark.parametrize("codes", [(1, 1), (2, 0), (4, 4), (0, 3)])
def test_infer_keeps_codes_and_world_grid(tmp_path, oblique, codes):
    sform_code, qform_code = codes
    lr = nib.Nifti1Image(np.random.rand(5, 4, 3).astype(np.float32), oblique)
    lr.set_sform(oblique if sform_code else None, code=sform_code)
    lr.set_qform(oblique, code=qform_code)
    nib.save(lr, tmp_path / "lr.nii.gz")
    ck = tiny_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "sr.nii.gz"
    assert main(["infer", "--checkpoint", ck, "--input", str(tmp_path / "lr.nii.gz"), "--input-grid", "lr",
                 "--output", str(out), "--quiet"]) == 0
    img = nib.load(out)
    want_s, want_q = (sform_code or qform_code), (qform_code or sform_code)
    assert (int(img.header["sform_code"]), int(img.header["qform_code"])) == (want_s, want_q)
    assert np.allclose(img.get_sform(), img.get_qform(), atol=1e-5)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert img.header["descrip"].item().decode() == f"medsr {__version__}"
    # Voxel centres: nibabel, SimpleITK and the HR grid of the LR input agree in world coordinates.
    expected = hr_affine(oblique, 2)
    world_itk, idx = _centres_sitk(out, img.shape)
    world_nib = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    world_want = idx @ expected[:3, :3].T + expected[:3, 3]
    np.testing.assert_allclose(world_nib, world_want, atol=1e-4)
    np.testing.assert_allclose(world_itk, world_want, atol=1e-4)
    # The LR voxel (1, 2, 0) is the centre of its 2x2x2 HR block.
    assert np.allclose(img.affine @ [2.5, 4.5, 0.5, 1], oblique @ [1, 2, 0, 1], atol=1e-4)
