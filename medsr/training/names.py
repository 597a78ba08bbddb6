"""Names in a config checked against the registries, where the config is used (training).

The config module stays a leaf (no torch, no registries); the names it holds are checked here,
once the modules that register models, modes and dataset types can be imported.
"""
from __future__ import annotations

from medsr.config import Config
from medsr.data.registry import list_datasets
from medsr.networks import list_models
from medsr.training.base import list_modes


def check_names(cfg: Config) -> None:
    """Raise ValueError naming the key and the registered names when a name in ``cfg`` is unknown.

    Checks ``data.type``, ``train.mode``, ``model.name`` and ``discriminator.name``.
    """
    models = list_models()
    for key, value, allowed in (
        ("data.type", cfg.data.type, list_datasets()),
        ("train.mode", cfg.train.mode, list_modes()),
        ("model.name", cfg.model.name, models),
        ("discriminator.name", cfg.discriminator.name, models),
    ):
        if value not in allowed:
            raise ValueError(f"config key {key!r}: unknown name {value!r}; allowed: {', '.join(allowed)}")
