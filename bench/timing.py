"""Timing shared by the benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def call_seconds(work: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``work()``, after one untimed warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times


def in_subprocess(module: str, task: dict[str, Any]) -> dict[str, Any]:
    """Run ``python -m module --worker TASK`` (a fresh process: its peak memory is its own) and
    return the JSON object its last output line holds."""
    command = [sys.executable, "-m", module, "--worker", json.dumps(task)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {task} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])
