"""Ray Data datasets as the data of a DataModule (raylit/ray_data.py).

The data is Parquet written here with pyarrow and read with ``ray.data.read_parquet``. Every test uses the
shared two-node cluster (``_ray_fixtures.ray_cluster``: 2 raylets x 1 CPU), the in-process ones too (Ray Data
needs a Ray). Ray Data start-up is slow on a 2-core machine, so there is one 2-worker run, which checks
several things.

Parity with one process is made well defined by the loss: ``mean(net(x))`` has a gradient that does not depend
on the weights, so after SGD over equal-sized global batches the weights depend only on *which* rows were
trained (each exactly once per epoch), not on their order or on how they were grouped into batches.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from raylit import LightningDataModule, LightningModule, Trainer
from raylit.callbacks import Callback
from raylit.data import RayDataLoader, as_train_loader
from raylit.launch.ray_data import cpu_problem
from raylit.launch.resources import worker_cpus
from raylit.utilities.exceptions import MisconfigurationException

FEATURES = 3
N_TRAIN, N_VAL = 48, 16


@pytest.fixture(autouse=True, scope="module")
def _ship_this_module_by_value():
    """The workers cannot import this test module: pickle its classes by value (see test_ray.py)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def write_parquet(folder: Path, n: int, files: int = 3) -> str:
    """``n`` rows (id, x0..x2) split over ``files`` Parquet files, written with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    x = torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(n)).tolist()
    per = n // files
    for f in range(files):
        rows = range(f * per, n if f == files - 1 else (f + 1) * per)
        cols = {"id": pa.array(list(rows), pa.int64())}
        cols.update({f"x{j}": pa.array([x[i][j] for i in rows], pa.float32()) for j in range(FEATURES)})
        pq.write_table(pa.table(cols), folder / f"part-{f}.parquet")
    return str(folder)


class LinearLoss(LightningModule):
    """Records every batch's row ids (one JSON line per batch, per rank) in ``record_dir``."""

    def __init__(self, record_dir: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(FEATURES, 1)
        self.record_dir = record_dir

    def _record(self, stage: str, batch: dict) -> None:
        if self.record_dir is None:
            return
        row = {"epoch": self.current_epoch, "sanity": self.trainer.sanity_checking, "ids": batch["id"].tolist()}
        with open(Path(self.record_dir) / f"{stage}-rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        assert batch["x0"].device == self.device  # after transfer_batch_to_device
        return {**batch, "x": torch.stack([batch[f"x{j}"] for j in range(FEATURES)], 1)}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._record("train", batch)
        return self.net(batch["x"]).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._record("val", batch)
        self.log("val_out", self.net(batch["x"]).mean(), sync_dist=True, batch_size=len(batch["id"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ParquetData(LightningDataModule):
    """Holds the Datasets, made on the driver as a Ray Train user would (so the launcher sees Ray Data)."""

    def __init__(self, train_path: str, val_path: str, batch_size: int) -> None:
        super().__init__()
        import ray.data

        self.train_ds = ray.data.read_parquet(train_path)
        self.val_ds = ray.data.read_parquet(val_path)
        self.batch_size = batch_size
        self.setup_calls: list[str] = []

    def setup(self, stage: str) -> None:
        self.setup_calls.append(stage)  # runs on the workers, as in Lightning

    def train_dataloader(self) -> RayDataLoader:
        assert self.setup_calls, "setup() runs before the dataloader hooks"
        return RayDataLoader(self.train_ds, batch_size=self.batch_size, shuffle=True, seed=3)

    def val_dataloader(self) -> RayDataLoader:
        return RayDataLoader(self.val_ds, batch_size=4)


def _parquet_loader(path: str, batch_size: int, shuffle: bool = False):
    """The same rows as ``read_parquet(path)``, as a torch DataLoader of the same batch dicts."""
    import pyarrow.parquet as pq
    from torch.utils.data import DataLoader

    table = pq.read_table(path).to_pydict()
    rows = [{k: torch.tensor(table[k][i]) for k in table} for i in range(len(table["id"]))]
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle)


def _trainer(**kw) -> Trainer:
    defaults = dict(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    return Trainer(**{**defaults, **kw})


def _records(folder: Path, stage: str, rank: int) -> list[dict]:
    path = folder / f"{stage}-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _epoch_ids(rows: list[dict], epoch: int) -> list[int]:
    return [i for r in rows if r["epoch"] == epoch and not r["sanity"] for i in r["ids"]]


# validation after the 3rd and 6th of 6 batches, in the second epoch only; a one-batch sanity pass first
EVAL = dict(val_check_interval=3, check_val_every_n_epoch=2, num_sanity_val_steps=1)


# --------------------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_two_workers_shard_parquet_and_match_one_process(ray_cluster, tmp_path, capsys) -> None:
    """2 workers x 4 rows per batch vs one process x 8 rows: every row once per epoch on exactly one rank, a
    new order each epoch, equal batch counts, validation in the middle of the second epoch (the train split
    paused while the val split runs; a partial sanity pass first), and the same final weights. (Every Ray
    Data pass costs seconds here, hence validation in one epoch only.)"""
    train = write_parquet(tmp_path / "train", N_TRAIN)
    val = write_parquet(tmp_path / "val", N_VAL, files=2)
    (tmp_path / "ref").mkdir()
    (tmp_path / "ddp").mkdir()

    # one process, global batch 8, on the same Parquet rows through a plain DataLoader: with this loss the
    # weights depend only on which rows each epoch trains, so the reference needs no (slow) Ray Data pass; the
    # in-process Ray Data path has its own test below
    reference = LinearLoss(str(tmp_path / "ref"))
    start = time.time()
    ref_trainer = _trainer(devices=1, **EVAL)
    ref_trainer.fit(reference, train_dataloaders=_parquet_loader(train, 8, shuffle=True),
                    val_dataloaders=_parquet_loader(val, 4))
    ref_wall = time.time() - start
    assert ref_trainer.global_step == 12
    ref_rows = _records(tmp_path / "ref", "train", 0)
    assert [sorted(_epoch_ids(ref_rows, e)) for e in (0, 1)] == [list(range(N_TRAIN))] * 2

    # 2 workers (the driver sees the Datasets: 0.5 CPU per worker, one CPU left for Ray Data), batch 4 each
    model = LinearLoss(str(tmp_path / "ddp"))
    initial = copy.deepcopy(model)
    trainer = _trainer(devices=2, **EVAL)
    start = time.time()
    trainer.fit(model, datamodule=ParquetData(train, val, batch_size=4))
    wall = time.time() - start

    assert trainer.global_step == 12  # 6 steps per epoch: 24 rows per rank / 4
    rows = [_records(tmp_path / "ddp", "train", r) for r in (0, 1)]
    assert [len(r) for r in rows] == [12, 12]  # equal batch counts per rank
    for epoch in (0, 1):
        per_rank = [_epoch_ids(r, epoch) for r in rows]
        assert len(per_rank[0]) == len(per_rank[1]) == N_TRAIN // 2
        assert sorted(per_rank[0] + per_rank[1]) == list(range(N_TRAIN))  # each row once, on one rank
    assert _epoch_ids(rows[0], 0) != _epoch_ids(rows[0], 1)

    val_rows = [_records(tmp_path / "ddp", "val", r) for r in (0, 1)]
    sanity = [[i for b in v if b["sanity"] for i in b["ids"]] for v in val_rows]
    assert [len(s) for s in sanity] == [4, 4]  # num_sanity_val_steps=1: one batch per rank, then stopped
    full = [[i for b in v if not b["sanity"] for i in b["ids"]] for v in val_rows]
    assert [len(f) for f in full] == [2 * 8] * 2  # 2 validations in epoch 1 x 8 rows per rank
    assert sorted(full[0] + full[1]) == sorted(list(range(N_VAL)) * 2)  # every val row once per validation

    for (name, p), p_ref, p0 in zip(model.named_parameters(), reference.parameters(), initial.parameters()):
        assert not torch.equal(p, p0), name
        assert torch.allclose(p, p_ref, atol=1e-6), name
    assert abs(trainer.callback_metrics["val_out"] - ref_trainer.callback_metrics["val_out"]) < 1e-5
    with capsys.disabled():
        print(f"\n[timing] Ray Data fit: in-process {ref_wall:.1f}s, 2 workers {wall:.1f}s")


class SaveAtStep(Callback):
    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


@pytest.mark.ray
def test_in_process_limits_max_steps_and_mid_epoch_resume(ray_cluster, tmp_path) -> None:
    """One process: limit_train_batches and max_steps on a loader without length; a checkpoint written
    mid-epoch resumes by skipping that many batches of a fresh pass (no hang, the right step count)."""
    import ray.data

    ds = ray.data.read_parquet(write_parquet(tmp_path / "train", N_TRAIN))
    assert isinstance(as_train_loader(ds), RayDataLoader) and as_train_loader(ds).batch_size == 256  # bare Dataset
    ckpt = str(tmp_path / "mid.ckpt")
    t = _trainer(devices=1, limit_train_batches=2, max_steps=3, callbacks=[SaveAtStep(1, ckpt)])
    t.fit(LinearLoss(), train_dataloaders=RayDataLoader(ds, batch_size=8, shuffle=True, drop_last=True))
    assert t.global_step == 3  # max_steps, in the second epoch
    resumed = _trainer(devices=1, limit_train_batches=2)
    resumed.fit(LinearLoss(), train_dataloaders=RayDataLoader(ds, batch_size=8, shuffle=True), ckpt_path=ckpt)
    assert (resumed.global_step, resumed.current_epoch) == (4, 2)  # 1 batch left in epoch 0, then 2


@pytest.mark.ray
def test_no_cpu_left_for_ray_data_fails_on_the_driver(ray_cluster, tmp_path) -> None:
    """2 workers x 1 CPU on the 2-CPU cluster would leave Ray Data's reads waiting forever."""
    import ray.data
    import ray.train

    ds = ray.data.read_parquet(write_parquet(tmp_path / "train", 8, files=1))
    scaling = ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1})
    with pytest.raises(MisconfigurationException, match="needs 1 free CPU"):
        _trainer(devices=2, scaling_config=scaling).fit(LinearLoss(), train_dataloaders=RayDataLoader(ds))


def test_cpu_budget_rules() -> None:
    assert worker_cpus(8, 2, 1) == 1.0
    assert worker_cpus(2, 2, 1) == 0.5
    assert worker_cpus(3, 2, 1) == 1.0
    with pytest.raises(MisconfigurationException, match="only 1 CPUs"):
        worker_cpus(1, 2, 1)
    nodes = {"a": 1.0, "b": 1.0}
    assert cpu_problem(nodes, [("a", 0.5), ("a", 0.5)], 1.0) is None  # packed: node b is free
    assert "at most 0.5 free" in cpu_problem(nodes, [("a", 0.5), ("b", 0.5)], 1.0)  # spread: no whole CPU
    assert cpu_problem(nodes, [("a", 1.0), ("b", 1.0)], 0.0) is None  # data_cpus=0: the user's tasks need none
    with pytest.raises(TypeError, match="ray.data.Dataset"):
        RayDataLoader([1, 2, 3])
