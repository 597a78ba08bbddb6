"""What a training mode is: the base class, the registry, and the generator's passes in one forward.

A mode owns what it trains, in the style of a Lightning module: it builds its networks
(:meth:`TrainMode.build_networks`), its optimisers (:meth:`TrainMode.configure_optimizers`) and one
learning-rate schedule per optimiser, computes one step (:meth:`TrainMode.train_step`) and says what
a checkpoint must hold (:meth:`TrainMode.state_dict`). The loop (:class:`medsr.training.trainer.Trainer`)
owns what every mode shares: devices, DDP, budgets, logging and checkpoint files. It calls the mode;
the mode never calls it back.

A new mode is one file::

    @register_mode("my_mode")
    class MyMode(TrainMode):
        loss_names = ["l1"]

        def train_step(self, batch):
            with self.autocast():
                loss = (self.passes(x=batch["x"])["fake_y"].float() - batch["y"]).abs().mean()
            self.optimise("G", loss)
            return {"l1": loss.detach()}

plus its module in :data:`PLUGIN_MODULES` (or imported before the config is used).
"""
from __future__ import annotations

import importlib
import itertools
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from medsr.config import Config
from medsr.precision import MixedPrecision
from medsr.training.ema import WeightAverage
from medsr.training.networks import DataFacts, Network, build_discriminator, build_generator
from medsr.training.schedule import LRSchedule, make_optimizer, make_schedule

_MODES: dict[str, type["TrainMode"]] = {}
# Modules whose @register_mode runs on the first look-up: the built-in modes, then modes defined
# outside this package (listed here rather than registered as a side effect of importing a dataset).
PLUGIN_MODULES = ("medsr.training.modes", "medsr.twod.segmentation")


def _ensure_loaded() -> None:
    for mod in PLUGIN_MODULES:
        importlib.import_module(mod)


def register_mode(name: str) -> Callable[[type["TrainMode"]], type["TrainMode"]]:
    """Class decorator registering a training mode under ``name`` (the config's ``train.mode``)."""

    def deco(cls: type["TrainMode"]) -> type["TrainMode"]:
        if name in _MODES:
            raise ValueError(f"training mode {name!r} registered twice")
        cls.name = name
        _MODES[name] = cls
        return cls

    return deco


def list_modes() -> list[str]:
    _ensure_loaded()
    return sorted(_MODES)


def create_mode(cfg: Config, rank: int = 0) -> "TrainMode":
    """Instantiate the mode named by ``cfg.train.mode`` (nothing built yet: see :meth:`TrainMode.setup`)."""
    _ensure_loaded()
    name = cfg.train.mode
    if name not in _MODES:
        raise ValueError(f"config key 'train.mode': unknown mode {name!r}; registered: {', '.join(list_modes())}")
    return _MODES[name](cfg, rank)


