"""LightningModule: a torch ``nn.Module`` with training hooks. Every hook here is the default the Trainer
calls when the user does not override it; see ``raylit/hooks.py`` for when each one fires."""

import numbers
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from raylit.checkpoint import load_checkpoint_file
from raylit.hparams import HyperparametersMixin
from raylit.saving import hparams_from_checkpoint, init_kwargs_from_hparams
from raylit.utilities.apply_func import move_data_to_device
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.model_helpers import is_overridden
from raylit.utilities.rank_zero import rank_zero_warn


class DataHooks:
    """Data hooks shared by LightningModule and LightningDataModule."""

    prepare_data_per_node: bool = True
    allow_zero_length_dataloader_with_multiple_devices: bool = False

    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...

    def train_dataloader(self) -> Any:
        raise MisconfigurationException("`train_dataloader` must be implemented to be used with the raylit Trainer")

    def val_dataloader(self) -> Any:
        raise MisconfigurationException("`val_dataloader` must be implemented to be used with the raylit Trainer")

    def test_dataloader(self) -> Any:
        raise MisconfigurationException("`test_dataloader` must be implemented to be used with the raylit Trainer")

    def predict_dataloader(self) -> Any:
        raise MisconfigurationException("`predict_dataloader` must be implemented to be used with the raylit Trainer")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_data_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch


