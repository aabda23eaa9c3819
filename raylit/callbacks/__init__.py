from raylit.callbacks.base import Callback
from raylit.callbacks.checkpoint import Checkpoint

__all__ = ["Callback", "Checkpoint"]
