"""Atomic file writes: a reader sees the old file or the whole new one, never a half one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "") -> None:
    """Call ``write(temporary)`` for a temporary file beside ``path`` (name ending in ``suffix``),
    then rename it over ``path``: a reader sees the old file or the whole new one, never a half one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`replace_atomically`)."""
    replace_atomically(path, lambda temporary: temporary.write_text(text))
