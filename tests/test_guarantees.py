"""What the README's "Guarantees" promise, case by case through the command line.

Every case runs ``medsr ...`` in-process on a copy of one small prepared world (two 16^3 scalar
subjects, their prep output and a 2-step checkpoint) and checks the contract:

* the exit code;
* stderr holds one line, ``medsr VERB: error: ...``, naming the file or the config key, and no traceback;
* every file that existed before is byte-identical afterwards, and nothing new appears outside the
  case's own output folder (for a refused command: nothing new at all);
* no temporary file of an interrupted write is left anywhere.

A case may run under a file-size limit (``RLIMIT_FSIZE``): every write past it fails in the kernel
(``EFBIG``), as a full disk fails with ``ENOSPC``, whatever library does the writing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medsr.utils.atomic import is_temporary
from medsr.utils.lock import file_lock
from pipelines.cli import main

QUICK = Path(__file__).resolve().parents[1] / "configs" / "quick_paired_l1.yaml"
SHAPE = (16, 16, 16)
TRAIN = ["train.max_steps=2", "data.patch_size=8", "train.progress=false", "train.samples=false",
         "train.threads=1"]


# ------------------------------------------------------------------------------------------ the world
def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return (100 + 50 * np.sin(3 * x) * np.cos(2 * y) + 20 * z + rng.normal(0, 1, SHAPE)).astype(np.float32)


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[2:14, 2:14, 2:14] = 1
    return m


def write_scalar_subject(root: Path, name: str, image=None, mask=None, affine=None) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(_image(len(name)) if image is None else image, affine), folder / "image.nii.gz")
    nib.save(nib.Nifti1Image(_mask() if mask is None else mask, affine), folder / "mask.nii.gz")
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """``vol/`` (inputs), ``prep/`` (prep output + manifest), ``run/`` (a 2-step run with last.pt)."""
    root = tmp_path_factory.mktemp("world")
    for s in ("s1", "s2"):
        write_scalar_subject(root / "vol", s)
    assert main(["prep", "volumes", "--input", str(root / "vol"), "--output", str(root / "prep")]) == 0
    assert main(["train", str(QUICK), "--set", f"data.manifest={root / 'prep' / 'manifest.csv'}",
                 f"output_dir={root / 'run'}", *TRAIN]) == 0
    return root


@pytest.fixture
def world(template, tmp_path) -> Path:
    dst = tmp_path / "w"
    shutil.copytree(template, dst, symlinks=True)
    # The copied run's config names the template's manifest; point it at this copy's.
    cfg = dst / "run" / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(template), str(dst)))
    return dst


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (links by their target) under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------ the cases
@dataclass
class Case:
    """One command and what it must do.

    ``setup(world) -> argv`` prepares the world (writing files counts as "before") and returns the
    command line; ``{w}`` in argv strings is replaced by the world folder.
    """

    id: str
    setup: Callable[[Path], list[str]]
    code: int
    says: tuple[str, ...]  # substrings of the error line (file or key named, cause)
    output: str | tuple[str, ...] | None = None  # folder(s) (relative to the world) where new files may appear
    one_line: bool = True  # stderr is exactly the error line (prep reports per subject instead)
    env: dict[str, str] = field(default_factory=dict)
    fsize: int | None = None  # bytes any one file may grow to while the command runs (a full disk)


def _argv(*parts: str) -> Callable[[Path], list[str]]:
    return lambda w: [p.replace("{w}", str(w)) for p in parts]


def _then(fn: Callable[[Path], None], *parts: str) -> Callable[[Path], list[str]]:
    def setup(w: Path) -> list[str]:
        fn(w)
        return _argv(*parts)(w)

    return setup


def _train(*overrides: str, flags: tuple[str, ...] = ()) -> Callable[[Path], list[str]]:
    return _argv("train", str(QUICK), "--set", "data.manifest={w}/prep/manifest.csv", "output_dir={w}/run",
                 *TRAIN, *overrides, *flags)


def _infer(*extra: str) -> Callable[[Path], list[str]]:
    return _argv("infer", "--checkpoint", "{w}/run/last.pt", "--input", "{w}/prep/manifest.csv",
                 "--output", "{w}/pred", "--quiet", *extra)


def _manifest_subject(name: str) -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        path = w / "prep" / "manifest.csv"
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        df.loc[0, "subject"] = name
        df.to_csv(path, index=False)

    return fn


def _bad_mask(values) -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        m = _mask().astype(np.float32)
        m[5, 5, 5] = values
        nib.save(nib.Nifti1Image(m, np.eye(4)), w / "vol" / "s1" / "mask.nii.gz")

    return fn


def _foreign_file(w: Path) -> None:
    (w / "run" / "notes.txt").write_text("my notes\n")


def _torch_save(obj_fn: Callable[[Path], object], name: str = "run/last.pt") -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        torch.save(obj_fn(w), w / name)

    return fn


def _incomplete_checkpoint(w: Path) -> dict:
    ck = torch.load(w / "run" / "last.pt", weights_only=True)
    sd = ck["model"]["state_dict"]
    sd.pop(next(iter(sd)))  # one tensor missing
    return ck


def _link_out(rel: str) -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        link = w / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        (w / "outside.txt").write_text("keep me\n")
        link.symlink_to(w / "outside.txt")

    return fn


def _huge_header(w: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((30000, 30000, 30000))
    with open(w / "huge.nii", "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * 4 + b"\0" * 64)


def _complex_image(w: Path) -> None:
    nib.save(nib.Nifti1Image((_image(1) + 1j * _image(2)).astype(np.complex64), np.eye(4)), w / "c.nii.gz")


def _singular_image(w: Path) -> None:
    a = np.eye(4)
    a[2, :3] = a[1, :3]  # rows 1 and 2 equal: a flat grid (only an sform can hold it)
    img = nib.Nifti1Image(_image(1), None)
    img.header.set_sform(a, code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, w / "flat.nii.gz")


def _corrupt_second_subject(w: Path) -> None:
    (w / "prep" / "s2" / "lr_up.nii.gz").write_bytes(b"\x1f\x8b not really gzip")


def _hcp_subject(bvals: list[float], bvec_scale: float = 1.0) -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        folder = w / "hcp" / "h1" / "T1w" / "Diffusion"
        folder.mkdir(parents=True)
        n = len(bvals)
        nib.save(nib.Nifti1Image(np.ones((6, 6, 6, n), np.float32), np.eye(4)), folder / "data.nii.gz")
        nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.uint8), np.eye(4)), folder / "nodif_brain_mask.nii.gz")
        np.savetxt(folder / "bvals", np.atleast_2d(bvals), fmt="%g")
        rng = np.random.default_rng(0)
        v = rng.normal(size=(n, 3))
        v = v / np.linalg.norm(v, axis=1, keepdims=True) * bvec_scale
        np.savetxt(folder / "bvecs", v.T, fmt="%.6f")

    return fn


HELD = contextlib.ExitStack()  # locks a case's setup holds as another process would (flock is per open file)


def _hold(rel: str) -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        HELD.enter_context(file_lock(w / rel))

    return fn


def _write(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        path = w / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.replace("{w}", str(w)).encode())

    return fn


def _edit_checkpoint(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        ck = torch.load(w / "run" / "last.pt", weights_only=True)
        edit(ck)
        torch.save(ck, w / "run" / "last.pt")

    return fn


def _nan_weight(ck: dict) -> None:
    sd = ck["model"]["state_dict"]
    name = next(k for k, v in sd.items() if v.is_floating_point())
    sd[name].view(-1)[0] = float("nan")


def _overflowing_norm(ck: dict) -> None:
    ck["norm"]["y"]["std"] = [3e38]  # finite, but every output voxel beyond ~1 SD overflows float32


def _manifest_row_twice(w: Path) -> None:
    path = w / "prep" / "manifest.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    pd.concat([df, df.iloc[[0]]]).to_csv(path, index=False)


def _numeric_prep(w: Path) -> None:
    """HCP-style numeric subject IDs (one with a leading zero), prepared into ``hprep/``."""
    for name in ("100307", "0100408"):
        write_scalar_subject(w / "hvol", name)
    assert main(["prep", "volumes", "--input", str(w / "hvol"), "--output", str(w / "hprep")]) == 0


def _copy_inputs(w: Path) -> None:
    (w / "ins").mkdir()
    for s in ("s1", "s2"):
        shutil.copy(w / "prep" / s / "lr_up.nii.gz", w / "ins" / f"{s}.nii.gz")


def _tensor_file(rel: str) -> Callable[[Path], None]:
    def fn(w: Path) -> None:
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        t = np.zeros((*SHAPE, 6), np.float32)
        t[..., [0, 3, 5]] = 1e-3  # isotropic: Dxx = Dyy = Dzz
        nib.save(nib.Nifti1Image(t, np.eye(4)), w / rel)

    return fn


def _tiny_bids(w: Path) -> None:
    root = w / "bids"
    _write("bids/dataset_description.json", json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))(w)
    d = root / "sub-01" / "dwi"
    d.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6, 7), np.float32), np.eye(4)), d / "sub-01_dwi.nii.gz")
    np.savetxt(d / "sub-01_dwi.bval", [[0] + [1000] * 6], fmt="%g")
    np.savetxt(d / "sub-01_dwi.bvec", np.eye(3)[[0, 1, 2, 0, 1, 2, 0]].T, fmt="%g")


def _nan_predictions(w: Path) -> None:
    (w / "preds").mkdir()
    for s in ("s1", "s2"):
        img = nib.load(w / "prep" / s / "lr_up.nii.gz")
        data = np.asarray(img.dataobj, dtype=np.float32)
        data[8, 8, 8] = np.nan
        nib.save(nib.Nifti1Image(data, img.affine), w / "preds" / f"{s}.nii.gz")


DUPLICATE_KEY_CONFIG = QUICK.read_text() + "\ntrain:\n  lr: 1.0e-3\n"
EVAL = ("evaluate", "--manifest", "{w}/prep/manifest.csv", "--baselines", "nn", "--quiet")
REPORT = ("report", "--manifest", "{w}/prep/manifest.csv", "--baselines", "nn")
DEMO = ("demo", "--output", "{w}/demo", "--n-subjects", "2", "--minutes", "0.05")
NUMERIC = ("--set", "data.manifest={w}/hprep/manifest.csv", "data.subjects=[100307, 0100408]")


CASES = [
    # --- prep: an output folder overlapping an input subject folder is refused; nothing is touched
    Case("prep-output-is-input", _argv("prep", "volumes", "--input", "{w}/vol", "--output", "{w}/vol"), 2,
         ("{w}/vol", "contains the input subject folder")),
    Case("prep-output-is-subject", _argv("prep", "volumes", "--input", "{w}/vol", "--output", "{w}/vol/s1"), 2,
         ("{w}/vol/s1", "is the input subject folder")),
    Case("prep-output-inside-subject", _argv("prep", "volumes", "--input", "{w}/vol", "--output", "{w}/vol/s1/out"),
         2, ("{w}/vol/s1/out", "lies inside the input subject folder")),
    Case("prep-subject-name-control-char", _then(lambda w: write_scalar_subject(w / "vol", "bad\tname"),
                                                 "prep", "volumes", "--input", "{w}/vol", "--output", "{w}/out"),
         2, ("{w}/vol", "'bad\\tname'", "control character")),
    # --- prep: bad subject inputs fail that subject (exit 1), named in its line; the user's files stay
    Case("prep-mask-not-binary", _then(_bad_mask(2.0), "prep", "volumes", "--input", "{w}/vol",
                                       "--output", "{w}/out"),
         1, ("{w}/vol/s1/mask.nii.gz", "other than 0 and 1"), output="out", one_line=False),
    Case("prep-mask-nan", _then(_bad_mask(np.nan), "prep", "volumes", "--input", "{w}/vol", "--output", "{w}/out"),
         1, ("{w}/vol/s1/mask.nii.gz", "NaN"), output="out", one_line=False),
    Case("prep-clean-up-keeps-existing-files",
         _then(lambda w: (_bad_mask(3.0)(w), (w / "out" / "s1").mkdir(parents=True),
                          (w / "out" / "s1" / "mask.nii.gz").write_bytes(b"the user's own file")),
               "prep", "volumes", "--input", "{w}/vol", "--output", "{w}/out"),
         1, ("{w}/vol/s1/mask.nii.gz",), output="out", one_line=False),
    Case("prep-output-subject-links-into-input",
         _then(lambda w: ((w / "out").mkdir(), (w / "out" / "s1").symlink_to(w / "vol" / "s1")),
               "prep", "volumes", "--input", "{w}/vol", "--output", "{w}/out"),
         1, ("{w}/out/s1/hr.nii.gz", "outside its folder"), output="out", one_line=False),
    Case("prep-negative-bvalue", _then(_hcp_subject([0, -5, 1000, 1000, 1000, 1000, 1000, 1000]),
                                       "prep", "hcp", "--input", "{w}/hcp", "--output", "{w}/out"),
         1, ("{w}/hcp/h1/T1w/Diffusion/bvals", "negative b-value"), output="out", one_line=False),
    Case("prep-non-unit-bvecs", _then(_hcp_subject([0, 1000, 1000, 1000, 1000, 1000, 1000, 1000], 1.5),
                                      "prep", "hcp", "--input", "{w}/hcp", "--output", "{w}/out"),
         1, ("{w}/hcp/h1/T1w/Diffusion/bvecs", "has length 1.5"), output="out", one_line=False),
    Case("prep-bad-shell-tolerance", _argv("prep", "hcp", "--input", "{w}/vol", "--output", "{w}/out",
                                           "--shell-tolerance", "-1"), 2, ("--shell-tolerance",)),
    # --- train: config ranges and names, at load time, before anything is written
    *[Case(f"train-{key}={value}", _train(f"{key}={value}", "output_dir={w}/newrun"), 2, (f"'{key}'", allowed))
      for key, value, allowed in [
          ("train.max_steps", "0", ">= 1"), ("train.max_steps", "-5", ">= 1"),
          ("train.batch_size", "-2", ">= 1"), ("train.batch_size", "0", ">= 1"),
          ("train.checkpoint_every", "0", ">= 1"), ("data.patch_size", "0", ">= 1"),
          ("data.patch_size", "-4", ">= 1"), ("train.lr", "-1", "in (0, 1]"), ("train.beta1", "1", "[0, 1)"),
          ("train.lambda_l1", "-1", ">= 0"), ("train.pool_size", "-1", ">= 0"), ("data.num_workers", "-1", ">= 0"),
          ("data.min_brain_fraction", "1.5", "[0, 1]"), ("train.n_epochs", "-1", ">= 0"),
          ("train.mode", "pared", "paired_l1"), ("model.name", "nope", "rev_srcnn3d"),
          ("discriminator.name", "nope", "patchgan3d"), ("data.type", "nope", "patches3d"),
          ("train.gan_loss", "wgan", "lsgan"), ("train.device", "gpu7", "not a device name"),
          ("train.seed", "-1", "in [0, 4294967295]"), ("train.seed", "99999999999999999999", "in [0, 4294967295]"),
          ("train.lr", "1e300", "in (0, 1]"), ("data.subjects", "[s1, s1]", "subject s1 is listed twice"),
          ("data.subjects", "[s1, ../s2]", "contains a path separator"),
      ]],
    # --- train: every relation of the config, the data and the networks, before the run folder exists
    # (reading the data may add its caches of patch positions to the prepared folder: output="prep")
    # (data.patch_size is no relation to refuse: the patch dataset rounds it up to a multiple of every factor)
    Case("train-model-factor-vs-data-nested-folder",
         _train("model.kwargs.factor=3", "data.patch_size=6", "output_dir={w}/a/b/newrun"), 2,
         ("'model.kwargs.factor'",), output="prep"),
    Case("train-model-factor-vs-data", _train("model.kwargs.factor=3", "data.patch_size=6", "output_dir={w}/newrun"),
         2, ("'model.kwargs.factor'", "{w}/prep/manifest.csv: 2"), output="prep"),
    Case("train-discriminator-vs-patch", _train("train.mode=paired", "data.patch_size=4", "output_dir={w}/newrun"),
         2, ("'data.patch_size'", "'discriminator.kwargs'", "patchgan3d"), output="prep"),
    Case("train-missing-manifest-leaves-no-folder", _train("data.manifest={w}/nope.csv", "output_dir={w}/x/newrun"),
         2, ("{w}/nope.csv", "manifest not found")),
    Case("train-output-dir-is-a-file", _train("output_dir={w}/prep/manifest.csv"), 2,
         ("output_dir {w}/prep/manifest.csv: exists and is not a folder",)),
    # --- train: the config file and the --set values as typed
    Case("train-yaml-duplicate-key", _then(_write("dup.yaml", DUPLICATE_KEY_CONFIG), "train", "{w}/dup.yaml",
                                           "--set", "output_dir={w}/newrun"),
         2, ("{w}/dup.yaml", "duplicate key 'train' at line")),
    Case("train-binary-config", _then(_write("model.yaml", b"PK\x03\x04\xd0\xff\x00"), "train", "{w}/model.yaml"),
         2, ("{w}/model.yaml", "not a YAML text file")),
    Case("train-config-is-a-folder", _argv("train", "{w}/prep"), 2, ("{w}/prep", "is a folder")),
    Case("train-hash-in-a-list", _train("data.subjects=[s1 #2, s2]", "output_dir={w}/newrun"), 2,
         ("data.subjects=[s1 #2, s2]", "comment")),
    Case("train-hash-in-output-dir", _train("output_dir={w}/run #2"), 0, ("run folder {w}/run #2",),
         output="run #2"),
    # --- train: real HCP subject IDs are numbers (a leading zero kept)
    Case("train-numeric-subject-ids", _then(_numeric_prep, "train", str(QUICK), *NUMERIC, "output_dir={w}/hrun",
                                            *TRAIN),
         0, ("run folder {w}/hrun",), output=("hrun", "hprep")),
    # --- train: one process per run folder
    Case("train-run-folder-in-use", _then(_hold("run/.medsr-train.lock"), *_train()(Path("{w}")), "--resume"), 2,
         ("output_dir {w}/run", "in use by another medsr train process")),
    Case("train-new-run-folder-in-use", _then(_hold("newrun/.medsr-train.lock"),
                                              *_train("output_dir={w}/newrun")(Path("{w}"))),
         2, ("output_dir {w}/newrun", "in use by another medsr train process")),
    # --- train: a full disk while saving the checkpoint names it, leaves no partial file
    Case("train-disk-full-checkpoint", _train("output_dir={w}/newrun"), 2, ("{w}/newrun/last.pt", "file too large"),
         output="newrun", fsize=16 * 1024),
    Case("train-resume-nan-weights", _then(_edit_checkpoint(_nan_weight), *_train()(Path("{w}")), "--resume"), 2,
         ("{w}/run/last.pt", "holds NaN or inf")),
    Case("train-overwrite-its-own-config", _argv("train", "{w}/run/config.yaml", "--overwrite", "--set", *TRAIN), 2,
         ("{w}/run/config.yaml", "is also the config", "never an input")),
    # --- train: --overwrite removes only medsr's own files, and only after every check
    Case("train-overwrite-foreign-file", _then(_foreign_file, *_train()(Path("{w}")), "--overwrite"), 2,
         ("{w}/run", "notes.txt", "only medsr's run files")),
    Case("train-overwrite-bad-config", _train("train.max_steps=0", flags=("--overwrite",)), 2,
         ("'train.max_steps'",)),
    Case("train-overwrite-bad-model", _train("model.kwargs.nonsense=1", flags=("--overwrite",)), 2,
         ("model.kwargs", "nonsense")),
    # --- train: a refused --resume changes nothing (config.yaml included)
    Case("train-resume-other-model", _train("model.kwargs.width=12", flags=("--resume",)), 2,
         ("{w}/run/last.pt", "differs from the config")),
    Case("train-resume-foreign-checkpoint", _then(_torch_save(lambda w: {"weights": torch.zeros(2)}),
                                                  *_train()(Path("{w}")), "--resume"),
         2, ("{w}/run/last.pt",)),
    Case("train-resume-incomplete-checkpoint", _then(_torch_save(_incomplete_checkpoint),
                                                     *_train()(Path("{w}")), "--resume"),
         2, ("{w}/run/last.pt", "not a complete checkpoint", "Missing key")),
    # --- infer: subject names, output paths, flags, checkpoints, devices
    *[Case(f"infer-subject-name-{i}", _then(_manifest_subject(name), *_infer()(Path("{w}"))), 2,
           ("{w}/prep/manifest.csv", "subject name"))
      for i, name in enumerate(["../x", "a/b", "..", "/tmp/abs", "x\ny", " x"])],
    Case("infer-output-link-outside", _then(_link_out("pred/s1.nii.gz"), *_infer("--overwrite")(Path("{w}"))), 2,
         ("{w}/pred/s1.nii.gz", "outside its folder")),
    Case("infer-window-negative", _infer("--window", "-3"), 2, ("--window -3",)),
    Case("infer-overlap", _infer("--overlap", "1.5"), 2, ("--overlap 1.5", "[0, 1)")),
    Case("infer-device-name", _infer("--device", "gpu"), 2, ("--device 'gpu'", "not a device name")),
    Case("infer-device-cuda-index", _infer("--device", "cuda:7"), 2, ("--device 'cuda:7'",)),
    Case("infer-foreign-checkpoint", _then(_torch_save(lambda w: {"model": {"name": "rev_srcnn3d", "kwargs": {}}}),
                                           *_infer()(Path("{w}"))),
         2, ("{w}/run/last.pt", "not a complete medsr checkpoint")),
    Case("infer-incomplete-checkpoint", _then(_torch_save(_incomplete_checkpoint), *_infer()(Path("{w}"))), 2,
         ("{w}/run/last.pt", "not a complete medsr checkpoint")),
    Case("infer-huge-header", _then(_huge_header, "infer", "--checkpoint", "{w}/run/last.pt", "--input",
                                    "{w}/huge.nii", "--output", "{w}/o.nii.gz", "--quiet"),
         2, ("{w}/huge.nii", "more than this machine has")),
    Case("infer-complex-image", _then(_complex_image, "infer", "--checkpoint", "{w}/run/last.pt", "--input",
                                      "{w}/c.nii.gz", "--output", "{w}/o.nii.gz", "--quiet"),
         2, ("{w}/c.nii.gz", "complex-valued")),
    Case("infer-singular-affine", _then(_singular_image, "infer", "--checkpoint", "{w}/run/last.pt", "--input",
                                        "{w}/flat.nii.gz", "--output", "{w}/o.nii.gz", "--quiet"),
         2, ("{w}/flat.nii.gz", "singular")),
    Case("infer-batch-fails-part-way", _then(_corrupt_second_subject, *_infer()(Path("{w}"))), 2,
         ("{w}/prep/s2/lr_up.nii.gz", "wrote 1 of 2 output(s) before the failure: {w}/pred/s1.nii.gz"),
         output="pred"),
    # --- evaluate / report: figures only inside their folder
    Case("evaluate-figure-link-outside", _then(_link_out("figs/s1_intensity.png"), "evaluate", "--manifest",
                                               "{w}/prep/manifest.csv", "--figures", "{w}/figs", "--quiet"),
         2, ("{w}/figs/s1_intensity.png", "outside its folder")),
    Case("report-figure-link-outside", _then(_link_out("figs/s1_intensity.png"), "report", "--manifest",
                                             "{w}/prep/manifest.csv", "--output", "{w}/figs", "--overwrite"),
         2, ("{w}/figs/s1_intensity.png", "outside its folder")),
    # --- infer: a prediction that is not finite is an error, never a written volume
    Case("infer-nan-weights", _then(_edit_checkpoint(_nan_weight), *_infer()(Path("{w}"))), 2,
         ("{w}/run/last.pt", "holds NaN or inf")),
    Case("infer-non-finite-prediction", _then(_edit_checkpoint(_overflowing_norm), *_infer()(Path("{w}"))), 2,
         ("the prediction has", "NaN or inf", "no output written")),
    Case("evaluate-nan-prediction", _then(_nan_predictions, *EVAL, "--predictions", "{w}/preds", "--output",
                                          "{w}/res.csv"),
         2, ("{w}/preds/s1.nii.gz: prediction has 1 voxel(s) with NaN or inf values",)),
    Case("report-nan-prediction", _then(_nan_predictions, *REPORT, "--predictions", "{w}/preds", "--output",
                                        "{w}/figs"),
         2, ("{w}/preds/s1.nii.gz: prediction has 1 voxel(s) with NaN or inf values",), one_line=False),
    # --- --overwrite replaces earlier outputs, never a file the same command reads
    Case("infer-output-is-input", _argv("infer", "--checkpoint", "{w}/run/last.pt", "--input",
                                        "{w}/prep/s1/lr_up.nii.gz", "--output", "{w}/prep/s1/lr_up.nii.gz",
                                        "--overwrite", "--quiet"),
         2, ("{w}/prep/s1/lr_up.nii.gz: is also the --input", "never an input")),
    Case("infer-output-is-input-through-a-link",
         _then(lambda w: (w / "linked.nii.gz").symlink_to(w / "prep" / "s1" / "lr_up.nii.gz"), "infer",
               "--checkpoint", "{w}/run/last.pt", "--input", "{w}/prep/s1/lr_up.nii.gz", "--output",
               "{w}/linked.nii.gz", "--overwrite", "--quiet"),
         2, ("{w}/linked.nii.gz: is also the --input",)),
    Case("infer-output-folder-is-input-folder", _then(_copy_inputs, "infer", "--checkpoint", "{w}/run/last.pt",
                                                      "--input", "{w}/ins", "--output", "{w}/ins", "--overwrite",
                                                      "--quiet"),
         2, ("{w}/ins/s1.nii.gz: is also the --input",)),
    Case("infer-output-is-mask", _argv("infer", "--checkpoint", "{w}/run/last.pt", "--input", "{w}/prep/s1/lr_up.nii.gz",
                                       "--mask", "{w}/prep/s1/mask.nii.gz", "--output", "{w}/prep/s1/mask.nii.gz",
                                       "--overwrite", "--quiet"),
         2, ("{w}/prep/s1/mask.nii.gz: is also the --mask",)),
    Case("maps-output-is-tensor", _then(_tensor_file("t/sub_MD.nii.gz"), "maps", "{w}/t/sub_MD.nii.gz", "--maps", "md",
                                        "--output", "{w}/t/sub", "--overwrite"),
         2, ("{w}/t/sub_MD.nii.gz: is also the TENSOR",)),
    Case("export-output-is-checkpoint", _argv("export", "{w}/run/last.pt", "--output", "{w}/run/last.pt", "--overwrite"),
         2, ("{w}/run/last.pt: is also the checkpoint",)),
    Case("evaluate-output-is-manifest", _argv(*EVAL, "--output", "{w}/prep/manifest.csv", "--overwrite"), 2,
         ("{w}/prep/manifest.csv: is also the --manifest",)),
    Case("evaluate-output-is-target", _argv("evaluate", "--pred", "{w}/prep/s1/lr_up.nii.gz", "--target",
                                            "{w}/prep/s1/hr.nii.gz", "--mask", "{w}/prep/s1/mask.nii.gz", "--output",
                                            "{w}/prep/s1/hr.nii.gz", "--overwrite"),
         2, ("{w}/prep/s1/hr.nii.gz: is also the --target",)),
    Case("evaluate2d-output-is-checkpoint", _argv("evaluate2d", "--checkpoint", "{w}/run/last.pt", "--data", "{w}/x",
                                                  "--output", "{w}/run/last.pt", "--overwrite"),
         2, ("{w}/run/last.pt: is also the --checkpoint",)),
    Case("prep-bids-mask-is-an-output", _then(_tiny_bids, "prep", "bids", "--input", "{w}/bids", "--output",
                                              "{w}/bids/derivatives/medsr", "--overwrite", "--mask-pattern",
                                              "derivatives/medsr/{name}/mask.nii.gz"),
         2, ("{w}/bids/derivatives/medsr/sub-01/mask.nii.gz: is also the --mask-pattern file",)),
    Case("demo-config-inside-its-folder", _then(_write("demo/c.yaml", QUICK.read_text()), *DEMO, "--config",
                                                "{w}/demo/c.yaml"),
         2, ("--config {w}/demo/c.yaml", "lies inside the demo folder")),
    # --- a subject listed twice is named before any work (manifests, --subjects, every verb)
    *[Case(f"{verb}-manifest-subject-twice", _then(_manifest_row_twice, *argv), 2,
           ("subject s1 is listed twice in {w}/prep/manifest.csv",))
      for verb, argv in [
          ("infer", _infer()(Path("{w}"))), ("evaluate", (*EVAL, "--output", "{w}/res.csv")),
          ("report", (*REPORT, "--output", "{w}/figs")), ("train", _train("output_dir={w}/newrun")(Path("{w}"))),
          ("prep", ("prep", "volumes", "--input", "{w}/vol", "--output", "{w}/prep")),
      ]],
    *[Case(f"{argv[0]}-subjects-twice", _argv(*argv, "--subjects", "s1", "s2", "s1"), 2,
           ("--subjects: subject s1 is listed twice",))
      for argv in [_infer()(Path("{w}")), (*EVAL, "--output", "{w}/res.csv"), (*REPORT, "--output", "{w}/figs"),
                   ("prep", "volumes", "--input", "{w}/vol", "--output", "{w}/out")]],
    Case("bench-quality-train-is-test", _argv("bench", "quality", "--configs", str(QUICK), "--steps", "1", "--output",
                                              "{w}/bq", "--manifest", "{w}/prep/manifest.csv", "--train", "s1",
                                              "--test", "s1"),
         2, ("--train and --test both name s1",)),
    Case("report-two-prediction-folders-one-name",
         _then(lambda w: ((w / "a" / "preds").mkdir(parents=True), (w / "b" / "preds").mkdir(parents=True)),
               *REPORT, "--predictions", "{w}/a/preds", "{w}/b/preds", "--output", "{w}/figs"),
         2, ("--predictions: two folders are named 'preds'",)),
    # --- numeric subject IDs work wherever subjects are named
    Case("prep-numeric-subject-ids", _then(lambda w: [write_scalar_subject(w / "hvol", n) for n in ("100307", "0100408")],
                                           "prep", "volumes", "--input", "{w}/hvol", "--output", "{w}/hprep",
                                           "--subjects", "0100408"),
         0, ("1 ok",), output="hprep"),
    Case("infer-numeric-subject-ids", _then(_numeric_prep, "infer", "--checkpoint", "{w}/run/last.pt", "--input",
                                            "{w}/hprep/manifest.csv", "--output", "{w}/hpred", "--subjects", "0100408"),
         0, ("wrote 1 volume(s): {w}/hpred/0100408.nii.gz",), output="hpred"),
    Case("evaluate-numeric-subject-ids", _then(_numeric_prep, "evaluate", "--manifest", "{w}/hprep/manifest.csv",
                                               "--baselines", "nn", "--quiet", "--subjects", "0100408", "100307",
                                               "--output", "{w}/hres/r.csv"),
         0, ("wrote {w}/hres/r.csv (2 rows)",), output="hres"),
    # --- flags: a value that is not a number of the allowed range stops at the flag check
    Case("demo-minutes-nan", _argv(*DEMO, "--minutes", "nan"), 2, ("--minutes must be a positive number, got nan",)),
    Case("demo-minutes-inf", _argv(*DEMO, "--minutes", "inf"), 2, ("--minutes must be a positive number, got inf",)),
    Case("demo-seed-negative", _argv(*DEMO, "--seed", "-1"), 2, ("--seed must be >= 0",)),
    Case("demo-bad-config-before-any-work", _then(_write("bad.yaml", "train:\n  not_a_key: 1\n"), *DEMO,
                                                  "--config", "{w}/bad.yaml"),
         2, ("'train.not_a_key'",)),
    Case("demo-folder-in-use", _then(_hold("demo/.medsr-demo"), *DEMO), 2,
         ("{w}/demo: in use by another medsr demo",)),
    Case("bench-quality-minutes-nan", _argv("bench", "quality", "--configs", str(QUICK), "--minutes", "nan",
                                            "--output", "{w}/bq"),
         2, ("the budget must be positive", "--minutes nan")),
    Case("prep-shell-inf", _argv("prep", "hcp", "--input", "{w}/vol", "--output", "{w}/out", "--shell", "inf"), 2,
         ("--shell must be a positive b-value",)),
    # --- a full disk anywhere names the file and leaves no partial file
    Case("infer-disk-full", _infer(), 2, ("{w}/pred/s1.nii.gz: file too large", "no output written"), output="pred",
         fsize=1024),
    Case("infer-disk-full-nrrd", _argv("infer", "--checkpoint", "{w}/run/last.pt", "--input", "{w}/prep/s1/lr_up.nii.gz",
                                       "--output", "{w}/o.nrrd", "--quiet"),
         2, ("{w}/o.nrrd: ",), fsize=1024),
    Case("prep-disk-full", _argv("prep", "volumes", "--input", "{w}/vol", "--output", "{w}/out"), 2,
         ("medsr prep: error: {w}/out/s1/hr.nii.gz: file too large",), output="out", fsize=1024, one_line=False),
    Case("export-disk-full", _argv("export", "{w}/run/last.pt", "--output", "{w}/m.pt"), 2,
         ("{w}/m.pt: file too large",), fsize=16 * 1024),
    Case("evaluate-disk-full", _argv(*EVAL, "--output", "{w}/res/r.csv"), 2, ("{w}/res/r.csv: file too large",),
         output="res", fsize=16),
    Case("report-disk-full", _argv(*REPORT, "--output", "{w}/figs"), 2, ("{w}/figs/s1_intensity.png: file too large",),
         output="figs", fsize=1024, one_line=False),
    Case("evaluate-csv-is-a-folder", _then(lambda w: (w / "res.csv").mkdir(), "evaluate", "--manifest",
                                           "{w}/prep/manifest.csv", "--output", "{w}/res.csv", "--overwrite",
                                           "--baselines", "nn", "--quiet"),
         2, ("{w}/res.csv", "is a directory")),
]


@contextlib.contextmanager
def file_size_limit(limit: int | None):
    """Writes past ``limit`` bytes fail with EFBIG for the block (Python ignores SIGXFSZ)."""
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_guarantee(case: Case, world: Path, capsys, monkeypatch):
    try:
        argv = case.setup(world)
        before = snapshot(world)
        capsys.readouterr()
        for k, v in case.env.items():
            monkeypatch.setenv(k, v)
        with file_size_limit(case.fsize):
            code = main(argv)
    finally:
        HELD.close()  # locks a setup took for another (pretend) process
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert "Traceback" not in out + err
    says = [s.replace("{w}", str(world)) for s in case.says]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if case.code == 0:
        hit = out + err
    elif case.one_line:
        assert len(lines) == 1, err
        assert lines[0].startswith(f"medsr {argv[0]}: error: "), lines[0]
        hit = lines[0]
    else:
        hit = next((ln for ln in lines if all(s in ln for s in says)), "")
    for s in says:
        assert s in hit, f"{s!r} not in {out + err!r}"
    after = snapshot(world)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"pre-existing files changed or removed: {changed}"
    outputs = (case.output,) if isinstance(case.output, str) else case.output or ()
    new = [p for p in after if p not in before and Path(p).parts[0] not in outputs]
    assert not new, f"files written outside the output folder: {new}"
    temporaries = [p for p in after if is_temporary(Path(p).name)]
    assert not temporaries, f"temporary files left: {temporaries}"


# ------------------------------------------------------------------------------------------ successes
def test_overwrite_replaces_only_the_run_files(world, capsys):
    run = world / "run"
    (run / "samples").mkdir(exist_ok=True)
    (run / "samples" / "epoch_000.png").write_bytes(b"old sample")
    (run / ".last.pt.999999-abcdefgh.medsr-tmp.pt").write_bytes(b"a killed write's temporary")
    old = (run / "last.pt").read_bytes()
    assert main(_train("train.max_steps=1", flags=("--overwrite",))(world)) == 0
    assert (run / "last.pt").read_bytes() != old
    assert not (run / "samples" / "epoch_000.png").exists()  # samples=false: the old run's image went
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt", "log.csv"]


def test_outputs_follow_the_umask_and_stale_temporaries_go(world, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (world / "pred").mkdir()
    stale = world / "pred" / f".s1.nii.gz.{dead.pid}-abcdefgh.medsr-tmp.nii.gz"
    stale.write_bytes(b"left by a killed write")
    old = os.umask(0o022)
    try:
        assert main(_infer()(world)) == 0
    finally:
        os.umask(old)
    assert not stale.exists()
    for p in (world / "pred" / "s1.nii.gz", world / "pred" / "s2.nii.gz"):
        assert (p.stat().st_mode & 0o777) == 0o644


def test_debug_shows_the_traceback(world, capsys, monkeypatch):
    argv = _infer("--window", "-3")(world)
    assert main(["--debug", *argv]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MEDSR_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("exc, code, says", [
    (MemoryError(), 1, "out of memory"),
    (PermissionError(13, "Permission denied", "/data/x.nii.gz"), 2, "/data/x.nii.gz: permission denied"),
    (KeyError("bug"), 1, "internal error KeyError: bug (rerun with --debug"),
])
def test_unexpected_errors_are_one_line(exc, code, says, capsys, monkeypatch):
    import pipelines.infer

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(pipelines.infer, "run_inference", boom)
    assert main(["infer", "--checkpoint", "c.pt", "--input", "i.nii.gz", "--output", "o.nii.gz"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err


def test_one_process_per_run_folder(tmp_path):
    """Two ``medsr train`` started at once into one run folder, on a prepared folder whose caches are not
    built yet: exactly one trains, the other stops at once with exit code 2 naming the folder, and the
    folder holds that one run's files."""
    for s in ("s1", "s2"):
        write_scalar_subject(tmp_path / "vol", s)
    assert main(["prep", "volumes", "--input", str(tmp_path / "vol"), "--output", str(tmp_path / "prep")]) == 0
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", str(QUICK), "--set",
           f"data.manifest={tmp_path / 'prep' / 'manifest.csv'}", f"output_dir={run}", "data.patch_size=8",
           "train.progress=false", "train.samples=false", "train.threads=1",
           "train.max_steps=1000000", "train.max_minutes=0.15"]  # the winner holds the folder 9 s
    env = dict(os.environ, PYTHONPATH=str(QUICK.parents[1]), OMP_NUM_THREADS="1")
    env.pop("MEDSR_DEBUG", None)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    _, _, err = next(r for r in results if r[0] == 2)
    assert err.strip().splitlines() == [
        f"medsr train: error: output_dir {run}: in use by another medsr train process (it holds "
        f"{run / '.medsr-train.lock'}); wait for it to finish or choose another output_dir"]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt", "log.csv"]  # the lock went too
    assert torch.load(run / "last.pt", weights_only=True)["config"] == yaml_config(run / "config.yaml")


def yaml_config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_disk_full_while_saving_a_checkpoint(template, tmp_path, capsys):
    """A real full disk (a 64 KiB tmpfs): the checkpoint is named with exit code 2 and no partial file."""
    small = tmp_path / "small"
    small.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux)")
    try:
        code = main(_train(f"output_dir={small / 'run'}")(template))
        err = capsys.readouterr().err
        assert code == 2, err
        assert err == f"medsr train: error: {small / 'run' / 'last.pt'}: no space left on device\n"
        assert sorted(p.name for p in (small / "run").iterdir()) == ["config.yaml"]
    finally:
        subprocess.run(["umount", str(small)], check=False)
