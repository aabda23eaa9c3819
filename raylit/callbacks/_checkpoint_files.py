"""ModelCheckpoint's files: their names, the (background) save, links, deletion, and the top-k attributes as
readers see them while a save is still being written. A mixin of :class:`ModelCheckpoint`, kept apart so that
the callback file holds the *when* and *which* (cadence, monitoring, top-k) and this one the *how*."""

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from raylit import fs

log = logging.getLogger(__name__)

# A placeholder in a filename template: "{name}" or "{name:format_spec}".
_PLACEHOLDER = re.compile(r"\{([^{}:]+)(:[^{}]*)?\}")


def _is_local(path: Any) -> bool:
    return not fs.is_remote(path)


def _listdir(path: str) -> list[str]:
    """Full paths of the entries of directory ``path``; [] when it does not exist."""
    if _is_local(path):
        return [os.path.join(path, name) for name in os.listdir(path)] if os.path.isdir(path) else []
    from pyarrow import fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(path)
    infos = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return [fs.join(path, os.path.basename(info.path)) for info in infos]


def _remove(path: str) -> None:
    if _is_local(path) and os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif fs.exists(path) or os.path.islink(path):
        fs.remove(path)


def _make_link(filepath: str, linkpath: str) -> None:
    _remove(linkpath)
    try:
        os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), linkpath)
    except OSError:  # e.g. Windows without symlink rights
        shutil.copy(filepath, linkpath)


# The top-k bookkeeping, as ``state_dict`` saves it.
_BOOK = ("best_k_models", "kth_best_model_path", "kth_value", "best_model_path", "best_model_score", "current_score",
         "last_model_path")


