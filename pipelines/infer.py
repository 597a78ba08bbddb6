"""Orchestration of ``medsr infer``: inputs -> :class:`medsr.inference.Predictor` -> NIfTI files.

Single mode: one input file -> one output file. Batch mode: a folder of NIfTIs, or a prep
``manifest.csv``, -> a folder holding ``<subject>.nii.gz`` per input; with ``bids`` a BIDS derivatives
dataset (:mod:`pipelines.bids_derivatives`). Beside each prediction: its uncertainty, DTI maps and a mask
applied (:mod:`pipelines.infer_outputs`). Every output is written atomically, and existing outputs are
refused up front (before any compute) unless ``overwrite``.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from medsr.dti_maps import parse_maps
from medsr.inference import Predictor, lr_grid_factor
from medsr.model_card import uncertainty_scale
from medsr.io import load_volume
from medsr.manifest import is_lr_only, read_manifest
from medsr.precision import check_precision
from medsr.uncertainty import predict_with_std, uncertainty_views
from medsr.utils.device import check_device, resolve_device
from medsr.utils.paths import check_not_input, check_subject_name, inside
from medsr.utils.threads import AUTO, ThreadSetting, choose_threads, parse_threads
from medsr.volume import Volume
from pipelines import bids_derivatives as bids_out
from pipelines.infer_outputs import (
    MASK_FROM_MANIFEST, ItemOutputs, check_domain, item_mask, plain_outputs, write_item,
)

TTA_CHOICES = ("auto", "none", "flip", "full")

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# threads auto: the probe is a crop of at most this edge (voxels), and is repeated for a batch's next
# subject once this many seconds have passed since the last (the machine's load may have changed).
PROBE_EDGE = 32
PROBE_EVERY_S = 60.0


@dataclass
class InferItem:
    """One volume to process: subject id, input path, input grid ("auto", "lr", "hr"), output path, and
    the manifest's mask (manifest inputs only)."""

    subject: str
    path: Path
    grid: str
    out: Path
    mask: str | None = None


def _strip_nifti(name: str) -> str | None:
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return None


