"""Small helpers about user classes (Lightning's ``utilities.model_helpers``)."""

from typing import Any


def is_overridden(obj: Any, name: str, base: type) -> bool:
    """Whether ``obj`` (an instance) has its own ``name`` rather than ``base``'s: a subclass method, or one
    assigned on the instance (LambdaCallback, ``LightningDataModule.from_datasets``)."""
    if obj is None:
        return False
    if name in getattr(obj, "__dict__", {}):
        return True
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)
