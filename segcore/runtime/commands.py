"""The console scripts ``pyproject.toml`` installs, each checking its extra before importing its program.

``segcore-serve`` and ``segcore-review`` need the ``[serve]`` extra, ``segcore-prepare`` and
``segcore-train`` the ``[train]`` one. Without it, the command says which modules are missing and
the ``pip install`` line that adds them, instead of failing with an ``ImportError`` traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

EXTRAS = {
    "serve": ("fastapi", "uvicorn", "h11", "python_multipart", "pydantic", "pydantic_settings", "anyio", "httpx"),
    "train": ("lmdb", "yaml", "pydantic", "tensorboard"),
}
"""The modules each extra of ``pyproject.toml`` brings (import names, not distribution names)."""


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` this environment cannot import."""
    return [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def _program(command: str, target: str, extra: str | None) -> Callable[[], int | None]:
    """``module:function`` of ``target``, imported once ``extra``'s modules are known to be there."""
    if extra is not None and (missing := missing_modules(extra)):
        print(
            f"{command}: this command needs the [{extra}] extra; missing: {', '.join(missing)}. "
            f"Install it with: pip install 'segcore[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(1)
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def predict() -> int | None:
    return _program("segcore-predict", "predict.batch:main", None)()


def serve() -> int | None:
    return _program("segcore-serve", "inference_server.__main__:main", "serve")()


def review() -> int | None:
    return _program("segcore-review", "review.__main__:main", "serve")()


def prepare() -> int | None:
    return _program("segcore-prepare", "data_prepare.__main__:main", "train")()


def train() -> int | None:
    return _program("segcore-train", "segcore.runtime.launch:train_main", "train")()


def evaluate() -> int | None:
    return _program("segcore-evaluate", "segcore.evaluate.folders:main", None)()
