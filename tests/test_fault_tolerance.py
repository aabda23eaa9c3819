"""Fault tolerance on Ray: real kills (SIGKILL of a worker, of a checkpoint writer, of a raylet, of the driver),
then an automatic restore whose result is compared bitwise with an uninterrupted 2-worker run.

Every Ray test here shares the session's two-node cluster (``_ray_fixtures.ray_cluster``: 127.0.0.1 and
127.0.0.2, one CPU each), so each 2-worker run has one worker per node. Several kill points share one run
(each fault fires once, on the first attempt that reaches it): a restart costs ~15 s here, a fresh run ~25 s.
The tests without the ``ray`` marker check the pieces that need no cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import _ft_helpers as h
import pytest
import torch

from raylit.launch import fault

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="module")
def _ship_helpers_by_value():
    """Ray workers cannot import the test helpers by name; send them with the pickled run."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(h)
    yield
    cloudpickle.unregister_pickle_by_value(h)


@pytest.fixture
def ray_env(ray_cluster, monkeypatch):
    """The cluster, with the driver's seed set (re-applied on every worker) and a faster worker poll (Ray's
    default is 2 s; the driver passes the variable on to the controller)."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(h.SEED))
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    return ray_cluster


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory) -> dict:
    """The uninterrupted 2-worker run every interrupted run must reproduce: final weights and metrics.csv."""
    root = tmp_path_factory.mktemp("reference")
    old = os.environ.get("PL_GLOBAL_SEED")
    os.environ["PL_GLOBAL_SEED"] = str(h.SEED)
    try:
        model = h.FTModel()
        trainer = h.make_trainer(root)
        trainer.fit(model)
    finally:
        os.environ.pop("PL_GLOBAL_SEED") if old is None else os.environ.__setitem__("PL_GLOBAL_SEED", old)
    assert trainer.global_step == h.EPOCHS * h.N_TRAIN // 8
    return {"weights": h.weights(model), "csv": (root / "logs" / "lightning_logs" / "version_0" / "metrics.csv")
            .read_text()}


def _restores(text: str) -> list[str]:
    return [os.path.basename(p) for p in re.findall(r"raylit: restoring (\S+)", text)]


def _marker(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------------------------
# no cluster needed
# --------------------------------------------------------------------------------------------------------------
def test_lost_workers_are_retried_user_errors_are_not() -> None:
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    assert fault.is_lost_worker(WorkerHealthCheckFailedError("poll failed", ActorDiedError()))
    assert fault.is_lost_worker(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert fault.is_lost_worker(torch.distributed.DistNetworkError("recv failed"))
    assert fault.is_lost_worker(ConnectionResetError())
    assert not fault.is_lost_worker(ValueError("boom"))
    assert not fault.is_lost_worker(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    wrapped = RuntimeError("in training_step")
    wrapped.__cause__ = ConnectionResetError()
    assert fault.is_lost_worker(wrapped)
    # what the controller callback raises keeps the workers' exceptions for the driver
    err = fault.UserCodeFailed({1: ValueError("boom")})
    import pickle

    assert isinstance(pickle.loads(pickle.dumps(err)).worker_failures[1], ValueError)


def test_restarts_on_by_default_user_run_config_as_given(tmp_path) -> None:
    from ray.train import FailureConfig, RunConfig

    from raylit.launch import ray as ray_launch

    trainer = h.make_trainer(tmp_path)
    rc, plan = fault.driver_plan(trainer, "fit", ray_launch.run_config(trainer, "fit"))
    assert rc.failure_config.max_failures == fault.DEFAULT_MAX_FAILURES
    assert any(type(cb).__name__ == "StopOnUserCodeError" for cb in rc.callbacks)
    # the run's resume dir: under default_root_dir, one folder per run name
    assert plan == {"resume_dir": str(tmp_path / "resume" / rc.name), "run_name": rc.name}
    assert rc.name.startswith("raylit-fit-")

    user = RunConfig(name="exp", storage_path=str(tmp_path / "store"), failure_config=FailureConfig(max_failures=0))
    trainer = h.make_trainer(tmp_path, run_config=user)
    rc, plan = fault.driver_plan(trainer, "fit", user)
    assert rc.failure_config.max_failures == 0 and not rc.callbacks  # off, as asked
    assert plan["resume_dir"] == str(tmp_path / "store" / "exp" / "resume")  # the run's storage

    rc, plan = fault.driver_plan(trainer, "validate", user)
    assert plan is None  # only fit restores; evaluation just runs again


# --------------------------------------------------------------------------------------------------------------
# worker processes killed
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_killed_worker_resumes_exactly(ray_env, reference, tmp_path, capsys) -> None:
    """Rank 1 is SIGKILLed three times in one run -- mid-epoch in a training step, in the middle of a
    validation run, right after a resume checkpoint was written -- and the default restarts (3) bring it back
    each time from the newest checkpoint. The final weights equal the uninterrupted run's bitwise, and the CSV
    log is the same file: no step row duplicated or missing."""
    kills = [
        h.KillInTrainStep(tmp_path / "k1", rank=1, step=5),  # epoch 0, 1 step after the checkpoint of step 4
        h.KillInValidation(tmp_path / "k2", rank=1, step=9),  # epoch 1's mid-epoch validation
        h.KillInTrainStep(tmp_path / "k3", rank=1, step=14),  # right after the checkpoint of step 14
    ]
    model = h.FTModel()
    trainer = h.make_trainer(tmp_path, kills)
    start = time.time()
    trainer.fit(model)
    out = capsys.readouterr()
    text = out.out + out.err

    assert all(Path(k.marker).exists() for k in kills)
    assert _restores(text) == ["resume-step=4.ckpt", "resume-step=8.ckpt", "resume-step=14.ckpt"], text[-3000:]
    h.assert_bitwise_equal(h.weights(model), reference["weights"])
    assert trainer.global_step == 18
    csv = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert csv == reference["csv"]
    assert not (tmp_path / "logs" / "lightning_logs" / "version_1").exists()  # every attempt logged in place
    with capsys.disabled():
        print(f"\n[timing] 3 worker kills + restores: {time.time() - start:.1f}s")


@pytest.mark.ray
def test_checkpoint_killed_while_written_or_corrupt(ray_env, reference, tmp_path, capsys) -> None:
    """The writer (rank 0) is killed while it writes the resume checkpoint of step 6: that file never becomes
    "latest" and the next attempt restores step 4. Later rank 1 cuts the newest checkpoint (step 12) short and
    dies: the restart warns naming both files and restores step 10. The run is configured through the user's
    RunConfig (storage path + name + FailureConfig) and still ends with the uninterrupted weights."""
    from ray.train import FailureConfig, RunConfig

    faults = [
        h.KillDuringCheckpointWrite(tmp_path / "k1", rank=0, step=6),
        h.CorruptLatestThenKill(tmp_path / "k2", rank=1, step=12),
    ]
    run_config = RunConfig(name="ckpt-faults", storage_path=str(tmp_path / "storage"),
                           failure_config=FailureConfig(max_failures=2))
    model = h.FTModel()
    trainer = h.make_trainer(tmp_path, faults, run_config=run_config)
    trainer.fit(model)
    out = capsys.readouterr()
    text = out.out + out.err

    assert _marker(tmp_path / "k1")["where"] == "checkpoint write"
    assert _restores(text) == ["resume-step=4.ckpt", "resume-step=10.ckpt"], text[-3000:]
    assert re.search(r"resume-step=12\.ckpt.*could not be loaded.*resume-step=10\.ckpt", text, re.S), text[-3000:]
    h.assert_bitwise_equal(h.weights(model), reference["weights"])
    resume = tmp_path / "storage" / "ckpt-faults" / "resume"
    assert sorted(p.name for p in resume.iterdir()) == ["loggers.json", "resume-step=16.ckpt", "resume-step=18.ckpt"]


@pytest.mark.ray
def test_user_error_ends_the_run_without_restarts(ray_env, tmp_path) -> None:
    """An exception from the user's code is not a lost worker: no restart, the user's exception type on the
    driver at once (restarts are on by default)."""

    class Boom(h.KillInTrainStep):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_rank == 1 and trainer.global_step == 3:
                raise ValueError("boom on rank 1")

    clock = tmp_path / "steps.jsonl"
    with pytest.raises(ValueError, match="boom on rank 1"):
        h.make_trainer(tmp_path, [Boom(tmp_path / "unused", 1, 3), h.StepClock(clock)]).fit(h.FTModel())
    pids = {json.loads(line)["pid"] for line in clock.read_text().splitlines()}
    assert len(pids) == 1  # one attempt only


# --------------------------------------------------------------------------------------------------------------
# a node lost
# --------------------------------------------------------------------------------------------------------------
def _raylet_pid(node) -> int:
    from _ray_fixtures import _children

    for pid in _children(node.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith(b"/raylet"):
            return pid
    raise RuntimeError("no raylet under the node's `ray start` process")


@pytest.mark.ray
def test_lost_node_run_completes(ray_env, reference, tmp_path) -> None:
    """The second raylet (127.0.0.2) is SIGKILLed while the run is paused at step 7; a replacement node joins
    (a fixed-size run waits for resources); the run restores the step-6 checkpoint on the new group and ends
    with the uninterrupted weights. The fixture's node list gets the replacement, so later tests keep 2 nodes."""
    from _ray_fixtures import RayNode

    cluster = ray_env
    paused, release = tmp_path / "paused", tmp_path / "release"
    clock = tmp_path / "steps.jsonl"
    model = h.FTModel()
    trainer = h.make_trainer(tmp_path, [h.PauseAt(paused, step=7, release=release), h.StepClock(clock)])

    runner, failure = h.fit_in_background(trainer, model)
    old = cluster.nodes[1]
    try:
        deadline = time.monotonic() + 240
        while not paused.exists() and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert paused.exists(), failure
        killed_at = time.time()
        os.kill(_raylet_pid(old), signal.SIGKILL)
        # a short temp dir name (Ray's socket paths under it must fit 107 bytes) that does not start with the old
        # node's: old.stop() kills every process whose command line mentions that
        new = RayNode([f"--address={cluster.address}", "--node-ip-address=127.0.0.2", *cluster._common()],
                      os.path.join(cluster.root, "n2b"), cluster.env())
        new.start()
        cluster.nodes[1] = new
        runner.join(timeout=300)
        assert not runner.is_alive(), "the run did not finish within 300 s of the node loss"
        assert not failure, failure
    finally:
        release.write_text("go")  # a first attempt still paused (should not happen) goes on
        runner.join(timeout=60)
        old.stop()
        cluster.wait_for_nodes(timeout_s=120)

    h.assert_bitwise_equal(h.weights(model), reference["weights"])
    steps = [json.loads(line) for line in clock.read_text().splitlines()]
    attempts = {}
    for s in steps:
        attempts.setdefault(s["pid"], s)
    resumed = [s for s in attempts.values() if s["time"] > killed_at]
    assert resumed and resumed[0]["step"] == 6  # resumed at the step-6 checkpoint: nothing lost beyond it
    print(f"[timing] node loss -> first resumed step: {resumed[0]['time'] - killed_at:.1f}s")


