"""The driver side of a sweep: check the set-up, build Ray Tune's Tuner, surface set-up errors.

``Tuner(build, trainer=..., param_space=..., tune_config=..., run_config=...)`` mirrors ``ray.tune.Tuner``; the
trainable is made from ``build`` and the sweep's Trainer (see :mod:`raylit.tune._trial`).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import time
from typing import Any, Callable

from ray.tune import Callback as TuneCallback
from ray.tune.stopper import Stopper

from raylit.launch.session import connect
from raylit.tune._spec import SPEC_FILE, TRAINER_PREFIX, TrialSpec, TuneConfigError, load_spec, save_spec
from raylit.tune._trial import NOT_SEARCHABLE, run_trial, split_config, wait_for_running_trials


class Tuner:
    """Run a Ray Tune sweep where each trial is ``trainer.fit(*build(config))``.

    Args:
        build: ``build(config) -> module`` or ``(module, datamodule)`` or ``(module, train_loader[, val_loader])``
            or a dict with ``model`` and fit arguments. ``config`` holds the trial's sampled values, minus the
            Trainer arguments.
        trainer: the Trainer a single run would use (default ``Trainer()``); each trial gets a clone. Search
            Trainer arguments with param_space keys ``"trainer.<argument>"`` (e.g. ``"trainer.precision"``,
            ``"trainer.accumulate_grad_batches"``), or a ``"trainer"`` sub-dict.
        param_space, tune_config: as for ``ray.tune.Tuner``. ``tune_config.metric`` (and a scheduler's or
            search algorithm's metric) are names the module logs with ``self.log``.
        run_config: a ``ray.tune.RunConfig``. Without one: name ``raylit-tune-<time>`` under ``~/ray_results``,
            keeping the 2 latest checkpoints per trial (all of them with PBT, whose exploits read older ones).
        checkpoint_frequency: attach a checkpoint to every n-th report (default 1; 0 when the Trainer has
            ``enable_checkpointing=False``). 0 disables Tune checkpoints (and so PBT, and resuming trials).
        resources_per_trial: resources of a trial's actor (default: 1 CPU, plus 1 GPU when the Trainer asks for
            a GPU; for multi-worker Trainers none, as the Ray Train workers hold their own).
        reuse_actors: run later trials in the actors of finished ones (``TuneConfig.reuse_actors``). Default:
            on for single-worker trials (a new actor costs a process start and the torch import, several seconds
            per trial), else ``tune_config.reuse_actors``.
        check_unused_keys: fail when a param_space key is never read by ``build`` or the module.
    """

    def __init__(
        self,
        build: Callable[[dict[str, Any]], Any],
        *,
        trainer: Any = None,
        param_space: dict[str, Any] | None = None,
        tune_config: Any = None,
        run_config: Any = None,
        checkpoint_frequency: int | None = None,
        resources_per_trial: dict[str, float] | None = None,
        reuse_actors: bool | None = None,
        check_unused_keys: bool = True,
    ) -> None:
        from ray import tune

        from raylit.trainer import Trainer

        if not callable(build):
            raise TypeError(
                f"Tuner(build=...) must be a function config -> module (or (module, datamodule)), got {build!r}"
            )
        trainer = Trainer() if trainer is None else trainer
        if not isinstance(trainer, Trainer):
            raise TypeError(f"Tuner(trainer=...) must be a raylit.Trainer, got {type(trainer).__qualname__}")
        self.param_space = dict(param_space or {})
        check_trainer_keys(trainer, self.param_space)
        self.tune_config = tune_config if tune_config is not None else tune.TuneConfig()
        if checkpoint_frequency is None:
            checkpoint_frequency = 0 if trainer.config.kwargs.get("enable_checkpointing") is False else 1
        if not isinstance(checkpoint_frequency, int) or checkpoint_frequency < 0:
            raise ValueError(f"checkpoint_frequency={checkpoint_frequency!r}: expected an int >= 0")
        self._pbt = _needs_checkpoints(self.tune_config.scheduler)
        if self._pbt is not None and checkpoint_frequency == 0:
            raise TuneConfigError(
                f"{type(self._pbt).__name__} restarts trials from checkpoints, but checkpointing is "
                "disabled (Trainer(enable_checkpointing=False) or checkpoint_frequency=0). Remove that, or use a "
                "scheduler that only stops trials (ASHAScheduler, MedianStoppingRule)."
            )
        self._multi_worker = trainer.config.uses_ray
        if reuse_actors is None:
            reuse_actors = self.tune_config.reuse_actors or not self._multi_worker
        self.tune_config = dataclasses.replace(self.tune_config, reuse_actors=bool(reuse_actors))
        self._resources = resources_per_trial
        self.run_config = (
            run_config
            if run_config is not None
            else tune.RunConfig(
                name=f"raylit-tune-{time.strftime('%Y%m%d-%H%M%S')}",
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if self._pbt is not None else 2),
            )
        )
        if not self.run_config.name:
            self.run_config = dataclasses.replace(self.run_config, name=f"raylit-tune-{time.strftime('%Y%m%d-%H%M%S')}")
        self.spec = TrialSpec(
            build=build,
            trainer=trainer,
            checkpoint_frequency=checkpoint_frequency,
            metrics=_metric_names(self.tune_config),
            check_unused_keys=check_unused_keys,
            seed=os.environ.get("PL_GLOBAL_SEED"),
            seed_workers=os.environ.get("PL_SEED_WORKERS"),
            teardown_timeout_s=float(os.environ.get("RAYLIT_TUNE_TEARDOWN_TIMEOUT_S", 120)),
        )
        self._tuner: Any = None
        self._watch = _ErrorWatch()

    # --------------------------------------------------------------------------------------------------------
    @property
    def experiment_path(self) -> str:
        from ray.train.constants import DEFAULT_STORAGE_PATH

        storage = self.run_config.storage_path or DEFAULT_STORAGE_PATH
        return (
            os.path.join(os.fspath(storage), self.run_config.name)
            if "://" not in str(storage)
            else f"{str(storage).rstrip('/')}/{self.run_config.name}"
        )

    def fit(self) -> Any:
        """Run the sweep; returns Ray Tune's ``ResultGrid``. Set-up errors found in a trial (an unlogged metric,
        an unused param_space key) are raised here, and stop the remaining trials."""
        if self._tuner is None:
            self._tuner = self._make_tuner()
        results = self._tuner.fit()
        raise_config_errors(results, self._watch)
        return results

    def get_results(self) -> Any:
        if self._tuner is None:
            raise RuntimeError("Tuner.get_results(): call fit() first")
        return self._tuner.get_results()

    def _make_tuner(self) -> Any:
        from ray import tune

        connect(0, 0, keep=True)  # reuse a connected Ray; else RAY_ADDRESS; else a private local instance
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        tune_config = self.tune_config
        resources = self._resources or default_resources(self.spec.trainer)
        if self._multi_worker and tune_config.max_concurrent_trials is None:
            tune_config = dataclasses.replace(
                tune_config, max_concurrent_trials=multi_worker_concurrency(self.spec.trainer)
            )
        run_config = dataclasses.replace(
            self.run_config,
            callbacks=[*(self.run_config.callbacks or []), self._watch],
            stop=_StopOnConfigError(self._watch, self.run_config.stop),
        )
        save_spec(self.experiment_path, self.spec, run_config.storage_filesystem)
        return tune.Tuner(
            make_trainable(self.spec, resources),
            param_space=self.param_space,
            tune_config=tune_config,
            run_config=run_config,
        )

    # --------------------------------------------------------------------------------------------------------
    @classmethod
    def restore(
        cls,
        path: str,
        build: Callable | None = None,
        *,
        trainer: Any = None,
        resume_unfinished: bool = True,
        resume_errored: bool = False,
        restart_errored: bool = False,
        param_space: dict[str, Any] | None = None,
        storage_filesystem: Any = None,
    ) -> Tuner:
        """Continue an interrupted sweep from its experiment directory (``<storage_path>/<name>``). ``build`` and
        ``trainer`` default to the ones saved when the sweep started (pass them when their code changed)."""
        from ray import tune

        spec = load_spec(path, storage_filesystem)
        if spec is None and build is None:
            raise FileNotFoundError(f"{path} has no {SPEC_FILE}: pass build= (and trainer=) to Tuner.restore")
        if spec is None:
            from raylit.trainer import Trainer

            spec = TrialSpec(build=build, trainer=trainer or Trainer())
        if build is not None:
            spec.build = build
        if trainer is not None:
            spec.trainer = trainer
        # Tune restores its TuneConfig and RunConfig from the experiment; the RunConfig here only names it
        experiment = str(path).rstrip("/") if "://" in str(path) else os.path.abspath(os.path.expanduser(path))
        name, storage = os.path.basename(experiment), os.path.dirname(experiment)
        restored = cls(
            spec.build,
            trainer=spec.trainer,
            param_space=param_space,
            run_config=tune.RunConfig(name=name, storage_path=storage),
            checkpoint_frequency=spec.checkpoint_frequency,
            check_unused_keys=spec.check_unused_keys,
        )
        restored.spec = spec  # the sweep's own settings (metrics, seed, ...) as saved when it started
        connect(0, 0, keep=True)
        restored._tuner = tune.Tuner.restore(
            path,
            make_trainable(spec, default_resources(spec.trainer)),
            resume_unfinished=resume_unfinished,
            resume_errored=resume_errored,
            restart_errored=restart_errored,
            param_space=param_space,
            storage_filesystem=storage_filesystem,
        )
        return restored

    @staticmethod
    def can_restore(path: str, storage_filesystem: Any = None) -> bool:
        from ray import tune

        return tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem)


# --------------------------------------------------------------------------------------------------------------
# checks on the driver
# --------------------------------------------------------------------------------------------------------------
def check_trainer_keys(trainer: Any, param_space: dict[str, Any]) -> None:
    """``trainer.<arg>`` keys must name Trainer arguments a trial may change; try each searched value by
    building a Trainer with it, so that a bad value fails here rather than in every trial."""
    from raylit.trainer import Trainer

    _, overrides = split_config(param_space)
    params = [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]
    for name, space in overrides.items():
        if name in NOT_SEARCHABLE:
            raise TuneConfigError(
                f"param_space key {TRAINER_PREFIX}{name}: Trainer({name}=...) cannot vary between trials (it decides "
                f"resources, file locations or holds live objects). Set it on the Trainer you pass to Tuner."
            )
        if name not in params:
            close = difflib.get_close_matches(name, params, n=1)
            hint = f" Did you mean {TRAINER_PREFIX}{close[0]}?" if close else ""
            raise TuneConfigError(f"param_space key {TRAINER_PREFIX}{name}: Trainer has no argument {name!r}.{hint}")
        for value in _candidate_values(space):
            try:
                trainer._clone(**{name: value})
            except Exception as err:  # noqa: BLE001 - re-raised with the key that caused it
                raise TuneConfigError(
                    f"param_space key {TRAINER_PREFIX}{name}={value!r} is not a valid Trainer argument: {err}"
                ) from err


def _candidate_values(space: Any) -> list[Any]:
    from ray.tune.search.sample import Categorical, Domain

    if isinstance(space, dict) and set(space) == {"grid_search"}:
        return list(space["grid_search"])
    if isinstance(space, Categorical):
        return [v for v in space.categories if not isinstance(v, Domain)]
    if isinstance(space, Domain):
        try:
            return [space.sample()]
        except Exception:  # noqa: BLE001 - sample_from and friends may need a spec
            return []
    return [space]


def _needs_checkpoints(scheduler: Any) -> Any:
    """The scheduler, if it restarts trials from checkpoints: PBT/PB2 (exploits) and the synchronous
    HyperBand (pauses trials and resumes them later). ASHA and the median rule only stop trials."""
    from ray.tune.schedulers import HyperBandScheduler, PopulationBasedTraining

    scheduler = getattr(scheduler, "_base_scheduler", scheduler)  # ResourceChangingScheduler
    return scheduler if isinstance(scheduler, (PopulationBasedTraining, HyperBandScheduler)) else None


def _metric_names(tune_config: Any) -> tuple[str, ...]:
    names = [tune_config.metric]
    for obj in (tune_config.scheduler, getattr(tune_config.scheduler, "_base_scheduler", None), tune_config.search_alg):
        names.append(getattr(obj, "metric", None) or getattr(obj, "_metric", None))
    out: list[str] = []
    for n in names:
        for m in [n] if isinstance(n, str) else list(n) if isinstance(n, (list, tuple)) else []:
            if m not in out:
                out.append(m)
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------
# Ray, resources, the trainable
# --------------------------------------------------------------------------------------------------------------
def default_resources(trainer: Any) -> dict[str, float]:
    if trainer.config.uses_ray:
        # The trial actor only drives; the Ray Train workers reserve their own resources (in their own placement
        # group). A CPU share, however small, would leave e.g. 1.99 CPUs on a 2-CPU machine, too few for two
        # 1-CPU workers; Tune refuses an empty request, so the actor asks for one byte of memory.
        return {"memory": 1}
    resources = {"CPU": 1.0}
    if trainer.config.accelerator == "cuda":
        resources["GPU"] = 1.0
    return resources


def multi_worker_concurrency(trainer: Any) -> int:
    """How many multi-worker trials fit on the cluster at once (else trials wait on each other's workers)."""
    import ray

    total = ray.cluster_resources()
    scaling = trainer.config.scaling_config
    per_worker = dict(getattr(scaling, "resources_per_worker", None) or {}) if scaling is not None else {}
    per_worker.setdefault("CPU", 1.0)
    if trainer.config.accelerator == "cuda" or getattr(scaling, "use_gpu", False):
        per_worker.setdefault("GPU", 1.0)
    fits = min(int(total.get(k, 0.0) // (v * trainer.config.num_workers)) for k, v in per_worker.items() if v > 0)
    return max(1, fits)


def make_trainable(spec: TrialSpec, resources: dict[str, float]) -> Any:
    """A Tune function trainable running :func:`run_trial`, whose cleanup waits for a stopped trial's
    teardown (Tune's own cleanup would end the actor while the run is still closing its loggers)."""
    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    def raylit_trial(config: dict[str, Any]) -> None:
        run_trial(spec, config)

    class RaylitTrial(wrap_function(raylit_trial)):
        def cleanup(self) -> None:
            try:
                super().cleanup()  # wakes the trial thread blocked in tune.report: it sees SystemExit(0)
            finally:
                wait_for_running_trials(spec.teardown_timeout_s)

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            # Reusing this actor for the next trial: Tune wakes the old trial's thread and waits
            # TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s) for it to end, else the *new* trial fails. Give the old run's
            # teardown the same time as a stop gets.
            old = os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S")
            os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(max(2, int(spec.teardown_timeout_s)))
            try:
                return super().reset_config(new_config)
            finally:
                if old is None:
                    os.environ.pop("TUNE_FUNCTION_THREAD_TIMEOUT_S", None)
                else:
                    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = old
                wait_for_running_trials(0)

    RaylitTrial.__name__ = RaylitTrial.__qualname__ = "raylit_trial"
    return tune.with_resources(RaylitTrial, {k.lower() if k in ("CPU", "GPU") else k: v for k, v in resources.items()})


# --------------------------------------------------------------------------------------------------------------
# set-up errors found inside trials: stop the sweep, raise on the driver
# --------------------------------------------------------------------------------------------------------------
class _ErrorWatch(TuneCallback):
    """Driver-side Tune callback: remembers the first TuneConfigError a trial raised."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.error is not None:
            return
        err = _trial_error(trial)
        if isinstance(err, TuneConfigError):
            self.error = err


class _StopOnConfigError(Stopper):
    """Stops every trial once a set-up error is known; otherwise defers to the user's ``stop``."""

    def __init__(self, watch: _ErrorWatch, user_stop: Any) -> None:
        self.watch, self.user_stop = watch, user_stop

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        stop = self.user_stop
        if stop is None:
            return False
        if isinstance(stop, dict):
            return any(k in result and result[k] >= v for k, v in stop.items())
        return bool(stop(trial_id, result))

    def stop_all(self) -> bool:
        if self.watch.error is not None:
            return True
        stop_all = getattr(self.user_stop, "stop_all", None)
        return bool(stop_all()) if callable(stop_all) else False


def _trial_error(trial: Any) -> BaseException | None:
    from ray import cloudpickle

    path = getattr(trial, "pickled_error_file", None)
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                return cloudpickle.load(f)
        except Exception:  # noqa: BLE001
            return None
    return None


def raise_config_errors(results: Any, watch: _ErrorWatch) -> None:
    err = watch.error
    if err is None:
        for result in results:
            if isinstance(result.error, TuneConfigError):
                err = result.error
                break
    if err is not None:
        cause = getattr(err, "cause", None)
        message = str(cause if isinstance(cause, TuneConfigError) else err)
        raise TuneConfigError(message.strip().splitlines()[-1] if "Traceback" in message else message) from None
