"""Where a run executes: rank, world size, device, and the collectives the loop needs.

The loop only talks to a ``Runtime``. ``Runtime`` itself is the single-process implementation (no
torch.distributed); ``raylit.distributed.DistributedRuntime`` implements the same methods over an initialised
torch.distributed process group (set up by Ray Train on each worker). Nothing here imports Ray.
"""

from contextlib import nullcontext
from typing import Any, ContextManager, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Shardable(Protocol):
    """A loader that splits itself over the ranks (``raylit.data.RayDataLoader``). A distributed runtime calls
    ``shard`` on every rank at the same point instead of injecting a sampler, and iterates what it returns."""

    def shard(self, runtime: "Runtime", stage: str, shuffle: bool | None = None) -> Any:
        """This rank's part, for ``stage`` ("train", "val", "test" or "predict"); ``shuffle=None`` keeps the
        loader's own setting. A collective: every rank calls it."""


class Runtime:
    global_rank = 0
    local_rank = 0
    node_rank = 0
    world_size = 1
    num_nodes = 1
    elastic: Any = None  # an ElasticPlan (raylit/distributed/elastic.py) in a Trainer(elastic=...) run

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # --- collectives (identity when there is one process) -------------------------------------------
    def barrier(self, name: str | None = None) -> None:
        pass

    def reduce(self, tensor: torch.Tensor, reduce_fx: str = "mean") -> torch.Tensor:
        """Reduce ``tensor`` across ranks with "mean", "sum", "max" or "min"."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stack ``tensor`` from every rank along a new leading dim (no new dim when not distributed)."""
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a collective: all ranks must call it)."""
        return [obj]

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    # --- model and data -----------------------------------------------------------------------------
    def wrap_model(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """Return the module the loop calls steps through (DDP in distributed runs)."""
        return module

    def unwrap_model(self, wrapped: nn.Module) -> nn.Module:
        return getattr(wrapped, "module", wrapped)

    def call_step(self, wrapped: nn.Module, module: nn.Module, name: str, *args: Any) -> Any:
        """Run ``module.<name>(*args)`` (training_step, validation_step, ...) through ``wrapped`` so that a
        DDP wrapper sees a forward call and registers its gradient hooks."""
        return getattr(module, name)(*args)

    def no_sync(self, wrapped: nn.Module) -> ContextManager:
        """Context in which backward does not all-reduce gradients (accumulation steps)."""
        return nullcontext()

    def setup_dataloader(self, loader: Any, stage: str, *, shuffle: bool | None = None) -> Any:
        """Return ``loader`` prepared for this rank (a DistributedSampler in distributed runs). ``stage`` is
        "train", "val", "test" or "predict"; ``shuffle=False`` forces sequential order (overfit_batches)."""
        return loader

    # --- checkpoints: what dump/restore read and write (FSDP gathers/slices sharded tensors here) ------------
    def model_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The module's state for a checkpoint. Called on every rank; only global rank 0's result is written."""
        return module.state_dict()

    def optimizer_state_dict(self, module: nn.Module, optimizer: Any) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, module: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def teardown(self) -> None:
        pass
