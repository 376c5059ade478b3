"""YAML configs with ``key=value`` overrides from the command line."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML mapping and apply ``dotted.key=value`` overrides (values parsed as YAML).

    Raises:
        ValueError: a malformed override, or one naming a key the config does not have
            (a typo should fail, not be ignored).
    """
    path = Path(path)
    with path.open() as stream:
        config = yaml.safe_load(stream) or {}
    for override in overrides:
        key, separator, raw = override.partition("=")
        if not separator or not key:
            raise ValueError(f"override {override!r}: expected key=value")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {override!r}: {path} has no section {part!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"override {override!r}: {path} has no key {key!r}")
        node[leaf] = yaml.safe_load(raw)
    return config


def config_hash(values: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able mapping (key order does not matter)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
