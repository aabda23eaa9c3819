"""Loggers and hparams.yaml: what a user sees on disk, checked against Lightning where it is cheap."""

from __future__ import annotations

import csv
import enum
import importlib.util
import os
import pickle
import struct
import subprocess
import sys
import warnings
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml

from raylit.loggers import CSVLogger, DummyLogger, Logger, TensorBoardLogger
from raylit.loggers.base import DummyExperiment
from raylit.saving import load_hparams_from_yaml, save_hparams_to_yaml
from raylit.utilities.parsing import AttributeDict
from raylit.utilities.rank_zero import rank_zero_only


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def tree(root: Path) -> list[str]:
    """Relative paths of all files under root, with event file names reduced to ``events.out.tfevents``."""
    out = []
    for folder, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if "events.out.tfevents" in name:
                rel = os.path.join(os.path.dirname(rel), "events.out.tfevents")
            out.append(rel)
    return sorted(out)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fp:
        reader = csv.DictReader(fp)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def read_events(folder: Path) -> list:
    """Parse every TFRecord event file directly in ``folder`` (not recursive) into Event protos."""
    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(folder)):
        if "tfevents" not in name:
            continue
        data = (folder / name).read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            pos += 12  # length + its masked crc
            events.append(event_pb2.Event.FromString(data[pos : pos + length]))
            pos += length + 4  # payload + its masked crc
    return events


def scalars(folder: Path) -> list[tuple[str, int, float]]:
    return [
        (value.tag, event.step, value.simple_value)
        for event in read_events(folder)
        if event.WhichOneof("what") == "summary"
        for value in event.summary.value
        if value.WhichOneof("value") == "simple_value"
    ]


def plugin_tags(folder: Path) -> dict[str, str]:
    return {
        value.tag: value.metadata.plugin_data.plugin_name
        for event in read_events(folder)
        if event.WhichOneof("what") == "summary"
        for value in event.summary.value
        if value.metadata.plugin_data.plugin_name
    }


@pytest.fixture
def rank1(monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)


class Color(enum.Enum):
    RED = 1


# ----------------------------------------------------------------------------------------------------------
# saving.py
# ----------------------------------------------------------------------------------------------------------
def test_hparams_yaml_round_trip(tmp_path):
    hparams = {
        "lr": 0.001,
        "batch_size": 32,
        "name": "run",
        "flag": True,
        "nothing": None,
        "layers": (64, 32),
        "nested": {"opt": {"betas": [0.9, 0.99]}, "ns": Namespace(a=1)},
        "color": Color.RED,
        "path": Path("/data/x"),
    }
    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(path, hparams)
    expected = {
        "lr": 0.001,
        "batch_size": 32,
        "name": "run",
        "flag": True,
        "nothing": None,
        "layers": [64, 32],
        "nested": {"opt": {"betas": [0.9, 0.99]}, "ns": {"a": 1}},
        "color": "RED",
        "path": "/data/x",
    }
    assert load_hparams_from_yaml(path) == expected
    assert yaml.safe_load(path.read_text()) == expected  # plain YAML, no python tags


@pytest.mark.parametrize("container", [Namespace, lambda **kw: AttributeDict(kw)])
def test_hparams_yaml_accepts_namespace_and_attributedict(tmp_path, container):
    path = tmp_path / "h.yaml"
    save_hparams_to_yaml(path, container(a=1, b="x"))
    assert load_hparams_from_yaml(path) == {"a": 1, "b": "x"}


def test_hparams_yaml_skips_unsafe_values_with_warning(tmp_path):
    path = tmp_path / "h.yaml"
    with pytest.warns(UserWarning, match="Skipping 'obj' parameter"):
        save_hparams_to_yaml(path, {"obj": object(), "tensor_free": 1})
    assert load_hparams_from_yaml(path) == {"tensor_free": 1}


def test_hparams_yaml_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(RuntimeError, match="Missing folder"):
        save_hparams_to_yaml(tmp_path / "nope" / "h.yaml", {"a": 1})
    with pytest.warns(RuntimeWarning, match="Missing Tags"):
        assert load_hparams_from_yaml(tmp_path / "absent.yaml") == {}


