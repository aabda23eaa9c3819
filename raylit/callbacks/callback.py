"""Import path of Lightning's ``callbacks.callback``; the base class lives in ``raylit.callbacks.base``."""

from raylit.callbacks.base import Callback

__all__ = ["Callback"]
