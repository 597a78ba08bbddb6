"""Typed config: YAML loading, --set overrides, strict keys and types, shipped configs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import dataclasses
import typing

import yaml

from medsr.config import Config, load_config, save_config
from medsr.patches import patch_shape, shape_value
from medsr.training import create_mode
from medsr.training.names import check_names
from medsr.training.networks import DataFacts
from medsr.twod.datasets import resolve_dataset

CONFIGS_DIR = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(CONFIGS_DIR.rglob("*.yaml"))


def test_yaml_overrides_and_round_trip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("output_dir: runs/x\ntrain:\n  mode: paired\n  lr: 2e-4\nmodel:\n  kwargs: {width: 16}\n")
    cfg = load_config(p, ["train.max_steps=7", "model.kwargs.depth=4", "data.subjects=[a, b]", "train.lr=1e-3",
                          "data.stride=null"])
    assert cfg.train.mode == "paired" and cfg.train.max_steps == 7 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.kwargs == {"width": 16, "depth": 4} and cfg.data.subjects == ["a", "b"]
    assert cfg.data.stride is None and cfg.train.batch_size == 1  # defaults kept
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg and isinstance(yaml.safe_load((tmp_path / "out.yaml").read_text()), dict)
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("source, overrides, pattern", [
    ({"trian": {}}, [], r"unknown config key 'trian'; allowed keys in top level: output_dir, data, model"),
    ({"train": {"btach_size": 2}}, [], r"'train.btach_size'; allowed keys in train: mode, batch_size"),
    ({}, ["train.max_step=5"], r"'train.max_step'.*allowed keys.*max_steps"),
    ({}, ["trian.max_steps=5"], r"'trian'.*allowed keys"),
    ({"train": {"batch_size": "two"}}, [], r"'train.batch_size': expected int, got str 'two'"),
    ({"train": {"batch_size": 1.5}}, [], r"'train.batch_size': expected int"),
    ({"train": {"deterministic": "yes"}}, [], r"'train.deterministic': expected bool"),
    ({"data": {"subjects": "s1"}}, [], r"'data.subjects': expected list of subject IDs or null"),
    ({"data": {"sampling": "everywhere"}}, [], r"'data.sampling': 'everywhere' is not one of grid, random, both"),
    ({"train": {"gan_loss": "wgan"}}, [], r"'train.gan_loss'.*vanilla, lsgan"),
    ({"model": {"kwargs": [1]}}, [], r"'model.kwargs': expected mapping"),
    ({"train": 3}, [], r"section 'train': expected a mapping"),
    ({}, ["train.lr"], r"expected KEY=VALUE"),
])
def test_bad_configs_name_the_key(source, overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config(source, overrides)


def _literal_fields() -> list[tuple[str, tuple[str, ...]]]:
    """(dotted key, allowed values) of every ``Literal``-annotated config field."""
    found = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        for name, tp in typing.get_type_hints(cls).items():
            if typing.get_origin(tp) is typing.Literal:
                found.append((f"{section.name}.{name}", typing.get_args(tp)))
    return found


LITERAL_FIELDS = _literal_fields()


def test_the_choice_fields_are_literals():
    keys = {k for k, _ in LITERAL_FIELDS}
    assert {"data.sampling", "data.norm_stats", "data.direction", "train.gan_loss", "train.loss_region",
            "train.lr_decay", "train.precision"} <= keys


@pytest.mark.parametrize("key, allowed", LITERAL_FIELDS, ids=[k for k, _ in LITERAL_FIELDS])
def test_every_choice_field_rejects_a_wrong_value_by_name(key, allowed):
    """A value outside the field's Literal, or of the wrong type, fails with one line naming the key; every
    allowed value is accepted."""
    section, name = key.split(".")
    with pytest.raises(ValueError, match=rf"^config key '{key}': 'nonsense' is not one of {', '.join(allowed)}$"):
        load_config({section: {name: "nonsense"}})
    with pytest.raises(ValueError, match=rf"^config key '{key}': expected str, got int 3$"):
        load_config({}, [f"{key}=3"])
    for value in allowed:  # (fp16 off CUDA is refused later, by the trainer, not by the config)
        assert getattr(getattr(load_config({section: {name: value}}), section), name) == value


@pytest.mark.parametrize("item, key, value", [
    ("data.subjects=[100307, 100408]", "data.subjects", ["100307", "100408"]),  # HCP IDs are numbers
    ("data.subjects=[01, 007, 0x1F, 1e5, yes]", "data.subjects", ["01", "007", "0x1F", "1e5", "yes"]),
    ("output_dir=runs/run #2", "output_dir", "runs/run #2"),  # a '#' is never a comment in --set
    ("output_dir=#2", "output_dir", "#2"),
    ("output_dir=2024-01-01", "output_dir", "2024-01-01"),  # not a date
    ("output_dir=1e-3", "output_dir", "1e-3"),
    ("data.manifest=null", "data.manifest", None),
    ("train.lr=1e-3", "train.lr", 1e-3),
    ("train.lr=5E-4", "train.lr", 5e-4),
    ("model.kwargs.width=16", "model.kwargs", {"in_channels": "auto", "width": 16}),
])
def test_set_values_are_what_was_typed(item, key, value):
    cfg = load_config({}, [item])
    section, _, name = key.partition(".")
    got = getattr(getattr(cfg, section), name) if name else getattr(cfg, section)
    assert got == value


def test_yaml_files_keep_typed_ids_and_refuse_duplicate_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  subjects: [100307, 0100408]\ntrain:\n  lr: 1e-3\n")
    cfg = load_config(p)
    assert cfg.data.subjects == ["100307", "0100408"] and cfg.train.lr == pytest.approx(1e-3)
    assert load_config({"data": {"subjects": [100307]}}).data.subjects == ["100307"]  # Python ints too
    p.write_text("train:\n  lr: 1e-3\n  seed: 1\n  lr: 2e-3\n")
    with pytest.raises(ValueError, match=r"c.yaml: duplicate key 'lr' at line 4 \(first at line 2\)$"):
        load_config(p)
    p.write_text("train:\n  <<: {lr: 1.0e-3, seed: 3}\n  lr: 2.0e-3\n")  # a merged key may be overridden
    cfg = load_config(p)
    assert cfg.train.lr == pytest.approx(2e-3) and cfg.train.seed == 3


@pytest.mark.parametrize("source, overrides, pattern", [
    ({}, ["data.subjects=[a, b, a]"], r"^config key 'data.subjects': subject a is listed twice$"),
    ({}, ["data.subjects=[../x]"], r"^config key 'data.subjects': subject name '../x' contains a path separator"),
    ({"data": {"subjects": [True]}}, [], r"^config key 'data.subjects': subject ID True is not a name or a number"),
    ({}, ["data.subjects=[a #1, b]"], r"'#' would start a YAML comment"),
    ({}, ["data.subjects=[a"], r"^--set 'data.subjects=\[a': invalid YAML value"),
    ({}, ["=3"], r"expected KEY=VALUE with a dotted key"),
    ({}, ["train..lr=3"], r"expected KEY=VALUE with a dotted key"),
    ({}, ["train.seed=-1"], r"'train.seed': -1 is out of range; allowed: in \[0, 4294967295\]"),
    ({}, ["train.seed=4294967296"], r"'train.seed'"),
    ({}, ["train.lr=1e300"], r"'train.lr': 1e\+300 is out of range; allowed: in \(0, 1\]"),
])
def test_bad_values_name_what_was_typed(source, overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config(source, overrides)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml: invalid YAML"):
        load_config(bad)
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\xd0\x00\xff")
    with pytest.raises(ValueError, match=r"model.pt: not a YAML text file"):
        load_config(binary)
    with pytest.raises(ValueError, match=r"is a folder, not a YAML config file"):
        load_config(tmp_path)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    """Every shipped config names a registered data type, mode, model and discriminator, and its
    networks build from its kwargs (as the Trainer builds them, with the data's channel count)."""
    cfg = load_config(path)
    _check_buildable(cfg)


def _check_buildable(cfg: Config) -> None:
    check_names(cfg)  # registered data type, mode, model and discriminator
    if cfg.data.type == "aligned2d":
        resolve_dataset(cfg.data)  # data.dataset is maps | cityscapes (or told by the folder name)
    channels = 3 if cfg.data.type == "aligned2d" else 6  # RGB images; the 6 DTI tensor components
    facts = DataFacts(channels=channels, factor=2, patch_size=shape_value(patch_shape(cfg.data.patch_size, 2)))
    nets = create_mode(cfg).build_networks(facts)  # as the Trainer builds them
    assert all(isinstance(n.module, torch.nn.Module) for n in nets.values())


@pytest.mark.parametrize("key, value, error, pattern", [
    ("model.name", "rev_srcnn3", ValueError, "'model.name': unknown name 'rev_srcnn3'"),
    ("discriminator.name", "patchgan", ValueError, "'discriminator.name': unknown name"),
    ("train.mode", "pairedd", ValueError, "'train.mode': unknown name"),
    ("data.type", "patches", ValueError, "'data.type': unknown name"),
    ("data.dataset", "map", ValueError, "'data.dataset'"),
    ("model.kwargs.widht", 8, ValueError, "'model.kwargs': .*widht"),
])
def test_a_misspelt_name_in_a_shipped_config_fails(key, value, error, pattern):
    with pytest.raises(error, match=pattern):
        _check_buildable(load_config(CONFIGS_DIR / "2d" / "quick_maps.yaml", [f"{key}={value}"]))


@pytest.mark.parametrize("key, value", [("model.name", "rev_srcnn3"), ("discriminator.name", "patchgan"),
                                        ("train.mode", "pairedd"), ("data.type", "patches")])
def test_medsr_train_names_an_unknown_registry_name(key, value, tmp_path, capsys):
    """Registry names are checked where the config is used: ``medsr train`` refuses it in one line."""
    from pipelines.cli import main

    out = tmp_path / "run"
    args = ["train", str(CONFIGS_DIR / "quick_paired.yaml"), "--set", f"{key}={value}", f"output_dir={out}"]
    assert main(args) == 2
    assert f"config key '{key}': unknown name '{value}'; allowed:" in capsys.readouterr().err
    assert not out.exists()


def test_table3_has_the_twelve_paper_rows():
    rows = sorted((Path(__file__).parents[1] / "configs" / "table3").glob("*.yaml"))
    seen = set()
    for p in rows:
        cfg = load_config(p)
        if cfg.data.type != "patches3d":
            continue
        assert cfg.data.patch_size == 24 and cfg.train.batch_size == 1
        assert cfg.train.n_epochs == 20 and cfg.train.n_epochs_decay == 0  # 20 epochs at a fixed LR
        depth = cfg.model.kwargs.get("depth", 0) if cfg.model.name == "rev_srcnn3d" else 0
        seen.add((cfg.train.mode, depth))
    assert seen == {(m, r) for m in ("paired_l1", "paired", "unpaired") for r in (0, 2, 4, 8)}