def test_hparams_yaml_through_a_uri(tmp_path):
    uri = (tmp_path / "remote.yaml").as_uri()  # file:///... goes through pyarrow.fs
    save_hparams_to_yaml(uri, {"a": [1, 2], "b": {"c": "d"}})
    assert yaml.safe_load((tmp_path / "remote.yaml").read_text()) == {"a": [1, 2], "b": {"c": "d"}}
    assert load_hparams_from_yaml(uri) == {"a": [1, 2], "b": {"c": "d"}}
    with pytest.raises(RuntimeError, match="Missing folder"):
        save_hparams_to_yaml((tmp_path / "nope" / "x.yaml").as_uri(), {"a": 1})


def test_hparams_yaml_same_bytes_as_lightning(tmp_path):
    from pytorch_lightning.core.saving import save_hparams_to_yaml as pl_save

    hparams = {"z": 1, "a": {"b": [1, 2.5, "s"]}, "m": None, "t": True, "long_name_here": "value"}
    save_hparams_to_yaml(tmp_path / "ours.yaml", hparams)
    pl_save(tmp_path / "theirs.yaml", hparams, use_omegaconf=False)
    assert (tmp_path / "ours.yaml").read_text() == (tmp_path / "theirs.yaml").read_text()


# ----------------------------------------------------------------------------------------------------------
# directory layout and versions (both file loggers)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [CSVLogger, TensorBoardLogger])
def test_layout_properties(tmp_path, cls):
    logger = cls(tmp_path)
    assert logger.name == "lightning_logs"
    assert logger.version == 0
    assert logger.save_dir == str(tmp_path)
    assert logger.root_dir == os.path.join(str(tmp_path), "lightning_logs")
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    assert not os.path.exists(logger.root_dir)  # nothing is created before the first write

    named = cls(tmp_path, name="exp", version="my_run")
    assert named.log_dir == os.path.join(str(tmp_path), "exp", "my_run")
    assert cls(tmp_path, version=5).log_dir.endswith(os.path.join("lightning_logs", "version_5"))
    for empty in ("", None):
        flat = cls(tmp_path / "flat", name=empty)
        assert flat.name == ""
        assert flat.log_dir == os.path.join(str(tmp_path / "flat"), "version_0")


@pytest.mark.parametrize("cls", [CSVLogger, TensorBoardLogger])
def test_next_version_is_max_existing_plus_one(tmp_path, cls):
    root = tmp_path / "lightning_logs"
    for name in ("version_0", "version_3", "version_x", "other"):
        (root / name).mkdir(parents=True)
    (root / "version_9").write_text("a file, not a folder")
    assert cls(tmp_path).version == 4


@pytest.mark.parametrize("cls", [CSVLogger, TensorBoardLogger])
def test_version_decided_once(tmp_path, cls):
    logger = cls(tmp_path)
    assert logger.version == 0
    (tmp_path / "lightning_logs" / "version_7").mkdir(parents=True)
    assert logger.version == 0
    assert cls(tmp_path).version == 8


def test_two_loggers_in_one_dir_pick_their_own_versions(tmp_path):
    tb = TensorBoardLogger(tmp_path)
    tb.log_hyperparams({"lr": 0.1})
    tb.save()
    csv_logger = CSVLogger(tmp_path)
    csv_logger.log_metrics({"loss": 1.0}, step=0)
    csv_logger.save()
    assert (tb.version, csv_logger.version) == (0, 1)
    assert tree(tmp_path) == [
        "lightning_logs/version_0/events.out.tfevents",
        "lightning_logs/version_0/hparams.yaml",
        "lightning_logs/version_1/metrics.csv",
    ]


