"""Timing shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def call_seconds(work: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``work()``, after one untimed warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times
