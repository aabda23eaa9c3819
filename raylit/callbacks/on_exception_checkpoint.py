"""OnExceptionCheckpoint: save a checkpoint when fit, validate, test or predict raises."""

import os
from pathlib import Path
from typing import Any

from raylit.callbacks.checkpoint import Checkpoint


class OnExceptionCheckpoint(Checkpoint):
    """Write ``<dirpath>/<filename>.ckpt`` in ``on_exception`` so a crashed run can resume from it (``fit``
    with ``ckpt_path=None`` and this callback present resumes from "last", which includes this file). The file is
    deleted at teardown by global rank 0, so after a clean run nothing is left.

    Args:
        dirpath: directory for the file.
        filename: name without the extension; must not be empty.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | Path, filename: str = "on_exception") -> None:
        super().__init__()
        if not filename:
            raise ValueError("The filename cannot be empty")
        self.dirpath = dirpath
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def last_checkpoint_candidates(self, trainer: Any) -> list[str]:
        # Lightning counts the file this callback writes as a "last" one
        own = [self.ckpt_path] if os.path.exists(self.ckpt_path) else []
        return super().last_checkpoint_candidates(trainer) + own

    def on_exception(self, trainer, *_: Any, **__: Any) -> None:
        trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer, *_: Any, **__: Any) -> None:
        if trainer.is_global_zero and os.path.exists(self.ckpt_path):
            os.remove(self.ckpt_path)
