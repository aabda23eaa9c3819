"""Small helpers about user classes (Lightning's ``utilities.model_helpers``)."""

import functools
import inspect
from typing import Any


def overrides(obj: Any, name: str, base: type) -> bool:
    """Whether ``obj`` has its own ``name`` rather than ``base``'s: a subclass method, or a function assigned on
    the instance (LambdaCallback, ``LightningDataModule.from_datasets``). A hook set to None
    (``model.val_dataloader = None``, Lightning's way to switch one off) is not overridden, and neither is
    ``base``'s own method seen through ``functools.wraps`` or ``functools.partial``."""
    if obj is None:
        return False
    impl = getattr(obj, name, None)
    if impl is None:
        return False
    impl = _unwrap(impl)
    base_impl = getattr(base, name, None)
    if base_impl is None:
        return True
    return getattr(impl, "__code__", impl) is not getattr(base_impl, "__code__", base_impl)


def is_overridden(method_name: str, instance: Any = None, parent: type | None = None) -> bool:
    """Lightning's ``is_overridden``: whether ``instance`` overrides ``parent``'s ``method_name``. Without
    ``parent``, the raylit base class that first defines the method (LightningModule, LightningDataModule,
    Callback, ...) is used."""
    if instance is None:
        return False
    if parent is None:
        parent = next((cls for cls in reversed(type(instance).__mro__)
                       if cls.__module__.startswith("raylit.") and method_name in vars(cls)), None)
        if parent is None:
            raise ValueError(f"Expected a raylit LightningModule, LightningDataModule or Callback defining "
                             f"`{method_name}`, got {type(instance).__qualname__}")
    return _lightning_overrides(instance, method_name, parent)


def _lightning_overrides(obj: Any, name: str, base: type) -> bool:
    """``is_overridden``'s rule, for the decisions Lightning takes with it (whether a datamodule's batch-transfer
    hooks or ``configure_model`` are called): a wrapper counts as what it wraps (``__wrapped__`` first, so a
    ``partial`` made with ``update_wrapper`` around the default is not an override, nor one around None)."""
    impl = getattr(obj, name, None)
    if impl is not None and hasattr(impl, "__wrapped__"):
        impl = impl.__wrapped__
    if isinstance(impl, functools.partial):
        impl = impl.func
    if impl is None:
        return False
    base_impl = getattr(base, name, None)
    if base_impl is None:
        return True
    return getattr(impl, "__code__", impl) is not getattr(base_impl, "__code__", base_impl)


def _unwrap(fn: Any) -> Any:
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        else:
            return fn


def accepts_arg(fn: Any, name: str, min_args: int) -> bool:
    """Whether ``fn`` can be called with argument ``name`` (by name, through ``*args``, or with at least
    ``min_args`` positional parameters)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if name in params or any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        return True
    return len(params) >= min_args
