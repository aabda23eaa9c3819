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