class _Published:
    """A top-k attribute as users read it. The callback works on the live value (``_<name>``, what the next
    checkpoint records); while that step's files are still being written in the background, readers get the
    value from before the step, whose files are complete. Assigning sets both."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.live = name, "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        shown = obj.__dict__.get("_published")
        return shown[self.name] if shown is not None else obj.__dict__[self.live]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.live] = value
        shown = obj.__dict__.get("_published")
        if shown is not None:
            shown[self.name] = value


class CheckpointFiles:
    """Naming, writing, linking and removing the files of a :class:`ModelCheckpoint`."""

    def to_yaml(self, filepath: str | Path | None = None) -> None:
        """Write ``best_k_models`` as ``{path: score}`` YAML (default ``<dirpath>/best_k_models.yaml``)."""
        best_k = {path: score.item() for path, score in self.best_k_models.items()}
        if filepath is None:
            assert self.dirpath, "to_yaml() needs a dirpath: pass filepath or run setup first"
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        fs.write_bytes_atomic(yaml.dump(best_k).encode(), str(filepath))

    # --- file names ----------------------------------------------------------------------------------------
    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        """Fill the filename template from ``metrics``; e.g. ``"{epoch}-{val_loss:.2f}"`` with
        ``{"epoch": 2, "val_loss": 0.1234}`` gives ``<dirpath>/epoch=2-val_loss=0.12.ckpt``."""
        name = self._fill_template(filename or self.filename, metrics, prefix)
        if ver is not None:
            name = f"{name}{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _fill_template(self, template: str | None, metrics: dict[str, Any], prefix: str | None) -> str:
        template = template or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        values = dict(metrics)

        def field(match: re.Match) -> str:
            name, spec = match.group(1), match.group(2) or ""
            values.setdefault(name, torch.tensor(0))
            label = name + self.CHECKPOINT_EQUALS_CHAR if self.auto_insert_metric_name else ""
            # "{0[name]}" indexes the dict, so names may contain dots or slashes.
            return f"{label}{{0[{name}]{spec}}}"

        filled = _PLACEHOLDER.sub(field, template).format(values)
        return self.CHECKPOINT_JOIN_CHAR.join([prefix, filled]) if prefix is not None else filled

    def _resolve_dirpath(self, trainer) -> str:
        if self.dirpath is not None:
            return self.dirpath
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            return os.path.join(save_dir, str(logger.name), version, "checkpoints")
        return os.path.join(trainer.default_root_dir, "checkpoints")

    def _find_last_checkpoints(self, trainer) -> set[str]:
        """Paths of ``last*.ckpt`` files in this callback's directory (for ``ckpt_path="last"``)."""
        dirpath = self._resolve_dirpath(trainer)
        pattern = re.compile(rf"^{re.escape(self.CHECKPOINT_NAME_LAST)}(-(\d+))?")
        return {
            os.path.normpath(p)
            for p in _listdir(dirpath)
            if p.endswith(self.FILE_EXTENSION) and pattern.match(Path(p).stem)
        }

    def _free_filepath(self, candidates: dict[str, Tensor], trainer, template: str | None, reusable: str | None):
        """The formatted path, with a ``-vN`` suffix while it names an existing file other than ``reusable``."""
        filepath = self.format_checkpoint_name(candidates, template)
        version = self.STARTING_VERSION
        while self._enable_version_counter and filepath != reusable and self.file_exists(filepath, trainer):
            filepath = self.format_checkpoint_name(candidates, template, ver=version)
            version += 1
        return filepath

    def file_exists(self, filepath: str, trainer) -> bool:
        """Whether ``filepath`` exists, as seen by rank 0, so that every rank picks the same name."""
        exists = fs.exists(filepath) if trainer.is_global_zero else False
        return trainer.strategy.reduce_boolean_decision(exists, all=False)

    # --- deciding and saving -------------------------------------------------------------------------------

    def _begin_save(self, trainer) -> None:
        """Before the bookkeeping changes for a save at this step: an earlier step's background write finishes
        (and counts) first -- at most one step's snapshot is held -- and the values readers see are kept."""
        self._writer.settle(trainer.global_step)
        if not self._writer.pending:
            self._before = {name: getattr(self, "_" + name) for name in _BOOK}
            self._before["best_k_models"] = dict(self._before["best_k_models"])
            self._before_step = trainer.global_step

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if getattr(self, "_before_step", None) != trainer.global_step:  # called directly (e.g. by a subclass)
            self._begin_save(trainer)
        with self._writer.capture(trainer.global_step, getattr(trainer, "optimizers", ())):
            trainer.save_checkpoint(filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if self._writer.pending and self._published is None:  # the step's first file is being written
            self._published = self._before
            self._writer.after_write(self._publish, on_error=self._rollback)
        if trainer.is_global_zero:
            self._writer.after_write(lambda: self._notify_loggers(trainer))

    def _notify_loggers(self, trainer) -> None:
        for logger in trainer.loggers:
            logger.after_save_checkpoint(self)

    def _publish(self) -> None:
        self._published = None

    def _rollback(self) -> None:
        """A background write failed: the bookkeeping goes back to the last complete files."""
        for name, value in (self._published or {}).items():
            setattr(self, "_" + name, value)
        self._published = None

    def _link_checkpoint(self, trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            self._writer.after_write(lambda: _make_link(filepath, linkpath))
        trainer.strategy.barrier()

    def _should_remove_checkpoint(self, trainer, previous: str, current: str) -> bool:
        """Delete ``previous`` unless it is ``current``, the checkpoint this run resumed from, or (locally) a
        file outside ``dirpath``."""
        if previous == current:
            return False
        if not _is_local(previous):
            return True
        previous_path = Path(previous).absolute()
        resumed_from = getattr(trainer, "ckpt_path", None)
        if resumed_from is not None and _is_local(resumed_from) and previous_path == Path(resumed_from).absolute():
            return False
        return Path(self.dirpath).absolute() in previous_path.parents

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        if trainer.is_global_zero:  # only once the file replacing it is complete
            self._writer.after_write(lambda: _remove(filepath))
