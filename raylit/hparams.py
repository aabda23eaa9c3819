"""``save_hyperparameters`` and ``hparams``: shared by LightningModule and LightningDataModule."""

import copy
import dataclasses
import inspect
import types
import warnings
from argparse import Namespace
from typing import Any, Sequence

from torch import nn

from raylit.utilities.parsing import AttributeDict


def _init_args_from_frames(frame: types.FrameType | None) -> dict[str, Any]:
    """The arguments of the ``__init__`` calls on the stack, collected as Lightning does: from the caller
    outwards, the consecutive frames of methods (those that use ``super()``/``__class__``) whose ``self`` is a
    HyperparametersMixin — the class's own ``__init__``, its subclasses' and mixins' (a mixin need not derive from
    LightningModule), and an enclosing module's when a module is built inside another's ``__init__``; an outer
    call's value wins. Frames before the first such method (a decorator's) are skipped; ``*args``/``**kwargs``
    themselves are not arguments (the keywords in ``**kwargs`` are)."""
    collected: list[dict[str, Any]] = []
    while frame is not None and frame.f_back is not None:
        local = frame.f_locals
        self_obj, args = _frame_args(frame) if "__class__" in local else (None, {})
        if isinstance(self_obj, HyperparametersMixin):
            collected.append(args)
        elif collected:
            break
        frame = frame.f_back
    merged: dict[str, Any] = {}
    for args in collected:
        merged.update(args)
    return merged


def _frame_args(frame: types.FrameType) -> tuple[Any, dict[str, Any]]:
    """``(self, {argument: value})`` of an ``__init__`` frame; ``(None, {})`` for any other method."""
    code, local = frame.f_code, frame.f_locals
    if code.co_name != "__init__" or code.co_argcount == 0:
        return None, {}
    n_named = code.co_argcount + code.co_kwonlyargcount
    names = code.co_varnames[:n_named]
    args = {n: local[n] for n in names[1:] if n in local}
    if code.co_flags & inspect.CO_VARKEYWORDS:
        var_kw = code.co_varnames[n_named + bool(code.co_flags & inspect.CO_VARARGS)]
        args.update(local.get(var_kw) or {})
    return local.get(names[0]), args


_PRIMITIVES = (bool, int, float, str)


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
        if dataclasses.is_dataclass(self):
            init_args = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        else:
            init_args = _init_args_from_frames(frame)
        ignore_set = {ignore} if isinstance(ignore, str) else {i for i in (ignore or ()) if isinstance(i, str)}
        init_args = {k: v for k, v in init_args.items() if k not in ignore_set}

        given = [a for a in args if not isinstance(a, str)]
        if len(given) == 1:
            hp = given[0]
            # name of the init argument that holds this object, if any (load_from_checkpoint passes it back)
            self._hparams_name = next((k for k, v in init_args.items() if v is hp), None)
            if type(hp).__name__ in ("DictConfig", "ListConfig"):
                self._hparams = hp
                self._hparams_initial = copy.deepcopy(hp)
                return
            if isinstance(hp, _PRIMITIVES):
                raise ValueError(f"Primitives {_PRIMITIVES} are not allowed.")
            if not isinstance(hp, (dict, Namespace)):
                raise ValueError(f"Unsupported config type of {type(hp)}: pass a dict, an argparse.Namespace, an "
                                 "OmegaConf config, or argument names to save_hyperparameters")
        elif args:
            missing = [a for a in args if a not in init_args]
            if missing:
                raise ValueError(f"save_hyperparameters({', '.join(map(repr, args))}): {missing} are not "
                                 f"arguments of __init__; available: {sorted(init_args)}")
            hp = {a: init_args[a] for a in args}
            self._hparams_name = "kwargs"
        else:
            hp = init_args
            self._hparams_name = "kwargs" if hp else None
        self._set_hparams(hp)
        for k in ignore_set:  # a subclass may drop what its base class saved
            self._hparams.pop(k, None)
        for k, v in self._hparams.items():
            if isinstance(v, nn.Module):
                warnings.warn(f"Attribute {k!r} is an instance of `nn.Module` and is already saved during "
                              f"checkpointing. It is recommended to ignore them using "
                              f"`self.save_hyperparameters(ignore=[{k!r}])`.", UserWarning, stacklevel=2)
        self._hparams_initial = copy.deepcopy(self._hparams)

    def _set_hparams(self, hp: Any) -> None:
        """Merge ``hp`` into the saved hyperparameters (a subclass's save_hyperparameters() adds to its base
        class's, as in Lightning)."""
        if isinstance(hp, Namespace):
            hp = vars(hp)
        if isinstance(hp, dict) and not isinstance(hp, AttributeDict):
            hp = AttributeDict(hp)
        if isinstance(hp, dict) and isinstance(getattr(self, "_hparams", None), dict):
            self._hparams.update(hp)
        else:
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