# ----------------------------------------------------------------------------------------------------------
# CSVLogger
# ----------------------------------------------------------------------------------------------------------
def test_csv_rows_and_columns(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"loss": torch.tensor(0.5), "epoch": 0}, step=0)
    logger.log_metrics({"loss": 0.25, "epoch": 0}, step=1)
    logger.save()
    path = Path(logger.log_dir) / "metrics.csv"
    header, rows = read_csv(path)
    assert header == ["epoch", "loss", "step"]
    assert rows == [{"epoch": "0", "loss": "0.5", "step": "0"}, {"epoch": "0", "loss": "0.25", "step": "1"}]

    # a new key rewrites the file with the sorted union of columns; old rows keep their values
    logger.log_metrics({"acc": 0.75, "epoch": 1}, step=2)
    logger.save()
    header, rows = read_csv(path)
    assert header == ["acc", "epoch", "loss", "step"]
    assert [r["loss"] for r in rows] == ["0.5", "0.25", ""]
    assert rows[2] == {"acc": "0.75", "epoch": "1", "loss": "", "step": "2"}

    # no new key: rows are appended under the same header
    logger.log_metrics({"loss": 0.125}, step=3)
    logger.finalize("success")
    header, rows = read_csv(path)
    assert header == ["acc", "epoch", "loss", "step"]
    assert len(rows) == 4 and rows[3]["loss"] == "0.125"
    assert float(rows[0]["loss"]) == 0.5  # a tensor was written as its number


def test_csv_prefix_and_default_step(tmp_path):
    logger = CSVLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": 1.0})
    logger.log_metrics({"loss": 2.0})
    logger.save()
    header, rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    assert header == ["step", "train-loss"]
    assert [(r["step"], r["train-loss"]) for r in rows] == [("0", "1.0"), ("1", "2.0")]


def test_csv_flushes_every_n_steps_and_on_save(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    path = Path(logger.log_dir) / "metrics.csv"
    logger.log_metrics({"a": 0.0}, step=0)
    logger.log_metrics({"a": 1.0}, step=1)
    assert not path.exists()
    logger.log_metrics({"a": 2.0}, step=2)  # (step + 1) % 3 == 0
    assert len(read_csv(path)[1]) == 3
    logger.log_metrics({"a": 3.0}, step=3)
    assert len(read_csv(path)[1]) == 3
    logger.save()
    assert [r["a"] for r in read_csv(path)[1]] == ["0.0", "1.0", "2.0", "3.0"]


def test_csv_hparams_yaml(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(Namespace(lr=0.1, layers=[8, 4]))
    logger.log_hyperparams({"seed": 7})
    path = Path(logger.log_dir) / "hparams.yaml"
    assert load_hparams_from_yaml(path) == {"lr": 0.1, "layers": [8, 4], "seed": 7}
    assert logger.experiment.hparams == {"lr": 0.1, "layers": [8, 4], "seed": 7}


def test_csv_non_empty_log_dir_warns_and_drops_old_metrics(tmp_path):
    log_dir = tmp_path / "lightning_logs" / "version_0"
    log_dir.mkdir(parents=True)
    (log_dir / "metrics.csv").write_text("step,old\n0,1\n")
    (log_dir / "keep.txt").write_text("x")
    logger = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        logger.log_metrics({"new": 1.0}, step=0)
    assert not (log_dir / "metrics.csv").exists()
    assert (log_dir / "keep.txt").exists()
    logger.save()
    assert read_csv(log_dir / "metrics.csv")[0] == ["new", "step"]


def test_csv_finalize_without_logging_creates_nothing(tmp_path):
    CSVLogger(tmp_path).finalize("success")
    assert list(tmp_path.iterdir()) == []


def test_csv_pickles_with_its_buffer(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"a": 1.0}, step=0)
    clone = pickle.loads(pickle.dumps(logger))
    clone.save()
    assert read_csv(Path(clone.log_dir) / "metrics.csv")[1] == [{"a": "1.0", "step": "0"}]


@pytest.mark.parametrize("cls", [CSVLogger, TensorBoardLogger])
def test_other_ranks_write_nothing(tmp_path, rank1, cls):
    logger = cls(tmp_path)
    assert isinstance(logger.experiment, DummyExperiment)
    logger.experiment.add_scalar("x", 1.0)  # a no-op, not an error
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    logger.finalize("success")
    assert list(tmp_path.iterdir()) == []


def _drive(logger_cls, save_dir):
    first = logger_cls(save_dir, flush_logs_every_n_steps=3)
    first.log_hyperparams({"lr": 0.1, "nested": {"depth": 2}, "tags": ["a", "b"]})
    second = logger_cls(save_dir, name="lightning_logs")
    first.log_metrics({"loss": torch.tensor(0.5), "epoch": 0}, step=0)
    first.log_metrics({"loss": 0.25, "epoch": 0}, step=1)
    first.log_metrics({"val/acc": 0.875, "epoch": 0}, step=2)  # triggers a flush
    first.save()
    first.log_metrics({"a_third": 1.0 / 3.0}, step=3)
    first.log_metrics({"loss": 1e-9})  # default step
    first.finalize("success")
    second.log_metrics({"other": 7})
    second.finalize("success")
    third = logger_cls(save_dir, name="", version="custom", prefix="p")
    third.log_metrics({"m": 2.0}, step=10)
    third.save()


def test_csv_matches_lightning(tmp_path):
    from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger

    _drive(CSVLogger, tmp_path / "ours")
    _drive(LightningCSVLogger, tmp_path / "theirs")
    files = tree(tmp_path / "ours")
    assert files == tree(tmp_path / "theirs")
    assert "lightning_logs/version_1/metrics.csv" in files and "custom/metrics.csv" in files
    for rel in files:
        assert (tmp_path / "ours" / rel).read_text() == (tmp_path / "theirs" / rel).read_text(), rel


# ----------------------------------------------------------------------------------------------------------
# TensorBoardLogger
# ----------------------------------------------------------------------------------------------------------
def test_tensorboard_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 0.25}, step=3)
    logger.log_metrics({"loss": 0.125}, step=4)
    logger.log_metrics({"pair": {"a": 1.0, "b": torch.tensor(2.0)}}, step=5)
    logger.finalize("success")
    log_dir = Path(logger.log_dir)
    assert sorted(scalars(log_dir)) == [
        ("train-acc", 3, 0.25),
        ("train-loss", 3, 0.5),
        ("train-loss", 4, 0.125),
    ]
    # dict values go through add_scalars: one run folder per key
    assert scalars(log_dir / "train-pair" / "a") == [("train-pair", 5, 1.0)]
    assert scalars(log_dir / "train-pair" / "b") == [("train-pair", 5, 2.0)]


