"""The Tuner, importable as in ``lightning.pytorch.tuner``: ``Tuner(trainer).lr_find(model)`` and
``Tuner(trainer).scale_batch_size(model)``. In-process only (see ``raylit/tuner/_search.py``)."""

from raylit.tuner.tuning import Tuner

__all__ = ["Tuner"]
