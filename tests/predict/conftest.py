"""Fixtures shared by the batch command's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from testkit import write_tiny_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Tiny random nets (``test_batch.py`` has its own, with a notice)."""
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def one_thread():
    """In-process runs on one thread, like the predict.sh runs here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
