from raylit.callbacks.base import Callback


class Checkpoint(Callback):
    """Base class of callbacks that write checkpoints. The Trainer orders them after every other callback,
    and their ``on_train_epoch_end`` runs after the module's so they can monitor what it logs."""

    runs_after_module_epoch_end = True
