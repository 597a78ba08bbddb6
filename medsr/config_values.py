"""Checking config values: each against its annotated type and allowed range, with the dotted key named.

Torch-free and config-agnostic: :func:`_build` fills any dataclass from a nested dict, so
:mod:`medsr.config` stays the one place that lists the sections."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, NewType, Union

from medsr.utils.paths import subject_id, subject_list

# A subject ID: the manifest's ``subject`` (a folder name such as HCP's ``100307`` or BIDS's ``sub-01``).
# In YAML and ``--set`` it is the text as typed (``[100307, 01]`` -> "100307", "01"), never a number.
SubjectId = NewType("SubjectId", str)

_FREE_DICTS = {"model.kwargs", "discriminator.kwargs"}

# Allowed ranges of numeric keys: (low, high, low inclusive, high inclusive); None = unbounded.
# A key absent from the config classes is simply never checked (null values are never checked).
_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "data.image_size": (1, None, True, True),
    "data.patch_size": (1, None, True, True),
    "data.stride": (1, None, True, True),
    "data.random_per_subject": (0, None, True, True),
    "data.min_brain_fraction": (0, 1, True, True),
    "data.num_workers": (0, None, True, True),
    "data.slab": (1, None, True, True),
    "train.batch_size": (1, None, True, True),
    "train.n_epochs": (0, None, True, True),
    "train.n_epochs_decay": (0, None, True, True),
    "train.max_steps": (1, None, True, True),
    "train.max_minutes": (0, None, False, True),
    "train.lambda_reverse": (0, None, True, True),
    "train.ema": (0, 1, True, False),
    # Adam at a learning rate above 1 only diverges; a huge one overflows float32 before the first step.
    "train.lr": (0, 1, False, True),
    "train.beta1": (0, 1, True, False),
    "train.beta2": (0, 1, True, False),
    "train.lambda_l1": (0, None, True, True),
    "train.lambda_cycle": (0, None, True, True),
    "train.lambda_degrade": (0, None, True, True),
    "train.pool_size": (0, None, True, True),
    "train.checkpoint_every": (1, None, True, True),
    "train.log_every": (1, None, True, True),
    "train.threads": (0, None, True, True),
    # Every RNG medsr seeds (Python, NumPy, torch) takes a seed in [0, 2^32).
    "train.seed": (0, 2**32 - 1, True, True),
}


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _range_text(lo: float | None, hi: float | None, lo_inc: bool, hi_inc: bool) -> str:
    if hi is None:
        return f"{'>=' if lo_inc else '>'} {_num(lo)}"
    return f"in {'[' if lo_inc else '('}{_num(lo)}, {_num(hi)}{']' if hi_inc else ')'}"


def _check_range(key: str, value: Any) -> None:
    """Raise ValueError naming ``key`` and its allowed range when a number lies outside it (NaN included)."""
    if key not in _RANGES or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi, lo_inc, hi_inc = _RANGES[key]
    ok = value == value and value not in (float("inf"), float("-inf"))  # finite
    if ok and lo is not None:
        ok = value >= lo if lo_inc else value > lo
    if ok and hi is not None:
        ok = value <= hi if hi_inc else value < hi
    if not ok:
        raise ValueError(f"config key {key!r}: {value!r} is out of range; allowed: {_range_text(lo, hi, lo_inc, hi_inc)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):  # a Literal among other types names its values: "int or 'auto'"
        return " or ".join(" or ".join(map(repr, typing.get_args(a))) if typing.get_origin(a) is Literal
                           else _type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(sorted({type(a).__name__ for a in typing.get_args(tp)}))
    if tp is type(None):
        return "null"
    if tp is SubjectId:
        return "subject ID (a name or a number)"
    if origin is list:
        inner = typing.get_args(tp)[0]
        return "list of subject IDs" if inner is SubjectId else f"list of {_type_name(inner)}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return ``value`` checked against annotation ``tp``; raise ValueError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, key)
            except ValueError as e:
                errors.append((arg, e))
        for arg, e in errors:  # a list with a bad entry (a subject listed twice): that entry's message
            if typing.get_origin(arg) is list and isinstance(value, (list, tuple)):
                raise e
        raise ValueError(f"config key {key!r}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if any(type(value) is type(a) for a in allowed):  # a wrong type is reported as such, below
            if value in allowed:
                return value
            raise ValueError(f"config key {key!r}: {value!r} is not one of {', '.join(map(str, allowed))}")
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is SubjectId:
        return subject_id(value, f"config key {key!r}")
    elif origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)) and inner is SubjectId:
            return subject_list(value, f"config key {key!r}")
        if isinstance(value, (list, tuple)):
            return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is Any:
        return value
    raise ValueError(f"config key {key!r}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, d: Any, prefix: str) -> Any:
    where = prefix or "top level"
    if not isinstance(d, dict):
        raise ValueError(f"config section {where!r}: expected a mapping, got {type(d).__name__} {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ValueError(f"unknown config key {key!r}; allowed keys in {where}: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for name in names:
        if name not in d:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, d[name] if d[name] is not None else {}, key)
            continue
        value = _coerce(tp, d[name], key)
        _check_range(key, value)
        kwargs[name] = value
    if prefix == "train":
        default = cls()
        n_ep = kwargs.get("n_epochs", default.n_epochs)
        n_decay = kwargs.get("n_epochs_decay", default.n_epochs_decay)
        if n_ep + n_decay < 1:
            raise ValueError(f"config keys 'train.n_epochs' + 'train.n_epochs_decay': {n_ep} + {n_decay} epochs "
                             "train nothing; allowed: a sum >= 1")
    return cls(**kwargs)
