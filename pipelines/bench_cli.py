"""``medsr bench NAME``: dispatch to one benchmark module under ``pipelines/bench``."""
from __future__ import annotations

import argparse
import importlib

BENCHES: dict[str, str] = {
    "memory": "activation memory and step time vs reversible depth (3D; --2d for the 2D generators)",
    "loader": "patch loader throughput vs model consumption",
    "infer": "full-volume inference throughput and peak memory on an HCP-size volume",
    "prep": "HCP-size preprocessing: seconds and peak RSS per subject",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="NAME")
    for name, help_line in BENCHES.items():
        p = sub.add_parser(name, help=help_line, description=help_line)
        module = importlib.import_module(f"pipelines.bench.{name}")
        module.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"pipelines.bench.{args.bench}")
    return int(module.run(args) or 0)
