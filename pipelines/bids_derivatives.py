"""``medsr infer --bids ROOT``: write the predictions as a BIDS derivatives dataset.

The input is a manifest of ``medsr prep bids`` (its subjects are named after the entities of their dwi
series, ``sub-02_ses-1_acq-b1000``) and ``ROOT`` is the BIDS dataset it was prepared from. The output
folder becomes a derivatives dataset::

    OUT/dataset_description.json        DatasetType "derivative", GeneratedBy medsr (version, checkpoint
                                        SHA-256), SourceDatasets -> ROOT
    OUT/.bidsignore                     *_dwimap.* (see below)
    OUT/README.md                       what the folder holds
    OUT/sub-02/ses-1/dwi/sub-02_ses-1_acq-b1000_desc-superres_model-tensor_param-tensor_dwimap.nii.gz
                                        the super-resolved tensor (6 volumes, FSL order, mm^2/s)
    ..._desc-superres_model-tensor_param-tensorstd_dwimap.nii.gz    --uncertainty: per-voxel std
    ..._desc-superres_FA.nii.gz, ..._desc-superres_colFA.nii.gz      --maps fa, rgb
    ..._desc-superres_model-tensor_param-{md,ad,rd,evec}_dwimap.nii.gz
    and a .json sidecar beside every image (model, checkpoint, factor, input and output voxel sizes,
    TTA, precision, Sources)

Names: the released BIDS specification (1.10) has derivative suffixes for FA and colour FA in the dwi
datatype (``FA``, ``colFA``), and those are used. It has none yet for a tensor, MD, AD, RD, V1 or a
standard deviation; for those medsr follows the diffusion-derivatives extension proposal (BEP016,
``model-<label>_param-<label>_dwimap``, which QSIRecon writes too) and lists ``*_dwimap.*`` in
``.bidsignore``, the specification's way to hold files it does not cover yet. The official validator
(``bids-validator-deno``, PyPI) passes such a folder; ``tests/test_bids_derivatives.py`` checks the naming
rules themselves (it runs the validator too where it is installed).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from medsr import __version__
from medsr.utils.atomic import atomic_path
from pipelines.infer_outputs import ItemOutputs

DESC = "superres"
BIDS_VERSION = "1.10.0"
BIDSIGNORE = "*_dwimap.*\n"
ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part",
                "recording", "space", "res", "den", "label", "desc")
# map name -> the file-name tail after the source entities
MAP_NAMES: dict[str, str] = {
    "fa": f"desc-{DESC}_FA", "rgb": f"desc-{DESC}_colFA",
    "md": f"desc-{DESC}_model-tensor_param-md_dwimap", "ad": f"desc-{DESC}_model-tensor_param-ad_dwimap",
    "rd": f"desc-{DESC}_model-tensor_param-rd_dwimap", "evec": f"desc-{DESC}_model-tensor_param-evec_dwimap",
}
MAIN = f"desc-{DESC}_model-tensor_param-tensor_dwimap"
STD = f"desc-{DESC}_model-tensor_param-tensorstd_dwimap"
DESCRIPTIONS = {
    MAIN: "Super-resolved diffusion tensor: 6 volumes Dxx, Dxy, Dxz, Dyy, Dyz, Dzz (FSL dtifit order), mm^2/s",
    STD: "Per-voxel predictive standard deviation of the super-resolved tensor (spread of the test-time "
         "views), same components and units",
    "fa": "Fractional anisotropy of the super-resolved tensor, [0, 1]",
    "rgb": "Colour FA: |principal eigenvector| x FA, red/green/blue = x/y/z of the tensor frame",
    "md": "Mean diffusivity of the super-resolved tensor, mm^2/s",
    "ad": "Axial diffusivity (largest eigenvalue), mm^2/s",
    "rd": "Radial diffusivity (mean of the two smaller eigenvalues), mm^2/s",
    "evec": "Principal eigenvector V1 (3 volumes, unit length, arbitrary sign)",
}


def parse_subject(subject: str) -> dict[str, str]:
    """``"sub-02_ses-1_acq-b1000"`` -> entities; a name that is not BIDS entities is refused by name."""
    from data_prep.bids import parse_entities

    ents = parse_entities(subject)
    if not ents or "sub" not in ents:
        raise ValueError(f"subject {subject!r}: not named after BIDS entities (sub-<label>[_ses-<label>]...); "
                         "--bids needs a manifest written by 'medsr prep bids'")
    return ents


def subject_folder(ents: dict[str, str]) -> Path:
    """``sub-02/ses-1/dwi``."""
    folder = Path(f"sub-{ents['sub']}")
    if "ses" in ents:
        folder = folder / f"ses-{ents['ses']}"
    return folder / "dwi"


def source_dwi(root: Path, subject: str) -> Path:
    """The raw dwi series of a prepared subject, relative to ``root`` (it must exist)."""
    rel = subject_folder(parse_subject(subject))
    for ext in (".nii.gz", ".nii"):
        if (root / rel / f"{subject}_dwi{ext}").is_file():
            return rel / f"{subject}_dwi{ext}"
    raise FileNotFoundError(f"{root / rel / (subject + '_dwi.nii.gz')}: no source dwi series for subject "
                            f"{subject!r} in the BIDS dataset {root} (is it the one the manifest was prepared from?)")


def bids_outputs(out: Path, root: Path, subject: str, maps: Sequence[str], uncertainty: bool,
                 common: dict[str, Any]) -> ItemOutputs:
    """The derivative files of one subject with their sidecars (``common`` + description + Sources)."""
    folder = out / subject_folder(parse_subject(subject))
    sources = [f"bids:raw:{source_dwi(root, subject).as_posix()}"]

    def image(tail: str) -> Path:
        return folder / f"{subject}_{tail}.nii.gz"

    main = image(MAIN)
    outputs = ItemOutputs(main, image(STD) if uncertainty else None, {m: image(MAP_NAMES[m]) for m in maps})
    outputs.sidecars[main] = {"Description": DESCRIPTIONS[MAIN], "Sources": sources, **common}
    if outputs.std is not None:
        outputs.sidecars[outputs.std] = {"Description": DESCRIPTIONS[STD], "Sources": [f"bids::{_rel(main, out)}"],
                                         **common}
    for m, p in outputs.maps.items():
        outputs.sidecars[p] = {"Description": DESCRIPTIONS[m], "Sources": [f"bids::{_rel(main, out)}"], **common}
    return outputs


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_root(root: str | os.PathLike) -> dict[str, Any]:
    """The source dataset's description (``data_prep.bids.check_dataset``: a one-line error when not BIDS)."""
    from data_prep.bids import check_dataset

    return check_dataset(root)


