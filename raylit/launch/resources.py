"""What a Ray run asks of the cluster, decided on the driver: the worker layout, the ``ScalingConfig``, the
checks that fail fast instead of letting Ray wait forever, and the CPUs Ray Data needs beside the workers.

``plan`` needs no cluster (Lightning flags -> workers = devices x num_nodes, GPUs from ``accelerator``, one
worker per device, placement from ``num_nodes``); ``scaling_config`` and ``check_resources`` read the connected
cluster. A user's ``ScalingConfig`` is used as given.

Ray Data (raylit/ray_data.py): its read/map tasks need whole free CPUs (1 each by default) beyond the training
workers. On a 2-CPU node, 2 workers x 1 CPU leave none and the first read waits forever. So the launcher sizes
the workers when it can see Ray Data on the driver (``data_cpus_needed`` -> ``worker_cpus``), refuses a
``ScalingConfig`` that leaves too little (``check_scaling``), and rank 0 checks the real placement before it
splits a Dataset (``raylit.launch.ray_data``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from raylit.ray_data import RayDataLoader, is_ray_dataset
from raylit.utilities.exceptions import MisconfigurationException

log = logging.getLogger(__name__)

DDP_STRATEGIES = {"auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"}
_FIND_UNUSED_SUFFIXES = ("_find_unused_parameters_true", "_find_unused_parameters_false")


@dataclass
class Plan:
    num_workers: int
    use_gpu: bool | None  # None: decide from the cluster ("auto")
    num_nodes: int
    devices_per_node: int
    find_unused_parameters: bool
    explicit_scaling: bool


def plan(trainer: Any) -> Plan:
    """Validate the Lightning flags for a Ray run and derive the worker layout (no Ray needed)."""
    config = trainer.config
    strategy = config.strategy
    if not isinstance(strategy, str):
        raise MisconfigurationException(
            f"Trainer(strategy={strategy!r}): raylit on Ray runs DDP; pass one of {sorted(DDP_STRATEGIES)} or a "
            f"'<ddp variant>_find_unused_parameters_true/false' name."
        )
    base = strategy
    for suffix in _FIND_UNUSED_SUFFIXES:
        base = base.removesuffix(suffix)
    if base not in DDP_STRATEGIES and strategy != "fsdp":
        raise MisconfigurationException(
            f"Trainer(strategy={strategy!r}) is not supported on Ray workers: raylit runs DDP (one process per "
            f"device, gradients all-reduced). Use strategy='ddp' (or 'auto'), 'ddp_find_unused_parameters_true' "
            f"if some parameters get no gradient, or devices=1 for a single process."
        )
    devices = config.devices
    if devices in (0, "0") or config.num_workers < 1:
        raise MisconfigurationException(
            f"Trainer(devices={devices!r}, num_nodes={config.num_nodes}) asks for no worker at all. Use "
            f"devices>=1 (processes per node), or a ScalingConfig with num_workers>=1."
        )
    accelerator = config.accelerator
    if accelerator not in ("cpu", "cuda", "gpu", "auto"):
        raise MisconfigurationException(
            f"Trainer(accelerator={accelerator!r}) cannot run on Ray workers; use 'cpu', 'gpu' or 'auto'."
        )
    explicit = trainer.config.scaling_config is not None
    num_workers = int(config.num_workers)
    num_nodes = int(config.num_nodes)
    if not explicit and num_workers % num_nodes:
        raise MisconfigurationException(f"{num_workers} workers cannot be spread evenly over num_nodes={num_nodes}")
    # The Trainer resolves "auto" from this machine; a cluster's GPUs may be elsewhere, so keep the user's
    # original word when we can see it.
    user_accel = str(config.kwargs.get("accelerator", accelerator)).lower()
    use_gpu = None if user_accel == "auto" else accelerator in ("cuda", "gpu")
    return Plan(
        num_workers=num_workers,
        use_gpu=use_gpu,
        num_nodes=num_nodes,
        devices_per_node=max(1, num_workers // num_nodes),
        find_unused_parameters=strategy.endswith("_find_unused_parameters_true"),
        explicit_scaling=explicit,
    )


def scaling_config(trainer: Any, p: Plan, cluster_gpus: float, cpus_per_worker: float = 1.0) -> Any:
    """The ScalingConfig to run with: the user's as given, else one worker per device, placed by num_nodes."""
    from ray.train import ScalingConfig

    if trainer.config.scaling_config is not None:
        return trainer.config.scaling_config
    use_gpu = p.use_gpu if p.use_gpu is not None else cluster_gpus > 0
    workers: int | tuple[int, int] = p.num_workers
    if trainer.config.elastic is not None:  # Ray Train V2 starts with what fits in (min, max) and resizes
        workers = tuple(trainer.config.elastic)
    if p.num_nodes == 1 or isinstance(workers, tuple):
        placement = "PACK"  # prefer one node, but do not hang when no single node has room
    elif p.devices_per_node == 1:
        placement = "STRICT_SPREAD"  # exactly one worker per node
    else:
        placement = "SPREAD"  # Ray has no "k per node"; spreading lands devices_per_node on each of num_nodes
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(
        num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources, placement_strategy=placement
    )


