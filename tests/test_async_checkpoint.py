"""Checkpoints written in a background thread (raylit.async_checkpoint) by ModelCheckpoint and ResumeCheckpoint:
the same bytes as a synchronous save, a snapshot later steps do not change, errors that surface, files that
count only once complete, and a kill mid-write that never leaves a corrupt newest file."""

import io
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import OrderedDict, namedtuple
from pathlib import Path

import pytest
import torch
from test_engine import QUIET, DropoutModel

import raylit
from raylit import fs
from raylit.async_checkpoint import AsyncCheckpointWriter, _Snapshot
from raylit.callbacks import ModelCheckpoint
from raylit.resume import ResumeCheckpoint, latest_resume_checkpoint, list_resume_checkpoints

Pair = namedtuple("Pair", "a b")


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _fit(root, callbacks, epochs=2, **kw):
    raylit.seed_everything(0, verbose=False)
    model = DropoutModel()
    trainer = raylit.Trainer(max_epochs=epochs, callbacks=callbacks, default_root_dir=str(root), **QUIET, **kw)
    trainer.fit(model)
    return trainer, model


class _SlowWrites:
    """Patches ``fs.write_torch`` (the background thread's write): each write waits ``delay`` seconds or until
    ``gate`` is set, and may fail for paths containing ``fail``."""

    def __init__(self, monkeypatch, delay=0.0, gate=None, fail=None):
        self.real, self.delay, self.gate, self.fail = fs.write_torch, delay, gate, fail
        self.threads = set()
        monkeypatch.setattr(fs, "write_torch", self)

    def __call__(self, obj, path):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(30)
        time.sleep(self.delay)
        if self.fail and self.fail in os.path.basename(path):
            raise OSError(f"injected write failure for {path}")
        self.real(obj, path)


# --------------------------------------------------------------------------------------------------------------
# the snapshot
# --------------------------------------------------------------------------------------------------------------
def test_snapshot_serialises_to_the_same_bytes_and_is_not_mutated():
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(lin.parameters())
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    base = torch.arange(10.0)
    hp = {"lr": 0.1, "layers": [1, 2]}
    ckpt = {
        "state_dict": OrderedDict(lin.state_dict()),
        "optimizer_states": [opt.state_dict()],
        "views": [base[2:5], base[::2], base],
        "hp": hp,
        "hp_again": hp,
        "size": torch.Size([2, 3]),
        "pair": Pair(1, torch.ones(2)),
    }
    expected = _bytes(ckpt)
    snap = _Snapshot({}).copy(ckpt)
    assert _bytes(snap) == expected  # shared storages, shared dicts, container types: as the original

    lin.weight.data.add_(1.0)
    opt.step()
    base.mul_(3)
    hp["layers"].append(3)
    assert _bytes(snap) == expected  # what happens after the snapshot does not reach it
    assert snap["views"][0].untyped_storage().data_ptr() == snap["views"][2].untyped_storage().data_ptr()


def test_snapshot_keeps_a_device_location_tag():
    """A host copy of a GPU storage is tagged with the GPU's location, as torch.save tags the original (here a
    CPU storage is registered by hand as if it were a copy of cuda:0)."""
    from raylit import async_checkpoint as ac

    t = torch.arange(4.0)
    ac._register_tagger()
    with ac._LOCATIONS_LOCK:
        ac._LOCATIONS[t.untyped_storage().data_ptr()] = "cuda:0"
    try:
        data = _bytes({"w": t})
    finally:
        with ac._LOCATIONS_LOCK:
            ac._LOCATIONS.pop(t.untyped_storage().data_ptr())
    assert b"cuda:0" in data and b"cuda:0" not in _bytes({"w": t})
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert torch.equal(loaded["w"], t)


