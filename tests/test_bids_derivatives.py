"""``medsr prep bids`` -> ``medsr train`` -> ``medsr infer --bids``: a BIDS derivatives dataset whose layout follows
the naming rules (and passes the official validator, ``bids-validator-deno``, where it is installed)."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipelines.bids_derivatives import ENTITY_ORDER
from pipelines.cli import main
from test_prep_bids import describe, write_series

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
ORDER = list(ENTITY_ORDER) + ["model", "param"]  # BEP016's model/param come after desc
NAME = re.compile(r"^(?P<ents>(?:[a-zA-Z0-9]+-[a-zA-Z0-9]+_)+)(?P<suffix>[a-zA-Z0-9]+)(?P<ext>\.nii\.gz|\.json)$")
OFFICIAL_SUFFIXES = {"FA", "colFA"}  # BIDS 1.10: dwi derivatives (dwi_scannerderivatives_volumetric)


def check_layout(out: Path, source: Path) -> list[Path]:
    """The naming rules of a BIDS derivatives dataset as medsr writes it; returns the images."""
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    assert desc["GeneratedBy"][0]["Name"] == "medsr" and desc["GeneratedBy"][0]["Version"]
    assert desc["SourceDatasets"] and all("URL" in s or "DOI" in s for s in desc["SourceDatasets"])
    assert (out / desc["DatasetLinks"]["raw"]).resolve() == source.resolve()
    ignored = (out / ".bidsignore").read_text().split()
    images = []
    for p in sorted(q for q in out.rglob("*") if q.is_file() and not q.name.startswith(".")):
        rel = p.relative_to(out)
        if rel.parts in (("dataset_description.json",), ("README.md",)):
            continue
        m = NAME.match(p.name)
        assert m, rel
        ents = [e.split("-", 1) for e in m["ents"].rstrip("_").split("_")]
        keys = [k for k, _ in ents]
        assert keys == sorted(keys, key=ORDER.index) and len(set(keys)) == len(keys), rel  # known, ordered, once
        values = dict(ents)
        folder = [f"sub-{values['sub']}"] + ([f"ses-{values['ses']}"] if "ses" in values else []) + ["dwi"]
        assert list(rel.parts[:-1]) == folder, rel
        assert values["desc"] == "superres", rel
        if m["suffix"] in OFFICIAL_SUFFIXES:
            assert "model" not in values, rel
        else:  # not in the released specification yet: BEP016's name, listed in .bidsignore
            assert m["suffix"] == "dwimap" and "model" in values and "param" in values, rel
            assert any(Path(p.name).match(pattern) for pattern in ignored), rel
        if m["ext"] == ".nii.gz":
            images.append(p)
            assert p.with_name(p.name[:-7] + ".json").is_file(), rel  # a sidecar per image
    return images


@pytest.mark.slow
def test_prep_train_infer_writes_a_bids_derivatives_dataset(tmp_path):
    from dipy.data import get_fnames

    from conftest import oblique_affine

    nii, bval, bvec = get_fnames(name="small_64D")
    img = nib.load(nii)
    data, bvals, bvecs = np.asarray(img.dataobj).astype(np.float32), np.loadtxt(bval), np.loadtxt(bvec)
    root = tmp_path / "study"
    describe(root)
    write_series(root, "sub-01/dwi", "sub-01", data, img.affine, bvals, bvecs)
    write_series(root, "sub-02/ses-1/dwi", "sub-02_ses-1_acq-b1000", data[::-1], oblique_affine(), bvals, bvecs)
    prep, run, deriv = tmp_path / "prep", tmp_path / "run", root / "derivatives" / "medsr"
    assert main(["prep", "bids", "--input", str(root), "--output", str(prep)]) == 0
    assert main(["train", str(DEMO), "--set", f"data.manifest={prep / 'manifest.csv'}", f"output_dir={run}",
                 "data.subjects=[sub-01]", "data.patch_size=8", "data.random_per_subject=2", "train.batch_size=2",
                 "train.max_steps=2", "train.progress=false", "train.threads=1"]) == 0
    ck = run / "last.pt"
    assert main(["infer", "--checkpoint", str(ck), "--input", str(prep / "manifest.csv"), "--output", str(deriv),
                 "--bids", str(root), "--mask", "--maps", "md,fa,rgb,evec", "--uncertainty", "--quiet"]) == 0
    images = check_layout(deriv, root)
    names = sorted(p.name for p in images)
    assert names == sorted(f"{s}_desc-superres_{t}.nii.gz" for s in ("sub-01", "sub-02_ses-1_acq-b1000") for t in (
        "FA", "colFA", "model-tensor_param-tensor_dwimap", "model-tensor_param-tensorstd_dwimap",
        "model-tensor_param-md_dwimap", "model-tensor_param-evec_dwimap"))
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert hashlib.sha256(ck.read_bytes()).hexdigest() in desc["GeneratedBy"][0]["Description"]
    side = json.loads((deriv / "sub-02/ses-1/dwi/sub-02_ses-1_acq-b1000_desc-superres_FA.json").read_text())
    assert side["Sources"] == ["bids::sub-02/ses-1/dwi/"
                               "sub-02_ses-1_acq-b1000_desc-superres_model-tensor_param-tensor_dwimap.nii.gz"]
    main_side = json.loads((deriv / "sub-01/dwi/sub-01_desc-superres_model-tensor_param-tensor_dwimap.json").read_text())
    assert main_side["Sources"] == ["bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"]
    assert main_side["UpsamplingFactor"] == [2, 2, 2] and main_side["Precision"] == "fp32" and main_side["SkullStripped"]
    assert main_side["CheckpointSHA256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    hr = nib.load(prep / "sub-01" / "hr.nii.gz")
    assert main_side["OutputVoxelSize"] == pytest.approx(hr.header.get_zooms()[:3], abs=1e-5)
    assert main_side["InputVoxelSize"] == pytest.approx([2 * z for z in hr.header.get_zooms()[:3]], abs=1e-5)
    for p in images:
        assert nib.load(p).get_data_dtype() == np.float32
    validator = shutil.which("bids-validator-deno")
    if validator:  # the official validator, when installed (pip install bids-validator-deno)
        proc = subprocess.run([validator, str(deriv), "--json"], capture_output=True, text=True, timeout=300)
        issues = json.loads(proc.stdout)["issues"]["issues"]
        assert not [i for i in issues if i["severity"] == "error"], issues
