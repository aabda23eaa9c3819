import os
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

_MAX_SEED = np.iinfo(np.uint32).max


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed python, numpy and torch (CPU and CUDA), and record the seed in ``PL_GLOBAL_SEED`` so that worker
    processes and distributed samplers derive theirs from it, as Lightning does."""
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        seed = int(env) if env is not None else 0
    seed = int(seed)
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed_everything(seed={seed}): the seed must be in [0, {_MAX_SEED}]")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = str(int(workers))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if verbose:
        from raylit.utilities.rank_zero import rank_zero_info

        rank_zero_info(f"Seed set to {seed}")
    return seed


def worker_init_function(worker_id: int, rank: int = 0) -> None:
    """Seed python, numpy and torch in a DataLoader worker from (base seed, worker id, global rank), so that
    workers and ranks draw distinct, reproducible streams (installed by ``seed_everything(workers=True)``)."""
    base_seed = torch.initial_seed() - worker_id  # torch seeds worker i with base_seed + i
    seq = np.random.SeedSequence([base_seed, worker_id, rank])
    torch_seed, py_seed = (int(x) for x in seq.generate_state(2, dtype=np.uint64))
    torch.manual_seed(torch_seed)
    random.seed(py_seed)
    np.random.seed(seq.generate_state(4))


def add_worker_init_fn(loader: Any, rank: int) -> None:
    from functools import partial

    from torch.utils.data import DataLoader

    if isinstance(loader, DataLoader) and loader.worker_init_fn is None and loader.num_workers > 0:
        loader.worker_init_fn = partial(worker_init_function, rank=rank)


def rng_state() -> dict[str, Any]:
    """Every RNG stream a training step may draw from, in a form torch.save(weights_only=True) accepts."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if "torch.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch.cuda"])


@contextmanager
def isolate_rng() -> Iterator[None]:
    """Run a block without changing any RNG stream seen after it (used around the sanity check)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def _numpy_state_to_plain(s: tuple) -> dict[str, Any]:
    return {"name": s[0], "keys": torch.from_numpy(s[1].astype(np.int64)), "pos": int(s[2]),
            "has_gauss": int(s[3]), "gauss": float(s[4])}


def _numpy_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])


def _python_state_to_plain(s: tuple) -> dict[str, Any]:
    return {"version": s[0], "internal": torch.tensor(s[1], dtype=torch.int64), "gauss": s[2]}


def _python_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"])