def test_tensorboard_rejects_non_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match="not supported"):
        logger.log_metrics({"bad": "text"}, step=0)
    logger.finalize("failed")


def test_tensorboard_hparams(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.01, "opt": {"name": "adam"}, "layers": (2, 3)})
    log_dir = Path(logger.log_dir)
    assert not (log_dir / "hparams.yaml").exists()  # written by save()
    logger.save()
    assert load_hparams_from_yaml(log_dir / "hparams.yaml") == {
        "lr": 0.01,
        "opt": {"name": "adam"},
        "layers": [2, 3],
    }

    # hparams.yaml is written once; later params stay in memory only
    logger.log_hyperparams({"late": 1}, metrics={"other": 1.0})
    logger.finalize("success")  # tensorboardX only guarantees events are on disk once the writer is closed
    assert "late" not in load_hparams_from_yaml(log_dir / "hparams.yaml")

    assert scalars(log_dir) == [("hp_metric", 0, -1.0), ("other", 0, 1.0)]
    assert plugin_tags(log_dir) == {
        "_hparams_/experiment": "hparams",
        "_hparams_/session_start_info": "hparams",
        "_hparams_/session_end_info": "hparams",
    }
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    start = next(
        value
        for event in read_events(log_dir)
        if event.WhichOneof("what") == "summary"
        for value in event.summary.value
        if value.tag == "_hparams_/session_start_info"
    )
    data = HParamsPluginData.FromString(start.metadata.plugin_data.content).session_start_info.hparams
    assert data["lr"].number_value == 0.01
    assert data["opt/name"].string_value == "adam"  # nested params are flattened with "/"
    assert data["layers"].string_value == "(2, 3)"  # non-primitive values become strings


