"""TrainerConfig: the Trainer's arguments, validated once and frozen.

``TrainerConfig.from_kwargs(**trainer_arguments)`` checks every argument in a small function per concern and
raises an error naming the argument, the value and what is accepted, before any run starts. The result is an
immutable value that travels to Ray workers inside the ``RunSpec``; it keeps the arguments as given
(``kwargs``), from which Tune's per-trial Trainers and ``config.replace(**overrides)`` validate variants again.
Nothing here has side effects; the Trainer applies the few global settings (determinism, cudnn benchmark).
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from raylit.precision import canonical_precision
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_info

STRATEGIES = frozenset({
    "auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "single_device", "fsdp",
    "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false",
    "ddp_spawn_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_false"})
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


@dataclass(frozen=True)
class TrainerConfig:
    # hardware and distribution
    accelerator: str = "cpu"                  # "cpu" or "cuda" (resolved from "auto"/"gpu")
    devices: Any = "auto"                     # as passed
    device_ids: tuple[int, ...] = (0,)
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 1                      # processes the run needs: devices x nodes, or the ScalingConfig's
    scaling_config: Any = None
    elastic: tuple[int, int] | None = None    # (min_workers, max_workers): raylit/distributed/elastic.py
    run_config: Any = None
    precision: str = "32-true"
    sync_batchnorm: bool = False
    use_distributed_sampler: bool = True
    # debugging
    fast_dev_run: int | bool = False
    barebones: bool = False
    detect_anomaly: bool = False
    profiler: Any = None
    # loop limits
    max_epochs: int = 1000
    min_epochs: int = 0
    max_steps: int = -1
    min_steps: int | None = None
    max_time: Any = None
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    limit_test_batches: int | float = 1.0
    limit_predict_batches: int | float = 1.0
    overfit_batches: int | float = 0.0
    # validation and logging cadence
    val_check_interval: Any = 1.0
    val_check_seconds: float | None = None    # a time-based val_check_interval, in seconds
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | float = 2     # math.inf for -1 (all batches)
    log_every_n_steps: int = 50
    reload_dataloaders_every_n_epochs: int = 0
    # optimization
    accumulate_grad_batches: int = 1
    gradient_clip_val: int | float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: bool | str | None = None
    benchmark: bool | None = None
    inference_mode: bool = True
    # outputs
    default_root_dir: str | None = None
    logger: Any = None
    callbacks: Any = None
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    enable_autolog_hparams: bool = True
    model_registry: str | None = None
    # the arguments as given, so that ``replace`` can validate a variant from scratch
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "TrainerConfig":
        values: dict[str, Any] = dict(kw)
        _check_hardware(values)
        _check_debug_flags(values)
        _check_limits(values)
        _check_val_cadence(values)
        _check_optimization(values)
        _apply_fast_dev_run(values)
        _check_elastic(values)
        if values["default_root_dir"] is not None:
            values["default_root_dir"] = os.fspath(values["default_root_dir"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names}, kwargs=dict(kw))

    def replace(self, **overrides: Any) -> "TrainerConfig":
        """A variant with some Trainer arguments changed, validated like a new Trainer's."""
        return TrainerConfig.from_kwargs(**{**self.kwargs, **overrides})

    @property
    def uses_ray(self) -> bool:
        """Whether ``fit``/``validate``/... hand the run to Ray Train workers instead of running in-process."""
        return self.num_workers > 1 or self.scaling_config is not None or self.elastic is not None

    @property
    def device(self) -> torch.device:
        """The device of an in-process run."""
        if self.accelerator == "cuda" and torch.cuda.is_available():
            return torch.device("cuda", self.device_ids[0])
        return torch.device("cpu")

    @property
    def strategy_name(self) -> str:
        return "ddp" if self.num_workers > 1 and self.strategy == "auto" else self.strategy


