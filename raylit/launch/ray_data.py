"""The Ray calls behind ``raylit.data.RayDataLoader`` (raylit/ray_data.py, the user-facing type, which never
imports Ray): connecting for an in-process read, the reshuffled source, and the split over the ranks of a
``DistributedRuntime``.

The split (see raylit/ray_data.py for why it happens on the workers): every rank reports its node and the CPUs
Ray assigned it; rank 0 checks that Ray Data still has a CPU to run on (``cpu_problem``), calls
``streaming_split(world_size, equal=..., locality_hints=the workers' nodes)`` on its Dataset and broadcasts the
split iterators (small, picklable handles to one ``SplitCoordinator`` actor) over the torch.distributed group
that already exists; each rank iterates its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raylit.launch.session import connect
from raylit.utilities.exceptions import MisconfigurationException


def ensure_connected() -> None:
    """In-process runs: connect the way the launcher does (RAY_ADDRESS, else a private local instance) rather
    than letting Ray Data's implicit ``ray.init()`` join whatever cluster ``ray start`` last recorded."""
    import ray

    if not ray.is_initialized():
        connect(0, 0, keep=True)


def reshuffled_every_pass(dataset: Any, seed: int | None) -> Any:
    """A global ``random_shuffle`` of ``dataset`` that takes a new order at every pass (reproducible from
    ``seed`` when one is given)."""
    from ray.data import RandomSeedConfig

    return dataset.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))


def split_for_ranks(runtime: Any, make_source: Callable[[], Any], *, equal: bool, data_cpus: float) -> Any:
    """This rank's ``DataIterator`` over rank 0's ``make_source()`` Dataset. A collective: every rank calls it at
    the same point. Raises on every rank when Ray Data could not get ``data_cpus`` CPUs beside the workers."""
    import ray

    me = (ray.get_runtime_context().get_node_id(), _assigned_cpus())
    everyone = runtime.all_gather_object(me)
    payload: Any = None
    if runtime.global_rank == 0:
        problem = cpu_problem(_node_cpus(), everyone, data_cpus)
        if problem is not None:
            payload = ("error", problem)
        else:
            ds = make_source()
            ds = ds.copy(ds)  # our own context: no progress bars from the coordinator (rank 0 has one)
            ds.context.enable_progress_bars = False
            splits = ds.streaming_split(runtime.world_size, equal=equal, locality_hints=[node for node, _ in everyone])
            payload = ("ok", splits)
    kind, value = runtime.broadcast(payload)
    if kind == "error":
        raise MisconfigurationException(value)
    return value[runtime.global_rank]


def _assigned_cpus() -> float:
    import ray

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:
        return 0.0


def _node_cpus() -> dict[str, float]:
    import ray

    return {n["NodeID"]: float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")}


# --------------------------------------------------------------------------------------------------------------
# CPU budget
# --------------------------------------------------------------------------------------------------------------
def cpu_problem(node_cpus: dict[str, float], workers: list[tuple[str, float]], data_cpus: float) -> str | None:
    """Why Ray Data cannot run next to these training workers, or None. ``node_cpus``: CPUs of each alive node;
    ``workers``: (node id, CPUs held) of every training worker. A Ray Data task needs ``data_cpus`` free CPUs
    on one node (other jobs on a shared cluster are not counted: this catches configurations that can never
    work, which would otherwise wait forever)."""
    if data_cpus <= 0:
        return None
    free = dict(node_cpus)
    for node, cpus in workers:
        free[node] = free.get(node, 0.0) - cpus
    best = max(free.values(), default=0.0)
    if best + 1e-9 >= data_cpus:
        return None
    held = sum(c for _, c in workers)
    return (
        f"Ray Data needs {data_cpus:g} free CPU(s) on some node beyond the training workers, but the "
        f"{len(workers)} workers hold {held:g} of the cluster's {sum(node_cpus.values()):g} CPUs and leave at most "
        f"{max(best, 0.0):g} free on any node: its read/map tasks would wait forever. Give the workers fewer "
        f"CPUs (e.g. Trainer(scaling_config=ray.train.ScalingConfig(num_workers={len(workers)}, "
        f"resources_per_worker={{'CPU': 0.5}}))), use fewer devices, or a bigger cluster. (raylit sizes the "
        "workers itself when the Dataset is visible on the driver: passed to fit() or held by the datamodule/"
        "module when fit() is called.)"
    )