# --------------------------------------------------------------------------------------------------------------
# ModelCheckpoint
# --------------------------------------------------------------------------------------------------------------
def test_async_files_are_bitwise_the_sync_files(tmp_path):
    ckpt_dir = tmp_path / "ckpts"
    files = {}
    for mode in (False, True):
        cb = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1, save_last=True, async_save=mode)
        _fit(tmp_path / "root", [cb])
        assert (cb._writer.submitted > 0) == mode  # the background path was taken (or not)
        assert (cb._writer.deferred > 0) == mode  # Adam's state was copied in the background
        files[mode] = {p.name: p.read_bytes() for p in sorted(ckpt_dir.iterdir())}
        shutil.rmtree(ckpt_dir)
    assert list(files[True]) == list(files[False]) and len(files[True]) == 7  # steps 3..18, epoch ends, last
    for name in files[False]:
        assert files[True][name] == files[False][name], name


def test_snapshot_is_taken_at_the_save_not_when_written(tmp_path, monkeypatch):
    """The write of step 4 is held back until training has gone on to step 8: the file still holds the state of
    its own step (weights, Adam's moments and step count of step 4), and did not exist before it was written."""
    gate = threading.Event()
    slow = _SlowWrites(monkeypatch, gate=gate)
    seen = {}

    class Watch(raylit.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 4:
                seen["weights"] = {k: v.clone() for k, v in pl_module.state_dict().items()}
            if trainer.global_step == 8:
                seen["exists_at_8"] = (tmp_path / "c" / "s4.ckpt").exists()
                seen["moved_on"] = not torch.equal(
                    pl_module.state_dict()["net.0.weight"], seen["weights"]["net.0.weight"]
                )
                gate.set()

    cb = ModelCheckpoint(
        dirpath=tmp_path / "c", filename="s{step}", every_n_train_steps=4, save_top_k=-1, auto_insert_metric_name=False
    )
    _fit(tmp_path, [Watch(), cb], epochs=1)
    assert slow.threads and all(n.startswith("raylit-checkpoint") for n in slow.threads)
    assert seen["exists_at_8"] is False and seen["moved_on"]
    ckpt4 = torch.load(tmp_path / "c" / "s4.ckpt", weights_only=False)
    assert ckpt4["global_step"] == 4
    for k, v in seen["weights"].items():
        assert torch.equal(ckpt4["state_dict"][k], v), k
    assert int(ckpt4["optimizer_states"][0]["state"][0]["step"]) == 4
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["s4.ckpt", "s8.ckpt"]


def test_fit_returns_with_every_file_written(tmp_path, monkeypatch):
    _SlowWrites(monkeypatch, delay=0.3)
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=5, save_top_k=-1, save_last=True)
    trainer, _ = _fit(tmp_path, [cb])
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == [
        "epoch=0-step=10.ckpt",
        "epoch=0-step=5.ckpt",
        "epoch=1-step=15.ckpt",
        "epoch=1-step=20.ckpt",
        "last.ckpt",
    ]
    assert not cb._writer.pending and cb._writer._executor is None  # waited for and shut down
    assert torch.load(cb.last_model_path, weights_only=False)["global_step"] == 20
    assert Path(cb.best_model_path).name == "epoch=1-step=20.ckpt"


class Scores(raylit.Callback):
    """Logs a scripted ``score`` at each epoch end (before the checkpoint callback reads it)."""

    def __init__(self, scores):
        self.scores = scores

    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.log("score", float(self.scores[trainer.current_epoch]))