# --- the checks, one concern each; each edits ``v`` (the arguments) in place ------------------------------
def _check_hardware(v: dict[str, Any]) -> None:
    accelerator = v["accelerator"]
    if not isinstance(accelerator, str) or accelerator.lower() not in ACCELERATORS:
        raise ValueError(f"`Trainer(accelerator={accelerator!r})` is not a valid value. Expected one of "
                         f"{list(ACCELERATORS)}")
    accelerator = accelerator.lower()
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    elif accelerator == "gpu":
        accelerator = "cuda"
    v["accelerator"] = accelerator
    num_nodes = v["num_nodes"]
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise MisconfigurationException(f"`Trainer(num_nodes={num_nodes!r})`: num_nodes must be an int >= 1")
    v["device_ids"] = tuple(parse_devices(v["devices"], accelerator))
    strategy = v["strategy"]
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"`Trainer(strategy={strategy!r})` is not supported. Expected one of {sorted(STRATEGIES)}")
    workers = len(v["device_ids"]) * num_nodes
    scaling = v["scaling_config"]
    if scaling is not None and getattr(scaling, "num_workers", None):
        n = scaling.num_workers  # (min, max): Ray's elastic range, checked in _check_elastic
        workers = int(n[1]) if isinstance(n, (tuple, list)) and len(n) == 2 else int(n)
    v["num_workers"] = workers
    if strategy == "single_device" and workers > 1:
        raise MisconfigurationException(
            f"`strategy='single_device'` runs one process, but devices={v['devices']!r} x num_nodes={num_nodes} "
            f"asks for {workers}. Use strategy='ddp' or devices=1.")
    if accelerator == "cuda" and workers == 1 and scaling is None and not torch.cuda.is_available():
        raise MisconfigurationException(
            "`Trainer(accelerator='gpu')` was requested but no CUDA GPU is available in this process. "
            "Available accelerators: ['cpu']. Use accelerator='cpu', or ask for several workers so the run goes "
            "to a Ray cluster that has GPUs.")
    v["precision"] = canonical_precision(v["precision"], "cuda" if accelerator == "cuda" else "cpu")
    if v["plugins"]:
        raise MisconfigurationException(f"`Trainer(plugins={v['plugins']!r})` is not supported by raylit")


def _check_debug_flags(v: dict[str, Any]) -> None:
    fast_dev_run = v["fast_dev_run"]
    if isinstance(fast_dev_run, bool):
        fast_dev_run = int(fast_dev_run)
    if not isinstance(fast_dev_run, int) or fast_dev_run < 0:
        raise MisconfigurationException(
            f"fast_dev_run={fast_dev_run!r} is not a valid configuration. It should be >= 0.")
    v["fast_dev_run"] = True if fast_dev_run == 1 else fast_dev_run
    if not v["barebones"]:
        return
    for name in ("enable_checkpointing", "logger", "enable_progress_bar", "enable_model_summary"):
        if v[name]:
            raise ValueError(f"`Trainer(barebones=True)` was configured. `{name}={v[name]!r}` is incompatible")
    if fast_dev_run or v["detect_anomaly"] or v["profiler"]:
        raise ValueError("`Trainer(barebones=True)` is incompatible with fast_dev_run, detect_anomaly and profiler")
    v.update(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, logger=False,
             log_every_n_steps=0, num_sanity_val_steps=0)


def _check_limits(v: dict[str, Any]) -> None:
    for name in ("max_epochs", "min_epochs", "min_steps"):
        value = v[name]
        if value is not None and (not isinstance(value, int) or value < -1):
            raise MisconfigurationException(f"`Trainer({name}={value!r})` must be None or an int >= -1")
    if not isinstance(v["max_steps"], int) or v["max_steps"] < -1:
        raise MisconfigurationException(f"`Trainer(max_steps={v['max_steps']!r})` must be -1 or an int >= 0")
    if v["max_epochs"] is None:
        v["max_epochs"] = 1000 if v["max_steps"] == -1 and v["max_time"] is None else -1
    if v["min_epochs"] is None:
        v["min_epochs"] = 0
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                 "overfit_batches"):
        _say_what_one_means(name, v[name])
        v[name] = check_limit(v[name], name)
    if v["overfit_batches"] > 0:
        v["limit_train_batches"] = v["limit_val_batches"] = v["overfit_batches"]


def _check_val_cadence(v: dict[str, Any]) -> None:
    given = v["val_check_interval"]
    _say_what_one_means("val_check_interval", given)
    interval = 1.0 if given is None else given
    seconds = _val_check_seconds(interval)  # time-based (Lightning 2.6), or None
    if seconds is None and isinstance(interval, (int, float)) and not isinstance(interval, bool):
        interval = check_limit(interval, "val_check_interval")
    if seconds is None and (isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0):
        raise MisconfigurationException(
            f"`val_check_interval` should be an int > 0 (every N training batches), a float in (0.0, 1.0] "
            f"(a fraction of the training epoch) or a time interval ('DD:HH:MM:SS', a timedelta or a dict of "
            f"timedelta arguments), got {interval!r}.")
    v["val_check_interval"], v["val_check_seconds"] = interval, seconds
    every = v["check_val_every_n_epoch"]
    if every is not None and (not isinstance(every, int) or every < 1):
        raise MisconfigurationException(
            f"`check_val_every_n_epoch` should be an integer >= 1 or None, found {every!r}.")
    if every is None and isinstance(given, float):
        raise MisconfigurationException(
            "`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
            "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`.")
    sanity = 2 if v["num_sanity_val_steps"] is None else v["num_sanity_val_steps"]
    if not isinstance(sanity, int) or isinstance(sanity, bool) or sanity < -1:
        raise MisconfigurationException(
            f"`num_sanity_val_steps` must be -1 (all batches) or an int >= 0, got {sanity!r}")
    v["num_sanity_val_steps"] = math.inf if sanity == -1 else sanity
    every_n = 50 if v["log_every_n_steps"] is None else v["log_every_n_steps"]
    if not isinstance(every_n, int) or isinstance(every_n, bool) or every_n < 0:
        raise MisconfigurationException(
            f"`Trainer(log_every_n_steps={every_n!r})` must be an int >= 0 (0 logs no training steps).")
    v["log_every_n_steps"] = every_n
    reload = v["reload_dataloaders_every_n_epochs"]
    if not isinstance(reload, int) or reload < 0:
        raise MisconfigurationException(
            f"`reload_dataloaders_every_n_epochs` should be an int >= 0, got {reload!r}.")