class LightningModule(HyperparametersMixin, DataHooks, nn.Module):
    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Any = None
        self._automatic_optimization = True
        self._strict_loading: bool | None = None
        self._current_fx_name: str | None = None
        self._device = torch.device("cpu")
        self._dtype = torch.get_default_dtype()
        self._example_input_array: Any = None

    # --- attachment and read-only views of the Trainer -------------------------------------------------
    @property
    def trainer(self) -> Any:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__qualname__} is not attached to a `Trainer`.")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer else 0

    @property
    def logger(self) -> Any:
        return self._trainer.logger if self._trainer else None

    @property
    def loggers(self) -> list:
        return self._trainer.loggers if self._trainer else []

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def on_gpu(self) -> bool:
        return self._device.type == "cuda"

    @property
    def automatic_optimization(self) -> bool:
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    @property
    def strict_loading(self) -> bool:
        return True if self._strict_loading is None else self._strict_loading

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self._strict_loading = value

    @property
    def example_input_array(self) -> Any:
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, value: Any) -> None:
        self._example_input_array = value

    # keep device/dtype in sync with .to()/.cuda()/.double() like Lightning does
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "LightningModule":
        out = super()._apply(fn, *args, **kwargs)
        for t in self.parameters():
            self._device, self._dtype = t.device, t.dtype
            break
        return out

    # --- steps ----------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException("`training_step` must be implemented to be used with the raylit Trainer")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any: ...
    def test_step(self, *args: Any, **kwargs: Any) -> Any: ...

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        batch = kwargs.get("batch", args[0] if args else None)
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise MisconfigurationException(
            "`configure_optimizers` must be implemented to be used with the raylit Trainer")

    def configure_callbacks(self) -> Any:
        return []

    def configure_model(self) -> None: ...
    def configure_sharded_model(self) -> None: ...

    # --- hooks (no-ops) -------------------------------------------------------------------------------
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_before_zero_grad(self, optimizer: Any) -> None: ...
    def on_before_backward(self, loss: Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Any) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    def on_validation_model_zero_grad(self) -> None:
        self.zero_grad()  # set_to_none is torch's default

    def on_validation_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        self.trainer.model.train()

    def on_test_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_test_model_train(self) -> None:
        self.trainer.model.train()

    def on_predict_model_eval(self) -> None:
        self.trainer.model.eval()

    # --- optimization ---------------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        opts = self.trainer._lightning_optimizers if use_pl_optimizer else self.trainer.optimizers
        if isinstance(opts, list) and len(opts) == 1:
            return opts[0]
        return opts

    def lr_schedulers(self) -> Any:
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        scheds = [c.scheduler for c in configs]
        return scheds[0] if len(scheds) == 1 else scheds

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Call instead of ``loss.backward()`` in manual optimization: applies precision scaling and fires
        ``on_before_backward``/``backward``/``on_after_backward``."""
        if self._automatic_optimization:
            raise MisconfigurationException("`manual_backward` is only for manual optimization: set "
                                            "`self.automatic_optimization = False` in `__init__`.")
        self.trainer.strategy.backward(loss, None, *args, **kwargs)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    def clip_gradients(self, optimizer: Any, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        if gradient_clip_val is None or gradient_clip_val == 0:
            return
        algorithm = (gradient_clip_algorithm or "norm").lower()
        if algorithm not in ("norm", "value"):
            raise MisconfigurationException(
                f"`gradient_clip_algorithm={gradient_clip_algorithm!r}` is invalid; allowed: 'norm', 'value'")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze the parameters that ``optimizer`` does not own (restored by ``untoggle_optimizer``)."""
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        saved = {}
        for opt in self.trainer.optimizers:
            for g in opt.param_groups:
                for p in g["params"]:
                    saved.setdefault(id(p), (p, p.requires_grad))
                    if id(p) not in owned:
                        p.requires_grad = False
        self._param_requires_grad_state = saved

    def untoggle_optimizer(self, optimizer: Any) -> None:
        for p, requires_grad in getattr(self, "_param_requires_grad_state", {}).values():
            p.requires_grad = requires_grad
        self._param_requires_grad_state = {}

    @contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    # --- logging --------------------------------------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool | None = None,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
            enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
            add_dataloader_idx: bool = True, batch_size: int | None = None, metric_attribute: str | None = None,
            rank_zero_only: bool = False) -> None:
        """Record a metric for the loggers, the progress bar and ``trainer.callback_metrics``; see the
        README for the per-hook defaults of ``on_step``/``on_epoch``."""
        trainer = self._trainer
        if trainer is None or getattr(trainer, "_metrics", None) is None:
            rank_zero_warn("You are trying to `self.log()` but the module is not attached to a running "
                           "`Trainer`; the call is ignored.")
            return
        trainer._metrics.log(self._current_fx_name, name, value, prog_bar=prog_bar, logger=logger,
                             on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx,
                             enable_graph=enable_graph, sync_dist=sync_dist, add_dataloader_idx=add_dataloader_idx,
                             batch_size=batch_size, rank_zero_only=rank_zero_only, metric_attribute=metric_attribute)

    def log_dict(self, dictionary: Mapping[str, Any], prog_bar: bool = False, logger: bool | None = None,
                 on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
                 enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
                 add_dataloader_idx: bool = True, batch_size: int | None = None,
                 rank_zero_only: bool = False) -> None:
        items = dictionary.items() if isinstance(dictionary, Mapping) else dictionary.items()
        for k, v in items:
            self.log(k, v, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                     reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                     add_dataloader_idx=add_dataloader_idx, batch_size=batch_size, rank_zero_only=rank_zero_only)

    # --- distributed helpers --------------------------------------------------------------------------
    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        runtime = self._trainer._runtime if self._trainer else None
        from raylit.utilities.apply_func import apply_to_collection

        def gather(t: Tensor) -> Tensor:
            t = t if isinstance(t, Tensor) else torch.tensor(t, device=self.device)
            if runtime is None or not runtime.distributed:
                return t
            return runtime.all_gather(t, sync_grads=sync_grads) if sync_grads else runtime.all_gather(t)

        return apply_to_collection(data, (Tensor, numbers.Number), gather)

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._trainer is None or self._trainer.is_global_zero:
            print(*args, **kwargs)

    # --- misc -----------------------------------------------------------------------------------------
    def freeze(self) -> "LightningModule":
        for p in self.parameters():
            p.requires_grad = False
        self.eval()
        return self

    def unfreeze(self) -> "LightningModule":
        for p in self.parameters():
            p.requires_grad = True
        self.train()
        return self

    def to_onnx(self, file_path: Any = None, input_sample: Any = None, **kwargs: Any) -> Any:
        sample = input_sample if input_sample is not None else self.example_input_array
        if sample is None:
            raise ValueError("to_onnx needs `input_sample` or `self.example_input_array`")
        mode = self.training
        self.eval()
        try:
            return torch.onnx.export(self, sample, file_path, **kwargs)
        finally:
            self.train(mode)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = None, **kwargs: Any) -> Any:
        """Build the module from a checkpoint's hyperparameters (``kwargs`` override them) and load its
        weights. Checkpoints load with ``torch.load(weights_only=True)`` unless ``weights_only=False`` is
        passed for a trusted file whose hyperparameters hold arbitrary Python objects."""
        if not isinstance(cls, type):
            raise TypeError("`load_from_checkpoint` is a class method: call it on the class, "
                            "e.g. `MyModule.load_from_checkpoint(path)`")
        ckpt = load_checkpoint_file(checkpoint_path, map_location=map_location, weights_only=weights_only)
        hparams = hparams_from_checkpoint(ckpt, cls.CHECKPOINT_HYPER_PARAMS_KEY, hparams_file)
        model = cls(**init_kwargs_from_hparams(cls, hparams, kwargs, ckpt, cls.CHECKPOINT_HYPER_PARAMS_NAME))
        if is_overridden("configure_model", model, LightningModule):
            model.configure_model()
        # as in Lightning, on_load_checkpoint sees the hyperparameters the model was built with (the file's
        # when hparams_file is given, updated with the keyword arguments of this call)
        if hparams_file is not None:
            ckpt[cls.CHECKPOINT_HYPER_PARAMS_KEY] = hparams
        section = ckpt.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
        if isinstance(section, dict):
            section.update(kwargs)
        model.on_load_checkpoint(ckpt)
        if strict is not None and model._strict_loading is not None and strict != model.strict_loading:
            raise ValueError(f"You set `.load_from_checkpoint(..., strict={strict!r})` which is in conflict with "
                             f"`{cls.__name__}.strict_loading={model.strict_loading!r}`. Load with "
                             f"`strict={model.strict_loading!r}` instead.")
        strict = model.strict_loading if strict is None else strict
        result = model.load_state_dict(ckpt["state_dict"], strict=strict)
        if not strict and (result.missing_keys or result.unexpected_keys):
            warnings.warn(f"Loaded with strict=False: missing keys {result.missing_keys}, unexpected keys "
                          f"{result.unexpected_keys}", UserWarning, stacklevel=2)
        first = next(iter(ckpt["state_dict"].values()), None)
        if isinstance(first, torch.Tensor):
            model.to(first.device)
        return model

    def __getstate__(self) -> dict[str, Any]:
        # the Trainer is not part of a module's picklable state (Ray ships modules to workers)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_trainer"] = None
        return state