# --------------------------------------------------------------------------------------------------------------
# the driver lost
# --------------------------------------------------------------------------------------------------------------
DRIVER = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
from ray import cloudpickle
from ray.train import RunConfig
import _ft_helpers as h
import raylit

cloudpickle.register_pickle_by_value(h)
raylit.seed_everything(h.SEED, verbose=False)
root = sys.argv[1]
model = h.FTModel()
trainer = h.make_trainer(root, [h.PauseAt(os.path.join(root, "paused"), step=7)],
                         run_config=RunConfig(name="driver-kill", storage_path=os.path.join(root, "storage")))
trainer.fit(model)
torch.save(h.weights(model), os.path.join(root, "final.pt"))
print("finished at step", trainer.global_step)
"""


@pytest.mark.ray
def test_killed_driver_rerun_continues(ray_env, reference, tmp_path) -> None:
    """The driver (a subprocess joined to the cluster) is SIGKILLed while its run is paused at step 7; Ray ends
    that run's workers. The same command is run again: it finds the run's resume directory (same RunConfig name
    and storage path), continues from the step-6 checkpoint, and ends with the uninterrupted weights and CSV."""
    script = tmp_path / "train.py"
    script.write_text(DRIVER.format(tests=str(TESTS)))
    env = {**os.environ, "RAY_ADDRESS": ray_env.address, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("PL_GLOBAL_SEED", None)  # the script seeds itself
    log1 = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stdout=log1,
                             stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "paused").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (tmp_path / "paused").exists(), (tmp_path / "first.log").read_text()[-3000:]
        resume = tmp_path / "storage" / "driver-kill" / "resume"
        assert (resume / "resume-step=6.ckpt").exists()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        log1.close()
    second = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-3000:]
    assert "finished at step 18" in text
    assert _restores(text) == ["resume-step=6.ckpt"], text[-3000:]
    h.assert_bitwise_equal(torch.load(tmp_path / "final.pt"), reference["weights"])
    csv = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert csv == reference["csv"]
