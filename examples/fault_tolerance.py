"""Fault tolerance on Ray: a worker process is killed in the middle of an epoch, and the run recovers by itself.

    python examples/fault_tolerance.py

Two CPU workers train a small regression model. On the first attempt, rank 1 kills itself with SIGKILL at
step 13 (no exception, no clean-up: what an OOM kill or a lost machine looks like). Ray restarts the worker
group; every new worker restores the newest resume checkpoint (written every 5 steps here, by the
``ResumeCheckpoint`` in ``callbacks``; without one raylit adds one that saves every 5 minutes) and training
continues from step 10 -- mid-epoch, with the same data order, dropout masks and optimizer state. Then the same
run without the kill is made, and the two results are compared: they are bitwise equal.

No user code is involved in the recovery: restarts are on by default (``FailureConfig(max_failures=3)``;
pass ``Trainer(run_config=ray.train.RunConfig(failure_config=...))`` to change it). Takes about a minute on
a 2-core machine.
"""

import os
import signal
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import raylit
from raylit.resume import ResumeCheckpoint

KILL_AT_STEP = 13


class Regression(raylit.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(256, 8, generator=g)
        y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(256, 1, generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)  # 8 steps per epoch on 2 workers


class KillOnce(raylit.Callback):
    """SIGKILL rank 1 at a given step, on the first attempt only (a marker file remembers it happened)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == KILL_AT_STEP and not os.path.exists(self.marker):
            open(self.marker, "w").write(str(time.time()))
            print(f"[rank 1] killing myself at step {trainer.global_step} (epoch {trainer.current_epoch}, "
                  f"batch {batch_idx})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def train(root: str, kill: bool) -> tuple[Regression, float]:
    raylit.seed_everything(42, verbose=False)
    callbacks = [ResumeCheckpoint(every_n_train_steps=5, every_n_seconds=None)]
    if kill:
        callbacks.append(KillOnce(os.path.join(root, "killed")))
    trainer = raylit.Trainer(accelerator="cpu", devices=2, max_epochs=3, callbacks=callbacks, logger=False,
                             enable_checkpointing=False, enable_model_summary=False, default_root_dir=root)
    model = Regression()
    start = time.time()
    trainer.fit(model)
    return model, time.time() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        print("== a run whose rank 1 is killed at step", KILL_AT_STEP)
        resumed, t1 = train(os.path.join(root, "killed"), kill=True)
        print(f"== the same run, uninterrupted ({t1:.0f}s for the killed one)")
        reference, _ = train(os.path.join(root, "clean"), kill=False)
    same = all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()))
    print(f"final weights of the killed-and-recovered run equal the uninterrupted run's: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
