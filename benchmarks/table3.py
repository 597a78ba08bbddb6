"""The paper's Table 3 on the phantom: 3 methods x reversible depth R, at an equal training budget.

Rows: ``paired_l1`` (the paper's "w/o L_GAN", 3D-SRCNN), ``paired`` (3D-Pix2pix) and ``unpaired``
(3D-CycleGAN), each with R = 0, 2, 4, 8 reversible blocks in the core (``configs/table3/<method>_r<R>.yaml``,
the paper's settings: K=64, 24^3 patches, batch 1, Adam 2e-4). Every row goes through
:func:`benchmarks.quality.run_quality` (train to the budget, infer the whole held-out volumes,
evaluate), on the same generated phantom subjects. Per row the script also measures the generator's
activation memory: the bytes one training step of that row's mode saves for backward (both
directions where the mode runs both), counted exactly as ``medsr bench memory`` counts them
(:func:`benchmarks.memory.saved_tensor_bytes`), with the reversible core and, for comparison,
with the same blocks through plain autograd.

Writes ``OUTPUT/table3.csv`` (one line per row and per interpolation baseline: RMSE interior and
total as mean and std over held-out subjects, ratios to cubic, steps, minutes, memory),
``OUTPUT/table3.md`` (the paper's layout plus a verdict computed from the numbers) and, per row,
``OUTPUT/rows/<method>_r<R>.csv`` (per-subject metrics; a rerun skips rows already there unless
``--overwrite``). Runs, predictions and the phantom cache live under ``OUTPUT/bench``.

Examples::

    python benchmarks/table3.py --minutes-per-row 2 --test-subjects 2 --output /tmp/table3
    python benchmarks/table3.py --minutes-per-row 20 --output t3 --set train.device=cuda   # a GPU
    python benchmarks/table3.py --dry-run --output /tmp/t3dry --rows paired_l1 --depths 0 2
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

METHODS = ("paired_l1", "paired", "unpaired")
DEPTHS = (0, 2, 4, 8)
CONFIG_DIR = ROOT / "configs" / "table3"
BASELINES = ("cubic", "linear", "nn")
SCALE = 1e5  # RMSE shown in 10^-5 mm^2/s, the paper's scale
MIB = 2.0**20

# The paper's names and its Table 3 (HCP brains, RMSE interior / total, mean over 8 test brains).
PAPER = {
    ("paired_l1", 0): ("Paired w/o L_GAN (3D-SRCNN)", 7.03, 12.41),
    ("paired_l1", 2): ("Paired+2R w/o L_GAN", 7.02, 12.41),
    ("paired_l1", 4): ("Paired+4R w/o L_GAN", 6.68, 11.85),
    ("paired_l1", 8): ("Paired+8R w/o L_GAN", 18.43, 21.40),
    ("paired", 0): ("Paired (3D-Pix2pix)", 11.94, 20.73),
    ("paired", 2): ("Paired+2R", 9.61, 17.36),
    ("paired", 4): ("Paired+4R", 8.43, 14.81),
    ("paired", 8): ("Paired+8R", 7.82, 13.76),
    ("unpaired", 0): ("Unpaired (3D-CycleGAN)", 17.23, 26.94),
    ("unpaired", 2): ("Unpaired+2R", 11.05, 17.76),
    ("unpaired", 4): ("Unpaired+4R", 18.98, 28.06),
    ("unpaired", 8): ("Unpaired+8R", 18.96, 27.94),
}

# --dry-run: a tiny phantom and a tiny network, two steps per row (checks the plumbing, not the science).
DRY_PHANTOM = {"shape": (24, 24, 24), "n_dirs": 12, "n_b0": 2}
DRY_OVERRIDES = [
    "model.kwargs.width=8",
    "discriminator.kwargs.width=8",
    "data.patch_size=12",
    "train.threads=1",
    "train.progress=false",
]
DRY_STEPS = 2


@dataclass(frozen=True)
class Row:
    method: str
    depth: int

    @property
    def name(self) -> str:
        return f"{self.method}_r{self.depth}"

    @property
    def config(self) -> Path:
        return CONFIG_DIR / f"{self.name}.yaml"

    @property
    def label(self) -> str:
        return PAPER.get((self.method, self.depth), (self.name,))[0]


# --------------------------------------------------------------------------------------------
# Activation memory (same counting as `medsr bench memory`)
# --------------------------------------------------------------------------------------------
def activation_mib(cfg, channels: int, memory_efficient: bool) -> tuple[float, float]:
    """Generator activations saved for backward in one training step of ``cfg``'s mode, and params (M).

    The step runs what the mode runs through the generator: ``paired_l1`` F(x) and G(y) (F alone
    with ``lambda_reverse: 0``), ``paired`` F(x), ``unpaired`` F(x), G(F(x)), G(y), F(G(y)).
    Discriminators are left out (their activations do not depend on R). Batch and patch come
    from the config.
    """
    import torch
    from torch import nn

    from medsr.networks import create_model
    from medsr.training.base import GeneratorPasses
    from benchmarks.memory import saved_tensor_bytes

    kwargs = dict(cfg.model.kwargs)
    kwargs["in_channels"] = channels
    kwargs["memory_efficient"] = memory_efficient
    torch.manual_seed(0)
    gen = create_model(cfg.model.name, **kwargs)
    mode = cfg.train.mode
    both = mode == "unpaired" or (
        mode in ("paired_l1", "paired_l2") and cfg.train.lambda_reverse > 0
    )
    cycle = mode == "unpaired"

    class Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d = GeneratorPasses(gen)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.d(x=x, y=x if both else None, cycle=cycle)
            return torch.stack(list(out.values())).sum(0)

    p = cfg.data.patch_size
    x = torch.randn(cfg.train.batch_size, channels, p, p, p)
    saved = saved_tensor_bytes(Step(), x, torch.randn_like(x))
    return saved / MIB, sum(q.numel() for q in gen.parameters()) / 1e6


# --------------------------------------------------------------------------------------------
# Running the rows
# --------------------------------------------------------------------------------------------
def dry_phantom(
    output: Path, n_train: int, n_test: int, seed: int
) -> tuple[Path, list[str], list[str]]:
    """A tiny phantom dataset for --dry-run (same generator and prep as the real one)."""
    import dataclasses

    from data_prep.phantom import PhantomConfig
    from data_prep.phantom_dataset import prepare_phantoms

    fields = {f.name for f in dataclasses.fields(PhantomConfig)}
    config = PhantomConfig(**{k: v for k, v in DRY_PHANTOM.items() if k in fields})
    manifest, names = prepare_phantoms(
        output / "bench" / f"data-dry-seed{seed}",
        n_train + n_test,
        seed=seed,
        config=config,
        workers=1,
        progress=False,
        reuse=True,
    )
    return manifest, names[:n_train], names[n_train:]


def run_row(row: Row, args: argparse.Namespace, data: dict, overrides: list[str]) -> pd.DataFrame:
    """Train, infer and score one row through run_quality; add its memory. Per-subject rows."""
    from medsr.config import load_config
    from medsr.io import load_volume
    from medsr.manifest import read_manifest
    from benchmarks.quality import run_quality

    table, _, _ = run_quality(
        [str(row.config)],
        minutes=args.minutes_per_row,
        steps=args.steps_per_row,
        output=args.output / "bench",
        seed=args.seed,
        overrides=overrides,
        workers=args.workers,
        overwrite=True,
        **data,
    )
    table = table.copy()
    table.insert(0, "method", row.method)
    table.insert(1, "depth", row.depth)
    table.insert(2, "label", row.label)
    manifest = data["manifest"]
    channels = int(load_volume(read_manifest(manifest).iloc[0]["hr"]).data.shape[0])
    cfg = load_config(row.config, list(overrides))
    table["activation_MiB"], table["params_M"] = activation_mib(
        cfg, channels, memory_efficient=True
    )
    table["activation_plain_MiB"], _ = activation_mib(cfg, channels, memory_efficient=False)
    table["patch"] = cfg.data.patch_size
    table["width"] = cfg.model.kwargs.get("width")
    table["budget"] = budget_text(args)
    return table


def budget_text(args: argparse.Namespace) -> str:
    return (
        f"{args.minutes_per_row:g} min"
        if args.minutes_per_row is not None
        else f"{args.steps_per_row} steps"
    )


def _mean_std(df: pd.DataFrame, col: str) -> tuple[float, float]:
    v = df[col].astype(float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def summarise(per_subject: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """One line per (method, depth) row and per baseline: the paper's columns and ours."""
    out = []
    for (method, depth), g in per_subject.groupby(["method", "depth"], sort=False):
        r = {
            "method": method,
            "depth": int(depth),
            "label": g["label"].iloc[0],
            "n_subjects": len(g),
        }
        for m in ("rmse_interior", "rmse_total"):
            r[f"{m}_mean"], r[f"{m}_std"] = _mean_std(g, m)
            r[f"{m}_ratio"] = float(g[f"{m}_ratio"].mean())
        for m in ("md_rmse", "fa_rmse"):
            if f"{m}_ratio" in g:
                r[f"{m}_ratio"] = float(g[f"{m}_ratio"].mean())
        r["steps"] = int(g["steps"].iloc[0])
        r["train_minutes"] = float(g["train_minutes"].iloc[0])
        for c in ("activation_MiB", "activation_plain_MiB", "params_M", "width", "patch"):
            r[c] = g[c].iloc[0]
        paper = PAPER.get((method, int(depth)))
        r["paper_rmse_interior"], r["paper_rmse_total"] = (
            (paper[1], paper[2]) if paper else (None, None)
        )
        out.append(r)
    ref = baselines[baselines["model"] == "cubic"].set_index("subject")
    for b in BASELINES:
        g = baselines[baselines["model"] == b]
        if g.empty:
            continue
        r = {"method": b, "depth": None, "label": f"{b} interpolation", "n_subjects": len(g)}
        for m in ("rmse_interior", "rmse_total", "md_rmse", "fa_rmse"):
            if m not in g:
                continue
            ratio = (g.set_index("subject")[m] / ref[m]).mean()
            if m.startswith("rmse"):
                r[f"{m}_mean"], r[f"{m}_std"] = _mean_std(g, m)
            r[f"{m}_ratio"] = float(ratio)
        out.append(r)
    table = pd.DataFrame(out)
    for c in ("depth", "steps", "width", "patch"):  # whole numbers, blank for the baselines
        if c in table:
            table[c] = table[c].astype("Int64")
    return table