def description(out: Path, root: Path, source: dict[str, Any], checkpoint: Path, digest: str) -> dict[str, Any]:
    """``dataset_description.json`` of the derivatives dataset."""
    link = Path(os.path.relpath(root.resolve(), out.resolve())).as_posix()
    src: dict[str, Any] = {"URL": "bids:raw:"}
    if source.get("DatasetDOI"):
        src["DOI"] = source["DatasetDOI"]
    return {
        "Name": f"{source.get('Name', root.name)}: medsr super-resolution",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "medsr", "Version": __version__,
            "Description": f"super-resolution with checkpoint {checkpoint.name} (SHA-256 {digest})",
            "CheckpointSHA256": digest,
        }],
        "SourceDatasets": [src],
        "DatasetLinks": {"raw": link if link.endswith("/") else link + "/"},
    }


README = """# medsr super-resolution derivatives

Super-resolved diffusion tensors written by `medsr infer --bids` (see dataset_description.json for the
version and the checkpoint's SHA-256), with their maps and uncertainty when asked for. Each image has a
JSON sidecar (model, factor, input and output voxel sizes, test-time augmentation, precision, sources).
Tensor, MD, AD, RD, V1 and standard-deviation images use the names of the BIDS diffusion-derivatives
proposal (BEP016, `_model-tensor_param-<name>_dwimap`), listed in .bidsignore until the specification has them.
"""


def write_dataset_files(out: Path, desc: dict[str, Any], overwrite: bool) -> None:
    """``dataset_description.json``, ``README.md`` and ``.bidsignore`` (atomic; an existing different
    description needs ``overwrite``)."""
    for name, text in (("dataset_description.json", json.dumps(desc, indent=2) + "\n"), (".bidsignore", BIDSIGNORE),
                       ("README.md", README)):
        path = out / name
        if path.is_file() and path.read_text() == text:
            continue
        with atomic_path(path, overwrite=overwrite) as tmp:
            Path(tmp).write_text(text)


def model_facts(predictor, checkpoint: Path, digest: str, precision: str, masked: bool) -> dict[str, Any]:
    """The sidecar fields every output of one run shares."""
    from medsr.factor import factor_triple

    return {
        "Model": predictor.card.get("model"), "Checkpoint": checkpoint.name, "CheckpointSHA256": digest,
        "UpsamplingFactor": list(factor_triple(predictor.factor)), "Precision": precision,
        "SkullStripped": bool(masked), "MedsrVersion": __version__,
    }


def item_facts(pred, factor: Any, tta: str) -> dict[str, Any]:
    """Input (LR) and output voxel sizes in mm of one prediction on the HR grid, and the TTA views it averaged."""
    from medsr.factor import factor_triple

    out = [round(float(v), 6) for v in pred.voxel_size]
    return {"InputVoxelSize": [round(v * f, 6) for v, f in zip(out, factor_triple(factor))], "OutputVoxelSize": out,
            "TTA": tta}