def test_tensorboard_hparams_metrics_and_no_default_metric(tmp_path):
    explicit = TensorBoardLogger(tmp_path, name="a")
    explicit.log_hyperparams({"x": 1}, metrics=0.5)
    explicit.log_hyperparams({"x": 1}, metrics={"score": 2.0}, step=7)
    explicit.finalize("success")
    assert sorted(scalars(Path(explicit.log_dir))) == [("hp_metric", 0, 0.5), ("score", 7, 2.0)]

    silent = TensorBoardLogger(tmp_path, name="b", default_hp_metric=False)
    silent.log_hyperparams({"x": 1})
    silent.finalize("success")
    assert scalars(Path(silent.log_dir)) == []
    assert plugin_tags(Path(silent.log_dir)) == {}
    assert load_hparams_from_yaml(Path(silent.log_dir) / "hparams.yaml") == {"x": 1}


def test_tensorboard_sub_dir_and_writer_kwargs(tmp_path):
    logger = TensorBoardLogger(tmp_path, version="run", sub_dir="train", filename_suffix=".sfx")
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "run", "train")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    assert tree(tmp_path) == [
        "lightning_logs/run/train/events.out.tfevents",
        "lightning_logs/run/train/hparams.yaml",
    ]
    assert next(Path(logger.log_dir).glob("events*")).name.endswith(".sfx")


def test_tensorboard_finalize_closes_and_pickle_drops_writer(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"a": 1.0}, step=0)
    clone = pickle.loads(pickle.dumps(logger))
    assert clone._experiment is None and clone.version == logger.version
    logger.finalize("success")
    assert logger.experiment.all_writers is None  # tensorboardX marks a closed writer this way
    assert scalars(Path(logger.log_dir)) == [("a", 0, 1.0)]


