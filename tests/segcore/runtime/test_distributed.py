"""Collectives under an NCCL-like backend: CUDA tensors only, as NCCL, tried on the CPU.

The stand-in is a Gloo process group registered for CUDA devices alone, so PyTorch's own
dispatch refuses a CPU tensor exactly as it does under NCCL ("No backend type associated with
device type cpu"). A validation of the real trainer then runs under the process group that
:func:`segcore.runtime.distributed.setup` would start on GPUs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from coarse_seg.train import STAGE as COARSE
from segcore.runtime import distributed
from segcore.training.config import load_stage_config
from segcore.training.engine import Trainer

ROOT = Path(__file__).resolve().parents[3]
NCCL_LIKE = "nccl_like"


def _gloo_for_cuda_only(store, rank, world_size, timeout):
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


@pytest.fixture
def nccl_like(monkeypatch):
    """``segcore.runtime.distributed`` with the NCCL-like stand-in as its CUDA backend; joins nothing itself."""
    if NCCL_LIKE not in dist.Backend.backend_list:
        dist.Backend.register_backend(NCCL_LIKE, _gloo_for_cuda_only, devices=["cuda"])
    monkeypatch.setattr(distributed, "ACCELERATOR_BACKEND", NCCL_LIKE)
    yield
    distributed.cleanup()


def join(backend: str) -> None:
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def test_the_stand_in_refuses_cpu_tensors_like_nccl(nccl_like):
    join(NCCL_LIKE)
    with pytest.raises(RuntimeError, match="device type cpu"):
        distributed.all_reduce_sum(torch.ones(3))


def test_gpu_process_group_reduces_cpu_tensors_and_objects(nccl_like):
    assert distributed.process_group_backend("cpu") == "gloo"
    join(distributed.process_group_backend("cuda"))
    total = distributed.all_reduce_sum(torch.arange(3.0))
    torch.testing.assert_close(total, torch.arange(3.0))
    assert distributed.gather_objects({"rank": 0}) == [{"rank": 0}]
    distributed.barrier()


def test_validation_runs_under_the_gpu_process_group(nccl_like, tiny_store, tmp_path):
    """The crash the Gloo tests could not see: validation sums are CPU tensors."""
    join(distributed.process_group_backend("cuda"))
    overrides = [f"store={tiny_store}", f"output_dir={tmp_path}"]
    config = load_stage_config(ROOT / "coarse_seg" / "config.tiny.yaml", overrides)
    context = distributed.DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(config, COARSE, context)
    metrics = trainer.validate()
    trainer.save_last()  # gathers RNG states and weight digests
    trainer.close()
    assert math.isfinite(metrics["net0"]["mean_dice"])
    assert (tmp_path / "last.pt").exists()


def test_a_torchrun_process_joins_the_group_even_alone(monkeypatch):
    port = 29_000 + os.getpid() % 1000
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    try:
        context = distributed.setup("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert context.world_size == 1 and not context.distributed  # no DDP wrapper for one process
    finally:
        distributed.cleanup()
    monkeypatch.delenv("MASTER_ADDR")
    distributed.setup("cpu")
    assert not dist.is_initialized()  # a plain start: no group