def _check_optimization(v: dict[str, Any]) -> None:
    acc = v["accumulate_grad_batches"]
    if not isinstance(acc, int) or acc < 1:
        raise MisconfigurationException(f"`Trainer(accumulate_grad_batches={acc!r})` must be an int >= 1")
    clip, algorithm = v["gradient_clip_val"], v["gradient_clip_algorithm"]
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))):
        raise TypeError(f"`gradient_clip_val` should be an int or a float. Got {clip!r}.")
    if algorithm is not None and (not isinstance(algorithm, str) or algorithm.lower() not in ("norm", "value")):
        raise MisconfigurationException(
            f"`gradient_clip_algorithm` {algorithm!r} is invalid. Allowed algorithms: ['value', 'norm'].")
    # None means "norm" at clipping time, as in Lightning
    v["gradient_clip_algorithm"] = algorithm.lower() if algorithm else None
    if v["deterministic"] not in (None, True, False, "warn"):
        raise MisconfigurationException(
            f"`deterministic={v['deterministic']!r}`: expected True, False, 'warn' or None")
    if v["deterministic"] and v["benchmark"] is None:
        v["benchmark"] = False


def _check_elastic(v: dict[str, Any]) -> None:
    """``elastic=(min, max)`` or ``ScalingConfig(num_workers=(min, max))``: the global batch stays that of
    max_workers at any world size (raylit/distributed/elastic.py), which needs a plain training loop."""
    elastic, scaling = v.get("elastic"), v["scaling_config"]
    ray_range = getattr(scaling, "num_workers", None) if scaling is not None else None
    ray_range = tuple(ray_range) if isinstance(ray_range, (tuple, list)) else None
    if elastic is None and ray_range is None:
        return
    accepted = "a (min_workers, max_workers) pair of ints with 1 <= min <= max and max divisible by min"
    if elastic is not None:
        if (not isinstance(elastic, (tuple, list)) or len(elastic) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in elastic)):
            raise MisconfigurationException(f"`Trainer(elastic={elastic!r})` is not valid: expected {accepted}.")
        elastic = tuple(elastic)
        if scaling is not None and ray_range != elastic:
            raise MisconfigurationException(
                f"`Trainer(elastic={elastic!r})` disagrees with the ScalingConfig's num_workers="
                f"{scaling.num_workers!r}: give the range once (elastic=, or ScalingConfig(num_workers=(min, max))).")
    mn, mx = elastic if elastic is not None else ray_range
    if not (1 <= mn <= mx) or mx % mn:
        raise MisconfigurationException(
            f"elastic range (min_workers={mn}, max_workers={mx}) is not valid: expected {accepted} (a run on "
            f"min_workers trains max/min micro-batches per worker and optimizer step).")
    given_devices = v["devices"] not in (None, "auto")
    if elastic is not None and scaling is None and given_devices and len(v["device_ids"]) * v["num_nodes"] != mx:
        raise MisconfigurationException(
            f"`Trainer(devices={v['devices']!r}, num_nodes={v['num_nodes']}, elastic={elastic!r})`: devices x "
            f"num_nodes = {len(v['device_ids']) * v['num_nodes']} workers is the full size and must equal "
            f"max_workers={mx}; or leave devices='auto'.")
    problems = [(name, v[name], ok) for name, ok in (
        ("limit_train_batches", "1.0"), ("overfit_batches", "0.0"), ("val_check_interval", "1.0 or a time"),
        ("use_distributed_sampler", "True"), ("strategy", "'auto' or 'ddp'"))
        if not (_elastic_ok(name, v[name]) or (name == "val_check_interval" and v["val_check_seconds"]))]
    if problems:
        name, value, ok = problems[0]
        raise MisconfigurationException(
            f"`Trainer({name}={value!r})` is not supported with an elastic range: the run's batches are counted "
            f"per global batch, the same at any number of workers. Use {name}={ok}, or run without elastic.")
    v["elastic"], v["num_workers"] = (mn, mx), mx


