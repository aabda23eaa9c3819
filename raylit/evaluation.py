"""The evaluation loops: validation (also inside fit), test, and predict.

Functions over a ``Loop`` (raylit/loop.py), whose helpers move batches to the device and call the step
methods through the runtime and precision; they are the loop's, in a file of their own.
"""

from typing import Any

import torch

from raylit.data import sequential_lookahead
from raylit.loops.progress import EvalCounter
from raylit.result_store import ResultStore
from raylit.state import RunningStage
from raylit.utilities.clock import SharedDeadline
from raylit.utilities.model_helpers import accepts_arg


def run_evaluation(loop: Any, fn: str, sanity: bool = False) -> list[dict[str, float]]:
    """One validation or test run over every eval dataloader; returns the epoch metrics per loader."""
    run, hooks, metrics, loaders = loop.run, loop.hooks, loop.metrics, loop.run.loaders
    if not loop._default:
        loop._cache_decisions()
    name = "validation" if fn == "validate" else "test"
    dls = loaders.load_eval(fn, sanity) if fn == "test" or loaders.val is None or loaders.should_reload_val() \
        else loaders.val
    limits = [min(run.config.num_sanity_val_steps, n) for n in loaders.eval_limits(fn)] if sanity \
        else loaders.eval_limits(fn)
    if not dls or sum(limits) == 0:
        return []
    run.status.stage = RunningStage.SANITY_CHECKING if sanity else \
        (RunningStage.VALIDATING if fn == "validate" else RunningStage.TESTING)
    multi = len(dls) > 1
    step_name = f"{name}_step"
    if multi and not accepts_arg(getattr(loop.module, step_name), "dataloader_idx", 3):
        raise RuntimeError(f"You provided multiple {name} dataloaders, but your `{step_name}` does not "
                           "accept `dataloader_idx`: add `dataloader_idx=0` to its signature")
    counter = (EvalCounter() if sanity else run.eval_batches.setdefault(run.fn, EvalCounter())).begin()
    prev_store = metrics.store
    store = metrics.store = ResultStore(training=False, runtime=loop.runtime)
    metrics.in_batch = False
    batches = sequential_lookahead([(lambda dl=dl: iter(dl)) for dl in dls], limits)
    modes = {m: m.training for m in loop.module.modules()}
    # validation inside fit uses no_grad: tensors made under inference_mode cannot enter autograd later
    in_fit = run.status.fn == "fit"
    grad_ctx = torch.inference_mode() if run.config.inference_mode and not in_fit else torch.no_grad()
    outputs_per_loader: list[dict[str, Any]] = []
    with grad_ctx:
        hooks.module_hook(f"on_{name}_model_eval")
        hooks.both(f"on_{name}_start")
        hooks.both(f"on_{name}_epoch_start")
        current_dl = None
        for dl_idx, batch_idx, batch, _ in batches:
            if multi and dl_idx != current_dl:
                if current_dl is not None:
                    outputs_per_loader.append(_loader_epoch_end(loop, sanity))
                current_dl = dl_idx
            batch = loop._transfer(batch, dl_idx)
            metrics.begin_batch(batch, dl_idx if multi else None)
            args = (batch, batch_idx, dl_idx) if multi else (batch, batch_idx)
            hooks.callbacks_hook(f"on_{name}_batch_start", *args)
            hooks.module_hook(f"on_{name}_batch_start", *args)
            out = loop._step(step_name, *args)
            hooks.callbacks_hook(f"on_{name}_batch_end", out, *args)
            hooks.module_hook(f"on_{name}_batch_end", out, *args)
            counter.add()
            log = metrics.end_batch()
            if not sanity and log:
                key = (run.status.fn, fn, dl_idx)
                step = run.eval_log_steps.get(key, 0)
                metrics.send_to_loggers(log, step=step)
                run.eval_log_steps[key] = step + 1
        outputs_per_loader.append(_loader_epoch_end(loop, sanity))
        store.dataloader_idx = None
        metrics.in_batch = False
        hooks.both(f"on_{name}_epoch_end")
        epoch_end_log = {} if sanity else metrics.epoch_log_metrics()
        for out in outputs_per_loader:
            out.update(epoch_end_log)
        if not sanity:
            combined: dict[str, Any] = {}
            for out in outputs_per_loader:
                combined.update(out)
            metrics.send_to_loggers(combined)
        hooks.both(f"on_{name}_end")
        if hooks.uses_default(f"on_{name}_model_train"):
            # every submodule goes back to the mode it had, so a submodule the user froze in eval mode stays so
            for m, training in modes.items():
                m.training = training
        else:
            hooks.module_hook(f"on_{name}_model_train")
    metrics.store = prev_store
    store.reset()  # also resets logged torchmetrics objects, so the next run starts clean
    if run.config.val_check_seconds is not None:  # a time interval counts from the end of the last evaluation
        if loaders.val_deadline is None:
            loaders.val_deadline = SharedDeadline(run.config.val_check_seconds)
        else:
            loaders.val_deadline.restart()
    return [{k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in out.items()}
            for out in outputs_per_loader]

def _loader_epoch_end(loop: Any, sanity: bool) -> dict[str, Any]:
    loop.metrics.end_epoch()  # all ranks: cross-rank reductions of this loader's values happen here
    return {} if sanity else dict(loop.metrics.epoch_log_metrics())

def run_predict(loop: Any, return_predictions: bool) -> list | None:
    run, hooks = loop.run, loop.hooks
    loop._cache_decisions()
    dls = run.loaders.load_eval("predict")
    limits = run.loaders.eval_limits("predict")
    if not dls or sum(limits) == 0:
        return [] if return_predictions else None
    multi = len(dls) > 1
    if multi and not accepts_arg(loop.module.predict_step, "dataloader_idx", 3):
        raise RuntimeError("You provided multiple predict dataloaders, but your `predict_step` does not accept "
                           "`dataloader_idx`")
    predictions: list[list[Any]] = [[] for _ in dls]
    counter = run.eval_batches.setdefault("predict", EvalCounter()).begin()
    batches = sequential_lookahead([(lambda dl=dl: iter(dl)) for dl in dls], limits)
    grad_ctx = torch.inference_mode() if run.config.inference_mode else torch.no_grad()
    modes = {m: m.training for m in loop.module.modules()}
    with grad_ctx:
        hooks.module_hook("on_predict_model_eval")
        hooks.both("on_predict_start")
        hooks.both("on_predict_epoch_start")
        for dl_idx, batch_idx, batch, _ in batches:
            batch = loop._transfer(batch, dl_idx)
            args = (batch, batch_idx, dl_idx) if multi else (batch, batch_idx)
            hooks.callbacks_hook("on_predict_batch_start", *args)
            hooks.module_hook("on_predict_batch_start", *args)
            out = loop._step("predict_step", *args)
            hooks.callbacks_hook("on_predict_batch_end", out, *args)
            hooks.module_hook("on_predict_batch_end", out, *args)
            counter.add()
            if return_predictions:
                predictions[dl_idx].append(out)
        hooks.both("on_predict_epoch_end")
        hooks.both("on_predict_end")
    for m, training in modes.items():
        m.training = training
    if not return_predictions:
        return None
    return predictions if multi else predictions[0]
