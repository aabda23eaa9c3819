"""The model and data that ``examples/configs/classifier.yaml`` names: a small MLP classifying synthetic
Gaussian blobs. Plain Lightning code (``import raylit as pl``), self-contained, no downloads.

Run it through the CLI from the repository root, which raylit puts on ``sys.path`` (so
``class_path: examples.classifier.BlobClassifier`` resolves here, and in a Ray job whose ``--working-dir`` is
this checkout):

    raylit fit --config examples/configs/classifier.yaml
    raylit fit --config examples/configs/classifier.yaml --trainer.max_epochs=5 --model.init_args.hidden=128
    raylit fit --config examples/configs/classifier.yaml --print_config

or from Python:

    from examples.classifier import BlobClassifier, BlobData
    raylit.Trainer(max_epochs=2).fit(BlobClassifier(), datamodule=BlobData())
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import raylit as pl


class BlobData(pl.LightningDataModule):
    """``num_classes`` Gaussian blobs in ``num_features`` dimensions, drawn from a fixed seed: the same rows on
    every worker and every run. 70% train, 15% validation, 15% test; predict reads the test rows."""

    def __init__(self, num_samples: int = 2048, num_features: int = 32, num_classes: int = 10,
                 noise: float = 1.0, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        h = self.hparams
        g = torch.Generator().manual_seed(h.seed)
        centers = 0.6 * torch.randn(h.num_classes, h.num_features, generator=g)
        y = torch.randint(h.num_classes, (h.num_samples,), generator=g)
        x = centers[y] + h.noise * torch.randn(h.num_samples, h.num_features, generator=g)
        n_train, n_val = int(0.7 * h.num_samples), int(0.15 * h.num_samples)
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train:n_train + n_val], y[n_train:n_train + n_val])
        self.test_set = TensorDataset(x[n_train + n_val:], y[n_train + n_val:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class BlobClassifier(pl.LightningModule):
    """``num_features → hidden → hidden → num_classes`` MLP with cross-entropy loss; logs loss and accuracy."""

    def __init__(self, num_features: int = 32, num_classes: int = 10, hidden: int = 64,
                 learning_rate: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        # sync_dist averages over the Ray workers when there are several (nothing to do in-process)
        self.log(f"{stage}_loss", loss, prog_bar=True, sync_dist=stage != "train")
        self.log(f"{stage}_acc", acc, prog_bar=stage != "train", sync_dist=stage != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)
