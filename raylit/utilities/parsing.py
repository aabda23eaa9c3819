import pickle
import warnings
from collections.abc import MutableMapping
from typing import Any


class AttributeDict(dict):
    """A dict whose keys can also be read and written as attributes (``self.hparams.lr``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'") from e

    def __setattr__(self, key: str, val: Any) -> None:
        self[key] = val

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __repr__(self) -> str:
        if not self:
            return ""
        keys = [f'"{k}":' for k in self]
        width = max(len(k) for k in keys)
        return "\n".join(f"{k:{width}} {v}" for k, v in zip(keys, self.values()))


def is_picklable(obj: object) -> bool:
    """Whether ``pickle.dumps(obj)`` works."""
    try:
        pickle.dumps(obj)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
    return True


def clean_namespace(hparams: MutableMapping) -> None:
    """Drop the entries of ``hparams`` that cannot be pickled, warning about each (a Trainer call does this to
    the module's ``hparams`` before it starts: checkpoints and Ray workers need them picklable)."""
    for key in [k for k, v in hparams.items() if not is_picklable(v)]:
        warnings.warn(f"Attribute '{key}' removed from hparams because it cannot be pickled. You can suppress this "
                      f"warning by setting `self.save_hyperparameters(ignore=['{key}'])`.", UserWarning, stacklevel=2)
        del hparams[key]