# --------------------------------------------------------------------------------------------
# The verdict and the markdown
# --------------------------------------------------------------------------------------------
TIE = 0.01  # relative RMSE differences below 1 % are called a tie (one seed, few held-out subjects)


def verdict(summary: pd.DataFrame) -> str:
    """A paragraph computed from the numbers: does RMSE fall with depth at equal time / memory?

    Per method: the interior RMSE at each depth, the best depth, whether the best deeper row beats
    R = 0 by more than :data:`TIE` (equal time), and whether RMSE falls from the shallowest to the
    deepest of the rows whose generator activations are equal (the reversible R >= 2: equal memory).
    """
    rows = summary[summary["depth"].notna()]
    parts, better, worse, methods, eq_falls, eq_methods = [], 0, 0, 0, 0, 0
    for method, g in rows.groupby("method", sort=False):
        g = g.sort_values("depth")
        if len(g) < 2:
            continue
        methods += 1
        d = [int(x) for x in g["depth"]]
        v = [float(x) * SCALE for x in g["rmse_interior_mean"]]
        steps = dict(zip(d, (int(s) for s in g["steps"])))
        best = d[v.index(min(v))]
        deeper = min(v[1:])
        rel = (deeper - v[0]) / v[0]
        better += rel < -TIE
        worse += rel > TIE
        trend = ", ".join(f"R={a}: {b:.2f}" for a, b in zip(d, v))
        text = (
            f"{method}: {trend} (best R={best}; best deeper row {100 * rel:+.1f}% vs R={d[0]}; "
            f"{steps[d[0]]} steps at R={d[0]} vs {steps[d[-1]]} at R={d[-1]}"
        )
        mem = dict(zip(d, g["activation_MiB"].astype(float)))
        eq = [x for x in d if x > 0 and abs(mem[x] - mem[d[-1]]) <= 0.02 * mem[d[-1]]]
        if len(eq) >= 2:
            eq_methods += 1
            ve = [v[d.index(x)] for x in eq]
            r_eq = (ve[-1] - ve[0]) / ve[0]
            eq_falls += r_eq < -TIE
            text += (
                f"; at equal activation memory ({mem[eq[0]]:.1f} MiB, R={'/'.join(map(str, eq))}) "
                f"{ve[0]:.2f} -> {ve[-1]:.2f} ({100 * r_eq:+.1f}%)"
            )
        parts.append(text + ")")
    if not methods:
        return "Only one depth per method was run: nothing to say about depth."
    if better == methods:
        head = "Yes at equal time: for every method a reversible core (R > 0) has a lower interior RMSE than R = 0."
    elif worse == methods:
        head = "No at equal time: for every method every deeper row has a higher interior RMSE than R = 0."
    else:
        head = (
            f"Not clearly at equal time: a deeper row beats R = 0 by more than {100 * TIE:.0f}% for {better} "
            f"of {methods} methods and loses by more than that for {worse}."
        )
    if eq_methods:
        head += (
            f" At equal activation memory (R >= 2), RMSE falls from the shallowest to the deepest row for "
            f"{eq_falls} of {eq_methods} methods."
        )
    return (
        head
        + " Interior RMSE by depth, "
        + "; ".join(parts)
        + ". (10^-5 mm^2/s, means over held-out subjects; one seed; equal wall-clock time means fewer steps "
        "for deeper rows.)"
    )


