"""bench/gpu_check.sh: its dry run (what a CPU machine can check of it) passes and can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.gpu_check import Step, check_exists, steps

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_finds_every_command_and_option(tmp_path):
    result = subprocess.run(
        ["sh", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(steps(sys.executable, tmp_path))} steps, 0 with problems" in result.stdout
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_dry_run_reports_a_missing_option_module_or_script():
    python = sys.executable
    assert check_exists(Step("x", (python, "-m", "bench.networks", "--no-such-option"), 1)) == [
        "bench.networks has no option --no-such-option"
    ]
    assert check_exists(Step("x", (python, "-m", "bench.no_such_bench"), 1)) == [
        "module bench.no_such_bench is not importable"
    ]
    assert check_exists(Step("x", ("sh", "no_such_stage/run.sh"), 1)) == ["no_such_stage/run.sh does not exist"]