def _elastic_ok(name: str, value: Any) -> bool:
    if name == "val_check_interval":
        return value == 1.0 and isinstance(value, float)
    if name == "strategy":
        return value in ("auto", "ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
    return value == {"limit_train_batches": 1.0, "overfit_batches": 0.0, "use_distributed_sampler": True}[name]


def _apply_fast_dev_run(v: dict[str, Any]) -> None:
    n = int(v["fast_dev_run"])
    if not n:
        return
    if v["overfit_batches"] <= 0:
        v["limit_train_batches"] = v["limit_val_batches"] = n
    v.update(limit_test_batches=n, limit_predict_batches=n, max_steps=n, max_epochs=1, num_sanity_val_steps=0,
             val_check_interval=1.0, check_val_every_n_epoch=1,
             val_check_seconds=None)  # time is not applicable in fast_dev_run


def _say_what_one_means(name: str, value: Any) -> None:
    """1 and 1.0 mean different things (one batch / all batches); say which one the user got, as Lightning does."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and value == 1:
        what = {"limit_train_batches": "1 batch per epoch will be used.",
                "val_check_interval": "validation will run after every batch."}.get(name, "1 batch will be used.")
        rank_zero_info(f"`Trainer({name}=1)` was configured so {what}")
    elif isinstance(value, float) and value == 1.0:
        what = {"limit_train_batches": "100% of the batches per epoch will be used.",
                "val_check_interval": "validation will run at the end of the training epoch."
                }.get(name, "100% of the batches will be used.")
        rank_zero_info(f"`Trainer({name}=1.0)` was configured so {what}.")


# --- value parsers ----------------------------------------------------------------------------------------
def check_limit(value: Any, name: str) -> int | float:
    """A ``limit_*_batches`` / ``overfit_batches`` / ``val_check_interval`` value: a fraction in [0, 1] or a
    batch count."""
    if value is None:
        return 1.0
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
        (isinstance(value, float) and value > 1.0 and not value.is_integer())
    if bad:  # Lightning's wording
        raise MisconfigurationException(
            f"You have passed invalid value {value!r} for {name}, it has to be in [0.0, 1.0] or an int.")
    return int(value) if isinstance(value, float) and value > 1.0 else value


def parse_devices(devices: Any, accelerator: str) -> list[int]:
    def bad() -> MisconfigurationException:
        accepted = ("an int > 0 (number of processes)" if accelerator == "cpu" else
                    "an int > 0, -1 (all GPUs), a list of GPU ids, or a string such as '0,1'")
        return MisconfigurationException(
            f"`Trainer(devices={devices!r})` is not valid with accelerator={accelerator!r}: expected {accepted} "
            "or 'auto'.")

    all_gpus = list(range(max(torch.cuda.device_count(), 1)))
    if devices == "auto" or devices is None:
        return all_gpus if accelerator == "cuda" else [0]
    if isinstance(devices, bool):
        raise bad()
    if isinstance(devices, str):
        s = devices.strip()
        if s == "-1" and accelerator == "cuda":
            return all_gpus
        if "," in s and accelerator == "cuda":
            return [int(x) for x in s.split(",") if x.strip()]
        try:
            devices = int(s)
        except ValueError:
            raise bad() from None
    if isinstance(devices, int):
        if devices == -1 and accelerator == "cuda":
            return all_gpus
        if devices <= 0:
            raise bad()
        return list(range(devices))
    if isinstance(devices, (list, tuple)) and accelerator == "cuda" and devices and \
            all(isinstance(d, int) and d >= 0 for d in devices):
        return list(devices)
    raise bad()


def _val_check_seconds(value: Any) -> float | None:
    """Seconds of a time-based ``val_check_interval`` ("DD:HH:MM:SS", a timedelta, or a dict of timedelta
    arguments); None for a batch count or fraction."""
    if not isinstance(value, (str, dict, timedelta)):
        return None
    try:
        if isinstance(value, str):
            days, hours, minutes, seconds = (int(part) for part in value.split(":"))
            value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        elif isinstance(value, dict):
            value = timedelta(**value)
    except (TypeError, ValueError) as err:
        raise MisconfigurationException(
            f"`val_check_interval={value!r}` is not a valid time interval: expected 'DD:HH:MM:SS' (integers), a "
            "datetime.timedelta, or a dict of timedelta arguments such as {'minutes': 30}.") from err
    if value.total_seconds() < 0:
        raise MisconfigurationException(f"`val_check_interval={value!r}`: a time interval must not be negative.")
    return value.total_seconds()
