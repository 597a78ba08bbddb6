"""The ``--factor`` and ``--slice-profile`` flags, one spelling for ``prep``, ``demo`` and ``bench quality``."""
from __future__ import annotations

import argparse

from medsr.factor import factor_value

FACTOR_HELP = ("downsampling factor: one integer for every axis (2 = 2 2 2) or three, x y z "
               "(1 1 4: 4x thicker slices along z)")
PROFILE_HELP = ("how LR voxels weight the HR signal: box = block mean on every axis (3D acquisitions; the IQT "
                "protocol), gaussian = block mean in plane and a Gaussian slice profile (FWHM = slice "
                "thickness) along the axis of the largest factor (2D multi-slice acquisitions)")


def add_factor_flags(parser: argparse.ArgumentParser, *, profile: bool = True) -> None:
    """``--factor R [R R]`` (default 2) and, with ``profile``, ``--slice-profile box|gaussian`` (default box)."""
    parser.add_argument("--factor", type=int, nargs="+", default=[2], metavar="R", help=FACTOR_HELP + "; default 2")
    if profile:
        parser.add_argument("--slice-profile", choices=["box", "gaussian"], default="box",
                            help=PROFILE_HELP + "; default box")


def factor_from_args(values: list[int], profile: str = "box") -> int | list[int]:
    """The checked ``--factor`` in its stored form (``2`` for ``2`` and ``2 2 2``; ``[1, 1, 4]`` per axis).

    Raises:
        ValueError: not one or three positive integers, or a gaussian profile without a slice axis.
    """
    from medsr.slice_profile import slice_axis

    if len(values) not in (1, 3) or any(f < 1 for f in values):
        raise ValueError(f"--factor {' '.join(map(str, values))}: give one positive integer or three (x y z)")
    factor = factor_value(values)
    if profile == "gaussian":
        try:
            slice_axis(factor)
        except ValueError as e:
            raise ValueError(f"--slice-profile gaussian: {e}") from None
    return factor
