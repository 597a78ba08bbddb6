"""The one-command demo: DTI phantom -> prep hcp -> train -> infer -> evaluate -> figures -> summary.

Everything runs through the same Python APIs as the verbs (``data_prep.phantom.generate``,
``data_prep.runner.run_subjects`` with ``data_prep.hcp.prep_subject``, ``pipelines.train.train``,
``pipelines.infer.run_inference``, ``pipelines.evaluate.evaluate_manifest``), so the demo is a
faithful miniature of a real HCP study. Layout of ``OUTPUT``::

    hcp/<subject>/T1w/Diffusion/...          generated DWIs in the HCP layout (+ phantom/ truth)
    prep/<subject>/{hr,lr,lr_up,mask}.nii.gz prepared pairs, prep/manifest.csv
    run/{last.pt,log.csv,config.yaml}        the training run
    predictions/<test subject>.nii.gz        the model's full-volume output (HR grid)
    evaluation.csv, evaluation_summary.csv   model vs nn / linear / cubic on the held-out subject
    figures/<test subject>_{md,fa,colour_fa}.png  LR input, truth, model, nn, linear, cubic and errors
                                             (the figures of medsr report / evaluate --figures)
    figures/phantom.png, figures/tensor_components.png
    summary.txt                              the summary printed at the end

Training is bounded by wall-clock time (``minutes``, the config's ``train.max_minutes``), checked
after every step; the config's ``train.max_steps`` stays an upper bound.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medsr.config import Config, load_config
from medsr.factor import format_factor
from medsr.utils.atomic import atomic_path
from medsr.utils.lock import LockHeld, file_lock

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEFAULT_MINUTES = 7.0
BASELINES = ("nn", "linear", "cubic")
# Subfolders that mark an OUTPUT folder as a previous demo run (only such a folder is replaced).
DEMO_PARTS = ("hcp", "prep", "run")
# Written first into OUTPUT: marks the folder as the demo's own, so the same command run again (after
# a success, a failure or Ctrl-C) replaces it without --overwrite.
MARKER = ".medsr-demo"
# Everything a demo run writes into OUTPUT; --overwrite refuses a folder holding anything else.
DEMO_ENTRIES = frozenset(DEMO_PARTS + ("predictions", "figures", "evaluation.csv", "evaluation_summary.csv",
                                       "summary.txt", MARKER))


@dataclass
class DemoResult:
    """What a demo run produced.

    Attributes:
        output: the demo folder.
        train_subjects / test_subject: the split (the last phantom subject is held out).
        steps: optimisation steps trained.
        table: per-(model, subject) evaluation rows (pandas DataFrame).
        paths: label -> path of every output shown in the summary.
        timings: stage -> seconds.
        beats_cubic: the model's interior RMSE is below the cubic spline's.
        summary: the text printed at the end (also in ``summary.txt``).
    """

    output: Path
    train_subjects: list[str]
    test_subject: str
    steps: int
    table: Any
    paths: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    beats_cubic: bool = False
    summary: str = ""


class _Stages:
    """The demo's numbered stage headers (on stderr) and each stage's wall-clock seconds (the summary's timings)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self.timings: dict[str, float] = {}
        self._n = 0

    @contextlib.contextmanager
    def stage(self, text: str, timing: str | None = None) -> Iterator[None]:
        """Print ``[n/total] text`` (unless quiet), run the block, record its seconds as ``timings[timing]``."""
        self._n += 1
        t = time.perf_counter()
        if not self.quiet:
            print(f"\n[{self._n}/{self.total}] {text}", file=sys.stderr, flush=True)
        yield
        if timing is not None:
            self.timings[timing] = time.perf_counter() - t


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


@contextlib.contextmanager
def demo_folder(output: Path, overwrite: bool) -> Iterator[None]:
    """Hold OUTPUT for one demo run, never deleting anything but a previous demo's own files.

    * empty or missing: used as it is;
    * a folder marked as the demo's own (finished, failed or interrupted): its contents replaced, so
      rerunning the same command just works;
    * an unmarked folder with the demo's layout (an older medsr's demo): replaced only with ``overwrite``;
    * anything else (or a demo folder holding other files): refused, naming what is in the way;
    * a folder another demo is running in: refused (the marker file is that run's lock,
      :func:`medsr.utils.lock.file_lock`), so one demo never deletes another's files under it.
    """
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output}: exists and is not a folder")
    replace = False
    if output.is_dir() and any(output.iterdir()):
        entries = sorted(p.name for p in output.iterdir())
        is_demo = (output / MARKER).exists() or any((output / p).exists() for p in DEMO_PARTS)
        if not is_demo:
            raise FileExistsError(
                f"{output}: not empty and not a medsr demo folder (no {', '.join(DEMO_PARTS)}); refusing to delete it"
            )
        foreign = [e for e in entries if e not in DEMO_ENTRIES]
        if foreign:
            raise FileExistsError(f"{output}: holds files the demo did not write ({', '.join(foreign[:5])}); "
                                  "refusing to replace it, choose another --output")
        if not (overwrite or (output / MARKER).exists()):
            raise FileExistsError(f"{output}: exists and is not empty (pass --overwrite to replace a previous demo run)")
        replace = True
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(output / MARKER, wait=False))
        except LockHeld:
            raise ValueError(f"{output}: in use by another medsr demo (it holds {output / MARKER}); wait for it "
                             "to finish or choose another --output") from None
        if replace:
            state = "finished" if (output / "summary.txt").exists() else "unfinished"
            print(f"demo: replacing the previous {state} demo run in {output}", file=sys.stderr)
            for p in output.iterdir():
                if p.name == MARKER:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        yield


