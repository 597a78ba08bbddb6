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
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NewType, Union

import yaml

# Closed value sets: a field annotated with one accepts only its listed strings.
from medsr.choices import Direction, GanLoss, LossRegion, LrDecay, NormStats, Precision, Sampling
from medsr.utils.paths import subject_id, subject_list

# A subject ID: the manifest's ``subject`` (a folder name such as HCP's ``100307`` or BIDS's ``sub-01``).
# In YAML and ``--set`` it is the text as typed (``[100307, 01]`` -> "100307", "01"), never a number.
SubjectId = NewType("SubjectId", str)


@dataclass
class DataConfig:
    """Where the training data comes from and how patches are drawn.

    Attributes:
        type: dataset builder name (``patches3d``; the 2D module registers ``aligned2d``).
        manifest: ``manifest.csv`` written by ``medsr prep`` (3D).
        root: dataset folder (2D datasets).
        image_size: image side length in pixels (2D datasets).
        direction: ``AtoB`` or ``BtoA`` (2D datasets: which side is the input).
        dataset: ``maps`` or ``cityscapes`` (2D datasets; ``null`` = told by the root folder's name).
        subjects: training subjects (manifest ``subject`` column); ``null`` = every ``ok`` subject.
        patch_size: edge of the cubic patches (the paper: 24); rounded up to a multiple of every axis's
            downsampling factor (16 -> 18 at factor 3), so patches tile whole LR blocks.
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
    """

    type: str = "patches3d"
    manifest: str | None = None
    root: str | None = None
    image_size: int = 256
    direction: Direction = "AtoB"
    dataset: str | None = None
    subjects: list[SubjectId] | None = None
    patch_size: int = 24
    stride: int | None = None
    sampling: Sampling = "grid"
    random_per_subject: int = 0
    min_brain_fraction: float = 0.01
    normalise: bool = True
    norm_stats: NormStats = "separate"
    flip: bool = False
    permute: bool = False
    num_workers: int = 0


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
        lambda_reverse: weight of the reverse direction's pixel loss L(G(y), x) in ``paired_l1`` /
            ``paired_l2`` (paper: 1, both directions); 0 trains F alone and skips computing G.
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
    lambda_reverse: float = 1.0
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


# ---------------------------------------------------------------------------- validation

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
    "train.batch_size": (1, None, True, True),
    "train.n_epochs": (0, None, True, True),
    "train.n_epochs_decay": (0, None, True, True),
    "train.max_steps": (1, None, True, True),
    "train.max_minutes": (0, None, False, True),
    "train.lambda_reverse": (0, None, True, True),
    # Adam at a learning rate above 1 only diverges; a huge one overflows float32 before the first step.
    "train.lr": (0, 1, False, True),
    "train.beta1": (0, 1, True, False),
    "train.beta2": (0, 1, True, False),
    "train.lambda_l1": (0, None, True, True),
    "train.lambda_cycle": (0, None, True, True),
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


# ---------------------------------------------------------------------------- YAML and --set values

_TAG = "tag:yaml.org,2002:"
# Plain scalars YAML would read as these, where the config wants text, stay the text as typed.
_NOT_TEXT = {_TAG + t for t in ("int", "float", "bool", "timestamp")}


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping gives one key twice (YAML would keep the last silently)."""


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load`` plus: a key given twice in one mapping is refused (key and lines named), and
    ``1e-3`` is a float (YAML 1.2; YAML 1.1 wants ``1.0e-3``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _TAG + "merge":
                continue  # keys brought in by "<<" may be overridden, as YAML allows
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in first:
                raise DuplicateKeyError(None, None, f"duplicate key {key!r} at line {line} (first at line "
                                                    f"{first[key]})", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                first[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    _TAG + "float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _keep_text(node: yaml.Node, tp: Any) -> None:
    """Retag, in place, the plain scalars of ``node`` that the config type ``tp`` wants as text.

    ``data.subjects: [100307, 01]`` then reads as ``["100307", "01"]`` (not 100307 and 1), and
    ``output_dir: 2024-01-01`` as that name (not a date): what the user typed, for every str key.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            _keep_text(node, rest[0])
    elif dataclasses.is_dataclass(tp) and isinstance(node, yaml.MappingNode):
        hints = typing.get_type_hints(tp)
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in hints:
                _keep_text(value_node, hints[key_node.value])
    elif origin is list and isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _keep_text(item, typing.get_args(tp)[0])
    elif tp in (str, SubjectId) and isinstance(node, yaml.ScalarNode) and node.style is None:
        if node.tag in _NOT_TEXT:
            node.tag = _TAG + "str"


