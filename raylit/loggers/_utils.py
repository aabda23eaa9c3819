"""Small helpers shared by the file loggers (no heavy imports here)."""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from argparse import Namespace
from collections.abc import Mapping, MutableMapping
from typing import Any


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported already
    return torch is not None and isinstance(value, torch.Tensor)


def _to_python(value: Any) -> Any:
    """A one-element tensor becomes its Python number; anything else is returned unchanged."""
    if _is_tensor(value):
        return value.item()
    return value


def _convert_params(params: Mapping[str, Any] | Namespace | None) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    return params  # type: ignore[return-value]


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> Mapping[str, Any]:
    if not prefix:
        return metrics
    return {f"{prefix}{separator}{key}": value for key, value in metrics.items()}


def _flatten_dict(params: Mapping[Any, Any], delimiter: str = "/", parent: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [{"c": 2}]}`` -> ``{"a/b": 1, "l/0/c": 2}`` (lists of mappings are indexed)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent}{delimiter}{key}" if parent else str(key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        elif isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, MutableMapping):
            flat.update(_flatten_dict(value, delimiter, name))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, MutableMapping) for v in value):
            for index, item in enumerate(value):
                flat.update(_flatten_dict(item, delimiter, f"{name}{delimiter}{index}"))
        else:
            flat[name] = value
    return flat


def _sanitize_params(params: dict[str, Any]) -> dict[str, Any]:
    """Keep bool/int/float/str (and scalar tensors/arrays as numbers); everything else becomes ``str(value)``."""
    clean: dict[str, Any] = {}
    for key, value in params.items():
        one_element_tensor = _is_tensor(value) and value.numel() == 1
        numpy_scalar = type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0
        if one_element_tensor or numpy_scalar:
            value = value.item()
        if inspect.isclass(value) or type(value) not in (bool, int, float, str):
            value = str(value)
        clean[key] = value
    return clean


def _next_version(folder: str) -> int:
    """One more than the largest ``version_<N>`` folder inside ``folder`` (0 when there is none)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return 0
    found = []
    for entry in entries:
        # like Lightning, "version_3_old" counts as 3: only the part after the first "_" is read
        number = entry.split("_")[1] if entry.startswith("version_") else ""
        if number.isascii() and number.isdigit() and os.path.isdir(os.path.join(folder, entry)):
            found.append(int(number))
    return max(found) + 1 if found else 0


def _scan_checkpoints(checkpoint_callback: Any, logged_model_time: dict[str, float]) -> list[tuple]:
    """Checkpoints of ``checkpoint_callback`` still to upload, oldest first, as ``(mtime, path, score, tag)``.

    Looks at the last, the best and the best-k files that exist; a file is skipped if ``logged_model_time``
    already has it with the same (or a newer) modification time.
    """
    candidates: dict[str, tuple[Any, str]] = {}
    if hasattr(checkpoint_callback, "last_model_path") and hasattr(checkpoint_callback, "current_score"):
        candidates[checkpoint_callback.last_model_path] = (checkpoint_callback.current_score, "latest")
    if hasattr(checkpoint_callback, "best_model_path") and hasattr(checkpoint_callback, "best_model_score"):
        candidates[checkpoint_callback.best_model_path] = (checkpoint_callback.best_model_score, "best")
    for path, score in getattr(checkpoint_callback, "best_k_models", {}).items():
        candidates[path] = (score, "best_k")
    found = []
    for path, (score, tag) in candidates.items():
        if path and os.path.isfile(path):
            mtime = os.stat(path).st_mtime
            if path not in logged_model_time or logged_model_time[path] < mtime:
                found.append((mtime, path, score, tag))
    return sorted(found, key=lambda item: (item[0], item[1]))
