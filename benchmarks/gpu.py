"""``medsr bench gpu``: the one prepared check to run when a GPU is at hand; writes ``docs/gpu.md``.

On one GPU, in a few minutes (budgeted under 8), it runs:

1. ``tests``: ``pytest -m cuda tests`` (gradient equality and memory flatness of the reversible core on
   CUDA, bf16/fp16 training steps, bf16 inference, DDP with NCCL);
2. ``train``: a short :func:`pipelines.train.train` per mode (``paired_l1``, ``paired``, ``unpaired``)
   and precision (fp32, bf16, fp16) on generated DTI subjects (``rev_srcnn3d`` K=64 R=8, 24^3 patches);
3. ``memory``: ``medsr bench memory --device cuda --depths 0,2,4,8,16,32 --variants reversible,plain``
   (``max_memory_allocated`` per training step vs depth);
4. ``step``: fp32 vs bf16 (and fp16) training-step time and memory at K=64 R=8 (reversible and plain);
5. ``infer``: whole-volume inference of an HCP-size volume (145x174x145, 6 channels) in fp32 and bf16:
   seconds, GPU memory and the bf16 difference;
6. ``accuracy``: ``medsr bench precision``'s bf16 inverse and gradient errors, on the GPU.

Every section runs even when an earlier one fails (its error goes into the report); the exit code is
1 when any failed. ``--dry-run`` runs the same code on the CPU at tiny sizes (bf16 only: fp16 needs
CUDA) so the test suite keeps the script working (``tests/test_gpu_check.py``); it never writes
``docs/gpu.md`` unless ``--output`` says so.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from medsr.checkpoint import load_checkpoint
from medsr.networks import create_model
from medsr.precision import autocast
from medsr.utils.atomic import atomic_path
from medsr.utils.device import check_device
from benchmarks.memory import check_targets, format_table, run_benchmark, saved_tensor_bytes, training_step
from benchmarks.precision import format_core, measure_core, measure_inference

ROOT = Path(__file__).resolve().parents[1]
SECTIONS: tuple[str, ...] = ("tests", "train", "memory", "step", "infer", "accuracy")
MODES: tuple[str, ...] = ("paired_l1", "paired", "unpaired")
MIB = 2.0**20


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses: the GPU run's and the dry run's (tiny, CPU)."""

    width: int = 64
    depth: int = 8
    patch: int = 24
    train_batch: int = 4
    train_steps: int = 40
    volume: tuple[int, int, int] = (48, 48, 48)
    subjects: int = 2
    memory_depths: tuple[int, ...] = (0, 2, 4, 8, 16, 32)
    memory_repeats: int = 5
    step_batch: int = 8
    step_repeats: int = 10
    infer_models: tuple[tuple[str, dict[str, Any], tuple[int, int, int]], ...] = (
        ("rev_srcnn3d", {"width": 64, "depth": 8}, (145, 174, 145)),
        # configs/default.yaml's generator; an LR-grid model needs even sizes (prep pads to them)
        ("rev_espcn3d", {"width": 32, "depth": 4, "base": "cubic"}, (146, 174, 146)),
    )
    accuracy_depths: tuple[int, ...] = (8, 32)
    tests_target: str = "tests"
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")


DRY = Sizes(width=4, depth=2, patch=8, train_batch=2, train_steps=2, volume=(16, 16, 16), subjects=1,
            memory_depths=(0, 2), memory_repeats=1, step_batch=1, step_repeats=1,
            infer_models=(("rev_srcnn3d", {"width": 4, "depth": 2}, (16, 18, 16)),
                          ("rev_espcn3d", {"width": 4, "depth": 2, "base": "cubic"}, (16, 18, 16))),
            accuracy_depths=(2,), tests_target="tests/test_cuda.py", precisions=("fp32", "bf16"))


@dataclass
class Section:
    """One part of the report: its markdown body, seconds, and the error that stopped it (if any)."""

    name: str
    title: str
    body: str = ""
    seconds: float = 0.0
    error: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def run_tests(sizes: Sizes, device: str) -> str:
    """``pytest -m cuda`` in a fresh process; raises when a test fails (or none ran on a GPU)."""
    target = ROOT / sizes.tests_target
    if not target.exists():
        raise FileNotFoundError(f"{target}: no tests here (run from a source checkout)")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider", str(target)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else (proc.stderr.strip().splitlines() or ["no output"])[-1]
    skips = [ln for ln in lines if ln.startswith("SKIPPED")]
    body = f"`{' '.join(['python', '-m', 'pytest', '-q', '-rs', '-m', 'cuda', sizes.tests_target])}`: {summary}"
    if skips:
        body += "\n\n" + "\n".join(f"- {ln}" for ln in skips)
    if proc.returncode != 0:
        failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
        which = f" ({'; '.join(failed[:5])})" if failed else ""
        raise RuntimeError(f"pytest exit {proc.returncode}: {summary}{which}")
    if device.startswith("cuda") and "passed" not in summary:
        raise RuntimeError(f"no CUDA test passed on a GPU: {summary}")
    return body


