import os
from typing import Any

from raylit import fs
from raylit.callbacks.base import Callback


class Checkpoint(Callback):
    """Base class of callbacks that write checkpoints. The Trainer orders them after every other callback,
    and their ``on_train_epoch_end`` runs after the module's so they can monitor what it logs."""

    runs_after_module_epoch_end = True

    def last_checkpoint_candidates(self, trainer: Any) -> list[str]:
        """The files of this callback that ``ckpt_path="last"`` may resume from: ``last_model_path`` and any
        ``last*.ckpt`` in ``dirpath``."""
        found = []
        last = getattr(self, "last_model_path", "")
        if last and fs.exists(last):
            found.append(last)
        dirpath = getattr(self, "dirpath", None)
        if dirpath and not fs.is_remote(dirpath) and os.path.isdir(dirpath):
            found += [os.path.join(dirpath, f) for f in os.listdir(dirpath)
                      if f.startswith("last") and f.endswith(".ckpt")]
        return found
