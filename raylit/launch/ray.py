"""Run a Trainer call (fit / validate / test / predict) on Ray Train workers.

Driver side (``launch``), in order:

1. ``plan`` (raylit/launch/resources.py): Lightning flags -> Ray settings (workers = devices x num_nodes, GPUs
   from ``accelerator``, one worker per device, placement from ``num_nodes``), and the checks that need no
   cluster (strategy, devices). A user's ``ScalingConfig`` / ``RunConfig`` are used as given.
2. ``pack`` (raylit/launch/spec.py): pickle the ``RunSpec`` once, here, so that an unpicklable attribute is
   reported by name before any process starts; the bytes go to the object store once and every worker reads them.
3. ``connect`` (raylit/launch/session.py): reuse a connected Ray; else join a cluster only when asked
   (``RAY_ADDRESS``, which a submitted Ray job also sets); else start a private local instance.
4. ``check_resources`` (raylit/launch/resources.py): impossible requests (more GPUs or nodes than the cluster
   has) fail here, instead of Ray waiting forever for resources.
5. ``TorchTrainer.fit``; rank 0's console output is relayed to this terminal (raylit/launch/console.py: one
   progress bar, no Ray prefixes); the results come back as the train function's return value (Train V2 keeps
   no metrics that are not attached to a checkpoint, and we do not report per step: each report costs a
   controller round trip).
6. ``Run.adopt``: the user's ``model`` object gets the trained weights, the trainer gets metrics, counters and
   callback state (a driver-side ``Run`` that its properties read).

Worker side (``_worker_main``): build a ``DistributedRuntime`` from ``ray.train.get_context()`` (Ray Train has
already created the process group: gloo on CPU, nccl on GPU), a Trainer view and a ``Run`` from the spec, execute
it, gather predictions in dataset order, and return the results from rank 0. Nothing of the driver's Trainer is
patched: the spec is the whole message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any

from raylit.launch import resources, session
from raylit.launch.console import ConsoleRelay, is_tty, relay_console, terminal_columns
from raylit.launch.session import quiet_ray_workers  # noqa: F401  (old setup-hook path; now launch.session's)
from raylit.launch.spec import RunSpec, pack, unpack

# Ray Train settings we change unless the user set them: the print patch duplicates every worker print; the
# preemption watcher logs a core-worker warning at start-up (and matters only on spot/preemptible nodes).
_TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
ELASTIC_START_TIMEOUT_S = "5"  # an elastic run's placement-group wait, unless RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S


def run_config(trainer: Any, fn: str) -> Any:
    import ray.train

    if trainer.config.run_config is not None:
        return trainer.config.run_config
    return ray.train.RunConfig(
        name=f"raylit-{fn}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
    )


# --------------------------------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------------------------------
def launch(trainer: Any, spec: RunSpec) -> Any:
    """Run ``spec`` (``trainer.<fn>(...)``) on Ray workers and return what the public method returns."""
    session.note_environment()
    import ray
    from ray.train.torch import TorchTrainer

    from raylit.launch import fault
    from raylit.launch.local import build_run

    try:
        return _launch(trainer, spec, ray, TorchTrainer, fault, build_run)
    finally:
        session.release()  # a connection raylit made ends with the call (RAYLIT_KEEP_RAY=1 keeps it)


def _launch(trainer: Any, spec: RunSpec, ray: Any, TorchTrainer: Any, fault: Any, build_run: Any) -> Any:
    p = resources.plan(trainer)
    if trainer.config.elastic is not None:
        resources.check_elastic(spec)
    fn = spec.fn
    # fault tolerance (raylit/launch/fault.py): restarts, and the resume directory every attempt restores from
    run_cfg, spec.fault = fault.driver_plan(trainer, fn, run_config(trainer, fn))
    payload = pack(spec)

    # Ray Data's tasks need CPUs beyond the workers' (raylit/launch/resources.py). A private local Ray always
    # gets one logical CPU to spare, since datasets made in setup() are invisible here; on a cluster we size the
    # workers when the driver can see the Dataset, and rank 0 checks the real placement before splitting it.
    data_cpus = resources.data_cpus_needed(spec.module, spec.datamodule, *spec.data.values())
    cpus_needed = p.num_workers + max(1.0, data_cpus or 0.0) if p.explicit_scaling is False else 0
    gpus_needed = p.num_workers if p.use_gpu else 0
    session.connect(cpus_needed, gpus_needed)
    cluster = ray.cluster_resources()
    cluster_gpus = cluster.get("GPU", 0)
    cpus_per_worker = 1.0
    if data_cpus is not None and not p.explicit_scaling:
        cpus_per_worker = resources.worker_cpus(cluster.get("CPU", 0.0), p.num_workers, data_cpus)
    scaling = resources.scaling_config(trainer, p, cluster_gpus, cpus_per_worker)
    resources.check_resources(scaling, p)
    if data_cpus is not None:
        resources.check_scaling(scaling, cluster.get("CPU", 0.0), data_cpus)

    payload_ref = ray.put(payload)
    relay = ConsoleRelay.start(ray)
    config = {
        "payload": payload_ref,
        "relay": relay.handle,
        "isatty": is_tty(sys.stdout),
        "columns": terminal_columns(),
    }
    torch_trainer = TorchTrainer(_worker_main, train_loop_config=config, scaling_config=scaling, run_config=run_cfg)
    try:
        env = dict(_TRAIN_ENV_DEFAULTS)
        if session.started_here():
            # The controller notices that the workers finished at its next poll (every 2 s by default). Polling
            # a handful of local workers more often is cheap; on a shared cluster Ray's default stays.
            env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
        if trainer.config.elastic is not None:
            # After a lost node the controller first retries the old size on a resource view that still has
            # the node, and waits for that placement group (60 s by default) before it tries what fits now.
            env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = ELASTIC_START_TIMEOUT_S
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
    with relay_console(relay, bool(config.get("isatty"))):
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
    from raylit.utilities.seed import seed_everything

    config = spec.config
    runtime_cls = DistributedRuntime
    if config.strategy == "fsdp":  # shard the module with FSDP2 instead of wrapping it in DDP
        from raylit.distributed.fsdp import FSDPRuntime as runtime_cls
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
    spec.config = dataclasses.replace(config, sync_batchnorm=False)
    if config.elastic is not None:  # the same global batches at this world size (raylit/distributed/elastic.py)
        from raylit.distributed.elastic import ElasticPlan

        runtime.elastic = ElasticPlan(config.elastic[1], runtime.world_size, runtime.global_rank,
                                      config.accumulate_grad_batches)
        if runtime.is_global_zero and spec.fn == "fit":
            print(runtime.elastic.describe(), file=sys.stderr, flush=True)
    trainer = spec.trainer_cls._for_spec(spec)  # the driver's Trainer class (a user subclass included)

    from raylit.launch.restore import prepare_worker  # fault tolerance: restore this run's newest checkpoint

    prepare_worker(spec, trainer, runtime)
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
