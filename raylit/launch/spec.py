"""RunSpec: everything one Trainer call needs, and the only thing that crosses the process boundary.

The driver builds a ``RunSpec`` in ``Trainer.fit`` / ``validate`` / ``test`` / ``predict``. In-process it is
executed as it is (``raylit/launch/local.py``); for Ray it is pickled once on the driver (``pack``: an
unpicklable attribute is named before any worker starts) and every worker builds its own ``Run`` from it.
"""

import os
from dataclasses import dataclass, field
from typing import Any

from raylit.config import TrainerConfig
from raylit.utilities.exceptions import MisconfigurationException


@dataclass
class RunSpec:
    config: TrainerConfig
    fn: str                                   # "fit", "validate", "test" or "predict"
    module: Any
    datamodule: Any = None
    callbacks: list = field(default_factory=list)
    loggers: list = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # loaders passed to the call, by stage
    ckpt_path: Any = None
    weights_only: bool | None = None
    verbose: bool = True
    return_predictions: bool = True
    model_given: bool = True                  # False: validate/test/predict() reuse the last fit's module
    compile: Any = None                       # torch.compile's context when the user passed a compiled module
    # progress a validate/test/predict call continues from (the previous fit's counters and logger steps)
    state: Any = None
    eval_log_steps: dict | None = None
    # the driver's process settings that every worker re-applies
    seed: str | None = field(default_factory=lambda: os.environ.get("PL_GLOBAL_SEED"))
    seed_workers: str | None = field(default_factory=lambda: os.environ.get("PL_SEED_WORKERS"))
    cwd: str = field(default_factory=os.getcwd)
    fault: dict | None = None                 # Ray fault-tolerance plan, set by the launcher
    trainer_cls: type | None = None           # the user's Trainer class: workers build their Trainer view with it


def pack(spec: RunSpec) -> bytes:
    """Pickle the spec for the workers; name the attribute that cannot be pickled, if any."""
    from ray import cloudpickle

    try:
        return cloudpickle.dumps(spec)
    except Exception as err:
        roots = {"model": spec.module, "datamodule": spec.datamodule, "callbacks": spec.callbacks,
                 "loggers": spec.loggers, "profiler": spec.config.profiler,
                 **{k: v for k, v in spec.data.items() if v is not None}}
        for name, obj in roots.items():
            found = _find_unpicklable(obj, name) if obj is not None else None
            if found is not None:
                path, culprit, why = found
                hint = (
                    "Create it in `setup()` (which runs on every worker) instead of `__init__`, or drop it in "
                    "`__getstate__`."
                    if name == "model"
                    else "Objects handed to the Trainer travel to the Ray workers by pickling."
                )
                raise MisconfigurationException(
                    f"raylit sends your {name} to the Ray workers by pickling it, but `{path}` (a "
                    f"{type(culprit).__module__}.{type(culprit).__qualname__}) cannot be pickled: {why}. {hint}"
                ) from err
        raise MisconfigurationException(f"raylit could not pickle the run for the Ray workers: {err!r}") from err


def unpack(payload: bytes) -> RunSpec:
    from ray import cloudpickle

    return cloudpickle.loads(payload)


def _find_unpicklable(obj: Any, path: str, depth: int = 0, seen: set | None = None) -> tuple | None:
    """The deepest attribute path under ``obj`` that fails to pickle, with the object and the error."""
    from ray import cloudpickle

    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 8:
        return None
    seen.add(id(obj))
    try:
        cloudpickle.dumps(obj)
        return None
    except Exception as err:
        why = f"{type(err).__name__}: {err}"
    children: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple, set)):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    else:
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            for k, v in state.items():
                if k in ("_modules", "_parameters", "_buffers") and isinstance(v, dict):
                    children += [(f"{path}.{name}", sub) for name, sub in v.items()]  # nn.Module children
                else:
                    children.append((f"{path}.{k}", v))
    for child_path, child in children:
        found = _find_unpicklable(child, child_path, depth + 1, seen)
        if found is not None:
            return found
    return path, obj, why
