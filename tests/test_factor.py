"""Per-axis factors: one parser for every spelling, the stored forms, and old manifests read unchanged."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsr import Volume
from medsr.degrade import lr_affine
from medsr.factor import factor_lcm, factor_triple, factor_value, format_factor, round_up_to_factor
from medsr.io import load_volume, save_mask, save_volume
from medsr.manifest import read_manifest, read_manifest_raw, write_manifest
from medsr.slice_profile import profile_weights
from pipelines.cli import main


@pytest.mark.parametrize("spelling, triple", [
    (2, (2, 2, 2)), ("2", (2, 2, 2)), (np.int64(3), (3, 3, 3)), ([2], (2, 2, 2)), ((1, 1, 4), (1, 1, 4)),
    ([2, 2, 4], (2, 2, 4)), ("1x1x4", (1, 1, 4)), ("1 1 4", (1, 1, 4)), (np.array([1, 2, 3]), (1, 2, 3)), (2.0, (2, 2, 2)),
])
def test_every_spelling_gives_the_triple(spelling, triple):
    assert factor_triple(spelling) == triple
    assert factor_triple(factor_value(spelling)) == triple == factor_triple(format_factor(spelling))


def test_stored_forms_and_refusals():
    assert factor_value((2, 2, 2)) == 2 and isinstance(factor_value((2, 2, 2)), int)  # the old form
    assert factor_value("1x1x4") == [1, 1, 4] and format_factor((1, 1, 4)) == "1x1x4" and format_factor(3) == "3"
    assert factor_lcm((2, 2, 3)) == 6 and round_up_to_factor(16, 3) == 18 and round_up_to_factor(16, (1, 1, 4)) == 16
    for bad in (0, -2, 1.5, "2x2", (1, 2), "x", None, [1, 1, 0]):
        with pytest.raises(ValueError, match="one positive integer or three"):
            factor_triple(bad)


def test_old_manifest_with_one_integer_reads_as_before(tmp_path):
    old = tmp_path / "manifest.csv"  # the columns and the integer factor of manifests written before per-axis factors
    pd.DataFrame([{"subject": "s1", "hr": "s1/hr.nii.gz", "lr": "s1/lr.nii.gz", "lr_up": "s1/lr_up.nii.gz",
                   "mask": "s1/mask.nii.gz", "shape": "8x8x8", "voxel_size": "1x1x1", "brain_voxels": 10,
                   "n_patches": 1, "status": "ok", "error": "", "factor": 2, "kind": "scalar"}]).to_csv(old, index=False)
    df = read_manifest_raw(old)
    assert df["factor"].tolist() == [2] and df["factor"].dtype.kind == "i"
    new = write_manifest(tmp_path / "new.csv", [dict(df.iloc[0], subject="s2", factor=[1, 1, 4]),
                                                dict(df.iloc[0], subject="s3", factor=(2, 2, 2))])
    assert pd.read_csv(new, dtype=str)["factor"].tolist() == ["1x1x4", "2"]
    assert [factor_triple(f) for f in read_manifest_raw(new)["factor"]] == [(1, 1, 4), (2, 2, 2)]


@pytest.mark.parametrize("factor", [["1", "1", "4"], ["3"], ["2", "2", "4"]])
def test_prep_volumes_per_axis_factor_and_slice_profile(tmp_path, oblique, factor):
    rng = np.random.default_rng(1)
    image = rng.normal(100, 20, size=(13, 12, 17)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[2:10, 2:10, 2:15] = 1
    save_volume(Volume(image, oblique), tmp_path / "in" / "s1" / "image.nii.gz")
    save_mask(mask, oblique, tmp_path / "in" / "s1" / "mask.nii.gz")
    r = factor_triple(" ".join(factor))
    keep = tuple(s - s % f for s, f in zip(image.shape, r))
    for profile in ("box", "gaussian"):
        out = tmp_path / profile
        argv = ["prep", "volumes", "--input", str(tmp_path / "in"), "--output", str(out), "--factor", *factor,
                "--slice-profile", profile]
        if profile == "gaussian" and len(set(r)) == 1:
            assert main(argv) == 2  # an isotropic factor has no slice direction: refused up front
            assert not out.exists()
            continue
        assert main(argv) == 0
        row = read_manifest(out / "manifest.csv").iloc[0]
        assert factor_triple(row["factor"]) == r and row["shape"] == "x".join(map(str, keep))
        hr, lr, up = (load_volume(row[c]) for c in ("hr", "lr", "lr_up"))
        np.testing.assert_array_equal(hr.data[0], image[: keep[0], : keep[1], : keep[2]])  # cropped per axis
        np.testing.assert_allclose(lr.affine, lr_affine(oblique, r), atol=1e-5)
        assert up.same_space(hr)
        blocks = hr.data[0].reshape(keep[0] // r[0], r[0], keep[1] // r[1], r[1], keep[2] // r[2], r[2])
        if profile == "box":
            np.testing.assert_allclose(lr.data[0], blocks.mean((1, 3, 5)), rtol=1e-5)
        else:  # z is the slice axis: block means in plane, the Gaussian profile's weights along z
            plane = blocks.mean((1, 3)).reshape(keep[0] // r[0], keep[1] // r[1], keep[2])
            want = np.einsum("ki,xyi->xyk", profile_weights(keep[2], r[2]), plane.astype(np.float64))
            np.testing.assert_allclose(lr.data[0], want, rtol=1e-5)
    # A second prep at another factor into the same folder would mix factors: refused.
    other = ["2"] if factor != ["2"] else ["3"]
    assert main(["prep", "volumes", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "box"),
                 "--factor", *other]) == 2
