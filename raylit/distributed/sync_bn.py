"""``DistributedRuntime(sync_batchnorm=True)``: BatchNorm statistics over the global batch of all ranks.

On CUDA this is torch's ``SyncBatchNorm``; on CPU (gloo), where torch's refuses to run, a small implementation
that all-reduces the per-channel sums. The layers are swapped in place when the module is wrapped and the
user's own layer objects are put back at teardown (they share their parameters and buffers with the sync
layers, so they hold the trained values).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

Converted = list[tuple[nn.Module, str, nn.Module]]  # (parent, attribute name, the original layer)


def convert_batchnorm(module: nn.Module, device: torch.device) -> Converted:
    """Replace every BatchNorm layer under ``module`` by a synchronised one; returns what to revert."""
    converted: Converted = []
    for parent in module.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                child, (nn.SyncBatchNorm, _CPUSyncBatchNorm)
            ):
                sync_cls = nn.SyncBatchNorm if device.type == "cuda" else _CPUSyncBatchNorm
                setattr(parent, child_name, _make_sync_bn(sync_cls, child))
                converted.append((parent, child_name, child))
    return converted


def revert_batchnorm(converted: Converted) -> None:
    """Put the original layers back (newest first) and empty ``converted``."""
    # The sync layers share parameter and buffer tensors with the originals, so putting the original
    # module objects back restores the user's classes with the trained values.
    for parent, child_name, original in reversed(converted):
        sync = getattr(parent, child_name)
        original.train(sync.training)
        setattr(parent, child_name, original)
    converted.clear()


def _make_sync_bn(sync_cls: type, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    sync = sync_cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    # Share the very same tensors, so the optimizer (built before or after) and the reverted module see the
    # values the sync layer trains.
    if bn.affine:
        sync.weight, sync.bias = bn.weight, bn.bias
    sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
    sync.num_batches_tracked = bn.num_batches_tracked
    sync.train(bn.training)
    if isinstance(sync, _CPUSyncBatchNorm):
        sync._check_input_dim = bn._check_input_dim  # keep the original's 1d/2d/3d input check
    return sync


class _CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are computed over the batch of *all* ranks (gloo / CPU).

    torch.nn.SyncBatchNorm only runs on accelerators. Here the per-channel sum, sum of squares and count are
    all-reduced (with autograd, so gradients flow through the global statistics), which gives the same
    normalisation as one process holding the whole global batch.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(input)
        C = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        count = torch.tensor([input.numel() / C], dtype=input.dtype, device=input.device)
        stats = torch.cat([input.sum(dims), (input * input).sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        total = stats[-1]
        mean = stats[:C] / total
        var = stats[C : 2 * C] / total - mean * mean  # biased, used to normalise
        shape = [1, C] + [1] * (input.dim() - 2)
        out = (input - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / max(total.item() - 1, 1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        return out


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) whose backward is also an all_reduce(SUM): the gradient of the global sum with respect
    to one rank's contribution is the sum of every rank's upstream gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad
