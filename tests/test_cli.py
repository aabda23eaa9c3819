"""``raylit`` command line: runs built from YAML (jsonargparse, LightningCLI's format), and the parts of
``raylit submit`` / ``raylit job`` that need no cluster (address handling, runtime_env, error messages).
The cluster round trip is in tests/test_jobs.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from raylit import jobs
from raylit.cli import main, parse_run_args

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "configs" / "classifier.yaml"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test runs in its own directory; the environment (seed_everything sets PL_GLOBAL_SEED, which a later
    Ray run would pick up) and sys.path (the CLI adds the cwd) are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    saved = dict(os.environ)
    yield tmp_path
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture
def from_repo_root(monkeypatch):
    """The example config names ``examples.classifier.*``, which resolves when raylit runs from the repository
    root (the CLI puts the cwd on sys.path); here the cwd is a temporary directory, so put the root there."""
    monkeypatch.setattr(sys, "path", [str(ROOT)] + sys.path)


def result_line(out: str) -> dict:
    found = jobs.find_result(out)
    assert found is not None, out
    return found


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


BORING = """
    seed_everything: 3
    model:
      class_path: raylit.testing.BoringModel
    trainer:
      accelerator: cpu
      max_epochs: 1
      limit_train_batches: 4
      limit_val_batches: 2
      limit_test_batches: 2
      limit_predict_batches: 2
      enable_progress_bar: false
      enable_model_summary: false
      logger: false
"""


# --------------------------------------------------------------------------------------------------------------
# packaging
# --------------------------------------------------------------------------------------------------------------
def test_import_raylit_loads_neither_ray_nor_jsonargparse():
    code = ("import sys, raylit, raylit.jobs; bad = [m for m in ('ray', 'jsonargparse') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_pyproject_declares_console_script_and_dependency():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["raylit"] == "raylit.cli:main"
    assert any(d.startswith("jsonargparse[signatures]") for d in project["dependencies"])


def test_console_script_runs():
    script = Path(sys.executable).with_name("raylit")
    if not script.exists():
        pytest.skip("raylit is not installed as a console script in this environment (pip install -e .)")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True).stdout
    import raylit

    assert out.strip() == f"raylit {raylit.__version__}"


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "raylit submit" in capsys.readouterr().out
    assert main(["fitt"]) == 2
    assert "unknown command 'fitt'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# fit / validate / test / predict from a config
# --------------------------------------------------------------------------------------------------------------
def test_fit_example_config_writes_checkpoints_and_reports_them(isolated, from_repo_root, capsys):
    rc = main(["fit", "--config", str(EXAMPLE), "--trainer.max_epochs=1",
               f"--trainer.callbacks.dirpath={isolated / 'ck'}"])
    assert rc == 0
    out = capsys.readouterr().out
    result = result_line(out)
    ckpt = result["checkpoints"]
    assert ckpt["dirpath"] == str(isolated / "ck")
    assert Path(ckpt["last_model_path"]).is_file() and Path(ckpt["best_model_path"]).is_file()
    assert Path(ckpt["best_model_path"]).name.startswith("epoch=0-val_loss=")
    assert result["command"] == "fit" and result["epoch"] == 1 and result["global_step"] == 23  # ceil(1433 / 64)
    assert {"train_loss", "val_loss", "val_acc"} <= set(result["metrics"])
    assert result["in_job"] is False
    assert f"Checkpoints: {isolated / 'ck'}" in out


def test_overrides_multiple_configs_and_types(isolated, from_repo_root):
    overlay = write(isolated / "overlay.yaml", """
        trainer:
          max_epochs: 7
        model:
          init_args:
            hidden: 4
    """)
    parser, cfg = parse_run_args("fit", ["--config", str(EXAMPLE), "--config", str(overlay),
                                         "--model.init_args.learning_rate=0.5", "--trainer.num_nodes=2"])
    objs = parser.instantiate(cfg)
    assert objs.model.net[0].out_features == 4 and objs.model.hparams.learning_rate == 0.5
    assert type(objs.data).__name__ == "BlobData" and objs.data.hparams.batch_size == 64
    assert objs.trainer.max_epochs == 7 and objs.trainer.num_nodes == 2
    assert [type(c).__name__ for c in objs.trainer.callbacks if type(c).__name__ == "ModelCheckpoint"]
    # the GPU overlay builds a real Ray Train ScalingConfig (so Ray waits for an autoscaler)
    parser, cfg = parse_run_args("fit", ["--config", str(EXAMPLE), "--config",
                                         str(ROOT / "examples" / "configs" / "gpu_autoscale.yaml")])
    scaling = cfg["trainer"]["scaling_config"]
    assert scaling["class_path"] == "ray.train.ScalingConfig" and scaling["init_args"]["num_workers"] == 2


def test_print_config_shows_the_resolved_config(from_repo_root, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(EXAMPLE), "--trainer.max_epochs=9", "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_epochs"] == 9
    assert printed["model"]["class_path"] == "examples.classifier.BlobClassifier"
    assert printed["model"]["init_args"]["num_classes"] == 10  # the class's defaults too
    assert printed["trainer"]["callbacks"][0]["init_args"]["save_last"] is True
    assert "gradient_clip_val" in printed["trainer"]  # defaults are listed too


def test_documented_example_command_runs_from_the_repo_root():
    """docs/clusters.md's command, verbatim, in a fresh interpreter started in the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(__import__("raylit").__file__).resolve().parents[1])  # this checkout's raylit
    out = subprocess.run([sys.executable, "-m", "raylit.cli", "fit", "--config", "examples/configs/classifier.yaml",
                          "--model.init_args.hidden=16", "--print_config"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    printed = yaml.safe_load(out)
    assert printed["model"]["class_path"] == "examples.classifier.BlobClassifier"
    assert printed["model"]["init_args"]["hidden"] == 16
    assert printed["data"]["class_path"] == "examples.classifier.BlobData"


def test_validate_test_predict_subcommands(isolated, capsys):
    cfg = write(isolated / "boring.yaml", BORING)
    assert main(["fit", "--config", str(cfg), f"--trainer.default_root_dir={isolated}"]) == 0
    last = result_line(capsys.readouterr().out)["checkpoints"]["best_model_path"]
    assert Path(last).is_file()
    for command in ("validate", "test", "predict"):
        assert main([command, "--config", str(cfg), "--ckpt_path", last]) == 0, command
        result = result_line(capsys.readouterr().out)
        assert result["command"] == command
        assert "checkpoints" not in result
    assert main(["test", "--config", str(cfg), "--verbose=false"]) == 0


def test_user_classes_are_found_from_the_working_directory(isolated, capsys):
    write(isolated / "myproj" / "__init__.py", "")
    write(isolated / "myproj" / "model.py", """
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        import raylit


        class Tiny(raylit.LightningModule):
            def __init__(self, hidden: int = 4) -> None:
                super().__init__()
                self.save_hyperparameters()
                self.net = torch.nn.Linear(2, hidden)

            def training_step(self, batch, batch_idx):
                loss = self.net(batch[0]).pow(2).mean()
                self.log("train_loss", loss)
                return loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

            def train_dataloader(self):
                return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    """)
    cfg = write(isolated / "run.yaml", """
        model:
          class_path: myproj.model.Tiny
          init_args: {hidden: 3}
        trainer: {max_epochs: 2, accelerator: cpu, logger: false, enable_progress_bar: false,
                  enable_model_summary: false, enable_checkpointing: false}
    """)
    assert main(["fit", "--config", "run.yaml", "--seed_everything=false"]) == 0
    result = result_line(capsys.readouterr().out)
    assert result["global_step"] == 4 and "train_loss" in result["metrics"]
    assert "checkpoints" not in result  # checkpointing disabled
    assert cfg.exists()


@pytest.mark.parametrize("config,expected", [
    ("model: {class_path: no_such_pkg.Model}",
     ["model: the config names class 'no_such_pkg.Model', which cannot be imported", "No module named"]),
    ("model: {class_path: raylit.testing.NoSuchModel}",
     ["'raylit.testing.NoSuchModel', which cannot be imported", "has no attribute"]),
    ("model: {class_path: torch.nn.Linear}", ["torch.nn.Linear is not a subclass of raylit.LightningModule"]),
    ("model: {class_path: raylit.testing.DemoModel, init_args: {out_dimm: 3}}", ["out_dimm"]),
    ("model: {class_path: raylit.testing.DemoModel}\ntrainer: {max_epoch: 3}", ["max_epoch"]),
    ("model: {class_path: raylit.testing.DemoModel}\ntrainer: {max_epochs: many}", ["max_epochs"]),
    ("trainer: {max_epochs: 1}", ["model"]),
])
def test_config_errors_are_short_and_name_the_problem(isolated, capsys, config, expected):
    path = write(isolated / "bad.yaml", config + "\n")
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raylit fit: error: ")
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err


def test_job_warns_when_its_raylit_differs_from_the_submitters(isolated, capsys, monkeypatch):
    monkeypatch.setenv("RAYLIT_CLIENT_VERSION", "0.0.0-other")
    cfg = write(isolated / "boring.yaml", BORING)
    assert main(["fit", "--config", str(cfg), "--trainer.enable_checkpointing=false"]) == 0
    assert "it was submitted with raylit 0.0.0-other" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# submit / job, without a cluster
# --------------------------------------------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_resolve_address(monkeypatch):
    assert jobs.resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert jobs.resolve_address(None) == "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://ray.example.com/")
    assert jobs.resolve_address(None) == "https://ray.example.com"
    assert jobs.resolve_address("127.0.0.1:9999") == "http://127.0.0.1:9999"
    with pytest.raises(jobs.JobError, match="Ray Client address"):
        jobs.resolve_address("ray://10.0.0.5:10001")


def test_unreachable_cluster_says_which_address_and_how_to_check(capsys):
    port = closed_port()
    assert main(["job", "status", "some-id", "--address", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"Cannot reach the Ray cluster's job server at http://127.0.0.1:{port}" in err
    assert "ray dashboard" in err and "kubectl port-forward" in err and "ray status" in err
    with pytest.raises(jobs.JobError, match="port 6379 is the GCS port"):
        jobs.check_reachable("http://127.0.0.1:6379")


class _FakeServer:
    """A loopback TCP server for the error paths: ``reply`` is sent to every connection, then it is closed."""

    def __init__(self, reply: bytes) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


def _http(status: str, body: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n{body}").encode()


@pytest.mark.parametrize("reply,expected", [
    (b"\x00\x00\x12\x04\x00garbage, not HTTP", "is not a Ray job server"),      # e.g. the GCS's gRPC port
    (_http("404 Not Found", "nope"), "did not answer like a Ray dashboard"),     # some other web server
    (_http("401 Unauthorized", "Unauthorized: Missing authentication token"), "RAY_AUTH_MODE=token"),
    (_http("403 Forbidden", "Forbidden: Invalid authentication token"), "refused the request"),
])
def test_servers_that_are_not_a_usable_job_server(capsys, reply, expected):
    server = _FakeServer(reply)
    try:
        assert main(["job", "list", "--address", server.address]) == 1
    finally:
        server.close()
    err = capsys.readouterr().err
    assert expected in err and server.address in err, err
    assert "Traceback" not in err


def test_submit_checks_the_config_before_contacting_the_cluster(isolated, capsys):
    write(isolated / "bad.yaml", "model: {class_path: my_missing_module.Net}\n")
    port = closed_port()
    rc = main(["submit", "--address", f"http://127.0.0.1:{port}", "--", "fit", "--config", "bad.yaml"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "the run config does not parse here" in err and "my_missing_module.Net" in err
    assert "--no-check" in err
    # with --no-check it gets as far as the (unreachable) cluster
    rc = main(["submit", "--no-check", "--address", f"http://127.0.0.1:{port}", "--", "fit", "--config",
               "bad.yaml"])
    assert rc == 1 and "Cannot reach" in capsys.readouterr().err
    assert main(["submit", "--address", "http://127.0.0.1:1"]) == 2
    assert "say what the job runs after `--`" in capsys.readouterr().err


def test_relocate_config_args(isolated):
    write(isolated / "proj" / "cfg" / "run.yaml", "a: 1\n")
    write(isolated / "elsewhere.yaml", "a: 1\n")
    args = ["--config", "proj/cfg/run.yaml", "--trainer.max_epochs=2", "--config=proj/cfg/run.yaml"]
    assert jobs.relocate_config_args(args, "proj") == ["--config", "cfg/run.yaml", "--trainer.max_epochs=2",
                                                       "--config=cfg/run.yaml"]
    assert jobs.relocate_config_args(args, None) == args  # no upload: leave paths alone
    with pytest.raises(jobs.JobError, match="outside the working directory"):
        jobs.relocate_config_args(["--config", "elsewhere.yaml"], "proj")
    with pytest.raises(jobs.JobError, match="no such file"):
        jobs.relocate_config_args(["--config", "proj/missing.yaml"], "proj")
    inline = ["--config", "{trainer: {max_epochs: 1}}"]
    assert jobs.relocate_config_args(inline, "proj") == inline


def test_runtime_env_ships_code_and_settings(isolated, monkeypatch):
    (isolated / "proj").mkdir()
    monkeypatch.setenv("FROM_HERE", "copied")
    env = jobs.parse_env(["A=1", "B=x=y", "FROM_HERE"])
    assert env == {"A": "1", "B": "x=y", "FROM_HERE": "copied"}
    with pytest.raises(jobs.JobError, match="NOT_SET_ANYWHERE is not set"):
        jobs.parse_env(["NOT_SET_ANYWHERE"])
    renv = jobs.build_runtime_env("proj", env=env, pip=["einops"], excludes=["data/"])
    assert renv["working_dir"] == str(isolated / "proj")
    assert {".git", ".venv", "*.ckpt", "data/"} <= set(renv["excludes"])
    assert renv["pip"] == ["einops"]
    import raylit

    assert renv["env_vars"]["RAYLIT_CLIENT_VERSION"] == raylit.__version__ and renv["env_vars"]["A"] == "1"
    # this test runs from a source checkout, so raylit travels with the job ...
    assert jobs.raylit_is_source_checkout()
    assert renv["py_modules"] == [str(jobs.raylit_source_dir())]
    # ... unless the working dir already contains it, or it is switched off
    assert "py_modules" not in jobs.build_runtime_env(str(ROOT))
    assert "py_modules" not in jobs.build_runtime_env("proj", ship_raylit="never")
    with pytest.raises(jobs.JobError, match="not a directory"):
        jobs.build_runtime_env("nope")


def test_entrypoint_and_results():
    assert jobs.entrypoint("fit", ["--config", "a b.yaml", "--trainer.max_epochs=2"]) == \
        "python -m raylit.cli fit --config 'a b.yaml' --trainer.max_epochs=2"
    with pytest.raises(jobs.JobError):
        jobs.entrypoint("rm", [])
    logs = "noise\nRAYLIT_RESULT {\"checkpoints\": {\"dirpath\": \"s3://b/run\", \"last_model_path\": " \
           "\"s3://b/run/last.ckpt\"}, \"metrics\": {\"loss\": 0.5}}\nmore noise\n"
    result = jobs.find_result(logs)
    assert result["checkpoints"]["dirpath"] == "s3://b/run"
    text = jobs.describe_result(result)
    assert "Checkpoints: s3://b/run" in text and "last: s3://b/run/last.ckpt" in text and "loss=0.5" in text
    assert jobs.find_result("nothing here") is None
    failed = jobs.JobOutcome("j1", "FAILED", "Job entrypoint command failed with exit code 1",
                             "\n".join(f"line {i}" for i in range(100)) + "\nValueError: boom\n", None)
    message = jobs.describe_failure(failed, lines=5)
    assert message.startswith("Job j1 FAILED: Job entrypoint command failed with exit code 1")
    assert "ValueError: boom" in message and "line 96" in message and "line 95" not in message
    assert json.loads(json.dumps(result)) == result