def _top_k_run(root, async_save, monkeypatch):
    """save_top_k=2 over 5 epochs; with async_save, each write waits for the next epoch's start, and at epoch 4's
    start (epoch 3's file, score 1.0, pending; it replaces epoch=2) what readers see is recorded."""
    gate = threading.Event()
    if async_save:
        _SlowWrites(monkeypatch, gate=gate)
    cb = ModelCheckpoint(
        dirpath=root / "c",
        monitor="score",
        save_top_k=2,
        save_last=True,
        every_n_epochs=1,
        filename="{epoch}",
        async_save=async_save,
    )
    during = []

    class Peek(raylit.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if not async_save:
                return
            if trainer.current_epoch == 4:
                during.append(
                    (
                        Path(cb.best_model_path).name,
                        sorted(Path(p).name for p in cb.best_k_models),
                        sorted(p.name for p in (root / "c").iterdir()),
                    )
                )
            gate.set()
            if trainer.current_epoch < 4:
                cb._writer.wait()
                gate.clear()

    _fit(root, [Scores([5.0, 3.0, 4.0, 1.0, 2.0]), Peek(), cb], epochs=5, limit_train_batches=2, limit_val_batches=0)
    view = {
        "files": sorted(p.name for p in (root / "c").iterdir()),
        "best": Path(cb.best_model_path).name,
        "score": float(cb.best_model_score),
        "kth": Path(cb.kth_best_model_path).name,
        "kth_value": float(cb.kth_value),
        "top_k": {Path(p).name: float(v) for p, v in cb.best_k_models.items()},
        "last": Path(cb.last_model_path).name,
    }
    return view, during


def test_top_k_bookkeeping_matches_sync_and_counts_only_complete_files(tmp_path, monkeypatch):
    """The same files and best/kth/last as a synchronous run; while a write is pending, readers see the previous
    (complete) state and the file it replaces is still there."""
    sync, _ = _top_k_run(tmp_path / "sync", False, monkeypatch)
    async_, during = _top_k_run(tmp_path / "async", True, monkeypatch)
    assert async_ == sync
    assert async_["files"] == ["epoch=3.ckpt", "epoch=4.ckpt", "last.ckpt"] and async_["best"] == "epoch=3.ckpt"
    assert during == [("epoch=1.ckpt", ["epoch=1.ckpt", "epoch=2.ckpt"], ["epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"])]


def test_a_failed_background_write_raises_and_keeps_the_last_complete_state(tmp_path, monkeypatch):
    _SlowWrites(monkeypatch, fail="step=6")
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=3)
    with pytest.raises(OSError, match="injected write failure") as info:
        _fit(tmp_path, [cb])
    assert any("background write of checkpoint" in note for note in getattr(info.value, "__notes__", []))
    # the step-3 file is what counts: kept on disk (its deletion waited for step 6's file) and still "best"
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["epoch=0-step=3.ckpt"]
    assert Path(cb.best_model_path).name == "epoch=0-step=3.ckpt"


def test_a_write_error_during_a_failing_run_is_attached_not_lost(tmp_path, monkeypatch):
    gate = threading.Event()
    _SlowWrites(monkeypatch, gate=gate, fail="step=4")

    class Boom(raylit.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 5:
                gate.set()
                raise KeyError("user error")

    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=4)
    with pytest.warns(RuntimeWarning, match="background checkpoint write failed"):
        with pytest.raises(KeyError, match="user error") as info:
            _fit(tmp_path, [Boom(), cb])
    assert any("injected write failure" in note for note in info.value.__notes__)


def test_user_save_checkpoint_stays_synchronous(tmp_path):
    class SaveNow(raylit.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                path = tmp_path / "mine.ckpt"
                trainer.save_checkpoint(path)
                assert torch.load(path, weights_only=False)["global_step"] == 2

    _fit(tmp_path, [SaveNow(), ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2)], epochs=1)


def test_writer_holds_one_step_at_a_time():
    """A save at a new step waits for the previous step's write; saves at the same step share one job."""
    gate = threading.Event()
    writer = AsyncCheckpointWriter()
    real = fs.write_torch
    order = []

    def write(obj, path):
        gate.wait(10)
        order.append(path)

    try:
        fs.write_torch = write
        with writer.capture(1):
            fs.save_torch({"w": torch.ones(3)}, "a")
        with writer.capture(1):
            fs.save_torch({"w": torch.ones(3)}, "b")
        assert writer.pending and len(writer._job.writes) == 2
        threading.Timer(0.3, gate.set).start()
        with writer.capture(2):  # waits for step 1's job
            assert order == ["a", "b"]
            fs.save_torch({"w": torch.ones(3)}, "c")
        writer.close()
    finally:
        fs.write_torch = real
    assert order == ["a", "b", "c"] and writer.submitted == 3