def _train_config(manifest: Path, out: Path, mode: str, precision: str, sizes: Sizes, device: str) -> dict[str, Any]:
    steps = sizes.train_steps
    return {
        "output_dir": str(out),
        "data": {"manifest": str(manifest), "patch_size": sizes.patch, "sampling": "random",
                 "random_per_subject": max(sizes.train_batch * steps, 1)},
        "model": {"name": "rev_srcnn3d", "kwargs": {"width": sizes.width, "depth": sizes.depth}},
        "discriminator": {"name": "patchgan3d", "kwargs": {"width": sizes.width, "patch_size": "auto"}},
        "train": {"mode": mode, "batch_size": sizes.train_batch, "n_epochs": 1000, "max_steps": steps,
                  "log_every": max(steps // 2, 1), "checkpoint_every": 10 * steps, "samples": False,
                  "progress": False, "device": device, "precision": precision},
    }


def run_train(sizes: Sizes, device: str, work: Path) -> tuple[str, list[dict[str, Any]]]:
    """A short run per mode and precision; raises when a loss is not finite."""
    from medsr.data.synthetic import make_prepared_dataset
    from pipelines.train import train

    manifest = make_prepared_dataset(work / "prep", sizes.subjects, sizes.volume, "dti", patch_size=sizes.patch)
    rows = []
    for mode in MODES:
        for prec in sizes.precisions:
            t0 = time.perf_counter()
            run = train(_train_config(manifest, work / f"{mode}_{prec}", mode, prec, sizes, device))
            seconds = time.perf_counter() - t0
            ck = load_checkpoint(run / "last.pt")
            with open(run / "log.csv", newline="") as f:
                last = list(csv.DictReader(f))[-1]
            other = ("step", "epoch", "lr", "patches_per_s", "train_s")
            losses = {k: float(v) for k, v in last.items() if k not in other}
            rows.append({"mode": mode, "precision": prec, "steps": ck["step"], "seconds": seconds,
                         "patches_per_s": float(last["patches_per_s"]), "recorded": ck.get("precision"),
                         "losses": losses, "finite": all(math.isfinite(v) for v in losses.values())})
    head = "| mode | precision | steps | run s | patches/s (2nd half) | checkpoint precision | last losses |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = ", ".join(f"{k} {v:.3g}" for k, v in r["losses"].items())
        lines.append(f"| {r['mode']} | {r['precision']} | {r['steps']} | {r['seconds']:.1f} | "
                     f"{r['patches_per_s']:.1f} | {r['recorded']} | {loss} |")
    body = (f"rev_srcnn3d K={sizes.width} R={sizes.depth}, PatchGAN discriminators, {sizes.patch}^3 patches, batch "
            f"{sizes.train_batch}, {sizes.train_steps} steps on {sizes.subjects} generated DTI subject(s) of "
            f"{'x'.join(map(str, sizes.volume))}; run s includes start-up (data, cuDNN autotuning).\n\n" + "\n".join(lines))
    bad = [f"{r['mode']} {r['precision']}" for r in rows if not r["finite"] or r["recorded"] != r["precision"]]
    if bad:
        raise RuntimeError(f"non-finite losses or wrong recorded precision: {', '.join(bad)}")
    return body, rows


def run_memory(sizes: Sizes, device: str) -> tuple[str, list[dict[str, Any]]]:
    """``medsr bench memory`` in this process (on CUDA it measures ``max_memory_allocated`` in-process anyway)."""
    rows, _ = run_benchmark(depths=list(sizes.memory_depths), width=sizes.width, channels=6, patch=sizes.patch,
                            repeats=sizes.memory_repeats, device=device, variants=["reversible", "plain"],
                            subprocess_per_config=False, progress=False)
    cmd = (f"medsr bench memory --device {device} --depths {','.join(map(str, sizes.memory_depths))} "
           f"--width {sizes.width} --patch {sizes.patch} --variants reversible,plain")
    cuda = device.startswith("cuda")
    peak = "CUDA max_memory_allocated" if cuda else "peak RSS of this process (dry run: meaningless)"
    body = (f"The same as `{cmd}` (one 6-channel {sizes.patch}^3 patch, batch 1; peak_MiB / step_MiB = {peak}).\n\n"
            "```\n" + format_table(rows) + "\n" + "\n".join(check_targets(rows)) + "\n```")
    return body, rows


class _Autocast(torch.nn.Module):
    """``model`` under ``precision``'s autocast, its output in float32 (for the memory bench's step helpers)."""

    def __init__(self, model: torch.nn.Module, precision: str, device: str) -> None:
        super().__init__()
        self.model, self.precision, self.device = model, precision, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            return self.model(x).float()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_step(sizes: Sizes, device: str) -> tuple[str, list[dict[str, Any]]]:
    """Training step (forward, MSE, backward) time and memory per precision at K=width, R=depth."""
    cuda = device.startswith("cuda")
    rows = []
    for variant in ("reversible", "plain"):
        torch.manual_seed(0)
        model = create_model("rev_srcnn3d", in_channels=6, width=sizes.width, depth=sizes.depth,
                             memory_efficient=variant == "reversible").to(device)
        shape = (sizes.step_batch, 6) + (sizes.patch,) * 3
        x, target = torch.randn(shape, device=device), torch.randn(shape, device=device)
        for prec in sizes.precisions:
            net = _Autocast(model, prec, device)
            saved = saved_tensor_bytes(net, x, target)
            for _ in range(2):  # warm-up (cuDNN autotuning, allocator)
                training_step(net, x, target)
            model.zero_grad(set_to_none=True)
            _sync(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            times = []
            for _ in range(sizes.step_repeats):
                _sync(device)
                t0 = time.perf_counter()
                training_step(net, x, target)
                _sync(device)
                times.append(time.perf_counter() - t0)
            peak = (torch.cuda.max_memory_allocated() - base) / MIB if cuda else float("nan")
            rows.append({"variant": variant, "precision": prec, "step_ms": 1e3 * statistics.median(times),
                         "saved_MiB": saved / MIB, "step_MiB": peak})
    ref = {r["variant"]: r for r in rows if r["precision"] == "fp32"}
    lines = ["| variant | precision | step ms (median) | vs fp32 | saved for backward MiB | step peak MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['precision']} | {r['step_ms']:.2f} | "
                     f"{r['step_ms'] / ref[r['variant']]['step_ms']:.2f} | {r['saved_MiB']:.1f} | {r['step_MiB']:.1f} |")
    body = (f"rev_srcnn3d K={sizes.width} R={sizes.depth}, batch {sizes.step_batch} of 6x{sizes.patch}^3, "
            f"forward + MSE + backward, median of {sizes.step_repeats} after 2 warm-up steps; step peak = "
            f"{'max_memory_allocated above the weights and inputs' if cuda else 'n/a on CPU'}.\n\n" + "\n".join(lines))
    return body, rows


def run_infer(sizes: Sizes, device: str) -> tuple[str, list[dict[str, Any]]]:
    """Whole-volume inference (the CLI's automatic windows) in fp32 and bf16, with the difference."""
    rows = [measure_inference(m, kw, shape, device, precision="bf16", window=None)
            for m, kw, shape in sizes.infer_models]
    lines = ["| model | volume | windows | s fp32 | s bf16 | GPU MiB fp32 | GPU MiB bf16 | bf16 RMS diff (SD) | bf16 max diff (SD) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kw = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
        lines.append(f"| {r['model']} ({kw}) | {'x'.join(map(str, r['shape']))}x{r['channels']} | {r['windows']} | "
                     f"{r['seconds_fp32']:.2f} | {r['seconds']:.2f} | {r['peak_MiB_fp32']:.0f} | {r['peak_MiB']:.0f} | "
                     f"{r['rms_sd']:.1e} | {r['max_sd']:.1e} |")
    body = ("`Predictor.predict` end to end (normalisation, windows on the device, stitching on the CPU) with "
            "random default-initialised weights on a generated DTI volume, windows by `medsr infer`'s automatic "
            "rule; differences in units of each channel's brain SD; GPU MiB = max_memory_allocated during the "
            "pass.\n\n" + "\n".join(lines))
    return body, rows


def run_accuracy(sizes: Sizes, device: str) -> tuple[str, list[dict[str, Any]]]:
    rows = [measure_core(d, sizes.width, sizes.patch, device) for d in sizes.accuracy_depths]
    cmd = (f"medsr bench precision --device {device} --depths {','.join(map(str, sizes.accuracy_depths))} "
           f"--width {sizes.width} --patch {sizes.patch}")
    return f"The core part of `{cmd}` (one {sizes.patch}^3 input, K={sizes.width}).\n\n" + format_core(rows), rows


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
TITLES = {
    "tests": "CUDA tests", "train": "Short training per mode and precision",
    "memory": "Activation memory vs depth (bench memory)", "step": "fp32 vs bf16 training step",
    "infer": "Whole-volume inference, HCP size", "accuracy": "bf16 accuracy of the reversible core on this device",
}


def environment(device: str) -> str:
    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_name(torch.device(device))
    else:
        gpu = platform.processor() or "CPU"
    cuda = ""
    if device.startswith("cuda"):
        tf32 = "on: fp32 convolutions run in TF32" if torch.backends.cudnn.allow_tf32 else "off"
        cuda = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()} (TF32 {tf32})"
    return f"{gpu}; torch {torch.__version__}{cuda}; Python {platform.python_version()}"


def render(sections: list[Section], command: str, device: str, dry_run: bool, total_s: float) -> str:
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = ["# GPU check", ""]
    if dry_run:
        head += ["**Dry run on the CPU at tiny sizes: these are not GPU figures.** It only shows that the check "
                 "runs.", ""]
    head += [f"Written by `{command}` on {when} ({environment(device)}), {total_s / 60:.1f} min in all. "
             "Rerun that command on a machine with a GPU, from the repository root, to replace this file.", ""]
    failed = [s for s in sections if s.error]
    head += [f"Sections: {', '.join(f'{s.name} ({s.seconds:.0f} s)' for s in sections)}; "
             + (f"**failed: {', '.join(s.name for s in failed)}**" if failed else "all passed") + ".", ""]
    for s in sections:
        head += [f"## {s.title}", ""]
        if s.body:
            head += [s.body, ""]
        if s.error:
            head += [f"**FAILED**: {s.error}", ""]
    return "\n".join(head).rstrip() + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks that the script runs")
    parser.add_argument("--device", default="cuda", help="the GPU to use (default %(default)s)")
    parser.add_argument("--output", type=Path, default=None,
                        help="the report (default: docs/gpu.md of this checkout; a dry run writes only with --output)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")


def run(args: argparse.Namespace) -> int:
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SECTIONS]
    if bad or not chosen:
        what = f"unknown {bad[0]!r}" if bad else "empty"
        raise ValueError(f"--sections {args.sections!r}: {what}; choose from {', '.join(SECTIONS)}")
    if args.dry_run:
        device, sizes = "cpu", DRY
    else:
        if not torch.cuda.is_available():
            raise ValueError("medsr bench gpu needs a CUDA GPU and none is available here; "
                             "--dry-run rehearses it on the CPU at tiny sizes")
        device, sizes = check_device(args.device, "--device"), Sizes()
        if not device.startswith("cuda"):
            raise ValueError(f"--device {args.device!r}: the GPU check runs on cuda or cuda:N")
    output = args.output if args.output is not None else (None if args.dry_run else ROOT / "docs" / "gpu.md")
    if output is not None and not output.parent.is_dir():
        raise FileNotFoundError(f"{output.parent}: output folder does not exist")
    command = "medsr bench gpu" + (" --dry-run" if args.dry_run else "")
    if args.sections != ",".join(SECTIONS):
        command += f" --sections {shlex.quote(args.sections)}"
    if output is not None and (args.dry_run or output.resolve() != (ROOT / "docs" / "gpu.md").resolve()):
        command += f" --output {shlex.quote(str(output))}"

    funcs: dict[str, Callable[[Path], Any]] = {
        "tests": lambda work: run_tests(sizes, device), "train": lambda work: run_train(sizes, device, work),
        "memory": lambda work: run_memory(sizes, device), "step": lambda work: run_step(sizes, device),
        "infer": lambda work: run_infer(sizes, device), "accuracy": lambda work: run_accuracy(sizes, device),
    }
    sections: list[Section] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medsr-gpu-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in [s for s in SECTIONS if s in chosen]:
            sec = Section(name, TITLES[name])
            t0 = time.perf_counter()
            print(f"medsr bench gpu: {name} ...", file=sys.stderr, flush=True)
            try:
                out = funcs[name](work / name)
                sec.body, sec.rows = (out, []) if isinstance(out, str) else out
            except Exception as e:  # noqa: BLE001 - one section's failure must not cost the others' figures
                sec.error = " ".join(f"{type(e).__name__}: {e}".split())[:600]
                if not isinstance(e, (ValueError, RuntimeError, OSError)):
                    traceback.print_exc()
            sec.seconds = time.perf_counter() - t0
            print(f"medsr bench gpu: {name} {'FAILED' if sec.error else 'done'} in {sec.seconds:.0f} s"
                  + (f": {sec.error}" if sec.error else ""), file=sys.stderr, flush=True)
            sections.append(sec)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    text = render(sections, command, device, args.dry_run, time.perf_counter() - start)
    print(text)
    if output is not None:
        with atomic_path(output) as tmp_out:
            tmp_out.write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    return 1 if any(s.error for s in sections) else 0
