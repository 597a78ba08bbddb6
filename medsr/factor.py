"""The downsampling factor: one positive integer per spatial axis, wherever it is stored.

A factor reaches medsr in several spellings: ``2`` (the same on every axis, the only form older
manifests and checkpoints hold), ``(1, 1, 4)`` / ``[2, 2, 4]`` (per axis, x y z in voxel order), the
manifest's text ``"2"`` / ``"1x1x4"``, or a command line's ``2`` / ``1 1 4``. :func:`factor_triple`
turns any of them into the triple ``(rx, ry, rz)`` that the maths uses; :func:`factor_value` gives
the compact form stored in manifests, ``data.info`` and checkpoints: an ``int`` when the three agree
(so a factor-2 run writes exactly what it always wrote) and a list of three ints otherwise.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

Factor = tuple[int, int, int]
FactorLike = Union[int, str, Sequence[int], np.ndarray]


def _positive_int(v: object, original: object) -> int:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or f != int(f) or f < 1:
        raise ValueError(f"factor must be one positive integer or three (x y z), got {original!r}")
    return int(f)


def factor_triple(factor: FactorLike) -> Factor:
    """``2`` / ``"2"`` -> (2, 2, 2); ``(1, 1, 4)`` / ``[1, 1, 4]`` / ``"1x1x4"`` -> (1, 1, 4).

    Raises:
        ValueError: not one or three positive integers.
    """
    if isinstance(factor, str):
        text = factor.strip()
        parts = text.replace(",", " ").replace("x", " ").split()
        values = [_positive_int(p, factor) for p in parts]
    elif isinstance(factor, (Sequence, np.ndarray)):
        values = [_positive_int(p, factor) for p in np.asarray(factor).ravel().tolist()]
    else:
        values = [_positive_int(factor, factor)]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"factor must be one positive integer or three (x y z), got {factor!r}")
    return (values[0], values[1], values[2])


def factor_value(factor: FactorLike) -> int | list[int]:
    """The stored form: ``2`` for (2, 2, 2), ``[1, 1, 4]`` for (1, 1, 4)."""
    t = factor_triple(factor)
    return t[0] if t[0] == t[1] == t[2] else list(t)


def format_factor(factor: FactorLike, sep: str = "x") -> str:
    """The text form: ``"2"`` for (2, 2, 2), ``"1x1x4"`` for (1, 1, 4) (the manifest's ``factor`` column)."""
    v = factor_value(factor)
    return str(v) if isinstance(v, int) else sep.join(str(r) for r in v)


def is_isotropic(factor: FactorLike) -> bool:
    """True when the factor is the same on every axis."""
    t = factor_triple(factor)
    return t[0] == t[1] == t[2]


def factor_lcm(factor: FactorLike) -> int:
    """The least common multiple of the three factors: the edge of the smallest cube every block tiles."""
    return math.lcm(*factor_triple(factor))


def round_up_to_factor(size: int, factor: FactorLike) -> int:
    """``size`` rounded up to a multiple of :func:`factor_lcm` (a cubic patch whose edge every factor divides)."""
    m = factor_lcm(factor)
    return -(-int(size) // m) * m
