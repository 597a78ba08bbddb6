"""``medsr bench quality``: train configs at an equal budget, upsample held-out volumes, score against cubic.

Every config goes through the same code as the verbs: :func:`pipelines.train.train` (with
``train.max_minutes`` or ``train.max_steps`` set to the budget), :func:`pipelines.infer.run_inference`
on whole held-out volumes, and :func:`pipelines.evaluate.evaluate_manifest`. The data is either a
generated DTI phantom (``--train-subjects N --test-subjects M``; cached under ``OUTPUT/data-<key>``
so reruns skip generation and prep) or any prepared manifest (``--manifest M --train S1 S2 --test S3``).
The phantom is prepared at ``--factor`` (default 2; ``1 1 4`` for thick slices, see docs/anisotropic.md)
with ``--slice-profile`` (default box), as DTI (``--kind dti``, the default) or as scalar scans (``--kind
scalar``: each phantom's mean b0 image through ``prep volumes``).

Self-supervised configs (``data.type: self``) never see an HR volume: they train on the LR scans of the
data made an LR-only dataset (``prep volumes --lr-only`` of each subject's ``lr`` with its mask brought to
the LR grid, under ``OUTPUT/lr-only-<key>``), either the training subjects' scans (``--self-train-on train``:
one cohort model) or each held-out scan alone (``held-out``: a model fitted to the scan it then upsamples,
one run per held-out subject); the held-out HR volumes only score the result.

A config is a YAML path optionally followed by ``key=value`` overrides in the same (quoted) argument,
so one file gives several variants::

    medsr bench quality --minutes 5 --configs configs/demo.yaml "configs/demo.yaml model.kwargs.depth=2"

Outputs: ``OUTPUT/quality.csv`` (one row per config, held-out subject and metric family: the
model's value, cubic's and their ratio), ``OUTPUT/quality_summary.csv`` (means over subjects) and the
table on the terminal; runs, predictions and the baselines' scores stay under ``OUTPUT``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from medsr.factor import FactorLike, factor_triple, format_factor
from pipelines.factor_flag import add_factor_flags, factor_from_args

# Metrics shown, lower is better except psnr / ssim.
SHOWN = ("rmse_interior", "rmse_total", "md_rmse", "fa_rmse", "psnr", "ssim")
HIGHER_IS_BETTER = ("psnr", "ssim")
REFERENCE = "cubic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--configs", nargs="+", required=True, metavar="CONFIG",
                        help="YAML configs, each optionally followed by key=value overrides in one quoted argument")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock training budget per config (train.max_minutes)")
    budget.add_argument("--steps", type=int, help="training steps per config (train.max_steps)")
    parser.add_argument("--output", type=Path, default=Path("bench_quality"),
                        help="folder for runs, predictions and CSVs (default ./bench_quality)")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="a prepared manifest to use instead of the generated phantom")
    parser.add_argument("--train", nargs="+", default=None, metavar="ID", help="training subjects (with --manifest)")
    parser.add_argument("--test", nargs="+", default=None, metavar="ID", help="held-out subjects (with --manifest)")
    parser.add_argument("--train-subjects", type=int, default=6,
                        help="phantom training subjects (default 6, as `medsr demo`)")
    parser.add_argument("--test-subjects", type=int, default=1, help="phantom held-out subjects (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed (default 0)")
    add_factor_flags(parser)  # the phantom's prep; a --manifest keeps its own
    parser.add_argument("--kind", choices=["dti", "scalar"], default="dti",
                        help="the phantom as DTI (default) or as scalar scans (its mean b0 images, prep volumes)")
    parser.add_argument("--self-train-on", choices=["train", "held-out"], default="train",
                        help="what self-supervised configs (data.type self) train on: the training subjects' LR "
                             "scans (default: a cohort model) or each held-out LR scan alone (per-subject fit)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="overrides applied to every config (e.g. train.threads=2)")
    parser.add_argument("--workers", type=int, default=2, help="processes for phantom prep (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace runs already in OUTPUT/runs")
    parser.add_argument("--tta", choices=["auto", "none", "flip", "full"], default="auto",
                        help="test-time augmentation of the held-out inference, as `medsr infer --tta` "
                             "(default auto: flip for configs trained with data.flip or data.permute)")


def parse_spec(spec: str) -> tuple[Path, list[str]]:
    """``"configs/a.yaml k=v k2=v2"`` -> (Path("configs/a.yaml"), ["k=v", "k2=v2"])."""
    parts = shlex.split(spec)
    if not parts:
        raise ValueError("--configs: empty config")
    for o in parts[1:]:
        if "=" not in o:
            raise ValueError(f"--configs {spec!r}: {o!r} is not a key=value override")
    return Path(parts[0]), parts[1:]


def spec_name(path: Path, overrides: list[str]) -> str:
    """A readable, file-safe run name: the config stem plus its overrides."""
    # "train.lr=0.002" -> "lr=0.002": the key's last part and the whole value.
    tail = "_".join(o.split("=", 1)[0].split(".")[-1] + "=" + o.split("=", 1)[1] for o in overrides)
    name = path.stem + (f"__{tail}" if tail else "")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", name)[:120]


def phantom_data(output: Path, n_train: int, n_test: int, seed: int, workers: int, factor: FactorLike = 2,
                 profile: str = "box", kind: str = "dti") -> tuple[Path, list[str], list[str]]:
    """Generate (or reuse) the phantom dataset; the folder is keyed on the settings and the phantom code."""
    import data_prep.phantom as phantom
    from data_prep.phantom import PhantomConfig
    from data_prep.phantom_dataset import prepare_phantoms

    code = b"".join(f.read_bytes() for f in sorted(Path(phantom.__file__).parent.glob("*.py")))
    settings: tuple = (PhantomConfig(), n_train, n_test, seed)
    if (factor_triple(factor), profile) != ((2, 2, 2), "box"):  # factor 2, box: left out of the key, so the default data's folder name does not depend on them
        settings += (factor_triple(factor), profile)
    if kind == "scalar":
        from data_prep.phantom_views import scalar_phantoms

        key = hashlib.sha1(code + repr(settings + ("scalar",)).encode()).hexdigest()[:10]
        manifest, names = scalar_phantoms(output / f"data-{key}", n_train + n_test, seed=seed, factor=factor,
                                          profile=profile, workers=workers)
        return manifest, names[:n_train], names[n_train:]
    key = hashlib.sha1(code + repr(settings).encode()).hexdigest()[:10]
    manifest, names = prepare_phantoms(output / f"data-{key}", n_train + n_test, seed=seed, workers=workers,
                                       reuse=True, factor=factor, profile=profile)
    return manifest, names[:n_train], names[n_train:]


def lr_only_data(output: Path, manifest: Path) -> Path:
    """The LR-only view of ``manifest`` (its LR scans and LR-grid masks), cached under ``OUTPUT/lr-only-<key>``."""
    from data_prep.phantom_views import lr_only_view

    key = hashlib.sha1(str(Path(manifest).resolve()).encode() + Path(manifest).read_bytes()).hexdigest()[:10]
    return lr_only_view(manifest, output / f"lr-only-{key}")


def train_and_score(spec: str, *, manifest: Path, train_subjects: list[str], test_subjects: list[str],
                    output: Path, minutes: float | None, steps: int | None, seed: int, overrides: list[str],
                    overwrite: bool, tta: str = "auto", self_train_on: str = "train") -> pd.DataFrame:
    """Train one config to the budget, infer the held-out volumes, return evaluate's rows for it.

    A self-supervised config trains and infers on the LR-only view of ``manifest`` (:func:`lr_only_data`):
    on the training subjects' scans, or with ``self_train_on="held-out"`` once per held-out scan, on it alone.
    """
    from medsr.config import load_config
    from medsr.model_card import record_metrics
    from pipelines.evaluate import evaluate_manifest

    path, own = parse_spec(spec)
    name = spec_name(path, own)
    cfg = load_config(path, own + list(overrides))
    pred_dir = output / "predictions" / name
    if cfg.data.type == "self":
        lr_manifest = lr_only_data(output, manifest)
        groups = [(train_subjects, test_subjects, name)] if self_train_on == "train" else \
            [([s], [s], f"{name}__{s}") for s in test_subjects]
        runs = [_train_and_infer(path, own, overrides, lr_manifest, fit, test, run_name, pred_dir, output=output,
                                 minutes=minutes, steps=steps, seed=seed, overwrite=overwrite, tta=tta)
                for fit, test, run_name in groups]
    else:
        runs = [_train_and_infer(path, own, overrides, manifest, train_subjects, test_subjects, name, pred_dir,
                                 output=output, minutes=minutes, steps=steps, seed=seed, overwrite=overwrite,
                                 tta=tta)]
    rows = evaluate_manifest(manifest, pred_dir, model_name=name, baselines=(), subjects=test_subjects, quiet=True)
    rows.insert(1, "config", str(path))
    rows.insert(2, "overrides", " ".join(own))
    budget = '%g min' % minutes if minutes is not None else f'{steps} steps'
    for run in runs:  # each checkpoint's model card gets the scores of the subjects it upsampled
        mine = rows[rows["subject"].isin(run["test"])]
        means = mine.drop(columns=["model", "subject", "config", "overrides"], errors="ignore").mean(numeric_only=True)
        record_metrics(run["checkpoint"], means.to_dict(), run["test"], f"medsr bench quality, {budget}, tta {tta}")
    for key in ("steps", "train_minutes", "infer_seconds"):
        rows[key] = sum(r[key] for r in runs) / len(runs)
    rows["steps"] = rows["steps"].round().astype(int)
    return rows


def _train_and_infer(path: Path, own: list[str], overrides: list[str], manifest: Path, train_subjects: list[str],
                     test_subjects: list[str], name: str, pred_dir: Path, *, output: Path, minutes: float | None,
                     steps: int | None, seed: int, overwrite: bool, tta: str) -> dict:
    """Train config ``path`` (with overrides) on ``train_subjects`` of ``manifest`` into ``OUTPUT/runs/name``, then
    write the ``test_subjects``' predictions into ``pred_dir``; returns the checkpoint, the subjects inferred,
    steps, training minutes and seconds per inferred volume."""
    from medsr.checkpoint import load_checkpoint
    from medsr.config import load_config
    from pipelines.infer import run_inference
    from pipelines.train import train

    cfg = load_config(path, own + list(overrides))
    cfg.data.manifest = str(manifest)
    cfg.data.subjects = list(train_subjects)
    cfg.output_dir = str(output / "runs" / name)
    cfg.train.seed = seed
    cfg.train.samples = False
    cfg.train.max_minutes = minutes
    cfg.train.max_steps = steps
    if minutes is not None:  # the time is the budget: no epoch or step cap may end the run first
        cfg.train.n_epochs, cfg.train.n_epochs_decay = max(cfg.train.n_epochs, 10**6), 0
    elif steps is not None and cfg.train.n_epochs_decay == 0:
        cfg.train.n_epochs = max(cfg.train.n_epochs, 10**6)
    print(f"bench quality: training {name} ({path})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    run_dir = train(cfg, overwrite=overwrite)
    wall = time.perf_counter() - t0
    ck = load_checkpoint(run_dir / "last.pt")
    t1 = time.perf_counter()
    run_inference(run_dir / "last.pt", manifest, pred_dir, subjects=test_subjects, overwrite=True, quiet=True,
                  tta=tta)
    infer_s = time.perf_counter() - t1
    return {"checkpoint": run_dir / "last.pt", "test": list(test_subjects), "steps": int(ck["step"]),
            "train_minutes": float(ck.get("train_seconds", wall)) / 60.0,
            "infer_seconds": infer_s / max(len(test_subjects), 1)}


def compare(models: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Per (model, subject): each shown metric, cubic's value on that subject, and model / cubic."""
    ref = baselines[baselines["model"] == REFERENCE].set_index("subject")
    out = models.copy()
    for m in SHOWN:
        if m not in out.columns:
            continue
        out[f"{m}_{REFERENCE}"] = out["subject"].map(ref[m]).astype(float)
        out[f"{m}_ratio"] = out[m].astype(float) / out[f"{m}_{REFERENCE}"]
    return out


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Means over held-out subjects per config (metrics, cubic's, ratios, steps, minutes)."""
    num = [c for c in table.columns if c not in ("model", "subject", "config", "overrides")
           and pd.api.types.is_numeric_dtype(table[c])]
    g = table.groupby("model", sort=False)
    out = g[num].mean()
    out.insert(0, "n_subjects", g.size())
    return out.reset_index()


def format_table(summary: pd.DataFrame, baselines: pd.DataFrame) -> str:
    """Terminal table: per config, steps, minutes and each metric as ``value (ratio x cubic)``."""
    metrics = [m for m in SHOWN if f"{m}_ratio" in summary.columns]
    base = baselines.groupby("model", sort=False)[metrics].mean()
    cells = [["model", "steps", "min"] + metrics]
    for _, r in summary.iterrows():
        cells.append([str(r["model"]), f"{int(r['steps'])}", f"{r['train_minutes']:.1f}"]
                     + [f"{_fmt(m, r[m])} ({r[f'{m}_ratio']:.3f}x)" for m in metrics])
    for b, r in base.iterrows():
        cells.append([str(b), "", ""] + [_fmt(m, r[m]) for m in metrics])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    note = (f"ratios are model / {REFERENCE} per held-out subject, averaged (lower is better for RMSEs, "
            "higher for psnr/ssim)")
    return "\n".join(lines + [note])


def _fmt(metric: str, v: float) -> str:
    return f"{v:.4g}" if metric in HIGHER_IS_BETTER else f"{v:.4e}"


def run_quality(configs: list[str], *, minutes: float | None = None, steps: int | None = None,
                output: str | Path = "bench_quality", manifest: str | Path | None = None,
                train: list[str] | None = None, test: list[str] | None = None, train_subjects: int = 6,
                test_subjects: int = 1, seed: int = 0, overrides: list[str] | None = None, workers: int = 2,
                overwrite: bool = False, tta: str = "auto", factor: FactorLike = 2,
                profile: str = "box", kind: str = "dti",
                self_train_on: str = "train") -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The benchmark as a function (see the module docstring). Returns (per-subject table, summary, text).

    ``factor``, ``profile`` and ``kind`` prepare the phantom (an int or one factor per axis; ``box`` or
    ``gaussian``; ``dti`` or ``scalar``); ``self_train_on`` (``train`` or ``held-out``) is what self-supervised
    configs train on.
    """
    from medsr.utils.atomic import atomic_path
    from pipelines.evaluate import evaluate_manifest

    if (minutes is None) == (steps is None):
        raise ValueError("give exactly one budget: --minutes or --steps")
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)) or steps is not None and steps < 1:
        raise ValueError(f"the budget must be positive (--minutes {minutes}, --steps {steps})")
    output = Path(output)
    from medsr.config import load_config

    for spec in configs:  # check every config and run folder before hours of training
        path, own = parse_spec(spec)
        cfg = load_config(path, own + list(overrides or []))
        if cfg.data.type == "self" and (kind != "scalar" and manifest is None):
            raise ValueError(f"--configs {spec}: self-supervised training takes scalar scans; add --kind scalar")
        run_dir = output / "runs" / spec_name(path, own)
        if not overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
            raise FileExistsError(f"{run_dir}: holds an earlier run of this config; pass --overwrite to retrain it "
                                  "or choose another --output")
    from_phantom = manifest is None
    if manifest is not None:
        if not train or not test:
            raise ValueError("--manifest needs --train and --test subject lists")
        from medsr.utils.paths import subject_list

        manifest = Path(manifest)
        train_s, test_s = subject_list(train, "--train"), subject_list(test, "--test")
        both = sorted(set(train_s) & set(test_s))
        if both:
            raise ValueError(f"--train and --test both name {', '.join(both)}: a held-out subject is never trained on")
    else:
        if train or test:
            raise ValueError("--train/--test name subjects of --manifest; for the phantom use --train-subjects N")
        if train_subjects < 1 or test_subjects < 1:
            raise ValueError("--train-subjects and --test-subjects must be at least 1")
        manifest, train_s, test_s = phantom_data(output, train_subjects, test_subjects, seed, workers, factor,
                                                 profile, kind)
    baselines = evaluate_manifest(manifest, None, baselines=("nn", "linear", "cubic"), subjects=test_s, quiet=True)
    rows = [train_and_score(spec, manifest=manifest, train_subjects=train_s, test_subjects=test_s, output=output,
                            minutes=minutes, steps=steps, seed=seed, overrides=list(overrides or []),
                            overwrite=overwrite, tta=tta, self_train_on=self_train_on) for spec in configs]
    table = compare(pd.concat(rows, ignore_index=True), baselines)
    summary = summarise(table)
    text = format_table(summary, baselines)
    budget = f"{minutes:g} min" if minutes is not None else f"{steps} steps"
    data_factor = _manifest_factor(manifest, test_s)
    header = (f"medsr bench quality: {budget} per config; factor {data_factor}; train {', '.join(train_s)}; "
              f"held out {', '.join(test_s)}; data {manifest}")
    text = header + "\n" + text
    output.mkdir(parents=True, exist_ok=True)
    for df, name in ((table, "quality.csv"), (summary, "quality_summary.csv"), (baselines, "baselines.csv")):
        with atomic_path(output / name) as tmp:
            df.to_csv(tmp, index=False)
    with atomic_path(output / "quality.txt") as tmp:
        tmp.write_text(text + "\n")
    with atomic_path(output / "quality.json") as tmp:
        tmp.write_text(json.dumps({"configs": configs, "minutes": minutes, "steps": steps, "seed": seed,
                                   "factor": data_factor, "slice_profile": profile if from_phantom else None,
                                   "kind": kind if from_phantom else None, "self_train_on": self_train_on,
                                   "overrides": overrides or [], "tta": tta, "train": train_s, "test": test_s,
                                   "manifest": str(manifest)}, indent=2) + "\n")
    return table, summary, text


def _manifest_factor(manifest: Path, subjects: list[str]) -> str:
    """The factor the held-out subjects were prepared at, as text (``2``, ``1 1 4``)."""
    from medsr.manifest import read_manifest_raw

    df = read_manifest_raw(manifest)
    found = {format_factor(f, " ") for f in df[df["subject"].isin(subjects)]["factor"] if f}
    return ", ".join(sorted(found)) or "?"


def run(args: argparse.Namespace) -> int:
    if args.manifest is not None and (args.factor != [2] or args.slice_profile != "box" or args.kind != "dti"):
        raise ValueError("--factor, --slice-profile and --kind prepare the phantom; a --manifest keeps the factor it "
                         "was prepared at (and its kind)")
    factor = factor_from_args(args.factor, args.slice_profile)
    _, _, text = run_quality(args.configs, minutes=args.minutes, steps=args.steps, output=args.output,
                             manifest=args.manifest, train=args.train, test=args.test,
                             train_subjects=args.train_subjects, test_subjects=args.test_subjects, seed=args.seed,
                             overrides=args.overrides, workers=args.workers, overwrite=args.overwrite, tta=args.tta,
                             factor=factor, profile=args.slice_profile, kind=args.kind,
                             self_train_on=args.self_train_on)
    print(text)
    return 0
