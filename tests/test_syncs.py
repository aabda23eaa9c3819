"""No host read of a tensor value at every training step (on a GPU each one waits for the device): with
Lightning's default settings the values are read at logging steps and when a progress bar takes its metrics,
at most every ``ProgressBar.METRICS_REFRESH_S`` seconds. Counting reads is deterministic: the progress bars'
clock is replaced by a step counter here."""

import contextlib
import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import raylit
from raylit.callbacks import RichProgressBar, TQDMProgressBar
from raylit.callbacks.progress import progress_bar as progress_bar_module

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
STEPS = 300


@contextlib.contextmanager
def count_reads():
    counter = {"n": 0, "depth": 0}
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(original):
        def read(tensor, *args, **kwargs):
            if counter["depth"] == 0:
                counter["n"] += 1
            counter["depth"] += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                counter["depth"] -= 1

        return read

    for name, original in saved.items():
        setattr(torch.Tensor, name, wrap(original))
    try:
        yield counter
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


class Net(raylit.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        self.losses.append(loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(
            TensorDataset(torch.randn(STEPS * 4, 8, generator=g), torch.randn(STEPS * 4, 1, generator=g)), batch_size=4
        )


def reads_per_step(tmp_path, monkeypatch, callbacks=()):
    """Reads per step over steps 100-200 of a 300-step epoch with the default logger (TensorBoard),
    log_every_n_steps=50 and the given (or the default) progress bar; a simulated 10 ms per step."""
    clock = itertools.count()
    monkeypatch.setattr(progress_bar_module, "_clock", lambda: next(clock) * 0.01)
    marks = {}

    class Window(raylit.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step in (100, 200):
                marks[trainer.global_step] = counter["n"]

    with count_reads() as counter:
        trainer = raylit.Trainer(
            max_epochs=1,
            default_root_dir=str(tmp_path),
            log_every_n_steps=50,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[Window(), *callbacks],
        )
        model = Net()
        trainer.fit(model)
    return (marks[200] - marks[100]) / 100, trainer, model


def test_default_configuration_reads_at_most_a_tenth_per_step(tmp_path, monkeypatch):
    per_step, trainer, model = reads_per_step(tmp_path, monkeypatch)
    assert per_step <= 0.1, per_step
    # what users see is unchanged: Python numbers, the last step's loss (Lightning's values)
    pbar = trainer.progress_bar_metrics
    assert type(pbar["train_loss"]) is float and pbar["train_loss"] == model.losses[-1].item()


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_bars_on_a_terminal_take_metrics_at_most_twice_a_second(tmp_path, monkeypatch, bar):
    """Drawing on a terminal (redraws every batch) with steps of a simulated 10 ms: the bar takes its metrics
    every 50 steps (0.5 s), plus the logging steps' reads."""
    if bar == "tqdm":
        import raylit.callbacks.progress.tqdm_progress as tqdm_progress

        monkeypatch.setattr(tqdm_progress, "_isatty", lambda fp: True)
        callback = TQDMProgressBar()
    else:
        pytest.importorskip("rich")
        callback = RichProgressBar(refresh_rate=10**9, console_kwargs={"force_terminal": True})
    shown = []
    original = type(callback).get_metrics

    def get_metrics(self, trainer, pl_module):
        items = original(self, trainer, pl_module)
        shown.append((trainer.global_step, items.get("train_loss")))
        return items

    monkeypatch.setattr(type(callback), "get_metrics", get_metrics)
    per_step, trainer, model = reads_per_step(tmp_path, monkeypatch, [callback])
    assert per_step <= 0.1, per_step
    steps = [s for s, _ in shown]
    assert len([s for s in steps if 100 < s <= 200]) <= 3, steps  # ~every 50 steps
    assert steps[-1] == STEPS  # the epoch's end shows the final value
    for step, value in shown:
        assert value == pytest.approx(model.losses[step - 1].item())  # the value of the step it was taken at