def test_tensorboard_log_graph(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model.example_input_array = torch.zeros(1, 3)
    if importlib.util.find_spec("tensorboard") is None:  # tensorboardX needs it to trace graphs
        with pytest.warns(UserWarning, match="tensorboard` is not available"):
            logger = TensorBoardLogger(tmp_path, log_graph=True)
        logger.log_graph(model)
        logger.finalize("success")
        assert all(e.WhichOneof("what") != "graph_def" for e in read_events(Path(logger.log_dir)))
    else:
        logger = TensorBoardLogger(tmp_path, log_graph=True)
        logger.log_graph(model)
        with pytest.warns(UserWarning, match="example_input_array"):
            logger.log_graph(torch.nn.Linear(1, 1))
        logger.finalize("success")
        assert any(e.WhichOneof("what") == "graph_def" for e in read_events(Path(logger.log_dir)))

    off = TensorBoardLogger(tmp_path, name="off")  # log_graph=False: a no-op that creates nothing
    off.log_graph(model)
    assert not (tmp_path / "off").exists()


def _drive_tb(logger_cls, save_dir):
    logger = logger_cls(save_dir, prefix="p")
    logger.log_hyperparams({"lr": 0.1, "nested": {"k": "v"}})
    logger.save()
    logger.log_metrics({"loss": torch.tensor(0.5), "epoch": 0.0}, step=0)
    logger.log_metrics({"loss": 0.25, "grp": {"x": 1.0}}, step=1)
    logger.save()
    logger.finalize("success")
    other = logger_cls(save_dir, name=None)
    other.log_metrics({"m": 3.0}, step=2)
    other.finalize("success")
    return [logger.log_dir, other.log_dir]


def test_tensorboard_matches_lightning(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger

    ours = _drive_tb(TensorBoardLogger, tmp_path / "ours")
    theirs = _drive_tb(LightningTensorBoardLogger, tmp_path / "theirs")
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")
    for mine, lightning in zip(ours, theirs):
        for folder, _, files in os.walk(mine):
            rel = os.path.relpath(folder, mine)
            assert sorted(scalars(Path(folder))) == sorted(scalars(Path(lightning) / rel))
            assert plugin_tags(Path(folder)) == plugin_tags(Path(lightning) / rel)
            if "hparams.yaml" in files:
                assert (Path(folder) / "hparams.yaml").read_text() == (
                    Path(lightning) / rel / "hparams.yaml"
                ).read_text()
    assert scalars(Path(ours[0])) != []


# ----------------------------------------------------------------------------------------------------------
# package surface
# ----------------------------------------------------------------------------------------------------------
def test_import_paths_and_no_backend_import():
    from raylit.loggers.csv_logs import CSVLogger as csv_cls
    from raylit.loggers.logger import Logger as logger_base
    from raylit.loggers.logger import rank_zero_experiment  # noqa: F401
    from raylit.loggers.tensorboard import TensorBoardLogger as tb_cls

    assert csv_cls is CSVLogger and tb_cls is TensorBoardLogger and logger_base is Logger
    assert issubclass(CSVLogger, Logger) and issubclass(TensorBoardLogger, Logger)
    code = (
        "import sys, raylit.loggers as L; L.CSVLogger('.'); L.TensorBoardLogger('.');"
        "bad = [m for m in ('tensorboardX', 'mlflow', 'wandb', 'pyarrow') if m in sys.modules];"
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr


def test_dummy_logger_accepts_everything():
    logger = DummyLogger()
    logger.log_metrics({"a": 1.0}, step=0)
    logger.anything_at_all(1, k=2)
    assert logger[0] is logger
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pickle.loads(pickle.dumps(logger)).name == ""


# ----------------------------------------------------------------------------------------------------------
# MLFlowLogger (optional: runs where mlflow or mlflow-skinny is installed)
# ----------------------------------------------------------------------------------------------------------
def _fake_checkpoint_callback(folder: Path) -> Namespace:
    folder.mkdir(parents=True, exist_ok=True)
    best, last = folder / "epoch=0-step=2.ckpt", folder / "last.ckpt"
    best.write_bytes(b"best")
    last.write_bytes(b"last")
    return Namespace(
        monitor="val_loss",
        mode="min",
        save_last=True,
        save_top_k=1,
        save_weights_only=False,
        best_model_path=str(best),
        best_model_score=torch.tensor(0.5),
        best_k_models={str(best): torch.tensor(0.5)},
        last_model_path=str(last),
        current_score=torch.tensor(0.5),
    )


def _drive_mlflow(logger_cls, tmp_path: Path, name: str) -> dict:
    logger = logger_cls(
        experiment_name="exp", run_name="run-a", save_dir=str(tmp_path / name), log_model=True, prefix="p"
    )
    logger.log_hyperparams({"lr": 0.1, "nested": {"depth": 3}, "long": "x" * 300})
    logger.log_metrics({"loss": torch.tensor(0.5), "acc@1": 0.25}, step=2)
    logger.log_metrics({"loss": 0.125, "note": "text"}, step=None)
    logger.after_save_checkpoint(_fake_checkpoint_callback(tmp_path / f"{name}_ckpts"))
    logger.finalize("success")

    client = logger.experiment
    run = client.get_run(logger.run_id)
    artifacts = sorted(
        f"{top.path}/{inner.path.split('/')[-1]}"
        for top in client.list_artifacts(logger.run_id)
        for inner in client.list_artifacts(logger.run_id, top.path)
    )
    metadata_file = client.download_artifacts(
        logger.run_id, "epoch=0-step=2/metadata.yaml", str(tmp_path / name)
    )
    return {
        "save_dir": logger.save_dir == str(tmp_path / name),
        "name_is_experiment_id": logger.name == run.info.experiment_id,
        "version_is_run_id": logger.version == run.info.run_id,
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "status": run.info.status,
        "params": run.data.params,
        "run_name": run.data.tags.get("mlflow.runName"),
        "metrics": {
            key: [(m.step, m.value) for m in client.get_metric_history(logger.run_id, key)]
            for key in sorted(run.data.metrics)
        },
        "artifacts": artifacts,
        "metadata": yaml.safe_load(Path(metadata_file).read_text()),
    }


def test_mlflow_logger_matches_lightning(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses the file store without it
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pytorch_lightning.loggers import MLFlowLogger as LightningMLFlowLogger

    from raylit.loggers import MLFlowLogger

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _drive_mlflow(MLFlowLogger, tmp_path, "ours")
        theirs = _drive_mlflow(LightningMLFlowLogger, tmp_path, "theirs")
    assert ours == theirs
    assert ours["params"] == {"lr": "0.1", "nested/depth": "3", "long": "x" * 250}
    assert ours["metrics"] == {"p-acc1": [(2, 0.25)], "p-loss": [(2, 0.5), (0, 0.125)]}
    assert ours["status"] == "FINISHED" and ours["run_name"] == "run-a"
    assert ours["artifacts"] == [
        "epoch=0-step=2/aliases.txt",
        "epoch=0-step=2/epoch=0-step=2.ckpt",
        "epoch=0-step=2/metadata.yaml",
        "last/aliases.txt",
        "last/last.ckpt",
        "last/metadata.yaml",
    ]


def test_mlflow_logger_pickles_and_continues_the_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored afterwards: mlflow sets it globally
    from raylit.loggers import MLFlowLogger

    logger = MLFlowLogger(save_dir=str(tmp_path))
    run_id = logger.version  # the run is created on first use, as a driver would before shipping the logger
    clone = pickle.loads(pickle.dumps(logger))
    assert clone._client is None and clone.version == run_id
    clone.log_metrics({"a": 1.0}, step=4)
    clone.finalize("failed")
    run = logger.experiment.get_run(run_id)
    assert run.info.status == "FAILED"
    assert [(m.step, m.value) for m in logger.experiment.get_metric_history(run_id, "a")] == [(4, 1.0)]


def test_mlflow_logger_without_mlflow_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a)
    )
    from raylit.loggers import MLFlowLogger

    with pytest.raises(ModuleNotFoundError, match="pip install mlflow"):
        MLFlowLogger()


# ----------------------------------------------------------------------------------------------------------
# WandbLogger (optional: runs where wandb is installed; offline mode only, nothing leaves the machine)
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    wandb = pytest.importorskip("wandb")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    yield wandb
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()  # stop the wandb-core service this test started


def _drive_wandb(logger_cls, save_dir: Path) -> dict:
    logger = logger_cls(save_dir=str(save_dir), offline=True, name="run-a", prefix="p")
    logger.log_hyperparams({"lr": 0.1, "layers": [8, 4], "act": torch.nn.ReLU, "path": Path("/data")})
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 0.25}, step=3)
    logger.log_metrics({"loss": 0.125}, step=4)
    logger.finalize("success")
    run = logger.experiment
    result = {
        "name": logger.name,
        "version_is_run_id": logger.version == run.id,
        "save_dir": logger.save_dir,
        "run_name": run.name,
        "project": run.project,
        "config": {k: v for k, v in dict(run.config).items() if not k.startswith("_")},
        "summary": {k: v for k, v in dict(run.summary).items() if not k.startswith("_")},
        "run_folder_under_save_dir": Path(run.dir).resolve().is_relative_to((save_dir / "wandb").resolve()),
    }
    run.finish()
    return result


