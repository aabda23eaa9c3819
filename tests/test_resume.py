"""Resume checkpoints (the engine half of fault tolerance): cadence, retention, corrupt-latest fallback,
ckpt_path="last", and exactness of a run resumed from one."""

import os

import pytest
import torch
from test_engine import QUIET, DropoutModel, _Crash, _fit_uninterrupted, _weights

import raylit
import raylit.testing
from raylit.resume import ResumeCheckpoint, latest_resume_checkpoint, list_resume_checkpoints


class CrashAt(raylit.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Crash()


def _steps(paths):
    return [int(os.path.basename(p)[len("resume-step="):-len(".ckpt")]) for p in paths]


def test_periodic_saves_with_bounded_retention(tmp_path):
    rc = ResumeCheckpoint(dirpath=str(tmp_path / "resume"), every_n_train_steps=4, every_n_seconds=None, keep=2)
    raylit.seed_everything(0, verbose=False)
    trainer = raylit.Trainer(max_epochs=2, callbacks=[rc], enable_checkpointing=False,
                             default_root_dir=str(tmp_path), **QUIET)
    trainer.fit(DropoutModel())
    # saves at steps 4, 8, 12, 16, 20; only the two newest remain, and no temporary files
    assert _steps(list_resume_checkpoints(rc.dirpath)) == [20, 16]
    assert sorted(os.listdir(rc.dirpath)) == ["resume-step=16.ckpt", "resume-step=20.ckpt"]


def test_time_cadence_saves(tmp_path):
    rc = ResumeCheckpoint(dirpath=str(tmp_path / "r"), every_n_train_steps=None, every_n_seconds=1e-9, keep=3,
                          max_write_share=None)
    trainer = raylit.Trainer(max_epochs=1, limit_train_batches=5, callbacks=[rc], enable_checkpointing=False,
                             default_root_dir=str(tmp_path), **QUIET)
    trainer.fit(DropoutModel())
    assert _steps(list_resume_checkpoints(rc.dirpath)) == [5, 4, 3]


def test_time_cadence_stretches_for_a_state_that_takes_long_to_write(tmp_path):
    """The default cadence is 60 s with ``max_write_share=0.1``: the next save waits at least the last save's
    duration / max_write_share. With a share so small that any save's duration stretches the interval past the
    run, only the first save happens; and the rule is max(every_n_seconds, duration / share)."""
    assert (ResumeCheckpoint().every_n_seconds, ResumeCheckpoint().max_write_share) == (60.0, 0.1)
    rc = ResumeCheckpoint(dirpath=str(tmp_path / "r"), every_n_seconds=1e-9, max_write_share=1e-9, keep=5,
                          async_save=False)
    trainer = raylit.Trainer(max_epochs=1, limit_train_batches=5, callbacks=[rc], enable_checkpointing=False,
                             default_root_dir=str(tmp_path), **QUIET)
    trainer.fit(DropoutModel())
    assert _steps(list_resume_checkpoints(rc.dirpath)) == [1]
    assert rc._deadline.seconds > 1e3  # the first save's duration / 1e-9
    rc = ResumeCheckpoint(every_n_seconds=60.0)
    rc._took(2.0)
    assert rc._deadline.seconds == 60.0
    rc._took(30.0)
    assert rc._deadline.seconds == 300.0
    with pytest.raises(ValueError, match="max_write_share=0"):
        ResumeCheckpoint(max_write_share=0)


def test_corrupt_latest_falls_back_to_previous_with_a_warning(tmp_path):
    rc = ResumeCheckpoint(dirpath=str(tmp_path / "r"), every_n_train_steps=2, every_n_seconds=None, keep=3)
    trainer = raylit.Trainer(max_epochs=1, limit_train_batches=6, callbacks=[rc], enable_checkpointing=False,
                             default_root_dir=str(tmp_path), **QUIET)
    trainer.fit(DropoutModel())
    newest, previous = list_resume_checkpoints(rc.dirpath)[:2]
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:  # what a writer killed half-way through a non-atomic copy leaves
        f.write(data[: len(data) // 3])
    with pytest.warns(UserWarning, match="resume-step=6.ckpt.*resume-step=4.ckpt"):
        assert latest_resume_checkpoint(rc.dirpath) == previous


@pytest.mark.parametrize("crash_at", [7, 13])
def test_crash_then_ckpt_path_last_resumes_exactly(tmp_path, crash_at):
    """A run that dies is rerun with the same command and ckpt_path="last": it resumes from the newest resume
    checkpoint and ends with the uninterrupted run's weights."""
    full, _ = _fit_uninterrupted(tmp_path)

    def run(callbacks):
        rc = ResumeCheckpoint(every_n_train_steps=3, every_n_seconds=None, keep=2)
        trainer = raylit.Trainer(max_epochs=3, callbacks=[rc, *callbacks], enable_checkpointing=False,
                                 default_root_dir=str(tmp_path / "run"), **QUIET)
        trainer.fit(DropoutModel(), ckpt_path="last")
        return trainer

    raylit.seed_everything(0, verbose=False)
    with pytest.raises(_Crash):
        run([CrashAt(crash_at)])
    raylit.seed_everything(555, verbose=False)  # the rerun starts with different RNG and weights
    resumed_model_holder = {}

    class Keep(raylit.Callback):
        def on_fit_end(self, trainer, pl_module):
            resumed_model_holder["model"] = pl_module

    trainer = run([Keep()])
    assert trainer.global_step == 30
    resumed = resumed_model_holder["model"]
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_first_run_with_ckpt_path_last_starts_from_scratch(tmp_path):
    rc = ResumeCheckpoint(every_n_train_steps=5, every_n_seconds=None)
    trainer = raylit.Trainer(max_epochs=1, limit_train_batches=3, callbacks=[rc], enable_checkpointing=False,
                             default_root_dir=str(tmp_path), **QUIET)
    with pytest.warns(UserWarning, match="no last checkpoint"):
        trainer.fit(DropoutModel(), ckpt_path="last")
    assert trainer.global_step == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_train_steps=0"):
        ResumeCheckpoint(every_n_train_steps=0)
    with pytest.raises(ValueError, match="keep=0"):
        ResumeCheckpoint(keep=0)


def test_checkpoint_keys_are_lightnings_and_old_layout_still_resumes(tmp_path):
    """A raylit checkpoint has exactly Lightning's top-level keys: raylit's resume state (RNG streams, the
    position inside the epoch) lives in ``loops.fit_loop.state_dict.raylit``, where Lightning keeps a loop's own
    state. A checkpoint of an earlier raylit (that state at the top level, ``ckpt["raylit"]``) resumes exactly
    the same."""
    import pytorch_lightning as pl
    from pytorch_lightning.demos.boring_classes import BoringModel as LightningBoring

    full, _ = _fit_uninterrupted(tmp_path)
    keys = {}
    for name, fw in (("lightning", pl), ("raylit", raylit)):
        trainer = fw.Trainer(max_epochs=1, limit_train_batches=2, default_root_dir=str(tmp_path / name),
                             enable_progress_bar=False, enable_model_summary=False, logger=False)
        model = raylit.testing.BoringModel() if fw is raylit else LightningBoring()
        trainer.fit(model)
        keys[name] = set(torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False))
    assert keys["raylit"] == keys["lightning"]

    rc = ResumeCheckpoint(dirpath=str(tmp_path / "r"), every_n_train_steps=7, every_n_seconds=None)
    raylit.seed_everything(0, verbose=False)
    with pytest.raises(_Crash):
        raylit.Trainer(max_epochs=3, callbacks=[rc, CrashAt(7)], enable_checkpointing=False,
                       default_root_dir=str(tmp_path / "run"), **QUIET).fit(DropoutModel())
    path = latest_resume_checkpoint(rc.dirpath)
    ckpt = torch.load(path, weights_only=False)
    section = ckpt["loops"]["fit_loop"]["state_dict"].pop("raylit")
    assert "rng" in section and "raylit" not in ckpt
    ckpt["raylit"] = section  # the old layout
    torch.save(ckpt, path)
    raylit.seed_everything(555, verbose=False)
    model = DropoutModel()
    trainer = raylit.Trainer(max_epochs=3, enable_checkpointing=False, default_root_dir=str(tmp_path / "run"),
                             **QUIET)
    trainer.fit(model, ckpt_path=path)
    assert trainer.global_step == 30
    for k, v in _weights(full).items():
        assert torch.equal(v, model.state_dict()[k]), k
