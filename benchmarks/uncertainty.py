"""``medsr bench uncertainty``: which per-voxel uncertainty ranks the error of a held-out subject best.

For one checkpoint and one held-out subject of a prepared manifest, every candidate gives a prediction
(its mean) and a per-voxel standard deviation; the error is the prediction minus the HR truth. Per voxel,
both are reduced over the channels as an RMS, and over the brain interior (mask voxels whose whole 5x5x5
neighbourhood is brain, as ``medsr evaluate``'s ``rmse_interior``) the benchmark reports:

* the Spearman rank correlation between std and |error| (1 = the std orders the voxels exactly as the
  error does), also over voxels x channels without the reduction;
* mean |error| and mean std in each decile of the std (the figure: a calibrated std rises with the error);
* scale = RMS error / RMS std (1 = the std's size matches the error's).

Candidates: ``tta-flip`` and ``tta-full``, the spread of the 8 (48) mirrored (and axis-permuted) views
(:mod:`medsr.uncertainty`; ``medsr infer --uncertainty`` ships the 48 views for isotropic voxels, the 8
flips otherwise); ``mc-dropout``, dropout (p = 0.1)
on the reversible core's output at test time, 8 samples; and, as a model-free reference that is not a
predictive std, ``interp``, the disagreement |cubic - nn| of two interpolations of the LR volume.
A heteroscedastic head needs a training mode with a variance output and a Gaussian likelihood loss; it is
not among the candidates yet.

Outputs in ``--output``: ``uncertainty.csv`` (one row per candidate and decile), ``uncertainty.png``
(error against std decile) and ``uncertainty.md`` (the page ``docs/uncertainty.md`` is: numbers, figure,
the command that made them).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

CANDIDATES = ("tta-flip", "tta-full", "mc-dropout", "interp")
SHIPPED = "tta-full"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--checkpoint", required=True, help="a trained medsr checkpoint (.pt)")
    parser.add_argument("--manifest", required=True, help="prep's manifest.csv holding the held-out subject")
    parser.add_argument("--subject", required=True, help="the held-out subject (never trained on)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help=f"comma-separated, from {', '.join(CANDIDATES)}")
    parser.add_argument("--mc-samples", type=int, default=8, help="MC dropout samples")
    parser.add_argument("--dropout", type=float, default=0.1, help="MC dropout probability")
    parser.add_argument("--output", default="bench_uncertainty",
                        help="folder for uncertainty.csv, .png and .md (docs/ regenerates docs/uncertainty.md)")
    parser.add_argument("--device", default="cpu", help="where the model runs")
    parser.add_argument("--record", action="store_true",
                        help="store the tta-flip / tta-full scales (RMS error / RMS std) in the checkpoint: "
                             "'medsr infer --uncertainty' then writes stds of the error's size")
    parser.add_argument("--made-with", default="", metavar="TEXT",
                        help="the commands that made the checkpoint and the data, quoted on the page")


def mc_dropout(predictor, vol, samples: int, p: float, seed: int = 0):
    """Mean and std of ``samples`` forward passes with dropout on the core's output features."""
    import torch

    from medsr.volume import Volume

    model = predictor.model
    core = getattr(model, "core", None)
    if core is None:
        raise ValueError("mc-dropout needs a model with a reversible core ('core')")
    torch.manual_seed(seed)
    handle = core.register_forward_hook(lambda m, i, out: torch.nn.functional.dropout(out, p, training=True))
    try:
        outs = [predictor.predict(vol, tta="none").data.astype(np.float64) for _ in range(samples)]
    finally:
        handle.remove()
    a = np.stack(outs)
    mean = Volume(a.mean(0).astype(np.float32), vol.affine)
    return mean, Volume(a.std(0).astype(np.float32), vol.affine)


def interp_disagreement(lr_path: str, factor: int, shape):
    """cubic interpolation as the prediction, |cubic - nn| as the 'std' (a model-free reference)."""
    from medsr.baselines import upsample
    from medsr.io import load_volume

    lr = load_volume(lr_path)
    cubic = upsample(lr, factor, "cubic", shape)
    nn = upsample(lr, factor, "nn", shape)
    return cubic, cubic.with_data(np.abs(cubic.data - nn.data))


