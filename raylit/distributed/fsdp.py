"""``FSDPRuntime``: ``Trainer(strategy="fsdp")`` with torch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each process keeps only its 1/world_size slice of every parameter, gradient and optimizer state (as DTensors
sharded on dim 0); a layer's full parameters exist only while it runs (all-gathered before its forward and
backward, freed after), and gradients are reduce-scattered instead of all-reduced. The numbers are those of
DDP, and of one process with the same global batch.

How it fits raylit (everything else is ``DistributedRuntime``'s: collectives, samplers, sync BatchNorm):

* ``wrap_model`` shards the LightningModule *in place*: ``fully_shard`` on the submodules the wrap policy picks
  (children of every ``nn.ModuleList`` by default: the "one transformer block at a time" convention; any
  submodule you already sharded yourself in ``configure_model`` is kept as is), then on the module itself.
  FSDP2 works through forward hooks, so ``call_step`` runs the step *as* the module's forward (the same
  redirection DDP needs): parameters held directly by the LightningModule are gathered too, whatever the step
  calls. A ``self(x)`` inside the step re-enters the module's hooks, which FSDP2 tolerates.
* ``no_sync`` (gradient accumulation) turns off the reduce-scatter with ``set_requires_gradient_sync(False)``.
* Checkpoints hold a FULL state in torch's plain layout, exactly what a non-FSDP run writes: every DTensor in
  ``module.state_dict()`` and ``optimizer.state_dict()`` is gathered (``DTensor.full_tensor``, a collective:
  every rank calls it) and copied to CPU on global rank 0, the only rank that writes files; other ranks get
  empty placeholders. So an FSDP checkpoint loads in a one-process run, in ``load_from_checkpoint`` and in
  Lightning, and resumes FSDP, DDP or single-process runs alike. We gather ourselves instead of using
  ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``, which keys optimizer state by parameter
  name: torch's (and Lightning's) checkpoint layout keys it by index. Restoring needs no gathering: the model
  is loaded before sharding, and each rank cuts its own slice of the full optimizer state.
* ``teardown`` un-shards the module in place (full plain parameters, original class, FSDP hooks removed), so
  after ``fit`` the worker's module is an ordinary module again and rank 0 sends plain weights to the driver.

Precision (tested against one process): ``32-true``, ``64-true``, ``bf16-true`` (parameters sharded in that
dtype) and ``bf16-mixed`` (autocast around the step; fp32 sharded parameters and fp32 gradient reduction, as
with DDP). ``16-true`` should behave like ``bf16-true``; ``16-mixed`` (GradScaler over DTensor gradients) is only
possible on GPUs and has not been run. ``FSDPRuntime(mp_policy=MixedPrecisionPolicy(...))`` would let FSDP
all-gather in bf16 instead; the launcher does not set it. Runs on CPU with gloo (tested) and on CUDA with NCCL
(not yet run on a GPU). ``validate``/``test``/``predict`` outside ``fit`` are not sharded: every rank holds the
whole model, as with DDP. ``devices=1`` never gets here: the Trainer runs in-process, unsharded.

Not covered: resuming a module that shards itself in ``configure_model`` (its ``load_state_dict`` would get
full tensors for DTensor parameters; ``wrap_model`` keeps such units, but that path is untested), and
``find_unused_parameters`` (FSDP2 has no such switch; unused parameters get no gradient).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from raylit.distributed.runtime import _DDP_STEPS, DistributedRuntime, _redirected_forward
from raylit.distributed.sync_bn import convert_batchnorm

WrapPolicy = Callable[[nn.Module], bool] | Iterable[type] | None


def default_wrap_policy(module: nn.Module, parent: nn.Module | None) -> bool:
    """Shard each element of an ``nn.ModuleList`` on its own (transformer blocks, residual stages, ...)."""
    return isinstance(parent, nn.ModuleList)


class FSDPRuntime(DistributedRuntime):
    """A ``DistributedRuntime`` that shards the module with FSDP2 instead of wrapping it in DDP.

    ``auto_wrap_policy``: which submodules get their own ``fully_shard`` (their parameters are gathered
    separately, one unit at a time): a set of module classes, or a callable ``module -> bool``; default: the
    children of every ``nn.ModuleList``. The root module is always sharded last and holds the rest.
    ``mp_policy`` and ``reshard_after_forward`` go to ``fully_shard`` unchanged.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        auto_wrap_policy: WrapPolicy = None,
        mp_policy: MixedPrecisionPolicy | None = None,
        reshard_after_forward: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device, **kwargs)
        self.auto_wrap_policy = auto_wrap_policy
        self.mp_policy = mp_policy or MixedPrecisionPolicy()
        self.reshard_after_forward = reshard_after_forward
        self._sharded: list[nn.Module] = []  # roots we sharded, un-sharded again at teardown

    # --- model ----------------------------------------------------------------------------------------------
    def wrap_model(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        if self.sync_batchnorm:
            self._converted_bn += convert_batchnorm(module, self.device)
        if not any(p.requires_grad for p in module.parameters()):
            return module
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        kwargs: dict[str, Any] = {"mesh": mesh, "mp_policy": self.mp_policy}
        if self.reshard_after_forward is not None:
            kwargs["reshard_after_forward"] = self.reshard_after_forward
        wants = self._policy()
        # Bottom-up (children before parents), as fully_shard requires; a unit never includes a parameter
        # that a unit below it already manages.
        for child, parent in reversed(list(_modules_with_parents(module))):
            if (
                child is not module
                and not isinstance(child, FSDPModule)
                and wants(child, parent)
                and any(True for _ in child.parameters())
            ):
                fully_shard(child, **kwargs)
        if not isinstance(module, FSDPModule):
            fully_shard(module, **kwargs)
        self._sharded.append(module)
        return module

    def _policy(self) -> Callable[[nn.Module, nn.Module | None], bool]:
        policy = self.auto_wrap_policy
        if policy is None:
            return default_wrap_policy
        if callable(policy) and not isinstance(policy, type):
            return lambda m, _parent: bool(policy(m))
        classes = (policy,) if isinstance(policy, type) else tuple(policy)
        return lambda m, _parent: isinstance(m, classes)

    def unwrap_model(self, wrapped: nn.Module) -> nn.Module:
        return wrapped  # sharded in place: the wrapper is the module

    def call_step(self, wrapped: nn.Module, module: nn.Module, name: str, *args: Any) -> Any:
        if isinstance(module, FSDPModule) and name in _DDP_STEPS:
            # Through module.__call__, so that FSDP's forward hooks gather the root's parameters and register
            # the backward hooks that reduce-scatter the gradients.
            return _redirected_forward(module, module, name, *args)
        return getattr(module, name)(*args)

    def no_sync(self, wrapped: nn.Module) -> Any:
        return _gradient_sync_off(wrapped) if isinstance(wrapped, FSDPModule) else super().no_sync(wrapped)

    def teardown(self) -> None:
        for module in self._sharded:
            _unshard_in_place(module)
        self._sharded.clear()
        super().teardown()

    # --- checkpoints ----------------------------------------------------------------------------------------
    def model_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The full, plain state dict on global rank 0 (on CPU); ``{}`` elsewhere. A collective."""
        state = module.state_dict()
        if not any(isinstance(v, DTensor) for v in state.values()):
            return state
        full = {k: self._gather(v) for k, v in state.items()}
        return full if self.is_global_zero else {}

    def optimizer_state_dict(self, module: nn.Module, optimizer: Any) -> dict[str, Any]:
        """``optimizer.state_dict()`` with every sharded state tensor gathered whole (rank 0; CPU). A collective.
        Other ranks get the param groups and an empty ``state``."""
        sd = optimizer.state_dict()
        if not any(isinstance(v, DTensor) for s in sd.get("state", {}).values() for v in s.values()):
            return sd
        # Gather in sorted order (every rank has the same parameters and state keys, so the collectives pair
        # up), then rebuild in the optimizer's own key order.
        gathered = {(idx, k): self._gather(v) for idx, s in sorted(sd["state"].items()) for k, v in sorted(s.items())}
        state = {idx: {k: gathered[idx, k] for k in s} for idx, s in sd["state"].items()}
        return {"state": state if self.is_global_zero else {}, "param_groups": sd["param_groups"]}

    def load_optimizer_state_dict(self, module: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
        """Load a full (plain-layout) optimizer state: each rank keeps the slice matching its parameter shard.
        Every rank must hold the full ``state`` (each rank reads the checkpoint file); no communication."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        sharded: dict[Any, dict[str, Any]] = {}
        for idx, entry in state.get("state", {}).items():
            param = params[idx] if isinstance(idx, int) and idx < len(params) else None
            sharded[idx] = {k: _shard_like(v, param) for k, v in entry.items()}
        optimizer.load_state_dict({**state, "state": sharded})

    def _gather(self, value: Any) -> Any:
        if not isinstance(value, DTensor):
            return value.detach().cpu() if isinstance(value, torch.Tensor) and self.is_global_zero else value
        full = value.full_tensor()  # all-gather: every rank must get here
        return full.detach().cpu() if self.is_global_zero else None


def _shard_like(value: Any, param: Any) -> Any:
    """Rank-local slice of a full optimizer state tensor, for a DTensor parameter (``step`` and other
    scalars stay as they are). ``src_data_rank=None``: every rank has the full value, cut locally."""
    if not isinstance(param, DTensor) or not isinstance(value, torch.Tensor) or value.shape != param.shape:
        return value
    value = value.to(param.device_mesh.device_type)
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


@contextmanager
def _gradient_sync_off(module: FSDPModule) -> Iterator[None]:
    # On accumulation steps FSDP keeps the unsharded gradient locally; the step that calls optimizer.step
    # reduce-scatters the accumulated sum (like DDP's no_sync).
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _modules_with_parents(module: nn.Module) -> Iterator[tuple[nn.Module, nn.Module | None]]:
    """Pre-order (parents first) walk yielding each module once with the parent that reaches it first."""
    seen: set[int] = set()
    stack: list[tuple[nn.Module, nn.Module | None]] = [(module, None)]
    while stack:
        m, parent = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield m, parent
        stack.extend((c, m) for c in reversed(list(m.children())))


# --- undoing fully_shard ------------------------------------------------------------------------------------------
def _unshard_in_place(root: nn.Module) -> None:
    """Turn a module sharded by ``fully_shard`` back into an ordinary one: full plain parameters (a collective:
    every rank gathers, every rank ends with the same values), original classes, FSDP's hooks and bookkeeping
    removed. torch has no public inverse of ``fully_shard``; this touches FSDP2 internals (checked by
    tests/test_fsdp.py against the pinned torch)."""
    fsdp_modules = [m for m in root.modules() if isinstance(m, FSDPModule)]
    if not fsdp_modules:
        return
    for m in fsdp_modules:
        m.reshard()  # the registered parameters are now the sharded DTensors
    gathered: dict[int, nn.Parameter] = {}  # tied parameters stay tied
    for owner in root.modules():
        for name, param in list(owner._parameters.items()):
            if not isinstance(param, DTensor):
                continue
            if id(param) not in gathered:
                gathered[id(param)] = nn.Parameter(_full_tensor(param), requires_grad=param.requires_grad)
            owner._parameters[name] = gathered[id(param)]
    for m in fsdp_modules:
        state = m._get_fsdp_state()
        for handle in (state._pre_forward_hook_handle, state._post_forward_hook_handle):
            if handle is not None:
                handle.remove()
        group = state._fsdp_param_group
        if group is not None:
            for handles in (
                group._module_to_pre_save_state_dict_hook_handle,
                group._module_to_pre_load_state_dict_hook_handle,
            ):
                for handle in handles.values():
                    handle.remove()
            for fsdp_param in group.fsdp_params:
                handle = getattr(fsdp_param, "_post_load_hook_handle", None)
                if handle is not None:
                    handle.remove()
        _forget_composable_state(m)
        m.__class__ = next(c for c in type(m).__bases__ if c is not FSDPModule)
    for m in root.modules():
        for attr in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            m.__dict__.pop(attr, None)


def _full_tensor(param: DTensor) -> torch.Tensor:
    """The whole parameter, on the device its shard is on. On GPUs the Trainer moves the module to the CPU at
    the end of fit, before teardown; NCCL only gathers CUDA tensors, so the shard goes back for the gather.
    (This GPU path has not been run yet.)"""
    local = param.to_local()
    mesh = param.device_mesh
    if local.device.type != mesh.device_type:
        param = DTensor.from_local(
            local.to(mesh.device_type),
            mesh,
            param.placements,
            run_check=False,
            shape=param.shape,
            stride=param.stride(),
        )
    return param.full_tensor().detach().to(local.device).clone()


def _forget_composable_state(module: nn.Module) -> None:
    # fully_shard's @contract decorator records itself in two dicts in module.__dict__ (state by function,
    # registry by name) and FSDP maps the module to its state in a global table; both refuse a second
    # fully_shard. Drop only FSDP's own entries.
    importlib.import_module("torch.distributed._composable_state")._module_state_mapping.pop(module, None)
    contract = importlib.import_module("torch.distributed._composable.contract")  # the module, not the function
    registry = module.__dict__.get(contract.REGISTRY_KEY)
    if isinstance(registry, dict):
        registry.pop("fully_shard", None)
    states = module.__dict__.get(contract.STATE_KEY)
    if isinstance(states, dict):
        for key in [k for k, v in states.items() if type(v).__name__ == "FSDPState"]:
            del states[key]


__all__ = ["FSDPRuntime", "default_wrap_policy"]
