"""Reading config text: YAML files and ``--set KEY=VALUE`` items, parsed for the config type they fill.

Every function that needs the config's type takes it as ``root`` (:class:`medsr.config.Config`), so this
module sits below :mod:`medsr.config` and imports nothing of it."""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from medsr.config_values import _FREE_DICTS, SubjectId

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


def _type_at(key: str, root: Any) -> Any:
    """The type at dotted ``key`` of the config dataclass ``root`` (None inside ``kwargs`` or for an unknown key)."""
    tp: Any = root
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


def parse_override(item: str, root: Any) -> tuple[str, Any]:
    """``"a.b.c=value"`` -> ``("a.b.c", value)``: the one parser of ``--set`` values.

    ``root`` is the config dataclass the key lives in. The value is YAML (``3`` -> int, ``1e-3`` -> float, ``[a, b]`` -> list, ``null`` -> None), read
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
        return key, parse_yaml(raw, _type_at(key, root))
    except yaml.YAMLError as e:
        what = "" if isinstance(e, DuplicateKeyError) else " invalid YAML value"
        raise ValueError(f"--set {item!r}:{what}{_yaml_problem(e)}") from None


def apply_override(d: dict[str, Any], item: str, root: Any) -> None:
    """Apply one ``a.b.c=value`` override (:func:`parse_override`) to the nested dict ``d`` in place.

    Keys are checked later by :meth:`Config.from_dict`, except inside the free-form ``kwargs`` dicts
    where new keys are allowed.
    """
    key, value = parse_override(item, root)
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


def read_config_file(path: Path, root: Any) -> dict[str, Any]:
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
        d = parse_yaml(text, root)
    except yaml.YAMLError as e:
        what = "" if isinstance(e, DuplicateKeyError) else " invalid YAML"
        raise ValueError(f"{path}:{what}{_yaml_problem(e)}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(d).__name__}")
    return d
