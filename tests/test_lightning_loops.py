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


# --- the results table validate/test print -------------------------------------------------------------------
_TABLE_CASES = [
    ([{"log": torch.tensor(5)}, {"no_log": torch.tensor(6.5)}], "test"),
    ([{"value": torch.tensor(2), "perf": {"a:1": torch.tensor(0), "b": 3.25}}, {"other": 1.5}], "test"),
    ([{f"a {'really ' * 11}long name": torch.tensor(5)}, {f"a {'really ' * 11}long name": torch.tensor([[6]])}],
     "validate"),
    ([{f"loss/dataloader_idx_{i}": torch.tensor(i)} for i in range(5)], "validate"),
    ([{}], "test"),
]


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
@pytest.mark.parametrize("case", range(len(_TABLE_CASES)))
def test_results_table_matches_lightning(case, rich, monkeypatch, capsys):
    """``trainer.test``/``validate`` print the same table as Lightning: rich when available, else plain text
    (one column per dataloader, nested dicts as ``a:b`` rows, long names wrapped, split at the terminal width)."""
    monkeypatch.setenv("COLUMNS", "120")
    printed = []
    for name in H.FRAMEWORKS:
        mod = importlib.import_module(f"{name}.loops.evaluation_loop")
        monkeypatch.setattr(mod, "_RICH_AVAILABLE", rich)
        if rich:
            from rich import get_console

            with get_console().capture() as cap:
                mod._EvaluationLoop._print_results(*_TABLE_CASES[case])
            printed.append(cap.get())
        else:
            mod._EvaluationLoop._print_results(*_TABLE_CASES[case])
            printed.append(capsys.readouterr().out)
    assert printed[1] == printed[0]
    assert bool(printed[0]) == (case != 4)


def test_test_prints_the_table_once_on_rank_zero(tmp_path, capsys, monkeypatch):
    """``trainer.test(verbose=True)`` prints the logged metrics through that table; ``verbose=False`` prints
    nothing."""
    import raylit
    from raylit.loops import evaluation_loop

    monkeypatch.setattr(evaluation_loop, "_RICH_AVAILABLE", False)
    monkeypatch.setenv("COLUMNS", "120")

    class M(raylit.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(32, 2)

        def test_step(self, batch, batch_idx):
            self.log("test_metric", 0.5)

        def test_dataloader(self):
            return H.loader(4)

    trainer = raylit.Trainer(default_root_dir=tmp_path, **QUIET)
    trainer.test(M(), verbose=False)
    assert "Test metric" not in capsys.readouterr().out
    trainer.test(M())
    out = capsys.readouterr().out
    assert out.count("Test metric") == 1 and "test_metric" in out and "0.5" in out
