"""Run a Trainer call (fit / validate / test / predict) on Ray Train workers.

Driver side (``launch``), in order:

1. ``plan``: Lightning flags -> Ray settings (workers = devices x num_nodes, GPUs from ``accelerator``, one
   worker per device, placement from ``num_nodes``), and the checks that need no cluster (strategy, devices).
   A user's ``ScalingConfig`` / ``RunConfig`` are used as given.
2. ``pack``: pickle (trainer, model, call arguments) once, here, so that an unpicklable attribute is reported
   by name before any process starts; the bytes go to the object store once and every worker reads them.
3. ``connect``: reuse a connected Ray; else join a cluster only when asked (``RAY_ADDRESS``, which a
   submitted Ray job also sets); else start a private local instance (``address="local"``: a bare
   ``ray.init()`` would silently join whatever cluster ``ray start`` last recorded on this host).
4. ``check_resources``: impossible requests (more GPUs or nodes than the cluster has) fail here, instead of
   Ray waiting forever for resources.
5. ``TorchTrainer.fit``; rank 0's console output is relayed to this terminal (one progress bar, no Ray
   prefixes); the results come back as the train function's return value (Train V2 keeps no metrics that are
   not attached to a checkpoint, and we do not report per step: each report costs a controller round trip).
6. ``trainer._import_results``: the user's ``model`` object gets the trained weights, the trainer gets
   metrics, counters and callback state.

Worker side (``_worker_main``): build a ``DistributedRuntime`` from ``ray.train.get_context()`` (Ray Train has
already created the process group: gloo on CPU, nccl on GPU), run ``trainer._run``, gather predictions in
dataset order, and return the results from rank 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from raylit.launch.spec import RunSpec, pack, unpack
from raylit.utilities.exceptions import MisconfigurationException

log = logging.getLogger(__name__)

DDP_STRATEGIES = {"auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"}
_FIND_UNUSED_SUFFIXES = ("_find_unused_parameters_true", "_find_unused_parameters_false")

# Loggers of Ray internals whose INFO/WARNING chatter would reach the user's console through log forwarding
# (e.g. the placement-group cleaner, which polls the State API once a second and warns when there is no
# dashboard). Errors still get through.
_NOISY_RAY_LOGGERS = (
    "ray.train",
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
    "ray.tune",
    "ray.data",
)
# Ray Train settings we change unless the user set them: the print patch duplicates every worker print; the
# preemption watcher logs a core-worker warning at start-up (and matters only on spot/preemptible nodes).
_TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def quiet_ray_workers() -> None:
    """``worker_process_setup_hook`` that keeps Ray's internal log chatter out of the driver's console.

    raylit installs it on the Ray instances it starts or joins. If you call ``ray.init`` yourself, pass
    ``runtime_env={"worker_process_setup_hook": "raylit.launch.ray.quiet_ray_workers"}`` to get the same."""
    for name in _NOISY_RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # On a loaded machine the controller's shutdown logs a full traceback when the cleaner actor does not stop
    # within its timeout ("Failed to stop PlacementGroupCleaner gracefully"); the run itself is unaffected.
    logging.getLogger("ray.train.v2._internal.callbacks.placement_group_callback").setLevel(logging.CRITICAL)
    # Ray's State API finds "the" cluster by scanning the host; with several Ray instances on one machine it
    # raises "Found multiple active Ray instances" (the placement-group cleaner's thread dies printing a
    # traceback). Pointing it at the instance this worker belongs to avoids the scan.
    with contextlib.suppress(Exception):
        import ray

        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


# --------------------------------------------------------------------------------------------------------------
# 1. plan
# --------------------------------------------------------------------------------------------------------------
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
    explicit = config.scaling_config is not None
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
    if p.num_nodes == 1:
        placement = "PACK"  # prefer one node, but do not hang when no single node has room
    elif p.devices_per_node == 1:
        placement = "STRICT_SPREAD"  # exactly one worker per node
    else:
        placement = "SPREAD"  # Ray has no "k per node"; spreading lands devices_per_node on each of num_nodes
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(
        num_workers=p.num_workers, use_gpu=use_gpu, resources_per_worker=resources, placement_strategy=placement
    )


def run_config(trainer: Any, fn: str) -> Any:
    import ray.train

    if trainer.config.run_config is not None:
        return trainer.config.run_config
    return ray.train.RunConfig(
        name=f"raylit-{fn}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
    )


# --------------------------------------------------------------------------------------------------------------
# 3. connect
# --------------------------------------------------------------------------------------------------------------
_started_here = False  # whether this process started the Ray instance it is connected to


def connect(num_cpus_needed: float, num_gpus_needed: int) -> bool:
    """Make sure this process is connected to Ray; return True when it runs a private local instance.

    Order: an existing connection (the user's ``ray.init``, an earlier raylit call, or code already running
    inside a Ray task) -> ``RAY_ADDRESS`` (also set inside a submitted Ray job) -> a new private instance.
    """
    global _started_here
    import ray

    if ray.is_initialized():
        if not _started_here:
            return False
        resources = ray.cluster_resources()
        if resources.get("CPU", 0) >= num_cpus_needed and resources.get("GPU", 0) >= num_gpus_needed:
            return True
        ray.shutdown()  # our own instance is too small for this call: restart it bigger
    runtime_env: dict[str, Any] | None = {"worker_process_setup_hook": "raylit.launch.ray.quiet_ray_workers"}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and "worker_process_setup_hook" in os.environ.get(
        "RAY_JOB_CONFIG_JSON_ENV_VAR", ""
    ):
        runtime_env = None  # the job already has a setup hook; Ray refuses two
    address = os.environ.get("RAY_ADDRESS")
    with _quiet_auth_notice():
        if address:
            ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
            _started_here = False
        else:
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, int(num_cpus_needed + 0.999)),
                num_gpus=_local_gpu_count(),
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env=runtime_env,
            )
            _started_here = True
    return _started_here


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


# --------------------------------------------------------------------------------------------------------------
# 4. check resources
# --------------------------------------------------------------------------------------------------------------
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
# launch
# --------------------------------------------------------------------------------------------------------------
def launch(trainer: Any, spec: Any) -> Any:
    """Run ``spec`` (``trainer.<fn>(...)``) on Ray workers and return what the public method returns."""
    from raylit.launch import fault

    p = plan(trainer)
    fn = spec.fn
    # fault tolerance (raylit/launch/fault.py): restarts, and the resume directory every attempt restores from
    run_cfg, spec.fault = fault.driver_plan(trainer, fn, run_config(trainer, fn))
    payload = pack(spec)

    import ray
    from ray.train.torch import TorchTrainer

    from raylit import ray_data
    from raylit.launch.local import build_run

    # Ray Data's tasks need CPUs beyond the workers' (raylit/ray_data.py). A private local Ray always gets one
    # logical CPU to spare, since datasets made in setup() are invisible here; on a cluster we size the workers
    # when the driver can see the Dataset, and rank 0 checks the real placement before splitting it.
    data_cpus = ray_data.data_cpus_needed(spec.module, spec.datamodule, *spec.data.values())
    cpus_needed = p.num_workers + max(1.0, data_cpus or 0.0) if p.explicit_scaling is False else 0
    gpus_needed = p.num_workers if p.use_gpu else 0
    connect(cpus_needed, gpus_needed)
    cluster = ray.cluster_resources()
    cluster_gpus = cluster.get("GPU", 0)
    cpus_per_worker = 1.0
    if data_cpus is not None and not p.explicit_scaling:
        cpus_per_worker = ray_data.worker_cpus(cluster.get("CPU", 0.0), p.num_workers, data_cpus)
    scaling = scaling_config(trainer, p, cluster_gpus, cpus_per_worker)
    check_resources(scaling, p)
    if data_cpus is not None:
        ray_data.check_scaling(scaling, cluster.get("CPU", 0.0), data_cpus)

    payload_ref = ray.put(payload)
    relay = _ConsoleRelay.start(ray)
    config = {
        "payload": payload_ref,
        "relay": relay.handle,
        "isatty": _isatty(sys.stdout),
        "columns": _terminal_columns(),
    }
    torch_trainer = TorchTrainer(
        _worker_main, train_loop_config=config, scaling_config=scaling, run_config=run_cfg
    )
    try:
        env = dict(_TRAIN_ENV_DEFAULTS)
        if _started_here:
            # The controller notices that the workers finished at its next poll (every 2 s by default). Polling
            # a handful of local workers more often is cheap; on a shared cluster Ray's default stays.
            env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
        with _env_defaults(env):
            result = torch_trainer.fit()
    except Exception as err:
        raise _user_error(fault.unwrap_error(err)) from err
    finally:
        relay.stop()
    from ray import cloudpickle

    out = cloudpickle.loads(result.return_value)
    build_run(spec, trainer).adopt(out["results"])
    for lg, version in zip(trainer.loggers, out.get("logger_versions", [])):
        if version is not None and getattr(lg, "_version", 0) is None:
            lg._version = version
    return out["output"]


@contextlib.contextmanager
def _env_defaults(defaults: dict[str, str]):
    # Ray Train copies these from the driver's environment to the controller and the workers at fit().
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _user_error(err: BaseException) -> BaseException:
    """The exception a user's code raised on a worker (lowest rank), rather than Ray's wrapper, so that
    ``except ValueError`` works the same as in a local run. Ray's own failures are returned unchanged."""
    failures = getattr(err, "worker_failures", None)
    if not failures:
        return err
    rank = min(failures)
    user = failures[rank]
    cause = getattr(user, "cause", None)  # RayTaskError-style wrappers keep the original in .cause
    user = cause if isinstance(cause, BaseException) else user
    if isinstance(user, Exception) and type(user).__module__.split(".")[0] != "ray":
        with contextlib.suppress(Exception):
            user.add_note(f"(raised on Ray Train worker rank {rank}; see the chained exception for Ray's report)")
        return user
    return err


