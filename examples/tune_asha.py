"""Sweep learning rate, width and batch size with ASHA, using the Trainer you would use for one run.

    python examples/tune_asha.py                  # 12 trials on this machine (about a minute on 2 CPUs)
    python examples/tune_asha.py --samples 32 --max-epochs 20
    RAY_ADDRESS=<head>:6379 python examples/tune_asha.py --devices 2   # each trial a 2-worker DDP run

Each trial calls ``build(config)`` for its module and datamodule, and trains with a clone of ``trainer``.
Every validation reports what the module logged (``self.log``) to Tune; ASHA stops the trials whose
``val_loss`` lags behind. Trainer arguments are searched with ``"trainer.<argument>"`` keys. The best trial's
checkpoint is a normal Lightning-format file: ``load_from_checkpoint`` it and validate it here.
"""

import argparse
import os
import tempfile

import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import raylit
from raylit.tune import Tuner, checkpoint_file


class Classifier(raylit.LightningModule):
    def __init__(self, lr: float = 0.1, hidden: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class Blobs(raylit.LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2048, 16, generator=g)
        y = (x[:, :3].argmax(dim=1) + (x[:, 3] > 1).long()) % 3
        self.train_set, self.val_set = random_split(TensorDataset(x, y), [1792, 256], generator=g)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)


def build(config: dict):
    """One trial's module and data, from its sampled config."""
    return Classifier(lr=config["lr"], hidden=config["hidden"]), Blobs(batch_size=config["batch_size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--storage", default=os.path.join(tempfile.gettempdir(), "raylit-examples"))
    args = parser.parse_args()

    raylit.seed_everything(0)
    trainer = raylit.Trainer(
        max_epochs=args.max_epochs, devices=args.devices, strategy="ddp" if args.devices > 1 else "auto"
    )
    tuner = Tuner(
        build,
        trainer=trainer,
        param_space={
            "lr": tune.loguniform(1e-3, 3e-1),
            "hidden": tune.choice([16, 64]),
            "batch_size": tune.choice([32, 128]),
            "trainer.gradient_clip_val": tune.choice([None, 1.0]),  # a Trainer argument, searched too
        },
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            num_samples=args.samples,
            scheduler=ASHAScheduler(max_t=args.max_epochs, grace_period=1, reduction_factor=2),
        ),
        run_config=tune.RunConfig(name="tune_asha", storage_path=args.storage, verbose=1),
    )
    results = tuner.fit()

    epochs = [r.metrics["training_iteration"] for r in results]
    print(
        f"\n{len(results)} trials, {sum(epochs)} of {len(epochs) * args.max_epochs} epochs run "
        f"({sum(e < args.max_epochs for e in epochs)} trials stopped early by ASHA)"
    )
    best = results.get_best_result()
    print(f"best config: {best.config}  val_loss={best.metrics['val_loss']:.4f}  val_acc={best.metrics['val_acc']:.3f}")
    print(f"its logs and checkpoints: {best.path}")

    model = Classifier.load_from_checkpoint(checkpoint_file(best))
    check = raylit.Trainer(logger=False, enable_progress_bar=False).validate(model, datamodule=Blobs(), verbose=False)
    print(f"validated again here: val_loss={check[0]['val_loss']:.4f}")


if __name__ == "__main__":
    main()
