"""Precision modes: what wraps the steps (autocast / default dtype), how the loss is scaled, how the
optimizer steps, and what is saved in checkpoints (the fp16 GradScaler)."""

import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn

from raylit.utilities.apply_func import apply_to_collection

PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
_ALIASES = {64: "64-true", "64": "64-true", 32: "32-true", "32": "32-true", 16: "16-mixed", "16": "16-mixed",
            "bf16": "bf16-mixed"}
_TRUE_DTYPES = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}


def canonical_precision(value: Any, device_type: str) -> str:
    """Normalise the ``precision`` flag the way Lightning does, falling back from fp16 AMP to bf16 on CPU."""
    if value is None:
        return "32-true"
    if value in _ALIASES and not isinstance(value, bool):
        name = _ALIASES[value]
        if value in (16, "16", "bf16"):
            warnings.warn(f"`precision={value!r}` is supported for historical reasons but its usage is "
                          f"discouraged. Please set your precision to {name!r} instead!", UserWarning, stacklevel=4)
    elif value in PRECISIONS:
        name = value
    else:
        allowed = sorted({str(k) for k in _ALIASES} | set(PRECISIONS))
        raise ValueError(f"Precision {value!r} is invalid. Allowed precision values: {allowed}")
    if name == "16-mixed" and device_type == "cpu":
        warnings.warn("You passed `Trainer(accelerator='cpu', precision='16-mixed')` but AMP with fp16 is not "
                      "supported on CPU. Using `precision='bf16-mixed'` instead.", UserWarning, stacklevel=4)
        name = "bf16-mixed"
    return name


class Precision:
    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.scaler: Any = None
        if name == "16-mixed":
            self.scaler = torch.amp.GradScaler(device.type)
        self._true_dtype = _TRUE_DTYPES.get(name)

    # --- module and inputs ----------------------------------------------------------------------------
    def convert_module(self, module: nn.Module) -> nn.Module:
        if self._true_dtype is not None:
            return module.to(dtype=self._true_dtype)
        return module

    def convert_input(self, batch: Any) -> Any:
        dtype = self._true_dtype
        if dtype is None:
            return batch
        return apply_to_collection(batch, torch.Tensor,
                                   lambda t: t.to(dtype) if torch.is_floating_point(t) else t)

    def step_context(self) -> ContextManager:
        """Context around training/validation/test/predict steps."""
        if self.name == "16-mixed":
            return torch.autocast(self.device.type, dtype=torch.float16, cache_enabled=False)
        if self.name == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        if self._true_dtype is not None:
            return _default_dtype(self._true_dtype)
        return nullcontext()

    def init_context(self) -> ContextManager:
        return _default_dtype(self._true_dtype) if self._true_dtype is not None else nullcontext()

    # --- backward and step ----------------------------------------------------------------------------
    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def optimizer_step(self, optimizer: Any, closure: Callable[[], Any], after_closure: Callable[[], None],
                       skip_if_no_loss: bool, **kwargs: Any) -> Any:
        """Run ``closure`` (forward + backward), then ``after_closure`` (hooks, clipping), then step."""
        if self.scaler is None:
            def wrapped() -> Any:
                result = closure()
                after_closure()
                return result

            return optimizer.step(closure=wrapped, **kwargs)
        if isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError("AMP and the LBFGS optimizer are not compatible (`precision='16-mixed'`).")
        result = closure()
        # unscale first so that hooks and gradient clipping see the real gradients
        self.scaler.unscale_(optimizer)
        after_closure()
        if skip_if_no_loss and result is None:
            return None
        out = self.scaler.step(optimizer, **kwargs)  # skipped automatically on inf/NaN gradients
        self.scaler.update()
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)