def _type_at(key: str) -> Any:
    """The config type at dotted ``key`` (None inside ``kwargs`` or for an unknown key)."""
    tp: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def parse_yaml(text: str, tp: Any = None) -> Any:
    """Parse one YAML document the way every config text is parsed (files and ``--set`` values).

    Args:
        text: the YAML text.
        tp: the config type the document fills (``Config`` for a file, a field's type for ``--set``);
            its text fields keep the text as typed (:func:`_keep_text`).

    Raises:
        yaml.YAMLError: invalid YAML or a duplicate key (with its line).
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if tp is not None:
            _keep_text(node, tp)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: the problem and where, not the YAML excerpt."""
    if isinstance(e, DuplicateKeyError):
        return f" {e.problem}"
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where} ({getattr(e, 'problem', None) or type(e).__name__})"


def _comment_in(text: str) -> bool:
    """Whether YAML would read part of ``text`` as a comment (a ``#`` after a space, outside quotes)."""
    try:
        tokens = list(yaml.scan(text, Loader=_Loader))
    except yaml.YAMLError:
        return False  # reported when the value is parsed
    spans = [(t.start_mark.index, t.end_mark.index) for t in tokens]
    return any(c == "#" and not any(a <= i < b for a, b in spans) for i, c in enumerate(text))


def _plain_text(text: str) -> bool:
    """Whether ``text`` (a comment included) is at most one plain scalar: a name, a path, a number."""
    try:
        tokens = [t for t in yaml.scan(text, Loader=_Loader)
                  if not isinstance(t, (yaml.StreamStartToken, yaml.StreamEndToken))]
    except yaml.YAMLError:
        return False
    return len(tokens) <= 1 and all(isinstance(t, yaml.ScalarToken) and t.plain for t in tokens)


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b.c=value"`` -> ``("a.b.c", value)``: the one parser of ``--set`` values.

    The value is YAML (``3`` -> int, ``1e-3`` -> float, ``[a, b]`` -> list, ``null`` -> None), read
    for the key's type: a text key keeps the text as typed (``data.subjects=[100307, 01]``,
    ``output_dir=2024-01-01``). A ``#`` is never a comment here: a single value keeps it
    (``output_dir=runs/run #2``), and a list or mapping holding one is refused (quote it).

    Raises:
        ValueError: naming the item: no ``=``, an empty key part, invalid YAML, a ``#`` in a list.
    """
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=100")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or not all(p.strip() for p in key.split(".")):
        raise ValueError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.max_steps=100")
    if raw.strip() == "":
        return key, ""
    if _comment_in(raw):
        if _plain_text(raw):
            return key, raw.strip()
        raise ValueError(f"--set {item!r}: '#' would start a YAML comment and drop the rest of the value; "
                         "quote the item holding it, e.g. 'data.subjects=[\"a #1\", b]'")
    try:
        return key, parse_yaml(raw, _type_at(key))
    except yaml.YAMLError as e:
        what = "" if isinstance(e, DuplicateKeyError) else " invalid YAML value"
        raise ValueError(f"--set {item!r}:{what}{_yaml_problem(e)}") from None


def apply_override(d: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override (:func:`parse_override`) to the nested dict ``d`` in place.

    Keys are checked later by :meth:`Config.from_dict`, except inside the free-form ``kwargs`` dicts
    where new keys are allowed.
    """
    key, value = parse_override(item)
    parts = key.split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        sub = node.get(p) if isinstance(node, dict) else None
        if not isinstance(sub, dict):
            here = ".".join(parts[: i + 1])
            if isinstance(node, dict) and p not in node and ".".join(parts[:i]) not in _FREE_DICTS:
                raise ValueError(f"unknown config key {here!r}; allowed keys: {', '.join(map(str, node))}")
            if isinstance(node, dict) and p in node and sub is not None:
                raise ValueError(f"config key {here!r} is not a section; cannot set {key!r}")
            sub = {}
            node[p] = sub
        node = sub
    node[parts[-1]] = value


def _yaml_floats(obj: Any) -> Any:
    """Convert strings that YAML 1.1 leaves unparsed (``2e-4``) into floats (dict configs from Python)."""
    if isinstance(obj, dict):
        return {k: _yaml_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_yaml_floats(v) for v in obj]
    if isinstance(obj, str):
        s = obj.strip()
        if s and s[0] in "+-.0123456789" and any(c in s.lower() for c in "e"):
            try:
                return float(s)
            except ValueError:
                return obj
    return obj


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in the config file ``path`` (:func:`parse_yaml`).

    Raises:
        FileNotFoundError: no such file. ValueError: a folder, not UTF-8 text (a binary file), invalid
            YAML, a duplicate key (with its line) or not a mapping; each names the file.
    """
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a YAML config file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a YAML text file (byte {e.object[e.start]:#04x} at offset {e.start} "
                         "is not UTF-8 text)") from None
    try:
        d = parse_yaml(text, Config)
    except yaml.YAMLError as e:
        what = "" if isinstance(e, DuplicateKeyError) else " invalid YAML"
        raise ValueError(f"{path}:{what}{_yaml_problem(e)}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(d).__name__}")
    return d


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
