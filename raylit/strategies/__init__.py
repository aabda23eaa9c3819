"""``lightning.pytorch.strategies``: ``trainer.strategy`` is a :class:`Strategy`.

raylit picks the strategy from ``Trainer(strategy=...)`` (a name: "auto", "ddp", "fsdp", ...), so this class is
not something users construct: it is what ``trainer.strategy`` returns, with the calls callbacks and
LightningModules make on it (collectives, ``root_device``, ``backward``), answered by the current run's runtime.
Everything a run does to the model goes through ``raylit.runtime.Runtime`` (single process) or
``raylit.distributed.DistributedRuntime`` (Ray workers).
"""

from typing import Any

import torch

__all__ = ["Strategy"]


class Strategy:
    """``trainer.strategy``: the collectives callbacks use and the backward pass, over the current runtime."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def name(self) -> str:
        return self._trainer.config.strategy_name

    @property
    def world_size(self) -> int:
        return self._trainer._runtime.world_size

    @property
    def global_rank(self) -> int:
        return self._trainer._runtime.global_rank

    @property
    def local_rank(self) -> int:
        return self._trainer._runtime.local_rank

    @property
    def node_rank(self) -> int:
        return self._trainer._runtime.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self._trainer._runtime.is_global_zero

    @property
    def lightning_module(self) -> Any:
        return self._trainer.lightning_module

    @property
    def root_device(self) -> torch.device:
        return self._trainer._runtime.device

    def barrier(self, name: str | None = None) -> None:
        self._trainer._runtime.barrier(name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self._trainer._runtime.broadcast(obj, src)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return self._trainer._runtime.reduce_boolean_decision(decision, all)

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        return self._trainer._runtime.reduce(tensor, reduce_op)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._trainer._runtime.all_gather(tensor)

    def connect(self, model: Any) -> None:
        """Attach ``model`` to the Trainer without running anything (see ``raylit.loops.attached``)."""
        self._trainer._connect(model)

    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The backward pass of the current run, as ``LightningModule.manual_backward`` makes it: precision
        scaling, ``on_before_backward``, the module's ``backward`` hook, ``on_after_backward``."""
        self._trainer._run.loop.backward(closure_loss, *args, **kwargs)
        return closure_loss

    def __repr__(self) -> str:
        return f"Strategy({self.name!r})"
