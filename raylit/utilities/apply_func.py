"""Apply a function to every tensor in a nested collection (dict/list/tuple/namedtuple/dataclass)."""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch


def apply_to_collection(data: Any, dtype: type | tuple, function: Callable, *args: Any, **kwargs: Any) -> Any:
    if isinstance(data, dtype):
        return function(data, *args, **kwargs)
    if isinstance(data, Mapping):
        return type(data)({k: apply_to_collection(v, dtype, function, *args, **kwargs) for k, v in data.items()}) \
            if type(data) is not dict else {k: apply_to_collection(v, dtype, function, *args, **kwargs)
                                            for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_collection(d, dtype, function, *args, **kwargs) for d in data))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return type(data)([apply_to_collection(d, dtype, function, *args, **kwargs) for d in data])
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.replace(data, **{f.name: apply_to_collection(getattr(data, f.name), dtype, function,
                                                                        *args, **kwargs)
                                            for f in dataclasses.fields(data) if f.init})
    return data


def move_data_to_device(batch: Any, device: torch.device | str) -> Any:
    if not isinstance(device, torch.device):
        device = torch.device(device)
    # the common batch, a tuple or list of tensors already on the device: nothing to move or rebuild
    if type(batch) in (tuple, list) and all(type(t) is torch.Tensor and t.device == device for t in batch):
        return batch
    non_blocking = device.type == "cuda"

    def to(t: Any) -> Any:
        if t.device == device:
            return t
        return t.to(device, non_blocking=non_blocking)

    # objects with their own .to() (e.g. custom batch classes) are moved as a whole
    if hasattr(batch, "to") and not isinstance(batch, torch.Tensor) and not isinstance(batch, (Mapping, Sequence)):
        return batch.to(device)
    return apply_to_collection(batch, torch.Tensor, to)


def extract_batch_size(batch: Any) -> int:
    """Size of the first dimension of the first tensor found in ``batch`` (1 if there is none)."""
    if isinstance(batch, torch.Tensor):
        return 1 if batch.ndim == 0 else batch.size(0)
    if isinstance(batch, (str, bytes)):
        return 1
    if isinstance(batch, Mapping):
        for v in batch.values():
            return extract_batch_size(v)
    if isinstance(batch, Sequence):
        for v in batch:
            return extract_batch_size(v)
    return 1


def convert_tensors_to_scalars(data: Any) -> Any:
    return apply_to_collection(data, torch.Tensor, lambda t: t.item() if t.numel() == 1 else t.tolist())