def train_for(config: Any, minutes: float) -> tuple[Path, int]:
    """Train ``config`` for ``minutes`` of wall-clock time (``train.max_minutes``), never past ``train.max_steps``.

    The limit is checked after every step (see :class:`medsr.training.trainer.Trainer`), so a machine
    that slows down mid-run still stops on time; the checkpoint is written at the stop.

    Returns:
        (run folder, steps trained).
    """
    from medsr.checkpoint import load_checkpoint
    from pipelines.train import train

    cfg = Config.from_dict(config.to_dict())
    cfg.train.max_minutes = float(minutes)
    run_dir = train(cfg)
    return run_dir, int(load_checkpoint(run_dir / "last.pt")["step"])


def load_demo_config(path: str | Path, manifest: Path, run_dir: Path, train_subjects: list[str], seed: int):
    """The shipped demo config with the demo's data, run folder, split and seed filled in."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: demo config not found (pass --config, or run from a clone of medsr)")
    cfg = load_config(path)
    cfg.data.manifest = str(manifest)
    cfg.data.subjects = list(train_subjects)
    cfg.output_dir = str(run_dir)
    cfg.train.seed = int(seed)
    return cfg


def _phantom_figure(subject_dir: Path, path: Path) -> Path:
    """b0, true MD, true FA and tissue labels (with their legend) of one phantom subject."""
    import nibabel as nib

    from data_prep.phantom import LABELS
    from medsr.figures.phantom import labels_figure

    dwi = nib.load(subject_dir / "T1w" / "Diffusion" / "data.nii.gz")
    tensor = nib.load(subject_dir / "phantom" / "tensor.nii.gz")
    labels = np.asarray(nib.load(subject_dir / "phantom" / "labels.nii.gz").dataobj)
    t = np.moveaxis(np.asarray(tensor.dataobj, dtype=np.float32), -1, 0)
    b0 = np.asarray(dwi.dataobj[..., 0], dtype=np.float32)
    return labels_figure(path, b0=b0, tensor=t, labels=labels, label_names=LABELS, affine=dwi.affine,
                         voxel_size=tuple(float(z) for z in dwi.header.get_zooms()[:3]),
                         title=f"phantom {subject_dir.name}: axial slice through the brain (RAS display)")


def _components_figure(row: Any, prediction: Path, path: Path, label: str = "model") -> Path:
    """The six tensor components of LR input, truth, the model and cubic (medsr.figures.tensors)."""
    from medsr.baselines import upsample
    from medsr.factor import factor_triple
    from medsr.figures.tensors import tensor_components_figure
    from medsr.io import load_mask, load_volume

    hr = load_volume(row["hr"])
    mask = load_mask(row["mask"], like=hr)
    lr = load_volume(row["lr"])
    cubic = upsample(lr, factor_triple(row["factor"]), "cubic", out_shape=hr.spatial_shape)
    return tensor_components_figure(path, hr=hr, mask=mask, lr=lr, methods=[(label, load_volume(prediction)),
                                                                          ("cubic", cubic)],
                                    title=f"tensor components, subject {row['subject']}, axial slice "
                                          "through the brain's centre")


def format_report(res: DemoResult, model: str) -> str:
    """The text summary printed at the end of the demo (the comparison: :mod:`pipelines.comparison`)."""
    from pipelines.comparison import MM2S, format_comparison

    lines = ["", "=" * 78, "medsr demo: summary", "=" * 78,
             f"train subjects: {', '.join(res.train_subjects)}   held-out test subject: {res.test_subject}",
             f"model: {model} ({res.steps} training steps)", "",
             f"evaluation on the whole held-out volume of {res.test_subject} (DTI; tensor and MD errors in",
             "1e-3 mm^2/s; interior = brain voxels whose 5x5x5 neighbourhood is brain):",
             format_comparison(res.table, kind="dti", tensor_unit=MM2S)]
    lines += ["", "timings: " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in res.timings.items()), "", "outputs:"]
    width = max(len(k) for k in res.paths)
    lines += [f"  {k.ljust(width)}  {p}" for k, p in res.paths.items()]
    lines.append("=" * 78)
    return "\n".join(lines)


def _evaluate(output: Path, manifest: Path, pred_dir: Path, prediction: Path, test_subject: str, label: str,
              quiet: bool) -> tuple[Any, dict[str, Path]]:
    """The demo's stage 4: evaluation CSVs and figures of the held-out subject.

    Returns:
        (per-(model, subject) table, summary label -> path of each output written, in the summary's order).
    """
    from medsr.manifest import read_manifest
    from pipelines.evaluate import evaluate_manifest, write_results

    fig_dir = output / "figures"
    table = evaluate_manifest(manifest, pred_dir, model_name=label, baselines=BASELINES, figures=fig_dir,
                              subjects=[test_subject], quiet=quiet)
    csv, summ_csv = write_results(table, output / "evaluation.csv", overwrite=True)
    row = read_manifest(manifest).set_index("subject", drop=False).loc[test_subject]
    paths = {"evaluation CSV": csv, "summary CSV": summ_csv}
    paths.update({f"{what} figure": fig_dir / f"{test_subject}_{suffix}.png"
                  for what, suffix in (("MD", "md"), ("FA", "fa"), ("colour-FA", "colour_fa"))})
    phantom_png = _phantom_figure(output / "hcp" / test_subject, fig_dir / "phantom.png")
    paths["component figure"] = _components_figure(row, prediction, fig_dir / "tensor_components.png", label)
    paths["phantom figure"] = phantom_png
    return table, paths


def run_demo(
    output: str | Path = "medsr-demo",
    *,
    minutes: float = DEFAULT_MINUTES,
    n_subjects: int = 7,
    seed: int = 0,
    config: str | Path = DEFAULT_CONFIG,
    overwrite: bool = False,
    workers: int = 2,
    phantom_config: Any = None,
    quiet: bool = False,
    factor: Any = 2,
) -> DemoResult:
    """Run the whole demo into ``output`` and return what it made (see the module docstring).

    Args:
        output: the demo folder (refused if non-empty, unless ``overwrite`` and a previous demo).
        minutes: wall-clock budget of the training stage.
        n_subjects: how many phantom subjects; the last is held out for testing (>= 2).
        seed: seeds the phantom and the training.
        config: the training config (``configs/demo.yaml``).
        workers: processes for prep.
        phantom_config: a :class:`data_prep.phantom.PhantomConfig` (default: the phantom's defaults).
        quiet: no stage headers (the tools' own progress bars still follow their settings).
        factor: prep's downsampling factor, an int or one per axis (``[1, 1, 4]``: thick slices along z).
    """
    from data_prep.phantom import subject_names
    from medsr.training.names import check_names

    if n_subjects < 2:
        raise ValueError(f"--n-subjects must be at least 2 (training subjects + 1 held out), got {n_subjects}")
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ValueError(f"--minutes must be a positive number, got {minutes:g}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    output = Path(output)
    names = subject_names(n_subjects)
    train_subjects, test_subject = names[:-1], names[-1]
    # The whole config is checked (keys, ranges, names, the seed) before the demo writes anything.
    cfg = load_demo_config(config, output / "prep" / "manifest.csv", output / "run", train_subjects, seed)
    d = cfg.to_dict()
    check_names(load_config(dict(d, train=dict(d["train"], max_minutes=minutes))))
    if output.resolve() in Path(config).resolve().parents:  # the demo replaces its folder: never its input
        raise ValueError(f"--config {config}: lies inside the demo folder {output}, which the demo replaces; "
                         "copy it elsewhere")
    with demo_folder(output, overwrite):
        return _run_demo(output, cfg, minutes=minutes, n_subjects=n_subjects, seed=seed, config=config,
                         workers=workers, phantom_config=phantom_config, quiet=quiet, factor=factor)


def _run_demo(output: Path, cfg: Config, *, minutes: float, n_subjects: int, seed: int, config: str | Path,
              workers: int, phantom_config: Any, quiet: bool, factor: Any) -> DemoResult:
    """The demo's stages, run while this process holds ``output`` (:func:`demo_folder`)."""
    from data_prep.phantom_dataset import prepare_phantoms
    from pipelines.infer import run_inference

    stages = _Stages(total=5, quiet=quiet)
    with stages.stage(f"generating {n_subjects} DTI brain phantoms (HCP layout) in {output / 'hcp'}, then prep hcp "
                      f"at factor {format_factor(factor, ' ')} (HR DTI fit, block-averaged LR DTI fit, manifest)",
                      timing="phantom + prep"):
        manifest, names = prepare_phantoms(output, n_subjects, seed=seed, config=phantom_config, workers=workers,
                                           progress=not quiet, factor=factor)
    train_subjects, test_subject = names[:-1], names[-1]
    cfg.data.manifest = str(manifest)
    label = cfg.model.name
    with stages.stage(f"training {label} on {', '.join(train_subjects)} for {minutes:g} min ({config})",
                      timing="train"):
        run_dir, steps = train_for(cfg, minutes)

    pred_dir = output / "predictions"
    with stages.stage(f"full-volume inference on the held-out subject {test_subject}", timing="infer"):
        (prediction,) = run_inference(run_dir / "last.pt", manifest, pred_dir, subjects=[test_subject], quiet=quiet)

    with stages.stage("evaluation against nn / linear / cubic baselines, figures", timing="evaluate"):
        table, outputs = _evaluate(output, manifest, pred_dir, prediction, test_subject, label, quiet)

    with stages.stage("summary"):
        rmse = dict(zip(table["model"], table["rmse_interior"].astype(float)))
        res = DemoResult(output=output, train_subjects=train_subjects, test_subject=test_subject, steps=steps,
                         table=table, timings=stages.timings,
                         beats_cubic=bool(rmse.get(label, math.inf) < rmse.get("cubic", -math.inf)))
        res.paths = {
            "phantom (HCP layout)": output / "hcp",
            "prepared pairs": output / "prep" / "manifest.csv",
            "checkpoint": run_dir / "last.pt",
            "training log": run_dir / "log.csv",
            "prediction (NIfTI)": prediction,
            **outputs,
            "this summary": output / "summary.txt",
        }
        res.summary = format_report(res, label)
        with atomic_path(output / "summary.txt") as tmp:
            tmp.write_text(res.summary + "\n")
    return res


__all__ = ["DemoResult", "run_demo", "train_for", "load_demo_config", "DEFAULT_CONFIG"]
