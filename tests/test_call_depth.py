"""How deep raylit's own code sits between ``Trainer.fit`` and ``Optimizer.step`` (issue 11's budget: 6 frames).

Every raylit frame between the user's ``fit`` call and the optimizer is a layer a reader must walk through to
see what a training step does, and a Python call on every step. The stack is read inside the optimizer's
``step`` itself; frames from raylit's package directory are counted.
"""

import os
import traceback

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import raylit

_RAYLIT_DIR = os.path.dirname(raylit.__file__) + os.sep
_BUDGET = 6


class _RecordingSGD(torch.optim.SGD):
    stacks: list = []

    def step(self, closure=None):
        type(self).stacks.append(traceback.extract_stack())
        return super().step(closure)


class _Model(raylit.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return _RecordingSGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=2)


def _raylit_frames(stack) -> list[str]:
    return [f"{os.path.relpath(f.filename, _RAYLIT_DIR)}:{f.name}" for f in stack
            if f.filename.startswith(_RAYLIT_DIR)]


@pytest.mark.parametrize("kwargs", [{}, dict(precision="bf16-mixed", accumulate_grad_batches=2,
                                             gradient_clip_val=0.5)], ids=["default", "bf16-mixed+acc+clip"])
def test_fit_reaches_the_optimizer_within_the_frame_budget(tmp_path, kwargs):
    _RecordingSGD.stacks = []
    trainer = raylit.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, **kwargs)
    trainer.fit(_Model())
    assert _RecordingSGD.stacks, "the optimizer never stepped"
    frames = _raylit_frames(_RecordingSGD.stacks[0])
    assert frames[0] == "trainer.py:fit", frames
    assert len(frames) <= _BUDGET, f"{len(frames)} raylit frames from Trainer.fit to Optimizer.step: {frames}"
