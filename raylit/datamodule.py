"""LightningDataModule: the data half of a run (download, split, loaders), reusable across modules."""

import inspect
import os
from collections.abc import Sized
from typing import Any, Iterable

from torch.utils.data import DataLoader, Dataset, IterableDataset

from raylit.checkpoint import load_checkpoint_file
from raylit.hparams import HyperparametersMixin
from raylit.module import DataHooks
from raylit.saving import hparams_from_checkpoint, init_kwargs_from_hparams


class LightningDataModule(DataHooks, HyperparametersMixin):
    name: str | None = None
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Any = None

    def __str__(self) -> str:
        """One line per dataloader hook with its dataset sizes, as Lightning prints it: ``{Train dataloader:
        size=64}``, ``{Validation dataloader: 1. size=64 ; 2. size=32}``, ``None`` where the hook fails."""
        lines = []
        for title, hook in (("Train dataloader", "train_dataloader"), ("Validation dataloader", "val_dataloader"),
                            ("Test dataloader", "test_dataloader"), ("Predict dataloader", "predict_dataloader")):
            try:
                loaders = getattr(self, hook)()
            except Exception:
                lines.append(f"{{{title}: None}}")
                continue
            if isinstance(loaders, DataLoader):
                text = f"size={_dataset_size(loaders)}"
            else:
                items = loaders.values() if isinstance(loaders, dict) else loaders
                text = " ; ".join(f"{i}. size={_dataset_size(dl)}" for i, dl in enumerate(items, start=1))
            lines.append(f"{{{title}: {text}}}")
        return os.linesep.join(lines)

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints under this class's ``__qualname__`` (only when non-empty)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...

    def on_exception(self, exception: BaseException) -> None: ...

    @classmethod
    def from_datasets(cls, train_dataset: Any = None, val_dataset: Any = None, test_dataset: Any = None,
                      predict_dataset: Any = None, batch_size: int = 1, num_workers: int = 0,
                      **datamodule_kwargs: Any) -> "LightningDataModule":
        def loaders(ds: Any, shuffle: bool) -> Any:
            if isinstance(ds, dict):
                return {k: loaders(v, shuffle) for k, v in ds.items()}
            if isinstance(ds, (list, tuple)) and not isinstance(ds, Dataset):
                return [loaders(d, shuffle) for d in ds]
            # an iterable dataset has no order to shuffle (a DataLoader refuses shuffle=True for one)
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and not isinstance(ds, IterableDataset),
                              num_workers=num_workers, pin_memory=True)

        # batch_size / num_workers also reach a subclass's __init__ when it takes them, as in Lightning
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        extra = {k: v for k, v in (("batch_size", batch_size), ("num_workers", num_workers))
                 if takes_any or k in params}
        dm = cls(**datamodule_kwargs, **extra)
        if train_dataset is not None:
            dm.train_dataloader = lambda: loaders(train_dataset, True)  # type: ignore[method-assign]
        if val_dataset is not None:
            dm.val_dataloader = lambda: loaders(val_dataset, False)  # type: ignore[method-assign]
        if test_dataset is not None:
            dm.test_dataloader = lambda: loaders(test_dataset, False)  # type: ignore[method-assign]
        if predict_dataset is not None:
            dm.predict_dataloader = lambda: loaders(predict_dataset, False)  # type: ignore[method-assign]
        return dm

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             weights_only: bool | None = None, **kwargs: Any) -> "LightningDataModule":
        ckpt = load_checkpoint_file(checkpoint_path, map_location=map_location, weights_only=weights_only)
        hparams = hparams_from_checkpoint(ckpt, cls.CHECKPOINT_HYPER_PARAMS_KEY, hparams_file)
        dm = cls(**init_kwargs_from_hparams(cls, hparams, kwargs, ckpt, cls.CHECKPOINT_HYPER_PARAMS_NAME))
        if cls.__qualname__ in ckpt:
            dm.load_state_dict(ckpt[cls.__qualname__])
        return dm


def _iter_loaders(obj: Any) -> Iterable[Any]:
    if isinstance(obj, dict):
        yield from obj.values()
    elif isinstance(obj, (list, tuple)):
        yield from obj
    else:
        yield obj


def _dataset_size(loader: Any) -> str:
    dataset = getattr(loader, "dataset", None)
    return str(len(dataset)) if isinstance(dataset, Sized) else "NA"
