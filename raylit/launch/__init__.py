"""Launchers: how a Trainer call reaches the processes that run it.

``Trainer.fit`` / ``validate`` / ``test`` / ``predict`` build a ``RunSpec`` (``spec.py``). A single local device
runs it in-process (``local.py``); several workers, or an explicit Ray ``ScalingConfig``
(``TrainerConfig.uses_ray``), go to Ray Train, where every worker builds its own ``Run`` from the spec. The
modules here import Ray lazily, inside functions, so ``import raylit`` never pays for (or requires) Ray.

- ``spec.py``: the ``RunSpec``, the only thing pickled to the workers; ``local.py``: the in-process launch;
- ``ray.py``: the Ray Train launch (driver: plan, pack, run, results back; worker: the run on a
  ``DistributedRuntime``);
- ``session.py``: connecting to Ray; ``resources.py``: worker layout, ``ScalingConfig``, resource checks;
- ``console.py``: rank 0's console relayed to the driver's terminal;
- ``fault.py`` / ``restore.py``: restarts, and the restore every worker does by itself;
- ``ray_data.py``: the Ray calls behind ``raylit.data.RayDataLoader``.
"""
