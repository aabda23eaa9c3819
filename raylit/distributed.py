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
* ``sync_batchnorm`` (torch's SyncBatchNorm on CUDA; a small all-reduce implementation on CPU, where torch's
  refuses to run), converted back at teardown;
* distributed sampler injection: the user's DataLoader is rebuilt with the same arguments and a sampler that
  gives this rank its share of the data.

Sampling policy (``setup_dataloader``), as Lightning does unless noted:

* train: ``DistributedSampler`` (shuffled unless ``shuffle=False``, seeded from ``PL_GLOBAL_SEED``; the loop
  calls ``set_epoch``). Each rank gets ``ceil(n / world_size)`` samples; the last few indices are repeated to
  even the shards out, so every rank takes the same number of optimizer steps.
* val / test: **every sample exactly once** when that still gives every rank the same number of batches
  (ranks take indices ``rank, rank + W, ...``). Equal batch counts matter: a ``self.log(..., sync_dist=True,
  on_step=True)`` in ``validation_step`` is a collective per batch, and a rank with one batch more would wait
  forever. When the counts would differ, we fall back to Lightning's behaviour (a non-shuffled
  ``DistributedSampler`` that pads with repeated samples) and warn that the metric counts a few samples twice.
* a loader with a ``shard(runtime, stage, shuffle)`` method (``raylit.runtime.Shardable``) splits itself; Ray
  Data's ``RayDataLoader`` does a ``streaming_split`` over the ranks, equal row counts except for predict
  (raylit/ray_data.py).
* predict: every sample exactly once, in contiguous chunks (rank 0 gets the first chunk, ...), so
  concatenating the ranks' predictions in rank order restores the dataset order. Predict steps are not
  collectives, so uneven chunk lengths are fine.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from raylit.runtime import Runtime, Shardable
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_only, rank_zero_warn

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
        self._converted_bn: list[tuple[nn.Module, str, nn.Module]] = []
        # Rank-zero helpers read this module-level attribute; set it now that the rank is known (the env vars
        # they read at import time may not have been set yet when raylit was first imported on a worker).
        rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]

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
            self._convert_batchnorm(module)
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
        self._revert_batchnorm()

    def _convert_batchnorm(self, module: nn.Module) -> None:
        for parent in module.modules():
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                    child, (nn.SyncBatchNorm, _CPUSyncBatchNorm)
                ):
                    sync_cls = nn.SyncBatchNorm if self.device.type == "cuda" else _CPUSyncBatchNorm
                    setattr(parent, child_name, _make_sync_bn(sync_cls, child))
                    self._converted_bn.append((parent, child_name, child))

    def _revert_batchnorm(self) -> None:
        # The sync layers share parameter and buffer tensors with the originals, so putting the original
        # module objects back restores the user's classes with the trained values.
        for parent, child_name, original in reversed(self._converted_bn):
            sync = getattr(parent, child_name)
            original.train(sync.training)
            setattr(parent, child_name, original)
        self._converted_bn.clear()

    # --- data -----------------------------------------------------------------------------------------------
    def setup_dataloader(self, loader: Any, stage: str, *, shuffle: bool | None = None) -> Any:
        if not self.use_distributed_sampler or self.world_size == 1:
            return loader
        if isinstance(loader, (list, tuple)):
            return type(loader)(self.setup_dataloader(x, stage, shuffle=shuffle) for x in loader)
        if isinstance(loader, dict):
            return {k: self.setup_dataloader(v, stage, shuffle=shuffle) for k, v in loader.items()}
        if isinstance(loader, Shardable):
            return loader.shard(self, stage, shuffle)  # e.g. RayDataLoader's streaming_split (raylit/ray_data.py)
        if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
            return loader  # an iterable dataset shards itself (e.g. via get_worker_info / the rank)
        if isinstance(loader.sampler, DistributedSampler) or isinstance(
            getattr(loader.batch_sampler, "sampler", None), DistributedSampler
        ):
            return loader  # the user already sharded it
        return self._shard_loader(loader, stage, shuffle)

    def _shard_loader(self, loader: DataLoader, stage: str, shuffle: bool | None) -> DataLoader:
        W, r = self.world_size, self.global_rank
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        batch_sampler = loader.batch_sampler
        if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
            # A custom batch sampler decides the batches; deal whole batches out to the ranks.
            mode = "pad" if stage in ("train", "val", "test") else "contiguous"
            return _rebuild_loader(loader, batch_sampler=_ShardedSampler(batch_sampler, W, r, mode))
        base = batch_sampler.sampler if batch_sampler is not None else loader.sampler
        batch_size = batch_sampler.batch_size if batch_sampler is not None else 1
        drop_last = batch_sampler.drop_last if batch_sampler is not None else False
        plain = type(base) in (RandomSampler, SequentialSampler)
        n = len(loader.dataset) if plain else len(base)  # type: ignore[arg-type]

        if stage == "train":
            if plain:
                do_shuffle = True if shuffle is None else shuffle
                sampler: Sampler = DistributedSampler(loader.dataset, W, r, shuffle=do_shuffle, seed=seed)
            else:
                sampler = _ShardedSampler(base, W, r, "pad")
        elif stage == "predict":
            sampler = _ShardedSampler(n if plain else base, W, r, "contiguous")
        elif _equal_batch_counts(n, W, batch_size, drop_last):
            sampler = _ShardedSampler(n if plain else base, W, r, "interleave")
        else:
            rank_zero_warn(
                f"The {stage} set has {n} samples, which cannot be split over {W} processes with the same "
                f"number of batches (batch_size={batch_size}) on each. Like Lightning, raylit pads the shards "
                f"with {-n % W} repeated sample(s), so epoch-level {stage} metrics count them twice. Use a "
                f"dataset size that gives equal batch counts per process to evaluate each sample once."
            )
            sampler = _ShardedSampler(n if plain else base, W, r, "pad")
        if batch_sampler is None:
            return _rebuild_loader(loader, sampler=sampler, batch_size=None)
        return _rebuild_loader(loader, sampler=sampler, batch_size=batch_size, drop_last=drop_last)


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


