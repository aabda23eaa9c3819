"""Population Based Training: trials copy better trials' weights and keep training with mutated hyperparameters.

    python examples/tune_pbt.py          # a population of 4 on this machine (about a minute on 2 CPUs)

Every 2 reports PBT replaces the worst half of the population with copies of the best half (their
checkpoints) and perturbs the copies' learning rate and momentum. raylit restores an exploited trial exactly
from the donor's checkpoint (weights, optimizer state, RNG, epoch position) and then gives the optimizer the
*new* config's hyperparameters; each restore is recorded in the trial's ``raylit_restores.jsonl``.
"""

import argparse
import json
import os
import tempfile

import torch
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import raylit
from raylit.tune import Tuner


class Regressor(raylit.LightningModule):
    def __init__(self, lr: float = 0.01, momentum: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def on_train_start(self):
        # after a PBT exploit this shows the new config's values, not the donor's
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        print(f"[{self.hparams.lr:.4g}] training from step {self.trainer.global_step} with optimizer lr={lr:.4g}")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = torch.sin(x[:, :1] * 2) + x[:, 1:2] ** 2
    train = DataLoader(TensorDataset(x[:896], y[:896]), batch_size=32, shuffle=True)
    return train, DataLoader(TensorDataset(x[896:], y[896:]), batch_size=128)


def build(config: dict):
    return Regressor(lr=config["lr"], momentum=config["momentum"]), *loaders()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--storage", default=os.path.join(tempfile.gettempdir(), "raylit-examples"))
    args = parser.parse_args()

    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=2,
        quantile_fraction=0.5,
        synch=True,  # the population meets at every interval (with epochs this short, async PBT rarely overlaps)
        hyperparam_mutations={"lr": tune.loguniform(1e-4, 1e-1), "momentum": [0.0, 0.5, 0.9]},
    )
    tuner = Tuner(
        build,
        trainer=raylit.Trainer(max_epochs=1000),  # PBT runs until the stop condition below
        param_space={"lr": tune.loguniform(1e-4, 1e-1), "momentum": tune.choice([0.0, 0.5, 0.9])},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=pbt, num_samples=args.population),
        run_config=tune.RunConfig(
            name="tune_pbt", storage_path=args.storage, verbose=0, stop={"training_iteration": args.iterations}
        ),
        resources_per_trial={"CPU": 0.5},  # the whole population at once on 2 CPUs
    )
    results = tuner.fit()

    for r in sorted(results, key=lambda r: r.metrics["val_loss"]):
        print(f"val_loss={r.metrics['val_loss']:.4f}  final config={r.config}")
        log = os.path.join(r.path, "raylit_restores.jsonl")
        if os.path.exists(log):
            with open(log) as f:
                for line in f:
                    rec = json.loads(line)
                    if rec["hyperparameters_changed"]:
                        print(f"    exploited trial {rec['from_trial']} ({rec['from_config']}) -> {rec['config']}")


if __name__ == "__main__":
    main()
