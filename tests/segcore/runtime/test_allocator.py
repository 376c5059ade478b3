"""segcore.runtime.allocator: freed blocks are served again without new page faults."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
PROBE = """
import resource, sys
import numpy as np
from segcore.runtime.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = np.ones(64 << 20, np.uint8); del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(64 << 20, np.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    """Minor page faults of a second 64 MB array, after a first one was freed, in a fresh process."""
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    return int(completed.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_a_freed_block_is_reused_without_faulting_its_pages_again():
    # 64 MB is 16384 pages of 4 KB, or 32 huge pages: by default the freed block went back to the system.
    assert page_faults("default") >= 32
    assert page_faults("keep") < 16
