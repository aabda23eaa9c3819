"""raylit quick start: Lightning code, run in-process and then on Ray workers.

    scripts/demo.sh                 # sets up .venv and runs this file
    python examples/quickstart.py   # inside the venv; --skip-ray to stay in-process

Everything below is ordinary Lightning code with ``import raylit as pl`` instead of
``import lightning.pytorch as pl``. The only difference between the two runs is ``devices=2``: with more
than one device raylit starts a private local Ray instance (or joins the cluster named by ``RAY_ADDRESS``),
runs one Ray Train worker per device with DDP, and hands the trained weights, metrics and checkpoint
paths back to this process.
"""

import argparse
import os
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import raylit as pl
from raylit.callbacks import EarlyStopping, ModelCheckpoint


class SpiralData(pl.LightningDataModule):
    """Three interleaved spirals: a small problem that still needs a non-linear model."""

    def __init__(self, batch_size: int = 64, n: int = 3000):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        per = self.hparams.n // 3
        t = torch.linspace(0.2, 1.0, per).repeat(3)
        cls = torch.arange(3).repeat_interleave(per)
        angle = t * 4.0 + cls * (2 * torch.pi / 3) + 0.15 * torch.randn(3 * per, generator=g)
        x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1)
        self.train_set, self.val_set, self.test_set = random_split(TensorDataset(x, cls), [0.7, 0.15, 0.15],
                                                                   generator=g)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=256)


class SpiralClassifier(pl.LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)

    def _shared(self, batch, stage):
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        # sync_dist averages over workers when the run is distributed (a no-op in-process)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train", sync_dist=stage != "train")
        self.log(f"{stage}_acc", acc, prog_bar=True, sync_dist=stage != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
        return {"optimizer": opt, "lr_scheduler": sched, "monitor": "val_loss"}


def train(root: str, devices: int, max_epochs: int) -> tuple[pl.Trainer, SpiralClassifier]:
    pl.seed_everything(42)
    model, data = SpiralClassifier(), SpiralData()
    checkpoint = ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=2, save_last=True)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=devices,
        default_root_dir=root,
        callbacks=[checkpoint, EarlyStopping(monitor="val_loss", patience=5)],
        log_every_n_steps=10,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    print(f"[{devices} device(s)] fit took {time.perf_counter() - start:.1f}s: epochs={trainer.current_epoch} "
          f"steps={trainer.global_step} val_acc={trainer.callback_metrics['val_acc']:.3f}")
    print(f"[{devices} device(s)] best checkpoint: {checkpoint.best_model_path} "
          f"(val_acc={checkpoint.best_model_score:.3f})")
    return trainer, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="where logs and checkpoints go (default: a temporary dir)")
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--skip-ray", action="store_true", help="only the in-process run")
    args = ap.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="raylit-quickstart-")

    print("== 1. In-process (one device, no Ray)")
    trainer, _ = train(os.path.join(root, "local"), devices=1, max_epochs=args.max_epochs)
    trainer.test(datamodule=SpiralData(), ckpt_path="best", verbose=True)
    print(f"TensorBoard logs: {trainer.log_dir}   (tensorboard --logdir {root})")

    if args.skip_ray:
        return
    print("\n== 2. The same code on 2 Ray Train workers (DDP over gloo)")
    trainer, model = train(os.path.join(root, "ray"), devices=2, max_epochs=args.max_epochs)
    # Back on the driver: the checkpoint files are local paths this process can open.
    best = SpiralClassifier.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    same = all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), model.state_dict().values()))
    print(f"best checkpoint loaded on the driver (equal to the final weights: {same})")
    results = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False).test(
        best, datamodule=SpiralData(), verbose=False)
    print(f"test accuracy of the best checkpoint: {results[0]['test_acc']:.3f}")
    print(f"\nAll logs and checkpoints are under {root}")


if __name__ == "__main__":
    main()
