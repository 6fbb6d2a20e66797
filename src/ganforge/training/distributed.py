"""Device choice and the process group, one code path from 1 to N processes.

Under ``torchrun`` the environment carries RANK, LOCAL_RANK, WORLD_SIZE and
MASTER_ADDR/MASTER_PORT; we read them, start NCCL on CUDA or gloo on CPU, and
put each rank on its own device. Without them the context is a single process.

Also here: a synchronised BatchNorm for the CPU (PyTorch's SyncBatchNorm is GPU-only), and
the failure report torchrun's summary shows (the failing rank's own message).
"""

from __future__ import annotations

import atexit
import json
import os
import time
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ganforge.device import select_device
from ganforge.errors import ConfigError, GanforgeError


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

    def shard_weight(self, n: int) -> float:
        """Factor for this rank's batch-mean loss so that DDP's average of the ranks' gradients is the
        gradient of the mean over the global batch of ``n``: ``b_rank * world_size / n`` (1.0 when the
        shards are equal; an uneven last batch gets its exact single-process gradient)."""
        shard = self.shard(n)
        return (shard.stop - shard.start) * self.world_size / n

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

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (a copy; the input is untouched)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average a tensor over ranks (for logging; training maths never needs it)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size


def init_distributed(requested_device: str = "auto") -> DistContext:
    """Read torchrun's environment; start the process group when WORLD_SIZE > 1.

    The group then lives as long as the process (it is shut down at exit), and a later call reuses it:
    re-creating it inside one torchrun job meets the first group's rendezvous keys in torchrun's store
    and can hang, and a rank that fails must not close it before its error message is out.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if world_size > 1 and local_world > 1 and requested_device.startswith("cuda:"):
        raise ConfigError(
            f"--device {requested_device} would put all {local_world} processes of this node on one GPU; "
            "under torchrun use --device cuda (each process takes the GPU of its LOCAL_RANK) and choose the "
            "GPUs with CUDA_VISIBLE_DEVICES"
        )
    device = select_device(requested_device, local_rank)
    if world_size > 1 and requested_device == "auto" and device.type == "mps":
        device = torch.device("cpu")  # no process-group backend for MPS: several processes train on the CPU
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            if torch.cuda.device_count() < local_world:
                raise ConfigError(
                    f"{local_world} processes on this node but only {torch.cuda.device_count()} GPU(s); "
                    f"use --nproc-per-node {torch.cuda.device_count()}"
                )
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        elif device.type == "cpu":
            dist.init_process_group("gloo")
        else:
            raise ConfigError(
                f"distributed training runs on cuda (NCCL) or cpu (gloo), not {device.type}: use --device cpu"
            )
        atexit.register(shutdown_distributed)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (the elastic agent) started, whatever the world size."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor, group: object) -> torch.Tensor:
        ctx.group = group
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return tensor

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on the CPU (over gloo).

    PyTorch's ``nn.SyncBatchNorm`` is GPU-only (its kernels, and DDP refuses it on CPU modules). Here the
    same statistics come from two differentiable all-reduces (sum and count, then the centred sum of
    squares), so gradients flow through them exactly as in one process holding the whole batch.
    Outside training, or in a single process, it is plain BatchNorm. State-dict keys are BatchNorm's.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        x = input.float()  # [B, C, *]
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)  # broadcast a [C] vector over [B, C, *]
        count = x.new_full((1,), x.numel() // x.shape[1])  # values per channel on this rank
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), dist.group.WORLD)  # [C + 1]
        n = totals[-1].detach().clamp(min=1.0)
        mean = totals[:-1] / n  # [C]
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), dist.group.WORLD) / n  # [C], biased
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = var.detach() * n / (n - 1).clamp(min=1.0)
                self.running_mean.mul_(1.0 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased, alpha=factor)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` synchronised over the ranks, sharing its tensors:
    ``nn.SyncBatchNorm`` on GPUs, :class:`CpuSyncBatchNorm` on the CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        converted = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


class DistributedError(GanforgeError):
    """This rank stopped because another rank of the job failed (that rank's message says why)."""


def peer_failure(exc: BaseException) -> bool:
    """True for the error a rank gets when another rank died under it (a collective lost its peer)."""
    if isinstance(exc, GanforgeError):
        return False
    dist_error = getattr(dist, "DistError", None)
    text = str(exc).lower()
    markers = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket closed")
    return (dist_error is not None and isinstance(exc, dist_error)) or any(m in text for m in markers)


def record_failure(exc: BaseException) -> None:
    """Under torchrun: write this rank's error where the elastic agent reads it, so the summary it prints
    at the end names the failing rank's own message as the root cause.

    A user error (``GanforgeError``) is recorded as its one-line message, anything else with its
    traceback. torchrun names the failure with the earliest whole-second stamp the root cause, ties
    going to the lowest rank, and stamps ranks it had to stop itself with the time it stopped them.
    So a rank's own failure is stamped a second early and the consequence of another rank dying a
    second late: the root cause is the rank that failed, not rank 0 or a peer that lost it.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return
    message = f"{type(exc).__name__}: {exc}"
    detail = message if isinstance(exc, GanforgeError) else traceback.format_exc()
    stamp = int(time.time()) + (1 if peer_failure(exc) else -1)
    data = {"message": {"message": message, "extraInfo": {"py_callstack": detail, "timestamp": str(stamp)}}}
    try:
        with open(path, "w") as handle:
            json.dump(data, handle)
    except OSError:  # reporting must never hide the error itself
        pass


def rank_failure(exc: Exception) -> Exception:
    """The error a rank of a torchrun job reports for ``exc`` (itself in a single process).

    A user error gets a ``rank R/W:`` prefix; a collective that failed because a peer died becomes a
    one-line ``DistributedError`` saying so (the traceback would only point at the wrong rank). Either
    way it is recorded for torchrun's summary.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return exc
    rank = os.environ.get("RANK", "0")
    if peer_failure(exc):
        exc = DistributedError(f"rank {rank}/{world}: stopped because another process failed ({exc})")
    elif isinstance(exc, GanforgeError) and not str(exc).startswith("rank "):
        exc.args = (f"rank {rank}/{world}: {exc}", *exc.args[1:])
    record_failure(exc)
    return exc