# --------------------------------------------------------------------------------------------------------------
# deferred copy of optimizer state
# --------------------------------------------------------------------------------------------------------------
class _Optimizer(raylit.Callback):
    """Keeps the (raw torch) optimizer of the fit."""

    def on_train_start(self, trainer, pl_module):
        self.opt = trainer.optimizers[0]
        assert isinstance(self.opt, torch.optim.Adam)


def _tensors_equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _tensors_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_deferred_optimizer_state_is_that_of_the_saved_step(tmp_path):
    """Adam's state is copied in the background, after the save returned: every file (ModelCheckpoint and
    ResumeCheckpoint) still holds the weights and optimizer state of its own step, as a synchronous run's file."""
    runs = {}
    for mode in (False, True):
        keep = _Optimizer()
        cb = ModelCheckpoint(dirpath=tmp_path / f"c{mode}", every_n_train_steps=3, save_top_k=-1, async_save=mode)
        rc = ResumeCheckpoint(dirpath=str(tmp_path / f"r{mode}"), every_n_train_steps=4, every_n_seconds=None,
                              keep=10, async_save=mode)
        _fit(tmp_path / "root", [keep, rc, cb])
        if mode:
            assert cb._writer.deferred > 0 and rc._writer.deferred > 0  # the deferred path was taken
        assert not keep.opt._optimizer_step_pre_hooks  # no hook left once fit returned
        runs[mode] = {
            p.name: torch.load(p, weights_only=False)
            for d in (f"c{mode}", f"r{mode}") for p in sorted((tmp_path / d).iterdir())
        }
    assert list(runs[True]) == list(runs[False]) and len(runs[True]) == 11  # 6 + epoch ends, 5 resume files
    for name, sync in runs[False].items():
        got = runs[True][name]
        assert got["global_step"] == sync["global_step"]
        _tensors_equal(got["state_dict"], sync["state_dict"], name)
        _tensors_equal(got["optimizer_states"], sync["optimizer_states"], name)
        assert int(got["optimizer_states"][0]["state"][0]["step"]) == got["global_step"], name


def test_the_next_optimizer_step_waits_for_the_deferred_copy(tmp_path):
    """The background copy of step 4's optimizer state is held (test seam) until training is at step 5's
    optimizer step; while held (1 s) the step does not happen, and the file holds step 4's state."""
    about_to_step, stepped = threading.Event(), threading.Event()
    seen = {}

    class Watch(_Optimizer):
        def on_train_start(self, trainer, pl_module):
            super().on_train_start(trainer, pl_module)

            def before(opt, args, kwargs):  # registered before the writer's hook: runs first
                if trainer.global_step == 4 and not about_to_step.is_set():
                    seen["weight"] = pl_module.net[0].weight.detach().clone()
                    seen["exp_avg"] = opt.state[pl_module.net[0].weight]["exp_avg"].clone()
                    about_to_step.set()

            self.opt.register_step_pre_hook(before)
            self.opt.register_step_post_hook(lambda *_: stepped.set() if about_to_step.is_set() else None)
            self.weight = pl_module.net[0].weight

    def hold():  # on the background thread, before the deferred copy
        if "held" in seen:
            return
        seen["held"] = True
        assert about_to_step.wait(30)
        seen["stepped_while_held"] = stepped.wait(1.0)  # the step must not run while the copy is pending
        seen["weight_unchanged"] = torch.equal(watch.weight, seen["weight"])

    watch = Watch()
    cb = ModelCheckpoint(
        dirpath=tmp_path / "c", filename="s{step}", every_n_train_steps=4, save_top_k=-1, auto_insert_metric_name=False
    )
    cb._writer._before_copy = hold
    _fit(tmp_path, [watch, cb], epochs=1)
    assert seen["stepped_while_held"] is False and seen["weight_unchanged"] is True
    assert stepped.is_set() and cb._writer.blocked_in_step_s > 0  # it waited (how long depends on the machine)
    ckpt4 = torch.load(tmp_path / "c" / "s4.ckpt", weights_only=False)
    assert torch.equal(ckpt4["optimizer_states"][0]["state"][0]["exp_avg"], seen["exp_avg"])
    assert torch.equal(ckpt4["state_dict"]["net.0.weight"], seen["weight"])
    assert int(ckpt4["optimizer_states"][0]["state"][0]["step"]) == 4