class GeneratorPasses(nn.Module):
    """Every pass of a generator that one step needs (F, G, the cycles), in one ``forward`` call.

    DDP only all-reduces gradients of work done inside ``forward``; routing ``reverse`` (and the
    cycles) through here keeps a single DDP forward per step.

    Args:
        generator: a module with ``forward(x)`` (F: X->Y) and ``reverse(y)`` (G: Y->X).
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(
        self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, cycle: bool = False
    ) -> dict[str, torch.Tensor]:
        """Args: x (B, C, *S) X-domain batch, y (B, C, *S) Y-domain batch.

        Returns: ``fake_y = F(x)``, ``fake_x = G(y)`` and with ``cycle`` ``rec_x = G(F(x))``,
        ``rec_y = F(G(y))``, each (B, C, *S).
        """
        out: dict[str, torch.Tensor] = {}
        if x is not None:
            out["fake_y"] = self.generator(x)
            if cycle:
                out["rec_x"] = self.generator.reverse(out["fake_y"])
        if y is not None:
            out["fake_x"] = self.generator.reverse(y)
            if cycle:
                out["rec_y"] = self.generator(out["fake_x"])
        return out


class Wrap(Protocol):
    """How the loop wraps a module whose gradients must be all-reduced (DDP; the module itself alone)."""

    def __call__(self, module: nn.Module, find_unused: bool = False) -> nn.Module: ...


def no_wrap(module: nn.Module, find_unused: bool = False) -> nn.Module:
    """The wrapping of a single process: none."""
    return module


class TrainMode:
    """Base class of the training modes. Subclasses set ``loss_names`` and implement :meth:`train_step`.

    Life cycle, driven by the loop:

    1. ``mode = create_mode(cfg, rank)``;
    2. ``mode.setup(facts, device, wrap)``: networks, DDP wrappers, optimisers, schedules, precision;
    3. before each step ``schedule.step(run_point)`` for each of :attr:`schedules`, then
       ``mode.train_step(batch)``;
    4. checkpoints from :meth:`state_dict` (the same on every rank) and :meth:`rank_state_dict`.

    Attributes set by :meth:`setup`:
        networks: ``"generator"`` and each of :attr:`discriminator_names` -> :class:`Network`
            (name, kwargs, module): what checkpoints record.
        generator: the generator module (unwrapped).
        discriminators: discriminator name -> module (unwrapped: generator steps call these, so
            no DDP gradient reduction runs for them).
        passes: :class:`GeneratorPasses` over the generator, DDP-wrapped when distributed.
        discriminators_ddp: discriminator name -> module, DDP-wrapped when distributed
            (discriminator steps call these).
        optimizers: optimiser name -> optimiser (``G``; ``D`` when there are discriminators).
        schedules: optimiser name -> its :class:`LRSchedule`.
        amp: ``train.precision`` for these optimisers: steps run forward passes and losses under
            :meth:`autocast` and step through :meth:`optimise`.
        ema: the moving average of the generator's weights (``train.ema`` > 0; None when off), updated
            after every step of optimiser ``G``; checkpoints serve it as the model.
    """

    name = ""
    #: the discriminators this mode trains; empty for pixel-loss-only modes.
    discriminator_names: tuple[str, ...] = ()
    #: DDP ``find_unused_parameters`` (a mode that runs one direction only leaves parameters unused).
    find_unused = False
    #: The config setting that leaves G (``generator.reverse``) untrained, e.g. ``train.lambda_reverse: 0``;
    #: empty when the mode trains G. ``medsr infer --reverse`` warns on such a checkpoint.
    reverse_untrained_by = ""

    def __init__(self, cfg: Config, rank: int = 0) -> None:
        self.cfg = cfg
        self.rank = rank

    @property
    def loss_names(self) -> list[str]:
        raise NotImplementedError

    def discriminator_in_channels(self, channels: int) -> int:
        """Input channels of each discriminator given the data's channel count."""
        return channels

    # ------------------------------------------------------------------ what it trains
    def build_networks(self, facts: DataFacts) -> dict[str, Network]:
        """The generator, then the discriminators in :attr:`discriminator_names` order, on the CPU.

        The order is part of the contract: under one seed it fixes every network's initial weights.
        """
        nets = {"generator": build_generator(self.cfg, facts)}
        d_in = self.discriminator_in_channels(facts.channels)
        for name in self.discriminator_names:
            nets[name] = build_discriminator(self.cfg, d_in, facts)
        return nets

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam ``G`` over the generator and ``D`` over every discriminator (one step for all of them)."""
        t = self.cfg.train
        betas = (t.beta1, t.beta2)
        opts = {"G": make_optimizer(self.generator.parameters(), t.lr, betas)}
        if self.discriminators:
            params = itertools.chain(*(d.parameters() for d in self.discriminators.values()))
            opts["D"] = make_optimizer(params, t.lr, betas)
        return opts

    def configure_schedules(self) -> dict[str, LRSchedule]:
        """One ``train.lr_decay`` schedule per optimiser."""
        return {k: make_schedule(o, self.cfg.train) for k, o in self.optimizers.items()}

    def setup(self, facts: DataFacts, device: torch.device, wrap: Wrap = no_wrap) -> None:
        """Build everything this mode trains on ``device``; ``wrap`` is the loop's DDP wrapping."""
        self.device = torch.device(device)
        self.networks = self.build_networks(facts)
        for net in self.networks.values():
            net.module.to(self.device)
        self.generator = self.networks["generator"].module
        self.discriminators = {n: self.networks[n].module for n in self.discriminator_names}
        self.passes = wrap(GeneratorPasses(self.generator), find_unused=self.find_unused)
        self.discriminators_ddp = {n: wrap(d) for n, d in self.discriminators.items()}
        self.optimizers = self.configure_optimizers()
        self.schedules = self.configure_schedules()
        self.amp = MixedPrecision(self.cfg.train.precision, self.device, self.optimizers)
        ema = float(self.cfg.train.ema)
        self.ema = WeightAverage(self.generator, ema) if ema > 0 else None

    @property
    def served_generator(self) -> nn.Module:
        """The generator a checkpoint serves: the weight average under ``train.ema``, else the generator."""
        return self.ema.module if self.ema is not None else self.generator

    # ------------------------------------------------------------------ one step
    def autocast(self):
        """The context for forward passes and losses (autocast under bf16/fp16; nothing in fp32)."""
        return self.amp.autocast()

    def optimise(self, name: str, loss: torch.Tensor) -> None:
        """Zero optimiser ``name``'s gradients, backpropagate ``loss`` and step (scaled under fp16)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        self.amp.backward_step(name, loss, opt)
        if name == "G" and self.ema is not None:
            self.ema.update(self.generator)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch`` ({"x": (B, C, *S), "y": (B, C, *S)}); returns detached losses."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries of what this mode trains (identical on every rank).

        Keys of :mod:`medsr.checkpoint`'s layout: ``model`` (the generator: its weight average under
        ``train.ema``), ``discriminators``, ``optimizers``, ``schedulers``, ``amp`` (fp16 loss scales) and,
        under ``train.ema``, ``ema`` (``decay``, ``updates`` and ``train_state_dict``, the weights the
        optimiser is at, which resume continues from).
        """
        model = self.networks["generator"].entry()
        state: dict[str, Any] = {
            "model": model,
            "discriminators": {n: self.networks[n].entry() for n in self.discriminator_names},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedules.items()},
            "amp": self.amp.state_dict(),
        }
        if self.ema is not None:
            averaged = self.ema.state_dict()
            state["model"] = {**model, "state_dict": averaged.pop("state_dict")}
            state["ema"] = {**averaged, "train_state_dict": model["state_dict"]}
        return state

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        """Restore weights, optimisers, schedules and loss scales from a checkpoint dict.

        A checkpoint written under ``train.ema`` resumes from the optimiser's weights (its ``ema`` entry)
        with the average restored; with ``train.ema`` switched on at resume the average starts there.
        """
        averaged = ck.get("ema")
        self.generator.load_state_dict(averaged["train_state_dict"] if averaged else ck["model"]["state_dict"])
        if self.ema is not None and averaged:
            self.ema.load_state_dict({"state_dict": ck["model"]["state_dict"], "updates": averaged["updates"]})
        for n, d in self.discriminators.items():
            d.load_state_dict(ck["discriminators"][n]["state_dict"])
        for k, o in self.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        for k, s in self.schedules.items():
            s.load_state_dict(ck["schedulers"][k])
        # A run may change train.precision at resume (e.g. bf16 -> fp32); fp16 scales resume as they were.
        self.amp.load_state_dict(ck.get("amp"))

    def rank_state_dict(self) -> dict[str, Any]:
        """State that differs between ranks (e.g. image pools); checkpoints keep one per rank."""
        return {}

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        pass
