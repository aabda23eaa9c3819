"""``save_hyperparameters`` and ``hparams``: shared by LightningModule and LightningDataModule."""

import copy
import inspect
import types
import warnings
from argparse import Namespace
from typing import Any, Sequence

from torch import nn

from raylit.utilities.parsing import AttributeDict


def _init_args_from_frames(frame: types.FrameType, obj: Any) -> dict[str, Any]:
    """Arguments of every ``__init__`` of ``obj`` on the stack, the innermost call last so that it wins."""
    collected: list[dict[str, Any]] = []
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is obj:
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        local = frame.f_locals
        args = {n: local[n] for n in names[1:] if n in local}
        if code.co_flags & inspect.CO_VARKEYWORDS:
            var_kw = code.co_varnames[code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)]
            args.update(local.get(var_kw) or {})
        collected.append(args)
        frame = frame.f_back
    merged: dict[str, Any] = {}
    for args in reversed(collected):
        merged.update(args)
    return merged


class HyperparametersMixin:
    __jit_unused_properties__: list[str] = ["hparams", "hparams_initial"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log_hyperparams = False

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Store the ``__init__`` arguments (all of them, the named ones, or a given dict/Namespace) in
        ``self.hparams``; they are written to checkpoints and logged to the loggers (unless ``logger=False``)."""
        self._log_hyperparams = logger
        if frame is None:
            frame = inspect.currentframe().f_back  # type: ignore[union-attr]
        init_args = _init_args_from_frames(frame, self) if frame is not None else {}
        ignore_set = {ignore} if isinstance(ignore, str) else set(ignore or ())
        init_args = {k: v for k, v in init_args.items() if k not in ignore_set}

        if len(args) == 1 and not isinstance(args[0], str):
            hp = args[0]
            # name of the init argument that holds this object, if any
            self._hparams_name = next((k for k, v in init_args.items() if v is hp), None)
            if isinstance(hp, Namespace):
                hp = vars(hp)
            elif not isinstance(hp, dict):
                if type(hp).__name__ in ("DictConfig", "ListConfig"):
                    self._hparams = hp
                    self._hparams_initial = copy.deepcopy(hp)
                    return
                raise ValueError(f"save_hyperparameters: unsupported type {type(hp).__name__}; pass a dict, "
                                 "an argparse.Namespace, an OmegaConf config, or argument names")
            hp = {k: v for k, v in hp.items() if k not in ignore_set}
        else:
            if args:
                missing = [a for a in args if a not in init_args]
                if missing:
                    raise ValueError(f"save_hyperparameters({', '.join(map(repr, args))}): {missing} are not "
                                     f"arguments of __init__; available: {sorted(init_args)}")
                hp = {a: init_args[a] for a in args}
            else:
                hp = init_args
            self._hparams_name = "kwargs" if hp else None
        for k, v in hp.items():
            if isinstance(v, nn.Module):
                warnings.warn(f"Attribute {k!r} is an instance of `nn.Module` and is already saved during "
                              f"checkpointing. It is recommended to ignore them using "
                              f"`self.save_hyperparameters(ignore=[{k!r}])`.", UserWarning, stacklevel=2)
        self._set_hparams(hp)
        self._hparams_initial = copy.deepcopy(self._hparams)

    def _set_hparams(self, hp: Any) -> None:
        if isinstance(hp, Namespace):
            hp = vars(hp)
        if isinstance(hp, dict) and not isinstance(hp, AttributeDict):
            hp = AttributeDict(hp)
        self._hparams = hp

    @property
    def hparams(self) -> AttributeDict:
        if not hasattr(self, "_hparams"):
            self._hparams = AttributeDict()
        return self._hparams

    @property
    def hparams_initial(self) -> AttributeDict:
        if not hasattr(self, "_hparams_initial"):
            return AttributeDict()
        return copy.deepcopy(self._hparams_initial)
