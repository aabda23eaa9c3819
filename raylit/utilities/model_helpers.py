"""Small helpers about user classes (Lightning's ``utilities.model_helpers``)."""

import inspect
from typing import Any


def is_overridden(obj: Any, name: str, base: type) -> bool:
    """Whether ``obj`` (an instance) has its own ``name`` rather than ``base``'s: a subclass method, or one
    assigned on the instance (LambdaCallback, ``LightningDataModule.from_datasets``). A hook set to None
    (``model.val_dataloader = None``, Lightning's way to switch one off) is not overridden."""
    if obj is None:
        return False
    own = getattr(obj, "__dict__", {})
    if name in own:
        return own[name] is not None
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)


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
