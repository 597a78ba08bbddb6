"""Model registry in the timm style: ``@register_model`` + ``create_model(name, **kwargs)``.

Checkpoints store the name and keyword arguments, so a model is rebuilt from its checkpoint alone.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered: a lookup miss (KeyError) and a bad user value (ValueError)."""


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a constructor (a class or a factory function) under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the model modules runs their @register_model decorators.
    import medsr.networks.nets  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments ``kwargs``."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)
