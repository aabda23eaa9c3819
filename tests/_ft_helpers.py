"""Model, data and fault-injecting callbacks for the fault-tolerance tests, the recovery benchmark and the
driver-restart script. Ray workers cannot import this module by name: callers register it with
``cloudpickle.register_pickle_by_value`` so it travels with the pickled run.

The faults are real: a worker process kills itself with SIGKILL (no exception, no cleanup), a writer is
killed while a checkpoint file is being written, a checkpoint file is cut short. Each fault fires on the first
attempt only: it creates its marker file (in the test's tmp dir, which every process on this machine sees)
right before it strikes, and does nothing when the marker exists.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raylit import LightningModule, Trainer
from raylit.callbacks import Callback
from raylit.loggers import CSVLogger
from raylit.resume import ResumeCheckpoint

SEED = 11
N_TRAIN = 48  # 2 workers x batch 4: 6 optimizer steps per epoch
EPOCHS = 3  # 18 steps in all
CKPT_EVERY = 2  # a resume checkpoint every 2 steps


class Rows(Dataset):
    def __init__(self, n: int, seed: int = 123) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.randn(4, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class FTModel(LightningModule):
    """Tiny, but every piece of state that a resume must restore matters: dropout (each rank's RNG stream),
    shuffled data (epoch order), SGD momentum (optimizer state), a step LR schedule (scheduler state)."""

    def __init__(self, n_train: int = N_TRAIN, batch_size: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1))
        self.n_train, self.batch_size = n_train, batch_size

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)]

    def train_dataloader(self):
        return DataLoader(Rows(self.n_train), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(Rows(8, seed=7), batch_size=4)


def make_trainer(root: str | os.PathLike, callbacks: list | None = None, **kw) -> Trainer:
    """2 CPU workers, validation every 3 batches (twice per epoch, once mid-epoch), a step row per batch."""
    args = dict(
        accelerator="cpu",
        devices=2,
        max_epochs=EPOCHS,
        val_check_interval=3,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=CSVLogger(os.path.join(root, "logs")),
        default_root_dir=str(root),
        callbacks=[ResumeCheckpoint(every_n_train_steps=CKPT_EVERY, every_n_seconds=None, keep=2), *(callbacks or [])],
    )
    args.update(kw)
    return Trainer(**args)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max().item())


def resume_dir_of(trainer) -> str:
    return next(cb.dirpath for cb in trainer.callbacks if isinstance(cb, ResumeCheckpoint))


def wait_for_resume_file(trainer, timeout_s: float = 60.0) -> None:
    """When this step is on the checkpoint cadence, wait until its resume checkpoint is complete: ResumeCheckpoint
    writes in a background thread on rank 0, so the file appears a moment after ``on_train_batch_end``."""
    if trainer.global_step % CKPT_EVERY:
        return
    path = os.path.join(resume_dir_of(trainer), f"resume-step={trainer.global_step}.ckpt")
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------------------------
class _Fault(Callback):
    def __init__(self, marker: str | os.PathLike, rank: int, step: int) -> None:
        self.marker, self.rank, self.step = str(marker), rank, step

    def _armed(self, trainer) -> bool:
        return trainer.global_rank == self.rank and trainer.global_step == self.step and not os.path.exists(self.marker)

    def _die(self, trainer, **info) -> None:
        record = {"time": time.time(), "step": trainer.global_step, "rank": trainer.global_rank, **info}
        Path(self.marker).write_text(json.dumps(record))
        os.kill(os.getpid(), signal.SIGKILL)


class KillInTrainStep(_Fault):
    """SIGKILL in ``on_train_batch_end`` once ``global_step == step``. Placed after ResumeCheckpoint in
    ``callbacks`` and with ``step`` on the checkpoint cadence, it strikes right after a checkpoint was written
    (once the background write is complete)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._armed(trainer):
            wait_for_resume_file(trainer)
            self._die(trainer, where="train")


class KillInValidation(_Fault):
    """SIGKILL in the middle of a validation run (after its first batch) at ``global_step == step``."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and self._armed(trainer):
            self._die(trainer, where="validation")


class KillDuringCheckpointWrite(_Fault):
    """Rank ``rank`` (the writer: global rank 0) is killed while it writes the resume checkpoint of
    ``global_step == step``: the checkpoint is padded to 64 MiB so that writing it takes a while, and a thread
    kills the process as soon as the temporary file appears in the resume directory."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if not self._armed(trainer):
            return
        checkpoint["padding"] = torch.zeros(16 * 2**20)
        directory = resume_dir_of(trainer)

        def watch() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                partial = [n for n in os.listdir(directory) if n.startswith(".tmp-")]
                if partial:
                    self._die(trainer, where="checkpoint write", partial=partial[0])
                time.sleep(0.0005)

        threading.Thread(target=watch, daemon=True).start()


class CorruptLatestThenKill(_Fault):
    """After the resume checkpoint of ``global_step == step`` was written, cut it to a third of its size (what a
    non-atomic copy killed half-way leaves) and SIGKILL this process. Place it after ResumeCheckpoint."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._armed(trainer):
            wait_for_resume_file(trainer)
            path = os.path.join(resume_dir_of(trainer), f"resume-step={trainer.global_step}.ckpt")
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 3])
            self._die(trainer, where="corrupt latest", path=path)


class PauseAt(Callback):
    """Rank 0 stops at ``global_step == step`` on the first attempt (the others wait in the next collective):
    it writes ``marker`` and sleeps, so that something outside (a test) can kill a node or the driver while
    the run is in flight. ``release`` (a file) lets it go on."""

    def __init__(self, marker: str | os.PathLike, step: int, release: str | os.PathLike | None = None) -> None:
        self.marker, self.step, self.release = str(marker), step, release

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank != 0 or trainer.global_step != self.step or os.path.exists(self.marker):
            return
        Path(self.marker).write_text(json.dumps({"time": time.time(), "step": trainer.global_step}))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (self.release and os.path.exists(self.release)):
            time.sleep(0.1)


class StepClock(Callback):
    """Appends ``{"time", "step", "pid"}`` lines to ``path`` at every training batch start on rank 0 (the
    benchmark reads the first step of each attempt from it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": time.time(), "step": trainer.global_step, "pid": os.getpid()}) + "\n")


def fit_in_background(trainer, model) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``trainer.fit(model)`` on a thread (the test meanwhile kills and adds nodes); returns the started
    thread and the list that receives the exception ``fit`` raised, if any."""
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit(model)
        except BaseException as err:  # noqa: BLE001 -- the test reports it
            failure.append(err)

    runner = threading.Thread(target=fit)
    runner.start()
    return runner, failure