def _pm(mean, std) -> str:
    if mean is None or pd.isna(mean):
        return ""
    s = f"{mean * SCALE:.2f}"
    return s + (f" ± {std * SCALE:.2f}" if std is not None and not pd.isna(std) else "")


def _num(v, fmt: str) -> str:
    return "" if v is None or pd.isna(v) else fmt.format(v)


def markdown(summary: pd.DataFrame, header: list[str]) -> str:
    """The paper's layout (rows = method x depth; RMSE interior, total) plus ratios, steps and memory."""
    lines = list(header) + [
        "",
        (
            "| Model | R | RMSE interior | RMSE total | interior / cubic | total / cubic | steps | train min "
            "| activations MiB (reversible) | activations MiB (plain autograd) | params M | paper interior | paper total |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, r in summary.iterrows():
        is_model = r["depth"] is not None and not pd.isna(r["depth"])
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["label"]),
                    str(int(r["depth"])) if is_model else "",
                    _pm(r.get("rmse_interior_mean"), r.get("rmse_interior_std")),
                    _pm(r.get("rmse_total_mean"), r.get("rmse_total_std")),
                    _num(r.get("rmse_interior_ratio"), "{:.3f}"),
                    _num(r.get("rmse_total_ratio"), "{:.3f}"),
                    _num(r.get("steps"), "{:.0f}") if is_model else "",
                    _num(r.get("train_minutes"), "{:.1f}") if is_model else "",
                    _num(r.get("activation_MiB"), "{:.1f}") if is_model else "",
                    _num(r.get("activation_plain_MiB"), "{:.1f}") if is_model else "",
                    _num(r.get("params_M"), "{:.3f}") if is_model else "",
                    _num(r.get("paper_rmse_interior"), "{:.2f}") if is_model else "",
                    _num(r.get("paper_rmse_total"), "{:.2f}") if is_model else "",
                ]
            )
            + " |"
        )
    lines += [
        "",
        (
            "RMSE in 10^-5 mm^2/s (the paper's scale), mean ± sample std over the held-out subjects; ratios are "
            "model / cubic per subject, averaged. Activations: bytes the generator saves for backward in one training "
            "step of the row's mode (both directions where the mode trains both; discriminators excluded), counted as "
            "`medsr bench memory` counts them. The paper's columns are its HCP numbers (8 brains, 20 epochs), "
            "for the trend only."
        ),
        "",
        "**Verdict (computed from the table).** " + verdict(summary),
        "",
    ]
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{gpu}, Python {platform.python_version()}"
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--minutes-per-row", type=float, default=None, help="wall-clock training budget per row"
    )
    budget.add_argument(
        "--steps-per-row",
        type=int,
        default=None,
        help="training steps per row (instead of minutes)",
    )
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="folder for table3.csv, table3.md, rows/ and bench/",
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        metavar="METHOD",
        help=f"methods to run (default all: {' '.join(METHODS)})",
    )
    p.add_argument(
        "--depths",
        nargs="+",
        type=int,
        default=list(DEPTHS),
        help="reversible depths R (default 0 2 4 8)",
    )
    p.add_argument(
        "--train-subjects", type=int, default=3, help="phantom training subjects (default 3)"
    )
    p.add_argument(
        "--test-subjects", type=int, default=2, help="phantom held-out subjects (default 2)"
    )
    p.add_argument("--seed", type=int, default=0, help="phantom and training seed (default 0)")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="overrides applied to every row (e.g. train.device=cuda)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes for phantom prep (default 1)")
    p.add_argument("--overwrite", action="store_true", help="retrain rows already in OUTPUT/rows")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=f"tiny phantom {DRY_PHANTOM['shape']}, width 8, 12^3 patches, {DRY_STEPS} steps per row",
    )
    args = p.parse_args(argv)
    if args.dry_run:
        if args.minutes_per_row is None and args.steps_per_row is None:
            args.steps_per_row = DRY_STEPS
    elif args.minutes_per_row is None and args.steps_per_row is None:
        p.error("give --minutes-per-row or --steps-per-row (or --dry-run)")
    rows = [Row(m, d) for m in args.rows for d in args.depths]
    missing = [str(r.config) for r in rows if not r.config.is_file()]
    if missing:
        p.error(f"no config for {', '.join(missing)}")
    args.row_list = rows
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.output
    (out / "rows").mkdir(parents=True, exist_ok=True)
    overrides = (DRY_OVERRIDES if args.dry_run else []) + list(args.overrides)
    if args.dry_run:
        manifest, train_s, test_s = dry_phantom(
            out, args.train_subjects, args.test_subjects, args.seed
        )
        data = {"manifest": manifest, "train": train_s, "test": test_s}
    else:
        # Generated once and pinned for every row: run_quality keys its phantom cache on the phantom
        # code, and a row must not get new data (or pay for regenerating it) when that file changes.
        from benchmarks.quality import phantom_data

        manifest, train_s, test_s = phantom_data(
            out / "bench", args.train_subjects, args.test_subjects, args.seed, args.workers
        )
        data = {"manifest": manifest, "train": train_s, "test": test_s}
    command = "python benchmarks/table3.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    started = _dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    tables = []
    for i, row in enumerate(args.row_list):
        path = out / "rows" / f"{row.name}.csv"
        if path.is_file() and not args.overwrite:
            done = pd.read_csv(path)
            if "budget" in done and (done["budget"] == budget_text(args)).all():
                print(
                    f"table3: {row.name} already in {path}, skipped (--overwrite retrains)",
                    file=sys.stderr,
                    flush=True,
                )
                tables.append(done)
                continue
        print(
            f"table3: row {i + 1}/{len(args.row_list)} {row.name} ({time.perf_counter() - t0:.0f} s so far)",
            file=sys.stderr,
            flush=True,
        )
        table = run_row(row, args, data, overrides)
        table.to_csv(path, index=False)
        tables.append(table)
    per_subject = pd.concat(tables, ignore_index=True)
    baselines = pd.read_csv(out / "bench" / "baselines.csv")
    test_subjects = sorted(set(per_subject["subject"]))
    baselines = baselines[baselines["subject"].isin(test_subjects)]
    summary = summarise(per_subject, baselines)
    summary.to_csv(out / "table3.csv", index=False)
    per_subject.to_csv(out / "table3_subjects.csv", index=False)
    budget = budget_text(args)
    header = [
        "# Table 3 on the phantom: RMSE vs reversible depth at an equal budget",
        "",
        f"- Command: `{command}`"
        + (" (dry run: tiny phantom and network; plumbing only)" if args.dry_run else ""),
        f"- Date: {started:%Y-%m-%d %H:%M %Z}; took {(time.perf_counter() - t0) / 60:.1f} min in all",
        f"- Machine: {machine()}",
        f"- Budget: {budget} of training per row; {args.train_subjects} training and {len(test_subjects)} held-out "
        f"phantom subjects ({', '.join(test_subjects)}); seed {args.seed}"
        + (f"; overrides {' '.join(overrides)}" if overrides else ""),
        f"- Data: `{data['manifest']}` (generated once, the same for every row)",
    ]
    text = markdown(summary, header)
    (out / "table3.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