def check_elastic(spec: Any) -> None:
    """What an elastic run needs of the module and callbacks (the Trainer's arguments were checked in
    config.py): automatic optimization (raylit accumulates the micro-batches) and a fixed accumulation."""
    from raylit.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler

    if spec.fn != "fit":
        return
    if not getattr(spec.module, "automatic_optimization", True):
        raise MisconfigurationException(
            "Trainer(elastic=...) needs automatic optimization: below max_workers raylit accumulates several "
            "micro-batches per optimizer step. Set `self.automatic_optimization = True` or run without elastic=.")
    if any(isinstance(cb, GradientAccumulationScheduler) for cb in spec.callbacks):
        raise MisconfigurationException(
            "GradientAccumulationScheduler cannot be combined with Trainer(elastic=...): the global batch "
            "(batch_size x max_workers x accumulate_grad_batches) is fixed for the whole run.")


def check_resources(scaling: Any, p: Plan) -> None:
    """Fail now for a request the cluster can never satisfy (Ray would wait for it forever).

    Skipped with a warning for a user-given ScalingConfig: an autoscaling cluster may still grow."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    per_worker = dict(scaling.resources_per_worker or {})
    per_worker.setdefault("CPU", 1.0)
    if scaling.use_gpu:
        per_worker.setdefault("GPU", 1.0)
    num_workers = scaling.num_workers if isinstance(scaling.num_workers, int) else scaling.num_workers[0]
    problems = []
    for key, amount in per_worker.items():
        need, have = amount * num_workers, total.get(key, 0.0)
        if need > have:
            what = "GPUs" if key == "GPU" else f"{key!r} resources"
            problems.append(f"{num_workers} workers x {amount:g} {what} = {need:g}, but the Ray cluster has {have:g}")
    if scaling.placement_strategy == "STRICT_SPREAD" and num_workers > len(nodes):
        problems.append(f"one worker per node on {num_workers} nodes, but the cluster has {len(nodes)} alive")
    elif not p.explicit_scaling and p.num_nodes > len(nodes):
        problems.append(f"num_nodes={p.num_nodes}, but the cluster has {len(nodes)} alive node(s)")
    if not problems:
        return
    message = "This run cannot be scheduled: " + "; ".join(problems) + "."
    if p.explicit_scaling:
        log.warning(message + " Ray will wait for the resources (e.g. an autoscaler adding nodes).")
        return
    raise MisconfigurationException(
        message + " Lower devices/num_nodes, use accelerator='cpu', connect to a bigger cluster (RAY_ADDRESS), "
        "or pass your own ray.train.ScalingConfig to let Ray wait for an autoscaler."
    )


# --------------------------------------------------------------------------------------------------------------
# CPUs for Ray Data
# --------------------------------------------------------------------------------------------------------------
def data_cpus_needed(*roots: Any) -> float | None:
    """Free CPUs Ray Data needs, from the loaders/datasets the driver can see in ``roots`` (the model, the
    datamodule, the loaders passed to fit): the objects themselves, their attributes, and one level of
    lists/dicts in those. None when there is no Ray Data in sight (datasets made in ``setup()`` are not:
    rank 0 checks those when it splits them)."""
    found: list[float] = []

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, RayDataLoader):
            found.append(obj.data_cpus)
        elif is_ray_dataset(obj):
            found.append(1.0)
        elif depth >= 3:
            return
        elif isinstance(obj, dict):
            for v in list(obj.values()):
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v, depth + 1)
        elif depth == 0 and isinstance(getattr(obj, "__dict__", None), dict):
            for k, v in list(vars(obj).items()):
                if k not in ("_parameters", "_buffers", "_modules", "trainer", "_trainer"):
                    visit(v, depth + 1)

    for root in roots:
        if root is not None:
            visit(root, 0)
    return max(found) if found else None


def worker_cpus(total_cpus: float, num_workers: int, data_cpus: float) -> float:
    """CPUs per training worker that leave ``data_cpus`` of ``total_cpus`` free: 1 when there is room, else the
    share of what is left (raises when nothing is)."""
    if total_cpus - num_workers >= data_cpus:
        return 1.0
    share = (total_cpus - data_cpus) / num_workers
    if share < 0.01:
        raise MisconfigurationException(
            f"Ray Data needs {data_cpus:g} free CPU(s) beyond the {num_workers} training workers, but the Ray "
            f"cluster has only {total_cpus:g} CPUs. Use fewer devices, a bigger cluster, or RayDataLoader(..., "
            f"data_cpus=0) if your Ray Data tasks ask for no CPU."
        )
    return math.floor(share * 100) / 100  # never above the exact share: the workers' sum must fit


def check_scaling(scaling: Any, total_cpus: float, data_cpus: float) -> None:
    """Driver-side: a ScalingConfig whose workers leave Ray Data less than ``data_cpus`` CPUs cannot work."""
    per_worker = float((scaling.resources_per_worker or {}).get("CPU", 1.0))
    n = scaling.num_workers if isinstance(scaling.num_workers, int) else scaling.num_workers[0]
    if total_cpus - n * per_worker + 1e-9 >= data_cpus:
        return
    raise MisconfigurationException(
        f"This run reads Ray Data, which needs {data_cpus:g} free CPU(s) beyond the training workers, but {n} "
        f"workers x {per_worker:g} CPU = {n * per_worker:g} of the cluster's {total_cpus:g} CPUs leave "
        f"{max(total_cpus - n * per_worker, 0):g}: the first read would wait forever. Give the workers fewer "
        f"CPUs (ScalingConfig(resources_per_worker={{'CPU': {max((total_cpus - data_cpus) / n, 0):.2g}}})), use "
        f"fewer workers or a bigger cluster."
    )