def collect_items(
    src: str | Path, out: str | Path, *, reverse: bool = False, input_grid: str = "auto",
    subjects: list[str] | None = None,
) -> list[InferItem]:
    """Resolve ``src`` into work items.

    Args:
        src: a NIfTI file (single mode), a folder of NIfTIs, or a prep ``manifest.csv`` (batch mode).
            From a manifest the forward direction reads ``lr_up`` (HR grid, exactly the training
            input), or ``lr`` for scans prepared with ``--lr-only``, and ``--reverse`` reads ``hr``.
        out: the output file (single mode, ``.nii``/``.nii.gz``) or folder (batch mode).
        reverse: run G (HR -> LR-up).
        input_grid: grid of the inputs for single/folder mode.
        subjects: batch mode: only these subjects (manifest ``subject`` / file names without extension).

    Raises:
        FileNotFoundError: ``src`` does not exist. ValueError: no inputs, a bad output name, or two
            inputs mapping to one subject.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"{src}: input not found")
    if src.is_file() and src.suffix.lower() == ".csv":
        df = read_manifest(src)
        col = "hr" if reverse else "lr_up"
        items_m = []
        for _, r in df.iterrows():
            mask = str(r["mask"] or "")
            if is_lr_only(r):  # a scan prepared with --lr-only: its native grid is the model's LR grid
                if reverse:
                    raise ValueError(f"{src}: subject {r['subject']} has no HR volume (prepared with --lr-only) "
                                     "for --reverse")
                items_m.append(InferItem(str(r["subject"]), Path(r["lr"]), "lr", out / f"{r['subject']}.nii.gz", mask))
            else:
                items_m.append(InferItem(str(r["subject"]), Path(r[col]), "hr", out / f"{r['subject']}.nii.gz", mask))
        return _only(items_m, subjects, src)
    if src.is_dir():
        items: dict[str, InferItem] = {}
        for p in sorted(src.iterdir()):
            subject = _strip_nifti(p.name)
            if subject is None or p.name.startswith(".") or not p.is_file():
                continue  # hidden files include atomic writers' temporaries
            check_subject_name(subject, p)
            if subject in items:
                raise ValueError(f"{src}: two inputs for subject {subject!r} ({items[subject].path.name}, {p.name})")
            items[subject] = InferItem(subject, p, input_grid, out / f"{subject}.nii.gz")
        if not items:
            raise ValueError(f"{src}: no .nii or .nii.gz file in this folder")
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out}: batch mode writes a folder, but this is a file")
        return _only(list(items.values()), subjects, src)
    if _strip_nifti(src.name) is None:
        raise ValueError(f"{src}: expected a .nii/.nii.gz file, a folder, or a manifest.csv")
    if _strip_nifti(out.name) is None:
        raise ValueError(f"{out}: the output must be a .nii or .nii.gz file for a single input")
    return [InferItem(_strip_nifti(src.name) or src.name, src, input_grid, out)]


def _only(items: list[InferItem], subjects: list[str] | None, src: Path) -> list[InferItem]:
    if subjects:
        known = {it.subject for it in items}
        unknown = [s for s in subjects if s not in known]
        if unknown:
            raise ValueError(f"{src}: no input for subject {unknown[0]!r}")
        items = [it for it in items if it.subject in set(subjects)]
    if not items:
        raise ValueError(f"{src}: no input to process (no ok subject)")
    return items


def run_inference(
    checkpoint: str | Path,
    src: str | Path,
    out: str | Path,
    *,
    reverse: bool = False,
    device: str | None = None,
    window: int | None = None,
    overlap: float | None = None,
    input_grid: str = "auto",
    overwrite: bool = False,
    subjects: list[str] | None = None,
    quiet: bool = False,
    precision: str = "fp32",
    tta: str = "auto",
    maps: Sequence[str] | str = (),
    uncertainty: bool = False,
    mask: str | None = None,
    strict: bool = False,
    bids: str | Path | None = None,
    threads: ThreadSetting = AUTO,
) -> list[Path]:
    """Run a checkpoint over one or many volumes and write float32 NIfTIs on the HR grid.

    ``precision`` (``fp32``, ``bf16``, ``fp16``) runs the model under autocast; outputs stay float32.
    ``tta`` (``auto``, ``none``, ``flip``, ``full``): test-time augmentation (:meth:`Predictor.predict`);
    ``auto`` averages the 8 flips for a model trained with flips or permutations.
    ``maps`` (DTI models): names of :data:`medsr.dti_maps.MAPS` written beside each prediction.
    ``uncertainty``: also write the per-voxel std over the TTA views (:mod:`medsr.uncertainty`).
    ``mask``: a mask file, or ``"manifest"`` for the manifest's masks: outputs are 0 outside it.
    ``strict``: refuse an input outside the model card instead of warning.
    ``bids``: the BIDS root a ``prep bids`` manifest came from: ``out`` becomes a derivatives dataset.
    ``threads``: torch CPU threads, ``auto`` (timed on a small crop of the volume at each candidate
    count, see :func:`medsr.utils.threads.choose_threads`), a number or 0 (torch's default); torch's
    count is restored on return.

    Returns:
        The prediction paths written, in input order.
    """
    maps = parse_maps(maps) if maps else ()
    items = collect_items(src, out, reverse=reverse, input_grid=input_grid, subjects=subjects)
    from_manifest = Path(src).is_file() and Path(src).suffix.lower() == ".csv"
    if mask == MASK_FROM_MANIFEST and not from_manifest:
        raise ValueError("--mask without a file takes each subject's mask from a manifest; --input is not one")
    if bids is not None and (not from_manifest or reverse):
        raise ValueError("--bids writes a derivatives dataset from a 'medsr prep bids' manifest: give it as --input "
                         "(and no --reverse)")
    source = bids_out.check_root(bids) if bids is not None else None
    plans = [bids_out.bids_outputs(Path(out), Path(bids), it.subject, maps, uncertainty, {}) if bids is not None
             else plain_outputs(it.out, maps, uncertainty) for it in items]
    check_not_input([p for o in plans for p in o.paths()],
                    {"the --input": [src, *(it.path for it in items)], "the --checkpoint": checkpoint,
                     "the --mask": mask if mask not in (None, MASK_FROM_MANIFEST) else None})
    batch = len(items) > 1 or Path(src).is_dir() or from_manifest
    if batch:
        for o in plans:  # every output inside the output folder (subject names, links)
            for p in o.paths():
                inside(out, p)
    device = check_device(device)
    check_precision(precision, resolve_device(device), "--precision")  # before any file is read
    if tta not in TTA_CHOICES:
        raise ValueError(f"--tta {tta}: choose one of {', '.join(TTA_CHOICES)}")
    try:
        threads = parse_threads(threads)
    except ValueError as e:
        raise ValueError(f"--threads: {e}") from None
    if not overwrite:
        existing = [str(p) for o in plans for p in o.paths() if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise FileExistsError(f"{existing[0]}: already exists{more} (pass --overwrite to replace)")
    predictor = Predictor.from_checkpoint(checkpoint, device, precision)
    untrained = reverse_untrained_by(predictor.ck) if reverse else ""
    if untrained and not quiet:
        print(f"medsr infer: warning: {checkpoint} was trained with {untrained}, so its G never learned; "
              "--reverse writes G as initialised (for rev_espcn3d: the block mean, NN-upsampled)", file=sys.stderr)
    if maps and (predictor.channels != 6 or reverse):
        raise ValueError(f"--maps needs a DTI model run forward; {checkpoint} is a {predictor.channels}-channel "
                         f"{predictor.kind} model" + (" and --reverse writes LR-up estimates" if reverse else ""))
    if bids is not None:
        digest = bids_out.sha256(checkpoint)
        bids_out.write_dataset_files(Path(out), bids_out.description(Path(out), Path(bids), source or {},
                                                                     Path(checkpoint), digest), overwrite)
        facts = bids_out.model_facts(predictor, Path(checkpoint), digest, precision, mask is not None)
        for o in plans:
            for content in o.sidecars.values():
                content.update(facts)
    written: list[Path] = []
    threads_before = torch.get_num_threads()
    try:
        _run_items(predictor, items, plans, batch, written, window=window, overlap=overlap, reverse=reverse,
                   overwrite=overwrite, quiet=quiet, tta=tta, uncertainty=uncertainty, mask=mask, strict=strict,
                   threads=threads)
    except Exception as e:
        if batch:
            _note_written(e, written, len(items))
        raise
    finally:
        torch.set_num_threads(threads_before)  # --threads must not leak into a Python caller
    return written


def _run_items(predictor, items: list[InferItem], plans: list[ItemOutputs], batch: bool, written: list[Path], *,
               window, overlap, reverse: bool, overwrite: bool, quiet: bool, tta: str, uncertainty: bool,
               mask: str | None, strict: bool, threads: ThreadSetting = AUTO) -> None:
    """Predict and write each item in turn, appending each written prediction's path to ``written``."""
    shown_plan = None
    probed = None  # when threads were last chosen
    for it, outputs in tqdm(list(zip(items, plans)), desc="subjects", unit="vol", disable=quiet or not batch):
        vol = load_volume(it.path)
        check_domain(predictor, vol, it.grid, reverse=reverse, strict=strict, where=str(it.path))
        hr_in = predictor.prepare(vol, it.grid, reverse, path=str(it.path))
        plan = predictor.plan(hr_in.spatial_shape, window, overlap, reverse)
        if probed is None or (threads == AUTO and time.monotonic() - probed > PROBE_EVERY_S):
            choice = choose_threads(threads, _probe(predictor, hr_in, reverse, tta))
            probed = time.monotonic()
            if not quiet and choice.how != "set":
                tqdm.write(f"medsr infer: {choice.describe(f'{PROBE_EDGE}^3-crop predictions/s')}", file=sys.stderr)
        if not quiet and (plan.roi, plan.overlap) != shown_plan:
            shown_plan = (plan.roi, plan.overlap)
            tqdm.write(
                f"windows {'x'.join(map(str, plan.roi))} overlap {plan.overlap:g}: {plan.n_windows} window(s), "
                f"overlap factor {plan.overlap_factor:.2f} ({plan.reason}); device {predictor.device}; "
                f"tta {predictor.resolve_tta(tta)}",
                file=sys.stderr,
            )
        std = None
        views = uncertainty_views(tta, hr_in.voxel_size) if uncertainty else predictor.resolve_tta(tta)
        if uncertainty:
            pred, std = predict_with_std(predictor, hr_in, reverse=reverse, plan=plan, tta=tta,
                                         progress=not quiet and not batch)
        else:
            pred = predictor.predict(hr_in, reverse=reverse, plan=plan, progress=not quiet and not batch, tta=tta)
        pred.meta["kind"] = predictor.kind
        m = item_mask(mask, it.mask, pred, vol, predictor.factor, str(it.path))
        for content in outputs.sidecars.values():
            content.update(bids_out.item_facts(pred, predictor.factor, views))
        if outputs.std in outputs.sidecars:
            outputs.sidecars[outputs.std]["StdScale"] = uncertainty_scale(predictor.card, views)
        write_item(outputs, pred, std, m, overwrite=overwrite)
        written.append(outputs.main)


def reverse_untrained_by(ck: dict) -> str:
    """The training setting that left a checkpoint's G (``generator.reverse``) untrained, or "".

    The training mode knows which directions it trains (:attr:`medsr.training.base.TrainMode.reverse_untrained_by`);
    it is rebuilt from the config the checkpoint saved. A checkpoint without a readable config gives "".
    """
    from medsr.config import load_config
    from medsr.training import create_mode

    try:
        return create_mode(load_config(ck["config"])).reverse_untrained_by
    except (KeyError, TypeError, ValueError):
        return ""


def _probe(predictor: Predictor, vol: Volume, reverse: bool, tta: str):
    """A small piece of the run's own work for ``threads: auto`` to time: the prediction (same model,
    direction and test-time views) of a central crop of ``vol`` of at most :data:`PROBE_EDGE` voxels a
    side, on the model's grid."""
    r = (1, 1, 1) if reverse else lr_grid_factor(predictor.model)
    edge = [max(min(s, PROBE_EDGE) // f * f, f) for s, f in zip(vol.spatial_shape, r)]
    lo = [(s - e) // 2 for s, e in zip(vol.spatial_shape, edge)]
    crop = Volume(vol.data[:, lo[0]:lo[0] + edge[0], lo[1]:lo[1] + edge[1], lo[2]:lo[2] + edge[2]], vol.affine,
                  name=vol.name)

    def run() -> None:
        predictor.predict(crop, reverse=reverse, tta=tta)

    return run


def _note_written(e: BaseException, written: list[Path], total: int) -> None:
    """Say on the error which outputs a batch wrote before it failed (they are complete files)."""
    if not written:
        e.add_note(f"no output written (0 of {total})")
        return
    names = ", ".join(str(p) for p in written[:3]) + (f" and {len(written) - 3} more" if len(written) > 3 else "")
    e.add_note(f"wrote {len(written)} of {total} output(s) before the failure: {names}")
