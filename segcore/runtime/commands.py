"""The console scripts ``pyproject.toml`` installs, each checking its extra before importing its program.

``python -m segcore.runtime.commands NAME ARGS`` runs one of them the same way (``predict.sh`` does, so
the script and ``segcore-predict`` are one program).

``segcore-serve`` and ``segcore-review`` need the ``[serve]`` extra, ``segcore-prepare`` and
``segcore-train`` the ``[train]`` one. Without it, the command says which modules are missing and
the ``pip install`` line that adds them, instead of failing with an ``ImportError`` traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

EXTRAS = {
    "serve": (
        "fastapi",
        "fastapi_offline",
        "uvicorn",
        "h11",
        "python_multipart",
        "pydantic",
        "pydantic_settings",
        "anyio",
        "httpx",
    ),
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


TORCHRUN_OPTIONS = (
    "--nnodes",
    "--node-rank",
    "--rdzv-endpoint",
    "--rdzv-id",
    "--rdzv-backend",
    "--master-addr",
    "--master-port",
)
"""torchrun's multi-node options (``segcore/runtime/launch.sh`` passes them on): any of them starts torchrun."""


def predict(argv: Sequence[str] | None = None) -> int | None:
    """``segcore-predict`` (= ``predict.sh``): ``predict.batch`` in this process, or with ``--nproc N`` (N > 1)
    or a multi-node option, N processes under torchrun, each taking every N-th case."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given, rest = _without_nproc(argv)
    if not (given.isdigit() and int(given) > 0):
        print(f"predict: --nproc takes a positive whole number, not '{given}'", file=sys.stderr)
        return 2
    nproc = int(given)
    if nproc > 1 or any(arg.split("=")[0] in TORCHRUN_OPTIONS for arg in rest):
        return _predict_under_torchrun(rest, nproc)
    return _program("segcore-predict", "predict.batch:main", None)(rest)


def _without_nproc(argv: list[str]) -> tuple[str, list[str]]:
    """``(N of --nproc N as given, default "1"; the other arguments)``."""
    nproc: str = "1"
    rest: list[str] = []
    arguments = iter(argv)
    for arg in arguments:
        if arg == "--nproc":
            nproc = next(arguments, "")
        elif arg.startswith("--nproc="):
            nproc = arg.partition("=")[2]
        else:
            rest.append(arg)
    return nproc, rest


def _predict_under_torchrun(argv: list[str], nproc: int) -> int:
    """Run the batch as ``nproc`` processes per node under torchrun; its exit status comes from a file,
    since torchrun reports any non-zero exit as a crash with a traceback."""
    from segcore.runtime.launch import launch_command

    handle, status_file = tempfile.mkstemp(prefix="predict-status.")
    os.close(handle)
    try:
        arguments = [*argv, "--nproc", str(nproc), "--status-file", status_file]
        command, environment = launch_command("predict.batch", arguments)
        # Each process gets its share of this machine's cores (unless set); torchrun would give each one thread.
        environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        try:
            code = subprocess.call(command, env=environment)
        except KeyboardInterrupt:
            return 130
        status = Path(status_file).read_text().strip()
        return code or (int(status) if status.isdigit() else 1)
    finally:
        os.unlink(status_file)


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


def export_labels() -> int | None:
    return _program("segcore-export-labels", "review.export:main", None)()


if __name__ == "__main__":
    name = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    commands = {"predict", "serve", "review", "prepare", "train", "evaluate", "export-labels"}
    if name not in commands:
        sys.exit(f"usage: python -m segcore.runtime.commands {'|'.join(sorted(commands))} [ARGS]")
    sys.exit(globals()[name.replace("-", "_")]())
