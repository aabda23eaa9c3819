"""The connection to Ray: which cluster a raylit process uses, and keeping Ray's chatter off the console.

``connect`` order: an existing connection (the user's ``ray.init``, an earlier raylit call, or code already
running inside a Ray task) -> ``RAY_ADDRESS`` (also set inside a submitted Ray job) -> a new private local
instance (``address="local"``: a bare ``ray.init()`` would silently join whatever cluster ``ray start`` last
recorded on this host).

Used by the launcher, by Ray Data loaders read in-process, and by Tune. Imports nothing from raylit but the
dependency-free ``quiet.py`` (Ray workers import this module by name as their ``worker_process_setup_hook``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

from raylit.launch.quiet import quiet_autoscaling_request_timeouts

# Loggers of Ray internals whose INFO/WARNING chatter would reach the user's console through log forwarding
# (e.g. the placement-group cleaner, which polls the State API once a second and warns when there is no
# dashboard). Errors still get through.
_NOISY_RAY_LOGGERS = (
    "ray.train",
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
    "ray.tune",
    "ray.data",
)
SETUP_HOOK = "raylit.launch.session.quiet_ray_workers"


def quiet_ray_workers() -> None:
    """``worker_process_setup_hook`` that keeps Ray's internal log chatter out of the driver's console.

    raylit installs it on the Ray instances it starts or joins. If you call ``ray.init`` yourself, pass
    ``runtime_env={"worker_process_setup_hook": "raylit.launch.session.quiet_ray_workers"}`` to get the same."""
    for name in _NOISY_RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # the controller's advisory resource request times out on a busy machine and logs a traceback (see quiet.py)
    quiet_autoscaling_request_timeouts()
    # On a loaded machine the controller's shutdown logs a full traceback when the cleaner actor does not stop
    # within its timeout ("Failed to stop PlacementGroupCleaner gracefully"); the run itself is unaffected.
    logging.getLogger("ray.train.v2._internal.callbacks.placement_group_callback").setLevel(logging.CRITICAL)
    # Ray's State API finds "the" cluster by scanning the host; with several Ray instances on one machine it
    # raises "Found multiple active Ray instances" (the placement-group cleaner's thread dies printing a
    # traceback). Pointing it at the instance this worker belongs to avoids the scan.
    with contextlib.suppress(Exception):
        import ray

        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


_started_here = False  # whether this process started the Ray instance it is connected to


def started_here() -> bool:
    """Whether this process runs a private local Ray instance that it started itself."""
    return _started_here


def connect(num_cpus_needed: float, num_gpus_needed: int, keep: bool = False) -> bool:
    """Make sure this process is connected to Ray; return True when it runs a private local instance.

    A private instance too small for ``num_cpus_needed`` / ``num_gpus_needed`` is restarted bigger; a cluster
    someone else started is used as it is.
    """
    quiet_autoscaling_request_timeouts()  # Ray Train may run its controller in this process
    global _started_here, _keep
    # Ray objects outlive a call when Ray Data reads in-process or Tune sweeps: such a connection is kept
    _keep = _keep or keep
    import ray

    if ray.is_initialized():
        if not _started_here:
            return False
        resources = ray.cluster_resources()
        if resources.get("CPU", 0) >= num_cpus_needed and resources.get("GPU", 0) >= num_gpus_needed:
            return True
        ray.shutdown()  # our own instance is too small for this call: restart it bigger
    runtime_env: dict[str, Any] | None = {"worker_process_setup_hook": SETUP_HOOK}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and "worker_process_setup_hook" in os.environ.get(
        "RAY_JOB_CONFIG_JSON_ENV_VAR", ""
    ):
        runtime_env = None  # the job already has a setup hook; Ray refuses two
    address = os.environ.get("RAY_ADDRESS")
    global _connected_here, _env_set_by_ray
    before = dict(os.environ)
    for key, (old, _) in _env_set_by_ray.items():  # a restart of our own instance: what the first init found
        if old is None:
            before.pop(key, None)
        else:
            before[key] = old
    with _quiet_auth_notice():
        if address:
            ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
            _started_here = False
        else:
            # A private instance's processes inherit this process's environment, so the hook goes there instead
            # of into the job's runtime_env: a job with a runtime_env cannot use the idle worker processes Ray
            # starts ahead of time, and every actor of a run (Train's controller and helpers, the workers) then
            # waits for a new process (measured: 1.1-2.4 s per actor against 0.3-0.6 s).
            hook_var = _setup_hook_env_var()
            with _env({hook_var: SETUP_HOOK} if hook_var else {}):
                ray.init(
                    address="local",
                    num_cpus=max(os.cpu_count() or 1, int(num_cpus_needed + 0.999)),
                    num_gpus=_local_gpu_count(),
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    runtime_env=None if hook_var else runtime_env,
                )
            _started_here = True
    _connected_here = True
    _env_set_by_ray = {k: (before.get(k), v) for k, v in os.environ.items() if before.get(k) != v}
    if not _env_before:
        _env_before.append(set(before))
    return _started_here


def note_environment() -> None:
    """Call before the first ``import ray`` of a raylit call: importing Ray sets variables too
    (``RAY_CLIENT_MODE``), which ``release`` then removes with the rest."""
    if "ray" not in sys.modules and not _env_before:
        _env_before.append(set(os.environ))


_connected_here = False  # whether raylit called ray.init in this process (and so owns the connection)
_keep = False  # whether that connection must outlive the call (Ray Data read in-process, Tune)
_env_set_by_ray: dict[str, tuple[str | None, str]] = {}  # variable -> (value before ray.init, value it set)
_env_before: list[set[str]] = []  # the variables that existed before raylit's ray.init


def release() -> None:
    """At the end of a raylit call on the driver: leave the process as the call found it. A connection raylit
    made (and the private local instance it started) is shut down, which stops Ray's threads in this process
    (log printing, error listening) and its local processes, and the environment variables ``ray.init`` set
    (``RAY_*``, ``PYTHONBREAKPOINT``) are put back. A connection the user made (``ray.init`` in their code, or
    code running inside a Ray task) is left alone. ``RAYLIT_KEEP_RAY=1`` keeps raylit's connection for the next
    call instead: faster repeated calls, with Ray's processes and threads left running in between. A connection
    made for Ray Data read in-process or for a Tune sweep is kept (their Ray objects outlive the call)."""
    global _connected_here, _started_here, _env_set_by_ray
    if not _connected_here or _keep or os.environ.get("RAYLIT_KEEP_RAY") == "1":
        return
    import ray

    from raylit.launch import console

    ray.shutdown()
    console.forget_relays()
    for key, (old, set_by_ray) in _env_set_by_ray.items():
        if os.environ.get(key) == set_by_ray:  # unless someone changed it since
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
    existed = _env_before[0] if _env_before else set(os.environ)
    for key in [k for k in os.environ if k.startswith("RAY_") and k not in existed and k not in _env_set_by_ray]:
        os.environ.pop(key)  # set by Ray's import or later in the call (RAY_CLIENT_MODE)
    _env_before.clear()
    _connected_here = _started_here = False
    _env_set_by_ray = {}


def _setup_hook_env_var() -> str | None:
    """The variable through which Ray's workers read their ``worker_process_setup_hook`` (``runtime_env``'s hook
    is delivered to them as this variable); None if this Ray version does not have it."""
    with contextlib.suppress(Exception):
        from ray._private import ray_constants

        name = ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
        return name if isinstance(name, str) and name not in os.environ else None
    return None


@contextlib.contextmanager
def _env(values: dict[str, str]):
    # only while Ray's processes start: later subprocesses of this driver must not run the hook
    os.environ.update(values)
    try:
        yield
    finally:
        for k in values:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _quiet_auth_notice():
    # ray.init logs a WARNING that token auth is on for a new local cluster; it is Ray's default, not news.
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    old = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        auth_log.setLevel(old)


def _local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