class _OwnStep(torch.optim.Adam):
    """A step torch did not write: nothing is known about when it writes its state."""

    def step(self, closure=None):
        return super().step(closure)


@pytest.mark.parametrize("kind", ["no closure", "closure", "own step"])
def test_a_step_waits_for_the_copy_and_the_hook_goes_after_it(tmp_path, kind):
    """Held background copy: a step on another thread does not write the state until the copy is done. torch's
    optimizers run the closure (forward/backward) first and wait after it; an optimizer whose step is not
    torch's waits before it starts."""
    lin = torch.nn.Linear(64, 32)
    opt = (_OwnStep if kind == "own step" else torch.optim.Adam)(lin.parameters())
    lin(torch.randn(4, 64)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in opt.state[lin.weight].items()}
    weight = lin.weight.detach().clone()
    release, closure_ran = threading.Event(), threading.Event()
    writer = AsyncCheckpointWriter()
    writer._before_copy = lambda: release.wait(30)
    with writer.capture(1, [opt]):
        fs.save_torch({"w": lin.state_dict(), "opt": opt.state_dict()}, str(tmp_path / "a.ckpt"))
    assert writer.deferred == 6 and len(opt._optimizer_step_pre_hooks) == 1  # 2 parameters x (step, 2 moments)

    def closure():
        closure_ran.set()
        return torch.tensor(0.0)

    step = threading.Thread(target=opt.step if kind == "no closure" else lambda: opt.step(closure))
    step.start()
    if kind == "closure":
        assert closure_ran.wait(30)  # the closure is not held back ...
    step.join(0.5)
    assert step.is_alive() and torch.equal(lin.weight, weight)  # ... the update is
    assert closure_ran.is_set() == (kind == "closure")
    release.set()
    step.join(30)
    assert not step.is_alive() and not torch.equal(lin.weight, weight)
    assert writer.blocked_in_step_s > 0.1
    writer.wait()
    assert not opt._optimizer_step_pre_hooks and not writer.pending
    saved = torch.load(tmp_path / "a.ckpt", weights_only=False)
    _tensors_equal(saved["opt"]["state"][0], before)
    assert torch.equal(saved["w"]["weight"], weight)
    writer.close()


def test_a_torn_snapshot_fails_the_job_and_is_never_published(tmp_path):
    """Optimizer state changed in place (not by the hooked step) while its copy is pending: the file is not
    written, the checkpoint does not count, and the error reaches the main thread."""
    release = threading.Event()

    class Tamper(_Optimizer):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4 and not release.is_set():  # step 4's copy is held
                next(iter(self.opt.state.values()))["exp_avg"].add_(1.0)
                release.set()

    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=4, save_top_k=-1, save_last=True)
    cb._writer._before_copy = lambda: release.wait(30)
    tamper = Tamper()
    with pytest.raises(RuntimeError, match="changed in place before the background copy") as info:
        _fit(tmp_path, [tamper, cb])
    assert "async_save=False" in str(info.value)
    assert any("background write of checkpoint" in note for note in getattr(info.value, "__notes__", []))
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []
    assert cb.best_model_path == "" and cb.last_model_path == "" and not cb.best_k_models
    assert not tamper.opt._optimizer_step_pre_hooks


