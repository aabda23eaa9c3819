"""Reading and writing ``hparams.yaml`` (what ``lightning.pytorch.core.saving`` offers users).

Local paths use the ordinary filesystem. A path with a scheme (``s3://bucket/x.yaml``, ``gs://...``,
``file:///...``) goes through ``pyarrow.fs``; the only place that knows about this is :func:`_open`
(plus the two tiny existence checks next to it).
"""

from __future__ import annotations

import enum
import inspect
import io
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from pathlib import PurePath
from typing import IO, Any

import yaml

from raylit.utilities.parsing import AttributeDict
from raylit.utilities.rank_zero import rank_zero_warn

__all__ = ["load_hparams_from_yaml", "save_hparams_to_yaml"]


# ----------------------------------------------------------------------------------------------------------
# filesystem helpers
# ----------------------------------------------------------------------------------------------------------
def _has_scheme(path: str) -> bool:
    return "://" in path


def _remote(path: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(path)


def _open(path: str | os.PathLike, mode: str = "r") -> IO[Any]:
    """Open ``path`` for reading (``"r"``/``"rb"``) or writing (``"w"``/``"wb"``), local or remote."""
    path = os.fspath(path)
    if not _has_scheme(path):
        if "b" in mode:
            return open(path, mode)
        return open(path, mode, encoding="utf-8", newline="")
    filesystem, inner = _remote(path)
    if mode.startswith("r"):
        stream = filesystem.open_input_stream(inner)
    elif mode.startswith("w"):
        stream = filesystem.open_output_stream(inner)
    else:
        raise ValueError(f"Unsupported mode {mode!r} for {path}")
    if "b" in mode:
        return stream
    return io.TextIOWrapper(stream, encoding="utf-8", newline="")


def _exists(path: str) -> bool:
    if not _has_scheme(path):
        return os.path.exists(path)
    from pyarrow import fs as pafs

    filesystem, inner = _remote(path)
    return filesystem.get_file_info(inner).type != pafs.FileType.NotFound


def _isdir(path: str) -> bool:
    if not _has_scheme(path):
        return os.path.isdir(path)
    from pyarrow import fs as pafs

    filesystem, inner = _remote(path)
    kind = filesystem.get_file_info(inner).type
    if isinstance(filesystem, pafs.LocalFileSystem):
        return kind == pafs.FileType.Directory
    # object stores have no real folders: a prefix with nothing under it yet is as good as an empty folder
    return kind in (pafs.FileType.Directory, pafs.FileType.NotFound)


def _dirname(path: str) -> str:
    if _has_scheme(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else path
    return os.path.dirname(path)


# ----------------------------------------------------------------------------------------------------------
# value cleaning
# ----------------------------------------------------------------------------------------------------------
class _Unsafe(Exception):
    pass


def _plain(value: Any) -> Any:
    """Turn ``value`` into something ``yaml.safe_dump`` writes and ``yaml.safe_load`` reads back.

    Raises ``_Unsafe`` for values without a faithful plain form (arbitrary objects, tensors with data...).
    """
    if isinstance(value, enum.Enum):
        return value.name
    if value is None:
        return None
    # normalise subclasses (numpy.float64, str subclasses...) to the builtin type
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {_plain_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    # numpy scalars (np.int64, np.bool_ ...); tensors are skipped
    item = getattr(value, "item", None)
    if (
        callable(item)
        and getattr(value, "ndim", None) == 0
        and type(value).__module__.split(".")[0] == "numpy"
    ):
        return _plain(item())
    raise _Unsafe(type(value).__name__)


def _plain_key(key: Any) -> Any:
    if key is None or isinstance(key, (bool, int, float, str, enum.Enum)):
        return _plain(key)
    raise _Unsafe(type(key).__name__)


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def save_hparams_to_yaml(
    config_yaml: str | os.PathLike, hparams: dict | Namespace, use_omegaconf: bool = True
) -> None:
    """Write ``hparams`` to ``config_yaml`` as plain YAML.

    ``Namespace`` / ``AttributeDict`` are written as mappings, enums as their name, tuples as lists and paths as
    strings. A top-level entry YAML cannot represent safely is skipped with a warning (as Lightning does).
    The folder must already exist (``RuntimeError`` otherwise). ``use_omegaconf`` is accepted for signature
    compatibility: OmegaConf containers are written as their resolved plain contents.
    """
    config_yaml = os.fspath(config_yaml)
    folder = _dirname(config_yaml)
    if folder and not _isdir(folder):
        raise RuntimeError(f"Missing folder: {folder}.")

    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    elif isinstance(hparams, AttributeDict):
        hparams = dict(hparams)
    hparams = _omegaconf_to_plain(hparams)
    if not isinstance(hparams, Mapping):
        raise TypeError("hparams must be dictionary")

    allowed: dict[Any, Any] = {}
    for key, value in hparams.items():
        try:
            allowed[_plain_key(key)] = _plain(_omegaconf_to_plain(value))
        except _Unsafe:
            warnings.warn(f"Skipping '{key}' parameter because it is not possible to safely dump to YAML.")

    with _open(config_yaml, "w") as fp:
        yaml.safe_dump(allowed, fp)


def load_hparams_from_yaml(config_yaml: str | os.PathLike, use_omegaconf: bool = False) -> dict[str, Any]:
    """Read a YAML file written by :func:`save_hparams_to_yaml` (``yaml.safe_load``).

    A missing file gives ``{}`` and a ``RuntimeWarning``. With ``use_omegaconf=True`` and omegaconf installed,
    the result is a ``DictConfig``.
    """
    config_yaml = os.fspath(config_yaml)
    if not _exists(config_yaml):
        rank_zero_warn(f"Missing Tags: {config_yaml}.", category=RuntimeWarning)
        return {}
    with _open(config_yaml, "r") as fp:
        hparams = yaml.safe_load(fp)
    if hparams is None:
        hparams = {}
    if use_omegaconf:
        try:
            from omegaconf import OmegaConf
        except ImportError:
            return hparams
        try:
            return OmegaConf.create(hparams)  # type: ignore[return-value]
        except Exception:  # noqa: BLE001 - values OmegaConf refuses: keep the plain dict
            return hparams
    return hparams


def _omegaconf_to_plain(value: Any) -> Any:
    module = type(value).__module__
    if module.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


# ----------------------------------------------------------------------------------------------------------
# hyperparameters of a checkpoint, for load_from_checkpoint
# ----------------------------------------------------------------------------------------------------------
def init_kwargs_from_hparams(cls: type, hparams: Any, overrides: dict[str, Any], ckpt: dict[str, Any] | None = None,
                             name_key: str | None = None) -> dict[str, Any]:
    """The keyword arguments to rebuild ``cls`` from a checkpoint's hyperparameters, ``overrides`` winning.
    A class whose ``__init__`` took one hyperparameters object (``save_hyperparameters(hparams)``, the classic
    style) gets it back whole under that argument's name, as the checkpoint recorded it."""
    params = inspect.signature(cls.__init__).parameters
    named = [n for n, p in list(params.items())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    args_name = (ckpt or {}).get(name_key) if name_key else None
    if args_name and args_name in named:
        hparams = {args_name: hparams}
    elif not isinstance(hparams, dict):  # an OmegaConf container saved without its name: the first argument
        return {next(iter(list(params)[1:]), "hparams"): hparams, **overrides}
    merged = {**hparams, **overrides}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return merged
    return {k: v for k, v in merged.items() if k in params}


# keys under which checkpoints of older Lightning versions kept a module's hyperparameters
_LEGACY_HPARAMS_KEYS = ("module_arguments", "hparams")


def hparams_from_checkpoint(ckpt: dict[str, Any], key: str, hparams_file: Any) -> Any:
    if hparams_file is not None:
        ext = os.path.splitext(str(hparams_file))[1].lower()
        if ext not in (".yml", ".yaml"):
            raise ValueError(f"hparams_file={hparams_file!r}: only .yaml/.yml files are supported")
        return dict(load_hparams_from_yaml(hparams_file) or {})
    hp = ckpt.get(key)
    if hp is None:
        hp = next((ckpt[k] for k in _LEGACY_HPARAMS_KEYS if k in ckpt and key == "hyper_parameters"), None) or {}
    if isinstance(hp, Namespace):
        hp = vars(hp)
    return dict(hp) if isinstance(hp, dict) else hp