# --------------------------------------------------------------------------------------------------------------
# console relay: rank 0's stdout/stderr are written to the driver's terminal as they are (one progress bar)
# --------------------------------------------------------------------------------------------------------------
class _ConsoleRelay:
    """A small Ray actor that buffers text from rank 0, and a driver thread that writes it out."""

    def __init__(self, ray: Any, handle: Any) -> None:
        self._ray, self.handle = ray, handle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="raylit-console", daemon=True)

    @classmethod
    def start(cls, ray: Any) -> _ConsoleRelay:
        # One buffer actor per driver and Ray session, reused by later calls (an actor start costs a process).
        job = ray.get_runtime_context().get_job_id()
        handle = _relay_actors.get(job)
        if handle is not None:
            try:
                ray.get(handle.drain.remote(), timeout=10)  # alive; drop anything left from a previous run
            except Exception:
                handle = None
        if handle is None:
            handle = _relay_actors[job] = ray.remote(num_cpus=0)(_RelayBuffer).remote()
        relay = cls(ray, handle)
        relay._thread.start()
        return relay

    def _drain_once(self, timeout: float) -> None:
        chunks = self._ray.get(self.handle.drain.remote(), timeout=timeout)
        for stream, text in chunks:
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.write(text)
            target.flush()

    def _pump(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._drain_once(timeout=30)
            except Exception:  # the relay is a convenience; never let it break the run
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._drain_once(timeout=10)


_relay_actors: dict[str, Any] = {}


class _RelayBuffer:
    def __init__(self) -> None:
        self._chunks: list[tuple[str, str]] = []

    def write(self, stream: str, text: str) -> None:
        self._chunks.append((stream, text))

    def drain(self) -> list[tuple[str, str]]:
        out, self._chunks = self._chunks, []
        return out


class _RelayStream(io.TextIOBase):
    """A text stream for rank 0 that batches writes (at most ~10 sends a second) into the relay actor."""

    def __init__(self, handle: Any, name: str, fallback: Any, isatty: bool) -> None:
        self._handle, self._name, self._fallback, self._isatty = handle, name, fallback, isatty
        self._buf: list[str] = []
        self._last = 0.0
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._isatty

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def write(self, text: str) -> int:
        with self._lock:
            self._buf.append(text)
            if time.monotonic() - self._last >= 0.1:
                self._send()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._send()

    def _send(self) -> None:
        if not self._buf:
            return
        text, self._buf = "".join(self._buf), []
        self._last = time.monotonic()
        try:
            self._handle.write.remote(self._name, text)
        except Exception:
            self._fallback.write(text)


@contextlib.contextmanager
def _relay_console(handle: Any, isatty: bool):
    if handle is None:
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout = _RelayStream(handle, "stdout", out, isatty)
    sys.stderr = _RelayStream(handle, "stderr", err, isatty)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = out, err
        import ray

        # actor calls from one caller run in order: once this returns, every chunk above is in the buffer
        with contextlib.suppress(Exception):
            ray.get(handle.write.remote("stdout", ""), timeout=10)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


def _terminal_columns() -> int | None:
    import shutil

    try:
        return shutil.get_terminal_size().columns
    except Exception:
        return None


# --------------------------------------------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------------------------------------------
def _worker_main(config: dict) -> bytes | None:
    """The Ray Train function: runs on every worker; returns the pickled results on rank 0 (None elsewhere)."""
    import ray
    import ray.train
    import torch
    from ray import cloudpickle

    ctx = ray.train.get_context()
    spec = unpack(ray.get(config["payload"]))
    if config.get("columns"):
        os.environ.setdefault("COLUMNS", str(config["columns"]))  # progress bars size to the driver's terminal
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    relay = config.get("relay") if ctx.get_world_rank() == 0 else None
    with _relay_console(relay, bool(config.get("isatty"))):
        out = run_worker(spec, device, local_rank=ctx.get_local_rank(), node_rank=ctx.get_node_rank())
    # Pickled here: Ray refuses return values that contain tensors (state_dict, metrics, predictions).
    return cloudpickle.dumps(out) if out is not None else None


def run_worker(spec: RunSpec, device: Any, local_rank: int = 0, node_rank: int = 0) -> dict | None:
    """One worker's part of the run, without Ray: it needs an initialised torch.distributed group (Ray Train
    makes it; tests make it by hand). Builds this worker's Trainer view and ``Run`` from the spec. Returns
    ``{"results", "output", "logger_versions"}`` on global rank 0, None elsewhere."""
    import torch

    from raylit.distributed import DistributedRuntime
    from raylit.run import Run
    from raylit.trainer import Trainer
    from raylit.utilities.seed import seed_everything

    config = spec.config
    runtime_cls = DistributedRuntime
    if config.strategy == "fsdp":  # shard the module with FSDP2 instead of wrapping it in DDP
        from raylit.fsdp import FSDPRuntime as runtime_cls
    if spec.seed is not None:
        # Lightning re-runs the user's script (and its seed_everything) on every rank; here the driver's seed
        # is re-applied instead, so every rank starts from the same RNG state, as it would under Lightning.
        seed_everything(int(spec.seed), workers=spec.seed_workers == "1", verbose=False)
    if spec.cwd and os.path.isdir(spec.cwd):
        # Relative paths (lightning_logs/, checkpoints) then mean what they mean on the driver, as long as the
        # directory exists on this node (always on a local instance; on a cluster, with shared storage).
        os.chdir(spec.cwd)
    runtime = runtime_cls(
        device,
        local_rank=local_rank,
        node_rank=node_rank,
        sync_batchnorm=bool(config.sync_batchnorm),
        use_distributed_sampler=bool(config.use_distributed_sampler),
        find_unused_parameters=config.strategy.endswith("_find_unused_parameters_true"),
    )
    runtime.num_nodes = int(runtime.reduce(torch.tensor(node_rank), "max").item()) + 1
    # The runtime converts BatchNorm itself (on CPU too, and back at teardown): the run must not convert first
    # with torch's CUDA-only SyncBatchNorm.
    spec.config = config = dataclasses.replace(config, sync_batchnorm=False)
    trainer = Trainer._for_spec(spec)

    from raylit.launch import fault  # fault tolerance: restore this run's newest resume checkpoint, if any

    fault.prepare_worker(spec, trainer, runtime)
    run = Run(spec, runtime, trainer)
    output = run.execute()
    if spec.fn == "predict":
        output = _gather_predictions(runtime, run, output)
    runtime.teardown()  # first: FSDP gathers the full weights back into the module (a collective)
    if not runtime.is_global_zero:
        return None
    # The version each logger picked (version_N) is decided on rank 0; without it the driver's logger objects
    # would pick the *next* free version when asked for log_dir.
    versions = [getattr(lg, "_version", None) for lg in trainer.loggers]
    return {"results": run.export_results(), "output": output, "logger_versions": versions}


def _gather_predictions(runtime: Any, run: Any, output: Any) -> Any:
    """Every rank's predictions, concatenated in rank order. The predict sampler gives each rank a contiguous
    chunk of the dataset, so this is dataset order (batch boundaries may differ from a one-process run)."""
    import torch

    from raylit.utilities.apply_func import apply_to_collection

    local = apply_to_collection(output, torch.Tensor, lambda t: t.detach().cpu())
    everyone = runtime.all_gather_object(local)
    if runtime.global_rank != 0 or output is None:
        return output
    if len(run.loaders.predict or []) > 1:
        return [[p for rank_out in everyone for p in rank_out[i]] for i in range(len(output))]
    return [p for rank_out in everyone for p in rank_out]