# --- samplers ---------------------------------------------------------------------------------------------
def _equal_batch_counts(n: int, world_size: int, batch_size: int, drop_last: bool) -> bool:
    counts = {n // world_size + (1 if r < n % world_size else 0) for r in range(world_size)}
    batches = {c // batch_size if drop_last else math.ceil(c / batch_size) for c in counts}
    return len(batches) == 1


class _ShardedSampler(Sampler):
    """This rank's share of ``source`` (a length, meaning ``range(n)``, or any sampler / batch sampler, whose
    output is materialised each epoch, identically on every rank).

    modes: "pad" (interleaved, tail repeated so all ranks have ``ceil(n / W)`` items), "interleave" (items
    ``rank, rank + W, ...``; exactly once) and "contiguous" (one contiguous chunk per rank; exactly once).
    """

    def __init__(self, source: int | Sampler | Sequence, num_replicas: int, rank: int, mode: str) -> None:
        assert mode in ("pad", "interleave", "contiguous")
        self.source, self.num_replicas, self.rank, self.mode = source, num_replicas, rank, mode
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)  # type: ignore[union-attr]

    def _total(self) -> int:
        return self.source if isinstance(self.source, int) else len(self.source)  # type: ignore[arg-type]

    def _bounds(self, n: int) -> tuple[int, int]:
        per, extra = divmod(n, self.num_replicas)
        start = self.rank * per + min(self.rank, extra)
        return start, start + per + (1 if self.rank < extra else 0)

    def __len__(self) -> int:
        n, W = self._total(), self.num_replicas
        if self.mode == "pad":
            return math.ceil(n / W)
        start, end = self._bounds(n)
        return end - start

    def __iter__(self) -> Iterator[Any]:
        items = list(range(self.source)) if isinstance(self.source, int) else list(self.source)
        n, W = len(items), self.num_replicas
        if self.mode == "contiguous":
            start, end = self._bounds(n)
            return iter(items[start:end])
        if self.mode == "pad" and n % W:
            pad = W - n % W
            items = items + (items * math.ceil(pad / max(n, 1)))[:pad]
        return iter(items[self.rank :: W])


# --- DataLoader rebuilding ------------------------------------------------------------------------------------
_LOADER_ARGS = (
    "dataset",
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def _rebuild_loader(loader: DataLoader, **overrides: Any) -> DataLoader:
    """A new loader of the same class with the same arguments, except ``overrides`` (sampler / batch_sampler
    and the batching arguments that go with them)."""
    kwargs: dict[str, Any] = {k: getattr(loader, k) for k in _LOADER_ARGS if hasattr(loader, k)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)  # DataLoader rejects it without worker processes
    if "batch_sampler" in overrides:
        for k in ("batch_size", "drop_last"):
            kwargs.pop(k, None)
    kwargs.update(overrides)
    kwargs.setdefault("shuffle", None)
    cls = type(loader)
    if cls is DataLoader:
        return DataLoader(**kwargs)

    # A subclass: call its constructor with every parameter it declares, read from the instance when it is
    # not one we override. Without that attribute we cannot rebuild it faithfully, so say how to proceed.
    params = inspect.signature(cls.__init__).parameters
    call_kwargs: dict[str, Any] = {}
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for pname, p in list(params.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if pname in kwargs:
            call_kwargs[pname] = kwargs[pname]
        elif hasattr(loader, pname):
            call_kwargs[pname] = getattr(loader, pname)
        elif p.default is p.empty:
            raise MisconfigurationException(
                f"raylit needs to rebuild your {cls.__name__} with a distributed sampler, but its __init__ "
                f"argument {pname!r} is not stored as an attribute of the same name. Store it as "
                f"`self.{pname}`, or pass a DistributedSampler yourself, or set "
                f"Trainer(use_distributed_sampler=False)."
            )
    if accepts_kwargs:
        for k, v in kwargs.items():
            call_kwargs.setdefault(k, v)
    return cls(**call_kwargs)


# --- sync batchnorm ---------------------------------------------------------------------------------------------
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


__all__ = ["DistributedRuntime"]
