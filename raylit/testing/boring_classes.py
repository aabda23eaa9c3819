"""Demo datasets and models for tests and examples: raylit's counterparts of Lightning's "boring" classes.

The datasets are plain ``torch.utils.data`` datasets. The modules are built by ``build_demo_classes`` on top of
a given LightningModule / LightningDataModule base, so the same definitions can be checked against real
Lightning in the differential tests; ``raylit.testing`` exposes the ones built on raylit's bases.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset


class RandomDataset(Dataset):
    """``length`` rows of ``size`` standard-normal features, drawn from the global torch RNG when built."""

    def __init__(self, size: int, length: int) -> None:
        self.len = length
        self.data = torch.randn(length, size)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]

    def __len__(self) -> int:
        return self.len


class RandomDictDataset(Dataset):
    """Like ``RandomDataset`` but each item is ``{"a": row, "b": row + 2}``."""

    def __init__(self, size: int, length: int) -> None:
        self.len = length
        self.data = torch.randn(length, size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.data[index]
        return {"a": row, "b": row + 2}

    def __len__(self) -> int:
        return self.len


class RandomIterableDataset(IterableDataset):
    """Yields ``count`` fresh standard-normal vectors of ``size``; has no length."""

    def __init__(self, size: int, count: int) -> None:
        self.count = count
        self.size = size

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.count):
            yield torch.randn(self.size)


class RandomIterableDatasetWithLen(IterableDataset):
    """``RandomIterableDataset`` that also reports ``len() == count``."""

    def __init__(self, size: int, count: int) -> None:
        self.count = count
        self.size = size

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.count):
            yield torch.randn(self.size)

    def __len__(self) -> int:
        return self.count


def build_demo_classes(
    module_base: type, datamodule_base: type, module_name: str | None = None
) -> SimpleNamespace:
    """Define BoringModel, ManualOptimBoringModel, DemoModel and the demo datamodules (BoringDataModule,
    BoringDataModuleNoLen, IterableBoringDataModule) on the given bases.

    ``module_name``: when set, the classes claim to live in that module (so pickle finds them by name)."""

    class BoringModel(module_base):
        """One ``Linear(32, 2)``; the loss is the MSE of its output against ones. Every ``*_dataloader`` is a
        batch-size-1 loader over ``RandomDataset(32, 64)``; SGD(lr=0.1) with StepLR(step_size=1)."""

        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def loss(self, preds: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            target = torch.ones_like(preds) if labels is None else labels
            return nn.functional.mse_loss(preds, target)

        def step(self, batch: Any) -> torch.Tensor:
            return self.loss(self(batch))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"loss": self.step(batch)}

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return {"x": self.step(batch)}

        def test_step(self, batch: Any, batch_idx: int) -> Any:
            return {"y": self.step(batch)}

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
            return [optimizer], [scheduler]

        def train_dataloader(self) -> DataLoader:
            return DataLoader(RandomDataset(32, 64))

        def val_dataloader(self) -> DataLoader:
            return DataLoader(RandomDataset(32, 64))

        def test_dataloader(self) -> DataLoader:
            return DataLoader(RandomDataset(32, 64))

        def predict_dataloader(self) -> DataLoader:
            return DataLoader(RandomDataset(32, 64))

    class ManualOptimBoringModel(BoringModel):
        """``BoringModel`` trained with manual optimisation (zero_grad, manual_backward, step per batch)."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            optimizer = self.optimizers()
            loss = self.step(batch)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            return loss

    class DemoModel(module_base):
        """``Linear(32, out_dim)`` followed by ReLU; training_step returns the sum of the outputs; Adam."""

        def __init__(self, out_dim: int = 10, learning_rate: float = 0.02) -> None:
            super().__init__()
            self.l1 = nn.Linear(32, out_dim)
            self.learning_rate = learning_rate

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.l1(x.view(x.size(0), -1)))

        def training_step(self, batch: Any, batch_nb: int) -> Any:
            return self(batch).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

    class BoringDataModule(datamodule_base):
        """256 random rows split into four consecutive blocks of 64 for fit / validate / test / predict."""

        def __init__(self) -> None:
            super().__init__()
            self.random_full = RandomDataset(32, 64 * 4)

        def setup(self, stage: str) -> None:
            stage = getattr(stage, "value", stage)
            if stage == "fit":
                self.random_train = Subset(self.random_full, range(64))
            if stage in ("fit", "validate"):
                self.random_val = Subset(self.random_full, range(64, 128))
            if stage == "test":
                self.random_test = Subset(self.random_full, range(128, 192))
            if stage == "predict":
                self.random_predict = Subset(self.random_full, range(192, 256))

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.random_train)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.random_val)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.random_test)

        def predict_dataloader(self) -> DataLoader:
            return DataLoader(self.random_predict)

    class _PerStageDataModule(datamodule_base):
        """Datasets made by ``setup(stage)`` (fit makes train and val, validate val, ...) and kept in the
        attribute ``_attribute.format(part)``; each ``*_dataloader`` wraps them in batch-size-1 DataLoaders (a
        list of them for a list of datasets)."""

        _sizes: dict[str, int] = {}
        _attribute = "{}"

        @staticmethod
        def _make(size: int) -> Any:
            raise NotImplementedError

        def setup(self, stage: str) -> None:
            stage = getattr(stage, "value", stage)
            for part in {"fit": ("train", "val"), "validate": ("val",)}.get(stage, (stage,)):
                if part in self._sizes:
                    setattr(self, self._attribute.format(part), self._make(self._sizes[part]))

        def _loaders(self, part: str) -> Any:
            data = getattr(self, self._attribute.format(part))
            return [DataLoader(d) for d in data] if isinstance(data, list) else DataLoader(data)

        def train_dataloader(self) -> Any:
            return self._loaders("train")

        def val_dataloader(self) -> Any:
            return self._loaders("val")

        def test_dataloader(self) -> Any:
            return self._loaders("test")

        def predict_dataloader(self) -> Any:
            return self._loaders("predict")

    class BoringDataModuleNoLen(_PerStageDataModule):
        """Like BoringDataModule over datasets without a length: ``RandomIterableDataset(32, n)`` with 512 rows
        for training, 128 for validation, 256 for test and 64 for predict."""

        _sizes = {"train": 512, "val": 128, "test": 256, "predict": 64}
        _attribute = "random_{}"

        @staticmethod
        def _make(size: int) -> Any:
            return RandomIterableDataset(32, size)

    class IterableBoringDataModule(_PerStageDataModule):
        """Two datasets of 4 features per stage, one sized and one iterable without a length (16 rows each for
        training, 32 for validation, 64 for test, 128 for predict); each hook returns a list of two loaders."""

        _sizes = {"train": 16, "val": 32, "test": 64, "predict": 128}
        _attribute = "{}_datasets"

        @staticmethod
        def _make(size: int) -> Any:
            return [RandomDataset(4, size), RandomIterableDataset(4, size)]

    classes = SimpleNamespace(
        BoringModel=BoringModel,
        ManualOptimBoringModel=ManualOptimBoringModel,
        DemoModel=DemoModel,
        BoringDataModule=BoringDataModule,
        BoringDataModuleNoLen=BoringDataModuleNoLen,
        IterableBoringDataModule=IterableBoringDataModule,
    )
    if module_name is not None:
        for name, cls in vars(classes).items():
            cls.__module__ = module_name
            cls.__qualname__ = name
    return classes
