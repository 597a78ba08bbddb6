"""Closed sets of string values of the config, in a module that imports nothing heavy.

A config field annotated with one of these accepts only its listed strings (the validator reads
them with ``typing.get_args``). Code that acts on a value reads the same set, so a new value is
added in one place: ``medsr.precision.PRECISIONS`` is ``get_args(Precision)``, ``medsr.losses.GANLoss``
accepts ``get_args(GanLoss)``.
"""
from __future__ import annotations

from typing import Literal

Sampling = Literal["grid", "random", "both"]
NormStats = Literal["separate", "shared"]
Direction = Literal["AtoB", "BtoA"]
GanLoss = Literal["vanilla", "lsgan"]
LossRegion = Literal["patch", "brain"]
LrDecay = Literal["epochs", "cosine"]
Precision = Literal["fp32", "bf16", "fp16"]
Domains = Literal["shared", "disjoint"]
Reverse = Literal["network", "degradation"]
