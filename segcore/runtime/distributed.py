"""Process-group set-up, read once from torchrun's variables.

Launch: ``torchrun --nproc-per-node N -m coarse_seg.train ...`` (``sh coarse_seg/run.sh --nproc N``).
On GPUs the process group has two backends, NCCL for CUDA tensors and Gloo for CPU tensors
(``"cpu:gloo,cuda:nccl"``): NCCL alone refuses a CPU tensor ("No backend type associated with
device type cpu"), and some collectives carry CPU tensors by nature (validation sums built from
``.cpu()`` values, pickled objects). On CPUs, Gloo. A process started by torchrun joins the
group even alone (``--nproc 1``), so one process takes the same collective paths as many; a
plain ``python -m`` start (no torchrun variables) is a world of one without a process group.

Every collective of the project goes through this module: :func:`all_reduce_sum` (validation
sums), :func:`gather_objects` (checkpoint RNG states and weight digests, UIF scores, predict's
errors and summary), :func:`barrier` (UIF). DDP's gradient all-reduce runs inside
``DistributedDataParallel`` on the model's device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU; ``cuda`` fails clearly without one."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but CUDA is not available on this machine")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


ACCELERATOR_BACKEND = "nccl"
"""The backend of CUDA tensors (tests put an NCCL-like stand-in here)."""


def process_group_backend(device_type: str) -> str:
    """The ``init_process_group`` backend for processes on ``device_type``: Gloo on CPUs; on GPUs
    NCCL for CUDA tensors and Gloo for CPU ones, so no tensor meets a backend that refuses it."""
    return f"cpu:gloo,cuda:{ACCELERATOR_BACKEND}" if device_type == "cuda" else "gloo"


def configure_device(device: torch.device) -> None:
    """Make ``device`` this process's GPU before any CUDA work, and let cuDNN pick the fastest
    convolution algorithms (the networks' input sizes are fixed, so it tunes once). No-op on CPUs."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True


def setup(device: str = "auto", timeout_minutes: float = 30.0) -> DistributedContext:
    """Read RANK / LOCAL_RANK / WORLD_SIZE and join the process group under torchrun (any world size)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    resolved = resolve_device(device, local_rank)
    configure_device(resolved)
    launched = world_size > 1 or "MASTER_ADDR" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group(process_group_backend(resolved.type), timeout=timedelta(minutes=timeout_minutes))
    return DistributedContext(rank, local_rank, world_size, resolved)


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place), on the CPU or the GPU; a no-op without a process group."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(value):
    """Every rank's ``value``, in rank order (a list of one for a world of one)."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait for every rank; a no-op for a world of one."""
    if dist.is_initialized():
        dist.barrier()
