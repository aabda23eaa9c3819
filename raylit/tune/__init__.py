"""Ray Tune sweeps over raylit runs: the Trainer of a single run, a build function, and Tune's schedulers.

```python
from ray import tune
from ray.tune.schedulers import ASHAScheduler
import raylit
from raylit.tune import Tuner, checkpoint_file

def build(config):                      # one trial's module (and optionally datamodule / dataloaders)
    return MyModule(lr=config["lr"]), MyData(batch_size=config["batch_size"])

results = Tuner(build, trainer=raylit.Trainer(max_epochs=20),
                param_space={"lr": tune.loguniform(1e-4, 1e-1), "batch_size": tune.choice([32, 64]),
                             "trainer.accumulate_grad_batches": tune.choice([1, 2])},
                tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=ASHAScheduler(),
                                            num_samples=16)).fit()
best = MyModule.load_from_checkpoint(checkpoint_file(results.get_best_result()))
```

Conventions:

- **Trainer arguments** are searched with param_space keys ``"trainer.<argument>"`` (or a ``"trainer"`` sub-dict);
  they are taken out of the config before ``build(config)`` sees it. Arguments that decide resources or
  locations (devices, strategy, num_nodes, accelerator, callbacks, logger, default_root_dir, ...) cannot vary.
- **Reports**: every validation run reports ``trainer.callback_metrics`` (everything logged with ``self.log``)
  plus ``epoch`` and ``step``; a validation at the end of an epoch reports after ``on_train_epoch_end``, so
  epoch-level training metrics are included. Without validation, each epoch reports. Tune's
  ``training_iteration`` counts reports (use it as ASHA's ``max_t`` / PBT's ``perturbation_interval`` unit).
- **Checkpoints**: each report carries a Tune checkpoint (a directory with ``checkpoint.ckpt``, a
  Lightning-format file that ``load_from_checkpoint`` and ``fit(ckpt_path=...)`` accept), unless
  ``checkpoint_frequency`` says otherwise. A trial restarted from a checkpoint (PBT exploit, a retried
  failure, ``Tuner.restore``) resumes exactly (weights, optimizer, RNG, position in the epoch); after a PBT
  exploit the optimizers take the *new* config's hyperparameters (lr, momentum, ...).
- **Where things go**: each trial's Trainer gets ``default_root_dir`` = the trial's directory in the sweep's
  storage, so the default TensorBoard logs land there (user-given loggers are kept as they are). Progress
  bars and model summaries are off in trials unless the Trainer sets them; the default ModelCheckpoint is
  replaced by Tune's checkpoints unless the Trainer configures checkpointing itself.
- **Where trials run**: a one-device Trainer trains inside the Tune trial actor (no Ray Train worker group);
  a multi-worker Trainer (``devices=2``, ``num_nodes``, ``scaling_config``) starts a Ray Train run per trial
  through raylit's Ray launcher.
  Single-worker trials reuse actors (``Tuner(reuse_actors=False)`` turns that off).
- **Stops**: a trial a scheduler stops (or PBT pauses) ends its run normally: ``on_train_end``,
  ``on_fit_end``, ``teardown`` and logger finalisation run before the actor goes away.
- **Schedulers**: ASHA, HyperBand, MedianStoppingRule, PBT/PB2 act on the reported metrics. PBT/PB2 and the
  synchronous HyperBand restart trials from checkpoints, so they are refused when checkpointing is off; the
  median rule may pause trials (they resume from their checkpoint). Each restore is logged in the trial dir's
  ``raylit_restores.jsonl`` (which checkpoint, from which trial, old and new config).
- **Search algorithms**: anything ``TuneConfig(search_alg=...)`` takes (random/grid built in; OptunaSearch,
  HyperOptSearch, ... when their packages are installed); raylit only reads their ``metric``.
- **Set-up errors**: bad ``trainer.`` keys and values, and PBT without checkpoints, fail in ``Tuner(...)``. A
  metric nobody logs (the message lists the logged names) or a param_space key nothing reads is detected by the
  first trial; the sweep then stops and ``fit()`` raises :class:`TuneConfigError`.
- **Resuming**: ``Tuner.restore(experiment_path).fit()`` continues an interrupted sweep; the build function and
  Trainer are saved with the experiment (``raylit_tuner.pkl``).
"""

from raylit.tune._report import CHECKPOINT_NAME, TuneReportCallback
from raylit.tune._spec import TRAINER_PREFIX, TuneConfigError
from raylit.tune._tuner import Tuner

__all__ = ["CHECKPOINT_NAME", "TRAINER_PREFIX", "TuneConfigError", "TuneReportCallback", "Tuner", "checkpoint_file"]


def checkpoint_file(result_or_checkpoint) -> str:
    """The local path of ``checkpoint.ckpt`` in a Tune ``Result``'s (latest) checkpoint or a ``Checkpoint``;
    a checkpoint on remote storage is downloaded to a temporary directory first."""
    import os

    ckpt = getattr(result_or_checkpoint, "checkpoint", result_or_checkpoint)
    if ckpt is None:
        raise ValueError(
            "This result has no checkpoint (checkpoint_frequency=0, or the trial failed before its first report)."
        )
    from pyarrow.fs import LocalFileSystem

    if isinstance(ckpt.filesystem, LocalFileSystem):
        return os.path.join(ckpt.path, CHECKPOINT_NAME)
    return os.path.join(ckpt.to_directory(), CHECKPOINT_NAME)
