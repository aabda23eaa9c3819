"""Which dataloaders a run uses, how many batches it takes from each, and when they are reloaded.

A ``Loaders`` belongs to one ``Run``. Loaders come from the ``fit``/``validate``/... arguments, else from the
datamodule's ``*_dataloader`` hook when it overrides it, else from the module's. On several workers they get
a distributed sampler (``runtime.setup_dataloader``). The validation *cadence* (when to validate) is the
loop's; the batch count it is based on (``val_check_batch``) is set here, when the training data is loaded.
"""

import math
import os
from typing import Any

from torch.utils.data import DataLoader

from raylit.data import as_eval_list, as_train_loader, check_train_mode, limit_batches, without_shuffle
from raylit.datamodule import LightningDataModule
from raylit.module import LightningModule
from raylit.state import TrainerFn
from raylit.utilities.clock import SharedDeadline
from raylit.utilities.combined_loader import CombinedLoader
from raylit.utilities.data import has_len_all_ranks
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.model_helpers import overrides
from raylit.utilities.rank_zero import rank_zero_warn
from raylit.utilities.warnings import PossibleUserWarning

_HOOKS = {"train": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
          "predict": "predict_dataloader"}


class Loaders:
    def __init__(self, run: Any, given: dict[str, Any], previous: "Loaders | None" = None) -> None:
        self.run = run
        self.given = given  # loaders passed to fit/validate/test/predict, by stage
        self.train: Any = None
        self.val: list | None = None
        self.test: list | None = None
        self.predict: list | None = None
        self.num_training_batches: int | float = math.inf
        self.val_check_batch: int | float | None = math.inf
        self.val_deadline: SharedDeadline | None = None
        self.last_train_load_epoch = 0
        self.last_val_load_epoch: float = -math.inf  # the epoch of the last validation-loader load in fit
        self._val_enabled: bool | None = None
        self.reported: dict[str, list] = {}  # batch counts a Ray run's rank 0 reported, by fn (on the driver)
        if previous is not None:
            # as in Lightning, whose loops persist: a later call keeps the other stages' loaders (so
            # trainer.num_val_batches after a test() still reads fit's), and validate/test/predict keep what
            # fit knew about the training data
            for fn, attr in (("validate", "val"), ("test", "test"), ("predict", "predict")):
                if fn != run.fn and not (run.fn == "fit" and fn == "validate"):
                    setattr(self, attr, getattr(previous, attr))
                    if fn in previous.reported:
                        self.reported[fn] = previous.reported[fn]
            if run.fn != "fit":
                self.train, self.num_training_batches = previous.train, previous.num_training_batches
                self.val_check_batch = previous.val_check_batch

    # --- where loaders come from ----------------------------------------------------------------------------
    def defined(self, stage: str) -> bool:
        if self.given.get(stage) is not None:
            return True
        run = self.run
        if run.datamodule is not None and overrides(run.datamodule, _HOOKS[stage], LightningDataModule):
            return True
        return overrides(run.module, _HOOKS[stage], LightningModule)

    def _request(self, stage: str) -> Any:
        given = self.given.get(stage)
        if given is not None:
            return given
        run, hook = self.run, _HOOKS[stage]
        if run.datamodule is not None and overrides(run.datamodule, hook, LightningDataModule):
            return run.hooks.datamodule_hook(hook)
        return run.hooks.module_hook(hook)

    def _prepare(self, loader: Any, stage: str) -> Any:
        run, config = self.run, self.run.config
        if os.environ.get("PL_SEED_WORKERS") == "1":
            from raylit.utilities.seed import add_worker_init_fn

            add_worker_init_fn(loader, run.runtime.global_rank)
        for leaf in loader.flattened if isinstance(loader, CombinedLoader) else [loader]:
            _warn_about_workers(leaf, f"{stage}_dataloader", len(config.device_ids))
        overfit = config.overfit_batches > 0 and stage in ("train", "val")
        if overfit:
            loader = loader.map(without_shuffle) if isinstance(loader, CombinedLoader) else without_shuffle(loader)
        elastic = run.runtime.elastic is not None and stage == "train"
        if elastic and isinstance(loader, CombinedLoader):
            raise MisconfigurationException(
                "Trainer(elastic=...) supports one training DataLoader; got several (a CombinedLoader). Merge the "
                "datasets into one (torch.utils.data.ConcatDataset) or run without elastic=.")
        if config.use_distributed_sampler and (run.runtime.distributed or elastic):
            shuffle = False if overfit else None
            loader = loader.shard(run.runtime, stage, shuffle) if isinstance(loader, CombinedLoader) else \
                run.runtime.setup_dataloader(loader, stage, shuffle=shuffle)
        self._check_lengths(loader, stage)
        return loader

    def _check_lengths(self, loader: Any, stage: str) -> None:
        """Lightning's length checks of freshly loaded data, on every rank together (lengths are summed across
        ranks): a warning when a loader (or the combined training data) is empty everywhere, an error when only
        this rank's is, a warning for an ``IterableDataset`` that defines ``__len__``."""
        run, trainer = self.run, self.run.trainer
        # predict shards every sample exactly once (raylit/distributed/samplers.py): a rank may get none
        allow_zero = stage == "predict" or any(
            getattr(owner, "allow_zero_length_dataloader_with_multiple_devices", False)
            for owner in (run.module, run.datamodule) if owner is not None)
        for leaf in loader.flattened if isinstance(loader, CombinedLoader) else [loader]:
            has_len_all_ranks(leaf, trainer.strategy, allow_zero)
        if stage == "train":  # Lightning also checks the CombinedLoader it wraps the training data in
            has_len_all_ranks(loader if isinstance(loader, CombinedLoader) else CombinedLoader(loader, "max_size_cycle"),
                              trainer.strategy, allow_zero)

    # --- training data ------------------------------------------------------------------------------------
    def load_train(self) -> None:
        if not self.defined("train"):
            raise MisconfigurationException(
                "No `train_dataloader()` method defined. Lightning `Trainer` expects as minimum a `training_step()`, "
                "`train_dataloader()` and `configure_optimizers()` to be defined.")
        config = self.run.config
        if config.limit_train_batches == 0:  # as in Lightning: no train_dataloader() call, no training
            self.num_training_batches, self.val_check_batch = 0, math.inf
            return
        self.train = self._prepare(as_train_loader(self._request("train")), "train")
        self.last_train_load_epoch = self.run.state.current_epoch
        n = self.num_training_batches = limit_batches(self.train, config.limit_train_batches, "train")
        check_train_mode(self.train)
        if self.run.trainer.loggers and n < config.log_every_n_steps and not config.fast_dev_run:
            rank_zero_warn(f"The number of training batches ({n}) is smaller than the logging interval "
                           f"Trainer(log_every_n_steps={config.log_every_n_steps}). Set a lower value for "
                           "log_every_n_steps if you want to see logs for the training epoch.",
                           category=PossibleUserWarning)
        interval = config.val_check_interval
        if config.val_check_seconds is not None:
            # time-based: validation when the interval has passed since the training data was loaded or since
            # the last validation ended (not at every epoch end); rank 0's clock decides for every rank
            self.val_check_batch = None
            self.val_deadline = SharedDeadline(config.val_check_seconds)
        elif isinstance(interval, int):
            if n != math.inf and interval > n and config.check_val_every_n_epoch is not None:
                raise ValueError(
                    f"`val_check_interval` ({interval}) must be less than or equal to the number of the training "
                    f"batches ({n}). If you want to disable validation set `limit_val_batches` to 0.0 instead. If you "
                    "want to validate based on the total training batches, set `check_val_every_n_epoch=None`.")
            self.val_check_batch = interval
        elif n == math.inf:
            if interval != 1.0:
                raise MisconfigurationException("When using an IterableDataset without `__len__`, "
                                                "`val_check_interval` must be 1.0 or an int.")
            self.val_check_batch = math.inf
        else:
            self.val_check_batch = max(1, int(n * interval))

    def maybe_reload_train(self) -> None:
        n = self.run.config.reload_dataloaders_every_n_epochs
        if (self.train is None and self.num_training_batches != 0) or (n and self.run.state.current_epoch - self.last_train_load_epoch >= n):
            self.load_train()

    # --- evaluation data ------------------------------------------------------------------------------------
    def should_reload_val(self) -> bool:
        n = self.run.config.reload_dataloaders_every_n_epochs
        return bool(n) and self.run.status.fn == TrainerFn.FITTING and \
            self.run.state.current_epoch - self.last_val_load_epoch >= n

    def is_val_epoch(self) -> bool:
        """Whether the current epoch of a fit validates (``check_val_every_n_epoch``)."""
        every = self.run.config.check_val_every_n_epoch
        return self.validation_enabled() and (every is None or (self.run.state.current_epoch + 1) % every == 0)

    def load_eval(self, fn: str, sanity: bool = False) -> list:
        if fn != "fit" and not self.defined(fn):
            if fn == "validate" and self.run.status.fn == TrainerFn.FITTING:
                return []
            raise MisconfigurationException(f"No `{_HOOKS[fn]}()` method defined to run `Trainer.{fn}`.")
        stage = {"validate": "val", "test": "test", "predict": "predict"}[fn]
        if getattr(self.run.config, f"limit_{stage}_batches") == 0:
            return []  # as in Lightning: a stage limited to 0 batches never asks for its dataloaders
        loaders = [self._prepare(dl, stage) for dl in as_eval_list(self._request(fn))]
        if fn == "validate":
            self.val = loaders
            # reload_dataloaders_every_n_epochs counts from this load, unless it was the sanity check's in an
            # epoch that does not validate (Lightning's rule)
            if self.run.status.fn == TrainerFn.FITTING and (not sanity or self.is_val_epoch()):
                self.last_val_load_epoch = self.run.state.current_epoch
        elif fn == "test":
            self.test = loaders
        else:
            self.predict = loaders
        return loaders

    def eval_limits(self, fn: str) -> list[int | float]:
        config = self.run.config
        loaders, limit, name = {
            "validate": (self.val, config.limit_val_batches, "val"),
            "test": (self.test, config.limit_test_batches, "test"),
            "predict": (self.predict, config.limit_predict_batches, "predict"),
        }[fn]
        return [limit_batches(dl, limit, name) for dl in (loaders or [])]

    def validation_enabled(self) -> bool:
        if self._val_enabled is None:
            run = self.run
            self._val_enabled = run.config.limit_val_batches != 0 and self.defined("validate") and \
                overrides(run.module, "validation_step", LightningModule)
        return self._val_enabled

    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the whole fit will take (for OneCycleLR-style schedulers)."""
        config = self.run.config
        if config.max_epochs == -1:
            return math.inf if config.max_steps == -1 else config.max_steps
        if self.train is None:
            self.load_train()
        n = self.num_training_batches
        if n == math.inf:
            return config.max_steps
        elastic = self.run.runtime.elastic  # below max_workers, each optimizer step takes k times the batches
        acc = config.accumulate_grad_batches * (elastic.virtual_per_rank if elastic is not None else 1)
        total = math.ceil(n / acc) * max(config.max_epochs, 1)
        return min(total, config.max_steps) if config.max_steps != -1 else total


def _warn_about_workers(loader: Any, name: str, processes_per_machine: int) -> None:
    """Lightning's hint that a DataLoader without worker processes may starve the loop, when the machine has
    cores to spare (one left for the training process)."""
    if not isinstance(loader, DataLoader):
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    upper_bound = max(1, cpus // max(processes_per_machine, 1) - 1)
    if loader.num_workers < 2 and upper_bound > 1:
        rank_zero_warn(f"The '{name}' does not have many workers which may be a bottleneck. Consider increasing the "
                       f"value of the `num_workers` argument` to `num_workers={upper_bound}` in the `DataLoader` to "
                       "improve performance.", category=PossibleUserWarning)