def test_wandb_logger_matches_lightning(tmp_path, offline_wandb, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger

    from raylit.loggers import WandbLogger

    ours = _drive_wandb(WandbLogger, tmp_path / "ours")
    monkeypatch.setenv("WANDB_MODE", "offline")  # Lightning's offline=True overwrites it with "dryrun"
    theirs = _drive_wandb(LightningWandbLogger, tmp_path / "theirs")
    assert ours.pop("save_dir") == str(tmp_path / "ours")
    assert theirs.pop("save_dir") == str(tmp_path / "theirs")
    assert ours == theirs
    assert ours["name"] == "lightning_logs" and ours["run_name"] == "run-a"
    assert ours["config"] == {"lr": 0.1, "layers": [8, 4], "act": "ReLU", "path": "/data"}
    assert ours["summary"]["p-loss"] == 0.125 and ours["summary"]["trainer/global_step"] == 4
    assert ours["run_folder_under_save_dir"]


def test_wandb_logger_rejects_log_model_offline_and_pickles_without_a_run(tmp_path, offline_wandb):
    from raylit.loggers import WandbLogger
    from raylit.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="offline"):
        WandbLogger(offline=True, log_model=True)

    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="proj", version="abc123")
    clone = pickle.loads(pickle.dumps(logger))  # e.g. sent to a Ray worker: no run is started by pickling
    assert offline_wandb.run is None and clone._experiment is None
    assert (clone.name, clone.version, clone.save_dir) == ("proj", "abc123", str(tmp_path))
    clone.log_metrics({"a": 1.0}, step=0)  # the copy starts the run with the id it was given
    assert clone.experiment.id == "abc123" and clone.experiment.summary["a"] == 1.0
    clone.experiment.finish()
