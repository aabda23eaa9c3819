"""What user code reads and patches on ``trainer.strategy``, ``trainer.fit_loop`` and the evaluation results
table, checked under Lightning and raylit alike (issue 10)."""

from __future__ import annotations

import importlib
import warnings
from unittest import mock

import _parity_helpers as H
import pytest
import torch
from torch import nn

QUIET = dict(H.QUIET)


@pytest.fixture(params=H.FRAMEWORKS)
def pl(request):
    mod = H.import_framework(request.param)
    H.quiet_logging()
    return mod


def _fit(pl, model, tmp_path, **kwargs):
    trainer = pl.Trainer(default_root_dir=tmp_path, **{**QUIET, "max_epochs": 1, **kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    return trainer


def _manual_model(pl):
    class Manual(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.layer = nn.Linear(32, 2)

        def training_step(self, batch, batch_idx):
            opt_a, opt_b = self.optimizers()
            loss = self.layer(batch).sum()
            self.manual_backward(loss)
            self.manual_backward(self.layer(batch).pow(2).sum())
            opt_a.step()
            opt_a.zero_grad()
            self.manual_backward(self.layer(batch).mean())
            opt_b.step()
            opt_b.zero_grad()

        def configure_optimizers(self):
            return (torch.optim.SGD(self.layer.parameters(), lr=0.1),
                    torch.optim.SGD(self.layer.parameters(), lr=0.1))

        def train_dataloader(self):
            return H.loader(8)

    return Manual


def test_manual_backward_goes_through_strategy_backward(pl, tmp_path):
    """``manual_backward`` runs ``trainer.strategy.backward(loss, None)``: a user (or test) patching
    ``Strategy.backward`` sees every backward call, and ``trainer.strategy`` is a ``strategies.Strategy``."""
    strategies = importlib.import_module(f"{pl.__name__}.strategies")
    model = _manual_model(pl)()
    trainer = pl.Trainer(default_root_dir=tmp_path, **{**QUIET, "max_epochs": 1, "limit_train_batches": 2})
    assert isinstance(trainer.strategy, strategies.Strategy)
    with mock.patch.object(strategies.Strategy, "backward", wraps=trainer.strategy.backward) as bwd:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model)
    assert bwd.call_count == 2 * 3
    assert all(c.args[1] is None for c in bwd.call_args_list)  # (loss, optimizer=None)
    assert trainer.global_step == 2 * 2
