"""Train a LightningModule with 2-process DDP on Ray, from a plain script.

    python examples/ddp_ray.py                      # this machine: starts a private local Ray instance
    RAY_ADDRESS=<head>:6379 python examples/ddp_ray.py --devices 1 --num-nodes 2   # a Ray cluster
    ray job submit --working-dir . -- python examples/ddp_ray.py --accelerator gpu  # a Ray job

The file is the same everywhere; only the flags change. Nothing here mentions Ray: ``devices`` x
``num_nodes`` workers run the module with DDP, and when ``fit`` returns, ``model`` on this process holds the
trained weights and ``trainer`` the metrics and checkpoint paths, as after a local Lightning run.
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from raylit import LightningModule, Trainer, seed_everything


class Classifier(LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        # Runs on every worker. Data is made here (not in __init__) so it is not pickled with the module.
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1024, 16, generator=g)
        y = (x[:, :3].argmax(dim=1) + (x[:, 3] > 1).long()) % 3
        self.train_set, self.val_set = random_split(TensorDataset(x, y), [896, 128], generator=g)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        acc = (self(x).argmax(dim=1) == y).float().mean()
        # sync_dist: the value is averaged over all workers before it is logged
        self.log("val_acc", acc, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    # Plain DataLoaders: under DDP each worker automatically gets its own shard (a DistributedSampler).
    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=2, help="workers per node")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=3)
    args = parser.parse_args()

    seed_everything(42)  # the workers start from this seed too
    model = Classifier()
    before = model.net[0].weight.detach().clone()
    trainer = Trainer(
        accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes, max_epochs=args.max_epochs
    )
    trainer.fit(model)

    changed = not torch.equal(before, model.net[0].weight)
    print(
        f"trained weights on the driver: {changed}; epochs={trainer.current_epoch}, "
        f"steps={trainer.global_step}, val_acc={trainer.callback_metrics['val_acc'].item():.3f}"
    )
    print(f"checkpoint: {trainer.checkpoint_callback.best_model_path}")
    # The trained module is an ordinary nn.Module here: use it directly.
    with torch.no_grad():
        print("prediction for one sample:", model(torch.randn(1, 16)).argmax(dim=1).item())


if __name__ == "__main__":
    main()