def calibration(pred: np.ndarray, std: np.ndarray, truth: np.ndarray, interior: np.ndarray) -> dict:
    """Spearman of std vs |error| (per voxel, RMS over channels; and over voxels x channels), deciles, scale."""
    from scipy.stats import spearmanr

    err = pred - truth
    e_vox = np.sqrt((err**2).mean(0))[interior]
    s_vox = np.sqrt((std.astype(np.float64) ** 2).mean(0))[interior]
    rho = float(spearmanr(s_vox, e_vox).statistic)
    rho_ch = float(spearmanr(std[:, interior].ravel(), np.abs(err[:, interior]).ravel()).statistic)
    order = np.argsort(s_vox, kind="stable")
    bins = np.array_split(order, 10)
    return {
        "spearman": rho, "spearman_channels": rho_ch,
        "scale": float(np.sqrt((e_vox**2).mean()) / max(np.sqrt((s_vox**2).mean()), 1e-30)),
        "rmse": float(np.sqrt((e_vox**2).mean())),
        "decile_error": [float(e_vox[b].mean()) for b in bins], "decile_std": [float(s_vox[b].mean()) for b in bins],
        "n_voxels": int(interior.sum()),
    }


def run_uncertainty(checkpoint: str, manifest: str, subject: str, candidates, output: str | Path,
                    mc_samples: int = 8, dropout: float = 0.1, device: str = "cpu", command: str = "",
                    made_with: str = "", record: bool = False) -> dict:
    """The benchmark as a function; returns candidate -> :func:`calibration` (+ seconds)."""
    from medsr.inference import Predictor
    from medsr.io import load_mask, load_volume
    from medsr.manifest import read_manifest
    from medsr.metrics import interior_mask
    from medsr.uncertainty import predict_with_std

    df = read_manifest(manifest)
    rows = df[df["subject"].astype(str) == str(subject)]
    if rows.empty:
        raise ValueError(f"{manifest}: no ok subject {subject!r}")
    row = rows.iloc[0]
    predictor = Predictor.from_checkpoint(checkpoint, device)
    trained = (predictor.ck.get("data") or {}).get("subjects") or []
    if str(subject) in trained:
        raise ValueError(f"--subject {subject}: the checkpoint was trained on it; choose a held-out subject")
    x = load_volume(row["lr_up"])
    truth = load_volume(row["hr"]).data.astype(np.float64)
    interior = interior_mask(load_mask(row["mask"], x))
    results: dict[str, dict] = {}
    for name in candidates:
        t0 = time.perf_counter()
        print(f"bench uncertainty: {name}", file=sys.stderr, flush=True)
        if name in ("tta-flip", "tta-full"):
            mean, std = predict_with_std(predictor, x, tta=name.split("-")[1], calibrated=False)
        elif name == "mc-dropout":
            mean, std = mc_dropout(predictor, x, mc_samples, dropout)
        elif name == "interp":
            mean, std = interp_disagreement(row["lr"], predictor.factor, x.spatial_shape)
        else:
            raise ValueError(f"--candidates: unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
        results[name] = calibration(mean.data.astype(np.float64), std.data, truth, interior)
        results[name]["seconds"] = time.perf_counter() - t0
    if record:
        from medsr.model_card import record_uncertainty

        tta = {n.split("-")[1]: r for n, r in results.items() if n.startswith("tta-")}
        if not tta:
            raise ValueError("--record needs tta-flip or tta-full among --candidates")
        record_uncertainty(checkpoint, {k: r["scale"] for k, r in tta.items()}, str(subject),
                           {k: r["spearman"] for k, r in tta.items()})
    card = predictor.card
    minutes = (card.get("train_seconds") or 0) / 60
    trained_on = f"{', '.join(trained)}" if trained else "unknown subjects"
    write_outputs(Path(output), results, checkpoint=checkpoint, subject=str(subject), command=command,
                  kind=predictor.kind, steps=predictor.ck.get("step"),
                  trained=f"{card.get('model')} {card.get('model_kwargs')}, {minutes:.1f} min of training on "
                          f"{trained_on}", made_with=made_with)
    return results


def write_outputs(out: Path, results: dict, *, checkpoint: str, subject: str, command: str, kind: str,
                  steps, trained: str = "", made_with: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from medsr.utils.atomic import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    dti = kind == "dti"
    scale, unit = (1e3, "1e-3 mm^2/s") if dti else (1.0, "image units")
    rows = [{"candidate": n, "decile": d + 1, "mean_abs_error": r["decile_error"][d], "mean_std": r["decile_std"][d],
             "spearman": r["spearman"], "spearman_channels": r["spearman_channels"], "scale": r["scale"],
             "rmse": r["rmse"]} for n, r in results.items() for d in range(10)]
    with atomic_path(out / "uncertainty.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for n, r in results.items():
        ax.plot(range(1, 11), scale * np.asarray(r["decile_error"]), marker="o",
                label=f"{n} (Spearman {r['spearman']:.2f})", lw=2.5 if n == SHIPPED else 1.2)
    ax.set_xlabel("decile of the predicted std (1 = most certain)")
    ax.set_ylabel(f"mean |error| over interior voxels ({unit})")
    ax.set_title(f"error by uncertainty decile, held-out {subject}")
    ax.set_xticks(range(1, 11))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "uncertainty.png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    table = ["| candidate | Spearman (voxels) | Spearman (voxels x channels) | scale (RMS error / RMS std) | "
             "RMSE of its mean | seconds |", "|---|---|---|---|---|---|"]
    for n, r in results.items():
        table.append(f"| {n}{' (shipped)' if n == SHIPPED else ''} | {r['spearman']:.3f} | {r['spearman_channels']:.3f} "
                     f"| {r['scale']:.2f} | {scale * r['rmse']:.4f} | {r['seconds']:.0f} |")
    deciles = ["| decile | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for d in range(10):
        deciles.append(f"| {d + 1} | " + " | ".join(f"{scale * r['decile_error'][d]:.4f}" for r in results.values())
                       + " |")
    text = PAGE.format(command=command or "medsr bench uncertainty ...", subject=subject, steps=steps, trained=trained,
                       n=next(iter(results.values()))["n_voxels"], table="\n".join(table), unit=unit,
                       deciles="\n".join(deciles), checkpoint=Path(checkpoint).name,
                       made_with=("The checkpoint and the data were made with:\n\n" + "\n".join(
                           f"    {line.strip()}" for line in made_with.split(";") if line.strip()) + "\n")
                       if made_with else "")
    with atomic_path(out / "uncertainty.md") as tmp:
        tmp.write_text(text)


PAGE = """# Uncertainty maps: which per-voxel std ranks the error

`medsr infer --uncertainty` writes `OUT_std.nii.gz` next to each output: per voxel and channel, the
standard deviation of the model's predictions over the 48 mirrored and axis-permuted views of the input
(`--tta full`'s views; the 8 mirrored ones of `--tta flip` for anisotropic voxels or when `--tta flip` is
given; DTI tensors moved with the axes), in the output's units; the output is then the views' mean. This page
measures how well candidate uncertainties rank the real error on a held-out subject, and why that one is
shipped.

Regenerate this page and its figure (held-out subject {subject}, checkpoint `{checkpoint}` at {steps} steps:
{trained}):

    {command}

{made_with}
The numbers below come from that checkpoint; for another model (e.g. the demo's, `medsr demo --output demo7`)
run `medsr bench uncertainty --checkpoint demo7/run/last.pt --manifest demo7/prep/manifest.csv
--subject phantom07 --output docs`.

Over the {n} interior brain voxels (mask voxels whose 5x5x5 neighbourhood is brain), per voxel the RMS over
channels of the error (prediction minus HR truth) and of the std:

{table}

*Spearman* is the rank correlation of std with |error| (1: the std orders the voxels as the error does).
*scale* is RMS error / RMS std of the raw spread: a std of the right size has 1. With `--record` the bench
stores the tta scales in the checkpoint (`medsr info` shows them) and `medsr infer --uncertainty` multiplies its
std by the one of the views it runs, so the std has the error's size on this subject (the rank correlation does
not change).
Candidates: *tta-flip* / *tta-full*, the spread of the 8 / 48 views (`medsr.uncertainty`); *mc-dropout*,
dropout p = 0.1 on the reversible core's output at test time, 8 samples (the model was not trained with
dropout); *interp*, |cubic - nn| of the LR volume, a model-free reference, not a predictive std. A
heteroscedastic head (a variance output trained with a Gaussian likelihood) is not measured: it needs its own
training mode.

Mean |error| ({unit}) in each decile of the std, from the most certain tenth of the voxels (1) to the least (10):

{deciles}

![error by uncertainty decile](uncertainty.png)
"""


def run(args: argparse.Namespace) -> int:
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    for n in names:
        if n not in CANDIDATES:
            raise ValueError(f"--candidates: unknown candidate {n!r}; choose from {', '.join(CANDIDATES)}")
    if args.mc_samples < 2 or not 0 < args.dropout < 1:
        raise ValueError("--mc-samples must be >= 2 and --dropout in (0, 1)")
    command = "medsr bench uncertainty " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("uncertainty") + 1:]) \
        if "uncertainty" in sys.argv else ""
    results = run_uncertainty(args.checkpoint, args.manifest, args.subject, names, args.output,
                              mc_samples=args.mc_samples, dropout=args.dropout, device=args.device, command=command,
                              made_with=args.made_with, record=args.record)
    for n, r in results.items():
        print(f"{n:<11} Spearman {r['spearman']:.3f} (voxels x channels {r['spearman_channels']:.3f}), "
              f"scale {r['scale']:.2f}, {r['seconds']:.0f} s")
    print(f"wrote {Path(args.output) / 'uncertainty.md'}, uncertainty.png, uncertainty.csv")
    return 0
