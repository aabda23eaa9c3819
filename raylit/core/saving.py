"""``lightning.pytorch.core.saving``: reading and writing ``hparams.yaml`` (defined in ``raylit/saving.py``)."""

from raylit.saving import load_hparams_from_yaml, save_hparams_to_yaml

__all__ = ["load_hparams_from_yaml", "save_hparams_to_yaml"]
