"""A tiny supervised coarse net trained once by the real command, for the methods that start from one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run_tiny(store: Path, out: Path, *overrides: str) -> None:
    """``sh coarse_seg/run.sh --nproc 1`` with the tiny config, one epoch, on ``store``."""
    result = subprocess.run(
        ["sh", str(ROOT / "coarse_seg" / "run.sh"), "--nproc", "1", "--config",
         str(ROOT / "coarse_seg" / "config.tiny.yaml"), f"store={store}", f"output_dir={out}",
         "train.epochs=1", "train.val_every=1", *overrides],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def tiny_supervised(tiny_store, tmp_path_factory) -> Path:
    """``last.pt`` of one supervised tiny coarse net."""
    out = tmp_path_factory.mktemp("tiny_supervised")
    run_tiny(tiny_store, out)
    return out / "last.pt"
