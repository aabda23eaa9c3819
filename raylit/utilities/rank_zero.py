"""Rank-zero helpers. The rank comes from torch.distributed once a process group exists, else from the
environment variables that torch.distributed, Ray Train and SLURM set, so they work before and after the
Trainer exists."""

import functools
import logging
import os
import warnings
from typing import Any, Callable, TypeVar

import torch.distributed as dist

log = logging.getLogger("raylit")
T = TypeVar("T")


def _rank_from_env() -> int:
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


class _RankZeroOnly:
    """``@rank_zero_only``: the decorated function runs on global rank 0 only (other ranks return None).

    ``rank_zero_only.rank`` is the global rank, read when asked: torch.distributed's once a process group exists
    (a Ray worker's, whenever raylit was imported there), else the environment's. Setting it (Lightning's API)
    pins it."""

    def __init__(self) -> None:
        self._pinned: int | None = None

    @property
    def rank(self) -> int:
        if self._pinned is not None:
            return self._pinned
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
        return _rank_from_env()

    @rank.setter
    def rank(self, value: int | None) -> None:
        self._pinned = value

    def __call__(self, fn: Callable[..., T]) -> Callable[..., T | None]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> T | None:
            if rank_zero_only.rank == 0:
                return fn(*args, **kwargs)
            return None

        return wrapped


rank_zero_only = _RankZeroOnly()


@rank_zero_only
def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 4) -> None:
    warnings.warn(message, category, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_info(message: str) -> None:
    log.info(message)
