"""Launchers: how a Trainer call reaches the processes that run it.

A single local device runs in-process (``Trainer._run``); several workers, or an explicit Ray
``ScalingConfig``, go through :mod:`raylit.launch.ray`. The modules here import Ray lazily, inside functions, so
``import raylit`` never pays for (or requires) Ray.

- ``ray.py``: the Ray Train launch (driver: pack, run, results back; worker: the run on a ``DistributedRuntime``);
- ``session.py``: connecting to Ray; ``resources.py``: worker layout, ``ScalingConfig``, resource checks;
- ``console.py``: rank 0's console relayed to the driver's terminal;
- ``fault.py`` / ``restore.py``: restarts, and the restore every worker does by itself;
- ``ray_data.py``: the Ray calls behind ``raylit.data.RayDataLoader``.
"""

from typing import Any


def uses_ray(trainer: Any) -> bool:
    """Whether ``trainer``'s calls run on Ray Train workers: several workers (devices x num_nodes) or an explicit
    ``ScalingConfig``, asked from a driver (on a worker the runtime already spans the processes)."""
    return (
        trainer._runtime.world_size == 1
        and (trainer._num_workers > 1 or trainer._scaling_config is not None)
        and not getattr(trainer, "_on_worker", False)
    )
