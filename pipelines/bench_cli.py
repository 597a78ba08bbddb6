"""``medsr bench NAME [options]``: the command line of the benchmarks, dispatching to one module of ``benchmarks/``.

Each benchmark module defines its options (``add_arguments``) and ``run``; this file only parses
``NAME`` and calls them.

Only the chosen benchmark's module is imported, so one benchmark's dependencies never stop another.
"""
from __future__ import annotations

import argparse
import importlib
from types import ModuleType

BENCHES: dict[str, str] = {
    "memory": "activation memory and step time vs reversible depth (3D; --2d for the 2D generators)",
    "loader": "patch loader throughput vs model consumption",
    "infer": "full-volume inference throughput and peak memory on an HCP-size volume",
    "prep": "HCP-size preprocessing: seconds and peak RSS per subject",
    "quality": "train configs at an equal budget and score held-out volumes against cubic",
    "precision": "bf16 vs fp32: reversible inverse and gradient errors at depth, whole-volume inference difference",
    "uncertainty": "calibration of per-voxel uncertainty on a held-out subject (Spearman, deciles) -> docs/uncertainty.md",
    "gpu": "the prepared GPU check (CUDA tests, training per mode, memory, fp32 vs bf16, HCP inference) -> docs/gpu.md",
    "tissues": "where the error lies: a phantom prediction's interior RMSE by tissue label, against cubic",
    "busy": "training steps/s alone, beside a busy core and beside a second training, per thread policy "
            "-> docs/performance.md",
}


def bench_module(name: str) -> ModuleType:
    """The module of benchmark ``name`` (``benchmarks.NAME``, imported only when chosen)."""
    return importlib.import_module(f"benchmarks.{name}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "benchmarks:\n" + "\n".join(f"  {n:<8} {h}" for n, h in BENCHES.items()) + (
        "\n\nRun 'medsr bench NAME --help' for the options of one benchmark."
    )
    parser.add_argument("bench", choices=list(BENCHES), metavar="NAME", help="one of: " + ", ".join(BENCHES))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")


def bench_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of ``medsr bench NAME`` (imports that benchmark's module only)."""
    from pipelines.cli import use_help_formatter

    module = bench_module(name)
    sub = argparse.ArgumentParser(prog=f"medsr bench {name}", description=BENCHES[name])
    module.add_arguments(sub)
    return use_help_formatter(sub)


def run(args: argparse.Namespace) -> int:
    module = bench_module(args.bench)
    return int(module.run(bench_parser(args.bench).parse_args(args.options)) or 0)
