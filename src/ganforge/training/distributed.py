"""Device choice and the process group, one code path from 1 to N processes.

Under ``torchrun`` the environment carries RANK, LOCAL_RANK, WORLD_SIZE and
MASTER_ADDR/MASTER_PORT; we read them, start NCCL on CUDA or gloo on CPU, and
put each rank on its own device. Without them the context is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ganforge.errors import ConfigError


def select_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: cuda, then mps, then cpu. An explicit request that cannot be met is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested} asked for CUDA, but no CUDA GPU is visible; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {requested} asked for MPS, which is not available here; use --device cpu")
    return device


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of a global batch of ``n`` (as ``torch.tensor_split`` cuts it)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank (so all ranks stop at the same step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average a tensor over ranks (for logging; training maths never needs it)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size


def init_distributed(requested_device: str = "auto") -> DistContext:
    """Read torchrun's environment; start the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            if torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", world_size)):
                raise ConfigError(
                    f"{os.environ.get('LOCAL_WORLD_SIZE', world_size)} processes on this node but only "
                    f"{torch.cuda.device_count()} GPU(s); use --nproc-per-node {torch.cuda.device_count()}"
                )
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        elif device.type == "cpu":
            dist.init_process_group("gloo")
        else:
            raise ConfigError(f"distributed training supports cuda and cpu devices, not {device.type}")
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