# --------------------------------------------------------------------------------------------------------------
# ResumeCheckpoint
# --------------------------------------------------------------------------------------------------------------
def test_resume_checkpoints_prune_only_after_the_newer_file_is_complete(tmp_path, monkeypatch):
    gate = threading.Event()
    _SlowWrites(monkeypatch, gate=gate)
    seen = []
    rc = ResumeCheckpoint(dirpath=str(tmp_path / "r"), every_n_train_steps=2, every_n_seconds=None, keep=1)

    class Peek(raylit.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step = trainer.global_step
            if step in (3, 5):  # a write (step 2, 4) pending: latest is the previous complete one
                seen.append((step, [Path(p).name for p in list_resume_checkpoints(rc.dirpath)]))
                gate.set()
                rc._writer.wait()
                if step == 3:
                    gate.clear()

    _fit(tmp_path, [Peek(), rc], epochs=1, limit_train_batches=6, enable_checkpointing=False)
    assert seen == [(3, []), (5, ["resume-step=2.ckpt"])]
    assert [Path(p).name for p in list_resume_checkpoints(rc.dirpath)] == ["resume-step=6.ckpt"]
    assert latest_resume_checkpoint(rc.dirpath).endswith("resume-step=6.ckpt")


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    sys.path.insert(0, {tests!r})
    import torch
    import raylit
    from test_engine import QUIET, DropoutModel
    from raylit.resume import ResumeCheckpoint

    directory = {directory!r}

    class KillWhileWriting(raylit.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            if trainer.global_step != 6:
                return
            checkpoint["padding"] = torch.zeros(32 * 2**20)  # 128 MB: the write takes a while

            def watch():
                while True:
                    if any(n.startswith(".tmp-") for n in os.listdir(directory)):
                        os.kill(os.getpid(), signal.SIGKILL)
                    time.sleep(0.0005)

            threading.Thread(target=watch, daemon=True).start()

    rc = ResumeCheckpoint(dirpath=directory, every_n_train_steps=2, every_n_seconds=None, keep=2)
    trainer = raylit.Trainer(max_epochs=1, callbacks=[KillWhileWriting(), rc], enable_checkpointing=False,
                             default_root_dir={root!r}, **QUIET)
    trainer.fit(DropoutModel())
""")


def test_a_kill_during_a_background_write_leaves_the_previous_checkpoint_latest(tmp_path):
    directory = tmp_path / "r"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), directory=str(directory), root=str(tmp_path))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(raylit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-3000:]
    names = sorted(os.listdir(directory))
    assert "resume-step=6.ckpt" not in names and any(n.startswith(".tmp-") for n in names), names
    assert [Path(p).name for p in list_resume_checkpoints(str(directory))] == [
        "resume-step=4.ckpt",
        "resume-step=2.ckpt",
    ]
    assert latest_resume_checkpoint(str(directory)).endswith("resume-step=4.ckpt")


# --------------------------------------------------------------------------------------------------------------
# s3:// (moto's S3 server on loopback)
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    import socket

    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline and proc.poll() is None, "moto_server did not start"
            time.sleep(0.2)
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="ckpts")
        yield {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_s3_async_writes_match_sync_and_are_complete_when_fit_returns(s3_server, tmp_path, monkeypatch):
    from raylit.callbacks.model_checkpoint import _listdir

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    url = "s3://ckpts/run"
    files = {}
    for mode in (False, True):
        cb = ModelCheckpoint(
            dirpath=url,
            every_n_train_steps=5,
            save_top_k=2,
            monitor="step",
            mode="max",
            save_last=True,
            async_save=mode,
        )
        rc = ResumeCheckpoint(
            dirpath="s3://ckpts/resume-run", every_n_train_steps=4, every_n_seconds=None, keep=2, async_save=mode
        )
        _fit(tmp_path, [rc, cb])
        assert (cb._writer.submitted > 0) == mode and (rc._writer.submitted > 0) == mode
        resume = list_resume_checkpoints("s3://ckpts/resume-run")
        assert [os.path.basename(p) for p in resume] == ["resume-step=20.ckpt", "resume-step=16.ckpt"]
        ckpts = [p for p in _listdir(url) if p.endswith(".ckpt")]
        files[mode] = {os.path.basename(p): fs.read_bytes(p) for p in ckpts + resume}
        assert cb.last_model_path == f"{url}/last.ckpt"
        for path in ckpts + resume:
            fs.remove(path)
    assert (
        sorted(files[True])
        == sorted(files[False])
        == ["epoch=1-step=15.ckpt", "epoch=1-step=20.ckpt", "last.ckpt", "resume-step=16.ckpt", "resume-step=20.ckpt"]
    )
    for name, data in files[False].items():
        assert files[True][name] == data, name
