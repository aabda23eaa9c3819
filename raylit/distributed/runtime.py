"""``DistributedRuntime``: the ``Runtime`` the loop uses when several processes train together.

It works over a torch.distributed process group that someone else has initialised (Ray Train does it on every
worker before our code runs; tests do it by hand). Nothing here imports Ray.

What it adds over the single-process ``Runtime``:

* collectives (reduce / all_gather / broadcast / barrier) on the right device for the backend
  (gloo: CPU tensors, nccl: CUDA tensors);
* DDP wrapping, with *forward redirection*: DDP only registers its gradient hooks inside ``DDP.forward``, but
  the loop wants to call ``training_step``, not ``forward``. ``call_step`` temporarily points the module's
  ``forward`` at the step method and calls the DDP wrapper, so the step runs "as" the forward pass;
* ``no_sync`` for gradient-accumulation steps;
* ``sync_batchnorm`` (sync_bn.py), converted back at teardown;
* data for this rank (``setup_dataloader``): a loader with a ``shard(runtime, stage, shuffle)`` method
  (``raylit.runtime.Shardable``, e.g. ``RayDataLoader``: a ``streaming_split`` over the ranks) splits itself;
  a DataLoader is rebuilt with a sampler that gives this rank its share (samplers.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raylit.distributed.elastic import elastic_train_loader
from raylit.distributed.samplers import shard_loader
from raylit.distributed.sync_bn import Converted, convert_batchnorm, revert_batchnorm
from raylit.runtime import Runtime, Shardable
from raylit.utilities.rank_zero import rank_zero_warn

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "mean": dist.ReduceOp.SUM,
    "avg": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
}
_REDUCE_FNS = {torch.sum: "sum", torch.mean: "mean", torch.max: "max", torch.min: "min"}

# Steps that go through the DDP wrapper. predict_step does not: its shards may have different lengths, and a
# DDP forward can be a collective (buffer broadcast), which would then wait for a rank that has finished.
_DDP_STEPS = ("training_step", "validation_step", "test_step")


class DistributedRuntime(Runtime):
    """A ``Runtime`` over an initialised torch.distributed default process group.

    Ranks default to what torch.distributed reports; ``local_rank`` / ``node_rank`` / ``num_nodes`` come from
    the launcher (Ray knows which node a worker is on, torch.distributed does not).
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        local_rank: int = 0,
        node_rank: int = 0,
        num_nodes: int = 1,
        sync_batchnorm: bool = False,
        use_distributed_sampler: bool = True,
        find_unused_parameters: bool = False,
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedRuntime needs an initialised torch.distributed process group")
        super().__init__(device)
        self.global_rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = local_rank
        self.node_rank = node_rank
        self.num_nodes = num_nodes
        self.sync_batchnorm = sync_batchnorm
        self.use_distributed_sampler = use_distributed_sampler
        self.find_unused_parameters = find_unused_parameters
        self._backend = dist.get_backend()
        self._converted_bn: Converted = []

    # --- collectives ------------------------------------------------------------------------------------
    @property
    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo is happiest with CPU ones.
        return self.device if self._backend == "nccl" else torch.device("cpu")

    def barrier(self, name: str | None = None) -> None:
        if self._backend == "nccl" and self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def reduce(self, tensor: torch.Tensor | float, reduce_fx: str | Callable = "mean") -> torch.Tensor:
        """All-reduce ``tensor`` with "mean" (also "avg"), "sum", "max" or "min" (or torch.mean / .sum /
        .max / .min). Returns a new tensor on the input's device; the input is not modified."""
        op_name = _REDUCE_FNS.get(reduce_fx, reduce_fx) if callable(reduce_fx) else str(reduce_fx).lower()
        if op_name not in _REDUCE_OPS:
            raise ValueError(f"reduce_fx={reduce_fx!r} is not supported; use one of {sorted(_REDUCE_OPS)}")
        tensor = torch.as_tensor(tensor)
        source_device = tensor.device
        out = tensor.detach().clone().to(self._comm_device)
        if op_name in ("mean", "avg") and not out.is_floating_point():
            out = out.float()
        dist.all_reduce(out, op=_REDUCE_OPS[op_name])
        if op_name in ("mean", "avg"):
            out = out / self.world_size
        return out.to(source_device)

    def all_gather(self, tensor: torch.Tensor, sync_grads: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Stack ``tensor`` from every rank along a new leading dim of size world_size.

        With ``sync_grads=True`` gradients flow back to each rank's input. If the ranks hold tensors of
        different shapes (e.g. per-rank outputs of an exactly-once evaluation shard), a list of the
        per-rank tensors is returned instead, since they cannot be stacked.
        """
        tensor = torch.as_tensor(tensor)
        source_device = tensor.device
        local = tensor.to(self._comm_device).contiguous()
        shapes = self._all_gather_shapes(local)
        if any(s != shapes[0] for s in shapes):
            _warn_once(
                "all_gather: ranks hold tensors of different shapes "
                f"{[tuple(s) for s in shapes]}; returning a list of per-rank tensors"
            )
            return [t.to(source_device) for t in self._all_gather_uneven(local, shapes)]
        if sync_grads:
            gathered = _AllGatherGrad.apply(local)
        else:
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(parts, local)
            gathered = torch.stack(parts)
        return gathered.to(source_device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (pickled), in rank order."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self._comm_device if self._backend == "nccl" else None)
        return box[0]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        votes = self.reduce(torch.tensor(int(bool(decision))), "sum")
        return bool(votes.item() == self.world_size) if all else bool(votes.item() > 0)

    def _all_gather_shapes(self, local: torch.Tensor) -> list[torch.Size]:
        dims = torch.tensor([local.dim()], device=self._comm_device)
        all_dims = [torch.empty_like(dims) for _ in range(self.world_size)]
        dist.all_gather(all_dims, dims)
        max_dim = int(max(d.item() for d in all_dims))
        shape = torch.full((max_dim + 1,), -1, dtype=torch.long, device=self._comm_device)
        shape[0] = local.dim()
        shape[1 : local.dim() + 1] = torch.tensor(local.shape, dtype=torch.long)
        shapes = [torch.empty_like(shape) for _ in range(self.world_size)]
        dist.all_gather(shapes, shape)
        return [torch.Size(s[1 : int(s[0]) + 1].tolist()) for s in shapes]

    def _all_gather_uneven(self, local: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
        # Flatten, pad every rank to the largest element count, gather, then cut and reshape each part.
        numels = [math.prod(s) for s in shapes]
        padded = torch.zeros(max(numels), dtype=local.dtype, device=local.device)
        padded[: local.numel()] = local.reshape(-1)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return [p[:n].reshape(s) for p, n, s in zip(parts, numels, shapes)]

    # --- model ----------------------------------------------------------------------------------------------
    def wrap_model(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """Convert BatchNorm layers if ``sync_batchnorm`` and wrap ``module`` in DDP. A module with no
        trainable parameter is returned as is (DDP refuses it, and there is nothing to synchronise)."""
        if self.sync_batchnorm:
            self._converted_bn += convert_batchnorm(module, self.device)
        if not any(p.requires_grad for p in module.parameters()):
            return module
        use_device_ids = self.device.type == "cuda"
        return DistributedDataParallel(
            module,
            device_ids=[self.device] if use_device_ids else None,
            find_unused_parameters=find_unused_parameters or self.find_unused_parameters,
        )

    def unwrap_model(self, wrapped: nn.Module) -> nn.Module:
        return wrapped.module if isinstance(wrapped, DistributedDataParallel) else wrapped

    def call_step(self, wrapped: nn.Module, module: nn.Module, name: str, *args: Any) -> Any:
        if not isinstance(wrapped, DistributedDataParallel) or name not in _DDP_STEPS:
            return getattr(module, name)(*args)
        return _redirected_forward(wrapped, module, name, *args)

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        # On accumulation steps backward only adds into .grad locally; the all-reduce happens once, on the
        # backward of the step that calls optimizer.step (DDP then reduces the accumulated sum).
        return wrapped.no_sync() if isinstance(wrapped, DistributedDataParallel) else nullcontext()

    def teardown(self) -> None:
        revert_batchnorm(self._converted_bn)

    # --- data -----------------------------------------------------------------------------------------------
    def setup_dataloader(self, loader: Any, stage: str, *, shuffle: bool | None = None) -> Any:
        if stage == "train" and self.elastic is not None:
            return elastic_train_loader(loader, self.elastic, shuffle)  # the same global batches at any W
        if not self.use_distributed_sampler or self.world_size == 1:
            return loader
        if isinstance(loader, (list, tuple)):
            return type(loader)(self.setup_dataloader(x, stage, shuffle=shuffle) for x in loader)
        if isinstance(loader, dict):
            return {k: self.setup_dataloader(v, stage, shuffle=shuffle) for k, v in loader.items()}
        if isinstance(loader, Shardable):
            return loader.shard(self, stage, shuffle)  # e.g. RayDataLoader's streaming_split (raylit/ray_data.py)
        return shard_loader(loader, stage, shuffle, self.world_size, self.global_rank)  # see samplers.py


# --- forward redirection -----------------------------------------------------------------------------------
def _redirected_forward(wrapped: DistributedDataParallel, module: nn.Module, name: str, *args: Any) -> Any:
    """Call ``module.<name>(*args)`` from inside ``wrapped.forward``.

    DDP prepares its reducer in ``forward`` (and, with find_unused_parameters, inspects the forward's output),
    so the step must run inside it. The patched ``forward`` puts the original back *before* calling the step,
    because the step itself usually calls ``self(x)``, i.e. the real forward.
    """
    had_instance_forward = "forward" in module.__dict__
    saved = module.__dict__.get("forward")

    def restore() -> None:
        if had_instance_forward:
            module.__dict__["forward"] = saved
        else:
            module.__dict__.pop("forward", None)

    def step_as_forward(*a: Any, **kw: Any) -> Any:
        restore()
        return getattr(module, name)(*a, **kw)

    module.__dict__["forward"] = step_as_forward
    try:
        return wrapped(*args)
    finally:
        restore()


class _AllGatherGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        rank_zero_warn(message)
