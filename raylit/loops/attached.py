"""A model and its data attached to a Trainer without running anything: Lightning's
``trainer.strategy.connect(model)``, ``trainer._data_connector.attach_data(...)`` and
``trainer.<fit|validate|test|predict>_loop.setup_data()``.

User code and tools use these to inspect what a run would load (batch counts, dataloaders, warnings) or to save
a checkpoint of a model before training. raylit answers them with a ``Run`` that is built but never executed:
``connect`` builds it, ``attach_*`` changes what it will load, ``setup_data`` loads one stage's dataloaders into
it (a run for that stage, which keeps what the attached one knew), so ``trainer.num_val_batches``,
``trainer.val_dataloaders`` and ``trainer.save_checkpoint`` read it as they read a finished run.
"""

from __future__ import annotations

from typing import Any

from raylit import checkpoint as ckpt_io
from raylit.hooks import prepares_data
from raylit.launch.local import build_run
from raylit.state import TrainerStatus

_STAGES = ("train", "validate", "test", "predict")


def connect(trainer: Any, model: Any) -> None:
    """``trainer.strategy.connect(model)``: attach ``model`` (its own dataloaders, no datamodule)."""
    _attach(trainer, model, {}, None)


class DataConnector:
    """``trainer._data_connector``: attach dataloaders or a datamodule to the connected model."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    def attach_data(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                    test_dataloaders: Any = None, predict_dataloaders: Any = None, datamodule: Any = None) -> None:
        data = dict(zip(_STAGES, (train_dataloaders, val_dataloaders, test_dataloaders, predict_dataloaders)))
        _attach(self._trainer, model, {k: v for k, v in data.items() if v is not None}, datamodule)

    def attach_dataloaders(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                           test_dataloaders: Any = None, predict_dataloaders: Any = None) -> None:
        self.attach_data(model, train_dataloaders, val_dataloaders, test_dataloaders, predict_dataloaders)

    def attach_datamodule(self, model: Any, datamodule: Any = None) -> None:
        self.attach_data(model, datamodule=datamodule)

    def prepare_data(self) -> None:
        """Call ``prepare_data`` of the datamodule and the model as a run does: on local rank 0 of every node,
        or only on node 0's local rank 0 when their ``prepare_data_per_node`` is False."""
        trainer = self._trainer
        local_rank, node_rank = trainer.local_rank, trainer.node_rank
        for obj in (trainer.datamodule, trainer.lightning_module):
            if obj is not None and callable(getattr(obj, "prepare_data", None)) and \
                    prepares_data(obj, local_rank, node_rank):
                obj.prepare_data()


def _attach(trainer: Any, model: Any, data: dict[str, Any], datamodule: Any) -> None:
    run = trainer._run
    if run is not None and run.module is model and run.status.status == TrainerStatus.INITIALIZING:
        data = {**run.loaders.given, **data}  # attaching more to the attached model
        datamodule = datamodule if datamodule is not None else run.datamodule
    spec = trainer._spec("fit", model, datamodule, data)
    run = build_run(spec, trainer)
    run.status.status = TrainerStatus.INITIALIZING
    run.status.fn = None  # attached, not running: no trainer function yet (Lightning's state)
    model.trainer = trainer
    if datamodule is not None:
        datamodule.trainer = trainer
    trainer._run = run


def setup_data(trainer: Any, fn: str) -> None:
    """``trainer.<fn>_loop.setup_data()``: load that stage's dataloaders into the attached run."""
    run = trainer._run
    if run is None:
        raise RuntimeError(f"`trainer.{fn}_loop.setup_data()` needs a model: call `trainer.strategy.connect(model)`"
                           " first, or run `trainer.fit/validate/test/predict`")
    if fn == "fit":
        run.loaders.load_train()
        if run.loaders.defined("validate"):
            run.loaders.load_eval("validate")
        return
    stage_run = run
    if run.fn != fn:  # a run for that stage, which keeps what the attached one knew
        spec = trainer._spec(fn, run.module, run.datamodule, dict(run.loaders.given))
        stage_run = build_run(spec, trainer)
        stage_run.status.status, stage_run.status.fn = run.status.status, run.status.fn
        trainer._run = stage_run
    stage_run.loaders.load_eval(fn)


class CheckpointConnector:
    """``trainer._checkpoint_connector``: the checkpoint calls tools make on an attached or finished run."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        return ckpt_io.dump_checkpoint(self._run(), weights_only)

    def _restore_modules_and_callbacks(self, checkpoint_path: Any = None) -> None:
        """Load the module's weights, the datamodule's and the callbacks' state from ``checkpoint_path``."""
        if checkpoint_path is not None:
            ckpt_io.restore_model_and_callbacks(self._run(), ckpt_io.load_checkpoint_file(checkpoint_path))

    def _run(self) -> Any:
        run = self._trainer._run
        if run is None:
            raise RuntimeError("No model is attached to the Trainer: call `trainer.strategy.connect(model)` or run "
                               "`trainer.fit/validate/test/predict` first")
        return run
