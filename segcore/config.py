"""YAML configs: a base file, what differs from it, ``key=value`` overrides, keys checked against a schema.

A config file may name another as its ``base`` (a path relative to the file's own folder), and
then holds only what differs from it::

    # coarse_seg/config.tiny.yaml
    base: config.yaml
    input_size: [32, 32, 32]
    network:
      init_args: {base_channels: 8, depth: 3, max_channels: 32}

The file's mappings are merged into the base's key by key, at every depth (``network.arch`` above
stays the base's); any other value (a number, a string, a list, ``null``) replaces the base's
whole. A base may name its own base; a loop is refused. ``key=value`` overrides (values parsed
as YAML) apply last.

With a ``schema`` (a dataclass whose fields are the config's keys and whose dataclass-typed fields
are its sections, e.g. :class:`segcore.training.config.StageConfig`), every key of every file
and every override is checked against the schema, not against the files: a file may leave out
whatever equals the schema's default, an override may set a key no file names, and a misspelled
key is refused naming the file (or the override), the dotted key and the valid keys near it.
A field typed as a ``dict`` holds free keys (its owner checks them). Without a schema, an
override must name a key the files already hold.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

BASE_KEY = "base"
"""The top-level key that names a file's base config."""


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), schema: type | None = None) -> dict[str, Any]:
    """Read a YAML mapping and its bases (:func:`read_config`), then apply ``dotted.key=value`` overrides.

    Args:
        path: the config file.
        overrides: ``dotted.key=value`` strings, values parsed as YAML (``null``, ``[1, 2]``, ``off``).
        schema: a dataclass the keys are checked against (see the module docstring); without
            one, an override must name a key the files hold.

    Returns:
        The merged mapping, without ``base``.

    Raises:
        ValueError: a malformed file or override, or one naming a key the schema (or, without
            one, the config) does not have: a typo should fail, not be ignored.
        OSError: a file that cannot be read.
    """
    config = read_config(path, schema)
    for override in overrides:
        key, separator, raw = override.partition("=")
        if not separator or not key:
            raise ValueError(f"override {override!r}: expected key=value")
        try:
            set_key(config, key, yaml.safe_load(raw), schema)
        except ValueError as error:
            raise ValueError(f"override {override!r}: {error}") from None
    return config


def read_config(path: str | os.PathLike, schema: type | None = None) -> dict[str, Any]:
    """The mapping of a YAML file merged onto its ``base`` chain, each file's keys checked against ``schema``.

    Raises:
        ValueError: a file that is not a mapping, a missing base, a ``base`` loop, a key outside ``schema``.
        OSError: a file that cannot be read.
    """
    chain: list[tuple[Path, dict[str, Any]]] = []
    path = Path(path)
    while True:
        if any(path.resolve() == seen.resolve() for seen, _ in chain):
            raise ValueError(f"{chain[0][0]}: base loop: {' -> '.join(str(p) for p, _ in chain)} -> {path}")
        with path.open() as stream:
            values = yaml.safe_load(stream)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of keys to values, got {type(values).__name__}")
        base = values.pop(BASE_KEY, None)
        if schema is not None:
            check_keys(values, schema, source=str(path))
        chain.append((path, values))
        if base is None:
            break
        if not isinstance(base, str):
            raise ValueError(f"{path}: base: expected a file name, got {base!r}")
        if not (path.parent / base).is_file():
            raise ValueError(f"{path}: base: {path.parent / base}: no such file")
        path = path.parent / base
    config: dict[str, Any] = {}
    for _, values in reversed(chain):
        config = merge(config, values)
    return config


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied: mappings merged key by key, any other value replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_key(config: dict[str, Any], key: str, value: Any, schema: type | None = None) -> None:
    """Set ``config[a][b][c] = value`` for ``key`` ``"a.b.c"``, making the sections the schema has.

    Raises:
        ValueError: ``key`` is not in ``schema`` (without one: not already in ``config``).
    """
    *parents, leaf = key.split(".")
    if schema is not None:
        check_keys(_nest(key, value), schema)
    node = config
    for depth, part in enumerate(parents):
        if schema is None and not isinstance(node.get(part), dict):
            raise ValueError(f"the config has no section {'.'.join(parents[: depth + 1])!r}")
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if schema is None and leaf not in node:
        raise ValueError(f"the config has no key {key!r}")
    node[leaf] = value


def check_keys(values: Mapping[str, Any], schema: type, source: str = "", prefix: str = "") -> None:
    """Refuse a key of ``values`` (nested mappings included) that is not a field of ``schema``.

    Raises:
        ValueError: ``"<source>: <dotted.key>: unknown key; did you mean ...? (<section>: <its keys>)"``.
    """
    fields = schema_fields(schema)
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            section = prefix.rstrip(".") or "top level"
            where = f"{source}: " if source else ""
            guess = did_you_mean(str(key), list(fields), prefix)
            raise ValueError(f"{where}{dotted}: unknown key; {guess}({section}: {', '.join(fields)})")
        if dataclasses.is_dataclass(fields[key]) and isinstance(value, Mapping):
            check_keys(value, fields[key], source, prefix=f"{dotted}.")


def did_you_mean(key: str, valid: Sequence[str], prefix: str = "") -> str:
    """``"did you mean <prefix><the nearest valid keys>? "``, or ``""`` when none is near."""
    near = difflib.get_close_matches(key, valid, n=2, cutoff=0.6)
    return f"did you mean {' or '.join(prefix + name for name in near)}? " if near else ""


def schema_fields(schema: type) -> dict[str, Any]:
    """A dataclass's field names -> their type hints, in declaration order."""
    hints = typing.get_type_hints(schema)
    return {field.name: hints[field.name] for field in dataclasses.fields(schema)}


def _nest(key: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", v`` -> ``{"a": {"b": {"c": v}}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def config_hash(values: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able mapping (key order does not matter)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
