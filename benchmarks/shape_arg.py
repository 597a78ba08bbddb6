"""``--shape X Y Z``: one spelling of a volume shape for every benchmark (as ``bench loader`` and
``python -m data_prep.phantom`` take it); the old comma form ``X,Y,Z`` is refused with a hint."""
from __future__ import annotations

import argparse
from typing import Sequence


class _Shape(argparse.Action):
    """Three positive integers; ``X,Y,Z`` (the old spelling) is refused with the space-separated form."""

    def __call__(self, parser, namespace, values: Sequence[str], option_string=None) -> None:
        if any("," in v for v in values):
            parts = [p.strip() for v in values for p in v.split(",") if p.strip()]
            raise argparse.ArgumentError(self, f"{' '.join(values)!r}: give the sizes space-separated, "
                                               f"e.g. --shape {' '.join(parts)}")
        try:
            sizes = [int(v) for v in values]
        except ValueError:
            raise argparse.ArgumentError(self, f"{' '.join(values)!r}: sizes are integers") from None
        if len(sizes) != 3 or min(sizes) < 1:
            raise argparse.ArgumentError(self, f"{' '.join(values)!r}: three positive sizes X Y Z")
        setattr(namespace, self.dest, sizes)


def add_shape_argument(parser: argparse.ArgumentParser, default: Sequence[int], what: str) -> None:
    """Add ``--shape X Y Z`` (three positive integers) with ``default`` and ``what`` in its help."""
    parser.add_argument("--shape", nargs="+", action=_Shape, default=list(default), metavar="N",
                        help=f"{what}: three sizes X Y Z (default {' '.join(map(str, default))})")
