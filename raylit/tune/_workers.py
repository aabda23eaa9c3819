"""Multi-worker trials: raylit's Ray launcher runs the fit on Ray Train workers; rank 0 forwards each report.

    trial thread:   trainer.fit(...) -> launcher -> TorchTrainer (workers run the loop + TuneReportCallback)
    rank 0:         WorkerSink.report -> bridge.report(metrics, checkpoint bytes) ... waits for the answer
    pump thread:    bridge.next -> ray.tune.report (the trial's Tune session) -> bridge.decide(go on?)
    every rank:     the answer, broadcast from rank 0 -> trainer.should_stop when Tune stopped the trial

The checkpoint travels as bytes through the object store, so rank 0 may sit on any node.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
from typing import Any

from raylit.tune._report import CHECKPOINT_NAME, TuneReportCallback
from raylit.tune._spec import FirstReportCheck, TrialSpec, trial_trainer, tune_report


class _Bridge:
    """A tiny actor between rank 0 (which reports and waits) and the trial's pump thread (which decides)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[tuple[dict[str, float], Any]] = []
        self._decisions: dict[int, bool] = {}
        self._closed = False

    def report(self, metrics: dict[str, float], ckpt: Any) -> bool:
        with self._cond:
            index = len(self._items)
            self._items.append((metrics, ckpt))
            self._cond.notify_all()
            self._cond.wait_for(lambda: index in self._decisions or self._closed)
            return self._decisions.get(index, False)

    def next(self, index: int, timeout: float) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) > index or self._closed, timeout)
            return self._items[index] if len(self._items) > index else None

    def decide(self, index: int, go_on: bool) -> None:
        with self._cond:
            self._decisions[index] = go_on
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class WorkerSink:
    """Runs on the Ray Train workers: rank 0 sends the report (the checkpoint as bytes in the object store,
    so it reaches the trial from any node) and waits for Tune's answer; every rank gets it by broadcast."""

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge

    def report(self, trainer: Any, metrics: dict[str, float], ckpt_file: str | None) -> bool:
        go_on = True
        if trainer.is_global_zero:
            import ray

            ref = None
            if ckpt_file is not None:
                with open(ckpt_file, "rb") as f:
                    ref = ray.put(f.read())
            go_on = bool(ray.get(self.bridge.report.remote(metrics, [ref] if ref is not None else None)))
        return bool(trainer.strategy.broadcast(go_on, 0))


def fit_multi_worker(
    spec: TrialSpec,
    overrides: dict[str, Any],
    model: Any,
    fit_kwargs: dict[str, Any],
    ckpt_file: str | None,
    refresh: bool,
    check: FirstReportCheck,
    config: dict[str, Any],
    trial_dir: str,
) -> bool:
    import ray
    import ray.train
    from ray import tune

    bridge = ray.remote(num_cpus=0, max_concurrency=4)(_Bridge).remote()
    callback = TuneReportCallback(WorkerSink(bridge), spec.checkpoint_frequency, refresh_hparams=refresh)
    ctx = tune.get_context()
    # a fresh Ray Train run name per start: reusing one would make Train auto-resume its own last snapshot
    name = f"train-{ctx.get_trial_id()}-{os.getpid()}-{threading.get_ident() % 10000}-{_counter()}"
    run_config = spec.trainer.config.run_config
    if run_config is None:
        run_config = ray.train.RunConfig(
            name=name,
            storage_path=os.path.join(trial_dir, "ray_train"),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        )
    else:  # the user's settings, but never one run name shared by all trials
        run_config = dataclasses.replace(run_config, name=name)
    trainer = trial_trainer(spec.trainer, overrides, trial_dir, callback, run_config=run_config)
    state: dict[str, Any] = {"stopped": False, "error": None, "finished": False}
    pump = threading.Thread(target=_pump, args=(bridge, check, config, state), name="raylit-tune-pump", daemon=True)
    pump.start()
    try:
        trainer.fit(model, ckpt_path=ckpt_file, **fit_kwargs)
    finally:
        state["finished"] = True
        try:
            ray.get(bridge.close.remote(), timeout=30)
        except Exception:  # noqa: BLE001
            pass
        pump.join(timeout=60)
        ray.kill(bridge)
    if state["error"] is not None:
        raise state["error"]
    return state["stopped"]


_count = [0]


def _counter() -> int:
    _count[0] += 1
    return _count[0]


def _pump(bridge: Any, check: FirstReportCheck, config: dict[str, Any], state: dict[str, Any]) -> None:
    import ray

    index = 0
    while not state["finished"]:
        item = ray.get(bridge.next.remote(index, 1.0))
        if item is None:
            continue
        metrics, refs = item
        tmp = None
        go_on = False
        try:
            ckpt_file = None
            if refs:
                tmp = tempfile.mkdtemp(prefix="raylit-tune-ckpt-")
                ckpt_file = os.path.join(tmp, CHECKPOINT_NAME)
                with open(ckpt_file, "wb") as f:
                    f.write(ray.get(refs[0]))
            go_on = tune_report(check, config, metrics, ckpt_file)
            if not go_on:
                state["stopped"] = True
        except BaseException as err:  # noqa: BLE001 - surfaced by the trial thread after the run ends
            state["error"] = err
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            ray.get(bridge.decide.remote(index, go_on))
        index += 1
        if not go_on:
            return
