"""Demo helpers for tests and examples, mirroring ``lightning.pytorch.demos.boring_classes``.

``from raylit.testing import BoringModel, BoringDataModule, RandomDataset`` works like the Lightning import.
The module classes subclass ``raylit.LightningModule`` / ``raylit.LightningDataModule``; they are built on
first access so that importing the datasets does not import the trainer.
"""

from __future__ import annotations

from typing import Any

from raylit.testing.boring_classes import (
    RandomDataset,
    RandomDictDataset,
    RandomIterableDataset,
    RandomIterableDatasetWithLen,
    build_demo_classes,
)

_MODULE_CLASSES = ("BoringModel", "ManualOptimBoringModel", "DemoModel", "BoringDataModule", "BoringDataModuleNoLen",
                   "IterableBoringDataModule")

__all__ = [
    "BoringDataModule",
    "BoringDataModuleNoLen",
    "BoringModel",
    "DemoModel",
    "IterableBoringDataModule",
    "ManualOptimBoringModel",
    "RandomDataset",
    "RandomDictDataset",
    "RandomIterableDataset",
    "RandomIterableDatasetWithLen",
    "build_demo_classes",
]


def _raylit_bases() -> tuple[type, type]:
    try:
        from raylit.module import LightningModule
    except ImportError:  # pragma: no cover - fall back to the package export
        from raylit import LightningModule
    try:
        from raylit.datamodule import LightningDataModule
    except ImportError:  # pragma: no cover
        from raylit import LightningDataModule
    return LightningModule, LightningDataModule


def __getattr__(name: str) -> Any:
    if name in _MODULE_CLASSES:
        module_base, datamodule_base = _raylit_bases()
        classes = build_demo_classes(module_base, datamodule_base, module_name=__name__)
        for cls_name in _MODULE_CLASSES:
            globals()[cls_name] = getattr(classes, cls_name)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_CLASSES))
