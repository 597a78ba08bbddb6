"""Typed experiment configuration: nested dataclasses loaded from YAML, overridable by ``--set``.

One config describes one training run. Every section is a dataclass, so a misspelt key or a
value of the wrong type is rejected up front with its dotted key named and the allowed keys
listed (nanoGPT-style strictness), instead of failing an hour into training. The only
free-form parts are ``model.kwargs`` and ``discriminator.kwargs``: they go to the model
constructor unchanged, which validates them itself.

Example::

    cfg = load_config("configs/quick_paired.yaml", overrides=["train.max_steps=20"])
    cfg.train.batch_size        # typed attribute access
    cfg.to_dict()               # plain dict, saved as the run's config.yaml
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medsr import config_yaml
# Closed value sets: a field annotated with one accepts only its listed strings.
from medsr.choices import Direction, Domains, GanLoss, LossRegion, LrDecay, NormStats, Precision, Reverse, Sampling
from medsr.config_values import SubjectId, _build
from medsr.config_yaml import DuplicateKeyError, _yaml_floats, parse_yaml  # noqa: F401 - re-exported


@dataclass
class DataConfig:
    """Where the training data comes from and how patches are drawn.

    Attributes:
        type: dataset builder name (``patches3d``; ``self``: self-supervised pairs from thick-slice scans;
            the 2D module registers ``aligned2d``).
        manifest: ``manifest.csv`` written by ``medsr prep`` (3D).
        root: dataset folder (2D datasets).
        image_size: image side length in pixels (2D datasets).
        direction: ``AtoB`` or ``BtoA`` (2D datasets: which side is the input).
        dataset: ``maps`` or ``cityscapes`` (2D datasets; ``null`` = told by the root folder's name).
        subjects: training subjects (manifest ``subject`` column); ``null`` = every ``ok`` subject.
        patch_size: the patches' shape: an int, the edge of a cube (the paper: 24), rounded up to a multiple
            of every axis's downsampling factor (16 -> 18 at factor 3); three ints, one edge per axis (x y z),
            each rounded up to its own axis's factor; or ``auto``, the same LR extent on every axis (8 LR
            voxels: 16^3 at factor 2, 8 x 8 x 32 at 1 1 4, 24^3 at factor 3), so thick-slice patches see as
            many slices as in-plane voxels. Patches tile whole LR blocks. ``data.type: self``: one int.
        stride: grid stride; ``null`` = ``patch_size`` (non-overlapping, about 112 per HCP volume).
        sampling: ``grid`` (fixed grid positions), ``random`` (random positions) or ``both``.
        random_per_subject: random positions drawn per subject and epoch (``random``/``both``).
        min_brain_fraction: keep patches with at least this fraction of brain-mask voxels.
        normalise: per-channel (x - mean) / std with statistics over the training brain voxels.
        norm_stats: ``separate`` (input ``lr_up`` and target ``hr`` each by their own statistics) or
            ``shared`` (both by the target's: an interpolation of the input is then already in the
            target's units, which residual models over an interpolation base rely on).
        flip: random axis flips as augmentation (DTI off-diagonal signs are flipped accordingly).
        permute: random axis permutations as augmentation, among axes of equal voxel size and factor
            (x <-> y at factor 1 1 4; DTI components are reordered accordingly). With ``flip`` on isotropic
            data: the 48 symmetries of the cube.
        num_workers: DataLoader worker processes (0 = in the training process).
        slab: ``data.type: self``: the pairs' extent along the scan's slice axis, in native slices
            (``null`` = ``patch_size``, capped by the scans' slice count; 1 = one slice per pair, SMORE's
            2D setting). See :mod:`medsr.data.self_supervised`.
        domains: unpaired mode: ``shared`` (X and Y patches both from every training subject, the
            paper) or ``disjoint`` (the training subjects dealt in turn to X and Y: X patches from one
            half's ``lr_up``, Y patches from the other half's ``hr``; no subject feeds both).
    """

    type: str = "patches3d"
    manifest: str | None = None
    root: str | None = None
    image_size: int = 256
    direction: Direction = "AtoB"
    dataset: str | None = None
    subjects: list[SubjectId] | None = None
    patch_size: int | list[int] | Literal["auto"] = 24
    stride: int | None = None
    sampling: Sampling = "grid"
    random_per_subject: int = 0
    min_brain_fraction: float = 0.01
    normalise: bool = True
    norm_stats: NormStats = "separate"
    flip: bool = False
    permute: bool = False
    num_workers: int = 0
    slab: int | None = None
    domains: Domains = "shared"


@dataclass
class ModelConfig:
    """The generator: a registry name and its constructor keyword arguments.

    ``kwargs["in_channels"] == "auto"`` (the default) is replaced by the data's channel count.
    """

    name: str = "rev_srcnn3d"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"in_channels": "auto"})


@dataclass
class DiscriminatorConfig:
    """The discriminator(s) of the GAN modes; ``in_channels: auto`` is resolved by the mode."""

    name: str = "patchgan3d"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"in_channels": "auto"})


@dataclass
class TrainConfig:
    """Optimisation, schedule, logging and checkpointing.

    Attributes:
        mode: training mode (``paired_l1``, ``paired_l2``, ``paired``, ``unpaired``, ...).
        batch_size: patches per step per process (DDP: per rank).
        n_epochs: epochs at the constant learning rate.
        n_epochs_decay: further epochs with the learning rate decaying linearly to zero.
        max_steps: stop after this many optimisation steps (``null`` = run all epochs).
        max_minutes: stop after this many minutes of training (``null`` = no time limit). Checked
            after every step, counted over resumes (the checkpoint stores the time trained); under
            torchrun every rank stops at the same step. The checkpoint is written at the stop.
        lr, beta1, beta2: Adam settings (paper: 2e-4, 0.5, 0.999).
        lambda_l1: weight of the paired L1 terms in ``paired`` mode (paper: 100).
        lambda_cycle: weight of the cycle terms in ``unpaired`` mode (paper: 10).
        lambda_degrade: weight of the degradation terms in ``unpaired`` mode, ``|D(F(x)) - x_lr|`` (F's
            output degraded as prep degraded the data, ``D``: block mean or slice profile, against the LR
            voxels of its input) and ``|G(y)_lr - D(y)|`` (G is held to that degradation). 0 = the paper's
            eq. 13. Needs ``data.norm_stats: shared``.
        reverse: what G, the Y -> X map of ``unpaired`` mode, is: ``network`` (the paper: the generator's
            reverse pass through the shared core, with its discriminator D_X) or ``degradation`` (prep's own
            degradation ``D`` then NN upsampling, fixed: the cycle terms become ``|D(F(x)) - x_lr|`` and
            ``|F(up(D(y))) - y|``, pairs made from the Y volumes; no D_X, no learned G).
        lambda_reverse: weight of the reverse direction's pixel loss L(G(y), x) in ``paired_l1`` /
            ``paired_l2`` (paper: 1, both directions); 0 trains F alone and skips computing G.
        ema: decay of an exponential moving average of the generator's weights, updated every step
            (warming up as ``min(ema, (1 + n) / (10 + n))``); checkpoints serve the average as the model
            (:mod:`medsr.training.ema`). 0 (the default) keeps the last step's weights; 0.999 averages
            about the last thousand steps.
        lr_decay: ``epochs`` (the paper: constant for ``n_epochs``, then linear to zero over
            ``n_epochs_decay``) or ``cosine`` (a per-step cosine from ``lr`` to zero over the run's
            length: the larger of step / ``max_steps``-or-epochs and time / ``max_minutes``, so a
            time-limited run ends annealed; with a time limit, resume is no longer bit-exact).
        loss_region: where pixel losses are averaged: ``patch`` (every voxel, the paper) or ``brain``
            (mask voxels only: the voxels the evaluation scores).
        gan_loss: ``vanilla`` (BCE with logits) or ``lsgan``.
        pool_size: image pool of generated samples shown to the discriminators (unpaired).
        checkpoint_every: write ``last.pt`` every this many steps (and always at the end).
        log_every: append a ``log.csv`` row every this many steps.
        seed: seeds weights, data order, augmentation and the image pool.
        deterministic: ``torch.use_deterministic_algorithms`` (bitwise-reproducible resume).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``.
        samples: write ``samples/epoch_XXX.png`` at each epoch end (and ``samples/final.png`` when the run
            stops mid-epoch).
        progress: show a tqdm bar (only on a terminal, rank 0).
        threads: torch CPU threads: ``auto`` (measured: the count giving the most steps per second on
            the cores this process may use, rechecked as the machine's load changes; see
            :mod:`medsr.utils.threads`), a number, or 0 (torch's default).
        precision: ``fp32``, ``bf16`` (autocast in bfloat16) or ``fp16`` (autocast in float16 with a
            gradient scaler; CUDA only). Weights, optimiser state and checkpoints stay float32; see
            :mod:`medsr.precision`.
    """

    mode: str = "paired_l1"
    batch_size: int = 1
    n_epochs: int = 20
    n_epochs_decay: int = 0
    max_steps: int | None = None
    max_minutes: float | None = None
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_l1: float = 100.0
    lambda_cycle: float = 10.0
    lambda_degrade: float = 0.0
    reverse: Reverse = "network"
    lambda_reverse: float = 1.0
    ema: float = 0.0
    loss_region: LossRegion = "patch"
    lr_decay: LrDecay = "epochs"
    gan_loss: GanLoss = "vanilla"
    pool_size: int = 50
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    samples: bool = True
    progress: bool = True
    threads: int | Literal["auto"] = "auto"
    precision: Precision = "fp32"


@dataclass
class Config:
    """A whole training run."""

    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML/checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Build and validate a config from a nested dict (missing keys keep their defaults)."""
        return _build(cls, d or {}, "")

    def with_overrides(self, overrides: list[str] | None) -> "Config":
        """A copy with ``a.b=value`` overrides applied (values parsed as YAML)."""
        d = self.to_dict()
        for item in overrides or []:
            apply_override(d, item)
        return Config.from_dict(d)


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b.c=value"`` -> ``("a.b.c", value)``, the value read for that key's type in :class:`Config`
    (:func:`medsr.config_yaml.parse_override`)."""
    return config_yaml.parse_override(item, Config)


def apply_override(d: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to the nested config dict ``d`` in place
    (:func:`medsr.config_yaml.apply_override`)."""
    config_yaml.apply_override(d, item, Config)


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in the config file ``path`` (:func:`medsr.config_yaml.read_config_file`)."""
    return config_yaml.read_config_file(path, Config)


def load_config(
    source: "Config | dict[str, Any] | str | os.PathLike[str]", overrides: list[str] | None = None
) -> Config:
    """Load a config from a YAML file, a dict or a Config, then apply ``--set`` overrides.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ValueError: unknown keys, wrong types, bad YAML; the message names the key or file.
    """
    path: Path | None = None
    if isinstance(source, Config):
        d = source.to_dict()
    elif isinstance(source, dict):
        d = _yaml_floats(dict(source))
    else:
        path = Path(source)
        d = read_config_file(path)
    # Validate first so an unknown section is reported before an override is applied to it.
    try:
        base = Config.from_dict(d).to_dict()
    except ValueError as e:
        if path is None:
            raise
        raise ValueError(f"{path}: {e}") from None  # name the file too: the user may hold several configs
    for item in overrides or []:
        apply_override(base, item)
    return Config.from_dict(base)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically."""
    from medsr.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
