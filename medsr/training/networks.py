"""Networks of a training run, built from the config and what the data says about itself.

One builder for the Trainer's modes and for anyone else who needs a run's networks (tests, benchmarks):
``model.kwargs`` / ``discriminator.kwargs`` go to the registry after their ``auto`` values are resolved
from :class:`DataFacts`, and every failure is a one-line ``ValueError`` naming the config key.

Example::

    facts = DataFacts(channels=6, factor=2, patch_size=24)
    gen = build_generator(cfg, facts)          # Network(name, kwargs, module)
    gen.module(torch.randn(1, 6, 24, 24, 24))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from medsr.checkpoint import model_entry
from medsr.config import Config
from medsr.factor import factor_value
from medsr.networks import create_model
from medsr.patches import as_shape


@dataclass(frozen=True)
class DataFacts:
    """What the networks must know about the training data.

    Attributes:
        channels: channel count of the network input x (``in_channels: auto``).
        factor: the data's upsampling factor (``factor: auto`` of LR-grid generators): an int, or a list
            of three per axis (:func:`medsr.factor.factor_value`).
        patch_size: the training patches: an edge, or ``[sx, sy, sz]`` (``patch_size: auto`` of the PatchGAN).
        where: the data as named in error messages (``the data (path/to/manifest.csv)``).
        slice_profile: how prep degraded the data (``box`` or ``gaussian``: a mode's degradation term).
        kind: ``dti`` (6 tensor channels, FSL order) or ``scalar``.
        norm: the data's normalisation ``{"x": ChannelStats, "y": ChannelStats}`` (a mode that computes in
            original units, e.g. a tensor fit, reads it); None when the data have none.
    """

    channels: int
    factor: int | list[int] = 2
    patch_size: int | list[int] = 24
    where: str = "the data"
    slice_profile: str = "box"
    kind: str = "scalar"
    norm: dict[str, Any] | None = None

    @classmethod
    def of(cls, data: Any, cfg: Config) -> "DataFacts":
        """The facts of ``data`` (:class:`medsr.data.registry.TrainData`) built from ``cfg``."""
        info = data.info
        return cls(channels=int(data.channels), factor=data_factor(info),
                   patch_size=info.get("patch_size", cfg.data.patch_size),
                   where=f"the data ({info.get('manifest') or cfg.data.root or cfg.data.type})",
                   slice_profile=str(info.get("slice_profile", "box")), kind=str(info.get("kind", "scalar")),
                   norm=dict(data.norm) if getattr(data, "norm", None) else None)


def data_factor(info: dict[str, Any]) -> int | list[int]:
    """The upsampling factor recorded by the dataset builder (2D data has none: 2, unused there).

    An int when it is the same on every axis (what every checkpoint stored before per-axis factors), else
    ``[rx, ry, rz]``; :func:`medsr.factor.factor_triple` reads either.
    """
    return factor_value(info.get("factor", 2))


@dataclass
class Network:
    """A built network with the registry name and resolved kwargs that rebuild it from a checkpoint."""

    name: str
    kwargs: dict[str, Any]
    module: nn.Module

    def entry(self) -> dict[str, Any]:
        """The checkpoint record ``{"name", "kwargs", "state_dict"}``."""
        return model_entry(self.name, self.kwargs, self.module)


def resolve_kwargs(kwargs: dict[str, Any], channels: int, key: str, what: str) -> dict[str, Any]:
    """Replace ``in_channels: auto`` (or a missing ``in_channels``) by ``channels``; check explicit ones.

    Raises:
        ValueError: an explicit ``in_channels`` differs from the data's ``channels``.
    """
    out = dict(kwargs)
    given = out.get("in_channels", "auto")
    if given in ("auto", None):
        out["in_channels"] = int(channels)
    elif not isinstance(given, int) or given != channels:
        raise ValueError(f"config key '{key}.in_channels' is {given!r} but {what} has {channels} channel(s); "
                         "set it to 'auto' or to the data's channel count")
    return out


def resolve_factor(kwargs: dict[str, Any], facts: DataFacts) -> dict[str, Any]:
    """``factor: auto`` (models that work on the LR grid) becomes the data's upsampling factor."""
    out = dict(kwargs)
    if out.get("factor") == "auto":
        out["factor"] = facts.factor
    return out


def build_network(name: str, kwargs: dict[str, Any], key: str) -> nn.Module:
    """``create_model(name, **kwargs)`` with registry and constructor errors named by config ``key``."""
    try:
        return create_model(name, **kwargs)
    except KeyError as e:
        raise ValueError(f"config key '{key}.name': {e.args[0] if e.args else e}") from None
    except TypeError as e:  # an unexpected or missing constructor argument
        raise ValueError(f"config key '{key}.kwargs': {name}: {e}") from None


def build_generator(cfg: Config, facts: DataFacts) -> Network:
    """The generator of ``cfg.model`` for data described by ``facts``."""
    kwargs = resolve_kwargs(cfg.model.kwargs, facts.channels, "model.kwargs", facts.where)
    kwargs = resolve_factor(kwargs, facts)
    return Network(cfg.model.name, kwargs, build_network(cfg.model.name, kwargs, "model"))


def build_discriminator(cfg: Config, in_channels: int, facts: DataFacts) -> Network:
    """One discriminator of ``cfg.discriminator`` judging ``in_channels``-channel inputs.

    Args:
        cfg: the run's config.
        in_channels: what the mode feeds it (e.g. input and output concatenated: twice the data's channels).
        facts: the training data's facts (``patch_size: auto``).
    """
    what = f"mode {cfg.train.mode!r} with {facts.where}"
    kwargs = resolve_kwargs(cfg.discriminator.kwargs, in_channels, "discriminator.kwargs", what)
    if kwargs.get("patch_size") == "auto":  # depth of the PatchGAN follows the patches (their shortest edge)
        kwargs["patch_size"] = min(as_shape(facts.patch_size))
    return Network(cfg.discriminator.name, kwargs, build_network(cfg.discriminator.name, kwargs, "discriminator"))
