"""``segcore-train coarse|fine [ARGS]``: train a stage under torchrun, from the repository or an installed copy.

Runs ``launch.sh`` beside this file exactly as ``coarse_seg/run.sh`` and ``fine_seg/run.sh`` source it: one
process checks the arguments (``--preflight``), then ``python -m torch.distributed.run ... -m
<stage>_seg.train ARGS`` starts ``--nproc`` processes. ``PYTHON`` is this interpreter unless set, and
``ROOT`` the folder holding the packages (the repository, or the installation's ``site-packages``), so
nothing depends on where a checkout is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

LAUNCH_SH = Path(__file__).with_name("launch.sh")
STAGE_MODULES = {"coarse": "coarse_seg.train", "fine": "fine_seg.train"}
USAGE = """usage: segcore-train coarse|fine [--config FILE] [--nproc N]
                                  [--nnodes N --node-rank R --rdzv-endpoint HOST:PORT]
                                  [--resume] [--device auto|cpu|cuda] [key=value ...]

Train the coarse or the fine network with torchrun (as coarse_seg/run.sh and fine_seg/run.sh do);
'segcore-train coarse --help' lists the stage's options. Relative paths are taken from the current directory."""


def launch_command(module: str, args: Sequence[str], preflight: bool = False) -> tuple[list[str], dict[str, str]]:
    """``(command, environment)`` that runs ``launch.sh`` starting ``module`` under torchrun with ``args``."""
    environment = {**os.environ, "MODULE": module, "ROOT": str(Path(__file__).resolve().parents[2])}
    environment.setdefault("PYTHON", sys.executable)
    environment.pop("PREFLIGHT", None)
    if preflight:
        environment["PREFLIGHT"] = "1"
    return ["sh", "-eu", str(LAUNCH_SH), *args], environment


def launch(module: str, args: Sequence[str], preflight: bool) -> None:
    """Replace this process by ``launch.sh`` starting ``module`` under torchrun with ``args`` (never returns)."""
    command, environment = launch_command(module, args, preflight)
    os.execvpe(command[0], command, environment)


def train_main(argv: Sequence[str] | None = None) -> int:
    """The ``segcore-train`` command. Returns 2 for a missing or unknown stage (else it does not return)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not argv or argv[0] not in STAGE_MODULES:
        given = f"unknown stage '{argv[0]}'" if argv else "no stage given"
        print(f"{USAGE}\nsegcore-train: {given}: the first argument is coarse or fine", file=sys.stderr)
        return 2
    launch(STAGE_MODULES[argv[0]], argv[1:], preflight=True)
    return 0
