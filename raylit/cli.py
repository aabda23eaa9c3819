"""``raylit``: run a LightningModule from a YAML config, here or as a Ray job on a cluster.

    raylit fit --config run.yaml [--trainer.max_epochs=3] [--model.init_args.lr=0.1] [--print_config]
    raylit validate|test|predict --config run.yaml [--ckpt_path PATH]

    raylit submit [--address URL] [--working-dir DIR] [--env KEY=VALUE] [--no-wait] -- fit --config run.yaml
    raylit job status|logs|stop|list [JOB_ID] [--address URL] [--follow]

The run config is LightningCLI's: ``model`` and ``data`` are ``class_path`` + ``init_args``, ``trainer`` holds the
Trainer's arguments (callbacks and loggers as ``class_path`` entries too), and every key can be overridden on
the command line. Parsing is jsonargparse's; raylit adds the current directory to ``sys.path`` (as
``python -m`` does) so that ``class_path: my_project.model.MyModel`` finds the user's code here and in a job,
whose working directory is the uploaded ``--working-dir``.

A submitted job runs exactly ``python -m raylit.cli fit <the same arguments>`` on the cluster; the in-job
Trainer reaches the cluster's workers through ``RAY_ADDRESS``, which Ray sets for every job.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from typing import Any, Literal, Optional, Union

from raylit import jobs

USAGE = """usage: raylit <command> [options]

run a LightningModule from a YAML config (LightningCLI style):
  raylit fit|validate|test|predict --config run.yaml [--section.key=value ...] [--print_config]

on a Ray cluster (Ray Jobs, through the dashboard address, http://<head>:8265):
  raylit submit [--address URL] [--working-dir DIR] [--no-wait] ... -- fit --config run.yaml [...]
  raylit job list|status|logs|stop [JOB_ID] [--address URL] [--follow]

`raylit <command> --help` shows the options of one command."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        import raylit

        print(f"raylit {raylit.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in jobs.RUN_COMMANDS:
            return run(command, rest)
        if command == "submit":
            return submit_command(rest)
        if command == "job":
            return job_command(rest)
    except jobs.JobError as err:
        print(f"raylit {command}: error: {err}", file=sys.stderr)
        return 1
    print(f"raylit: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------------------------------------------
# fit / validate / test / predict
# --------------------------------------------------------------------------------------------------------------
def build_run_parser(command: str) -> Any:
    """The jsonargparse parser of ``raylit <command>``: trainer, model, data and the call's own arguments."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from raylit import Callback, LightningDataModule, LightningModule, Trainer
    from raylit.loggers.base import Logger

    parser = ArgumentParser(prog=f"raylit {command}", exit_on_error=False,
                            description=f"Build a LightningModule, an optional LightningDataModule and a Trainer "
                                        f"from a config, then call trainer.{command}(model, datamodule=data).")
    parser.add_argument("-c", "--config", action=ActionConfigFile,
                        help="a YAML/JSON config file (repeatable; later ones override earlier ones)")
    parser.add_argument("--seed_everything", type=Union[bool, int], default=True,
                        help="an int seeds every RNG (and the Ray workers) with it; true picks a seed and "
                             "records it; false does not seed")
    # Trainer annotates these two as Any; typed here so that class_path entries are built and checked.
    parser.add_class_arguments(Trainer, "trainer", skip={"callbacks", "logger"}, fail_untyped=False)
    parser.add_argument("--trainer.callbacks", type=Optional[Union[list[Callback], Callback]], default=None,
                        help="callbacks: class_path + init_args entries")
    parser.add_argument("--trainer.logger", type=Union[bool, Logger, list[Logger], None], default=None,
                        help="true (the default logger), false, or class_path + init_args entries")
    parser.add_subclass_arguments(LightningModule, "model", required=True,
                                  help="the LightningModule: class_path and init_args")
    parser.add_subclass_arguments(LightningDataModule, "data", required=False,
                                  help="an optional LightningDataModule: class_path and init_args")
    parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                        help='a checkpoint to start from (fit: resume), or "best"/"last" after a fit')
    if command in ("validate", "test"):
        parser.add_argument("--verbose", type=bool, default=True, help="print the results table")
    if command == "predict":
        parser.add_argument("--return_predictions", type=Optional[bool], default=None)
    return parser


def _import_path_setup() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def parse_run_args(command: str, args: list[str]) -> tuple[Any, Any]:
    """Parse (not instantiate) the arguments of ``raylit <command>``; a bad config raises :class:`ConfigError`
    with a short explanation."""
    _import_path_setup()
    parser = build_run_parser(command)
    try:
        cfg = parser.parse_args(args)
    except Exception as err:  # argparse.ArgumentError, or jsonargparse's own errors
        if type(err).__name__ not in ("ArgumentError", "ParserError", "NSKeyError", "ValueError", "TypeError"):
            raise
        raise ConfigError(command, explain_config_error(str(err))) from None
    return parser, cfg


class ConfigError(Exception):
    def __init__(self, command: str, message: str) -> None:
        super().__init__(message)
        self.command = command


def explain_config_error(text: str) -> str:
    """jsonargparse reports a bad class as a failed Union match; say plainly which class and why."""
    key = re.search(r'Parser key "([^"]+)"', text)
    where = f"{key.group(1)}: " if key else ""
    problem = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
    if problem:
        path, reason = problem.group(1), problem.group(2).strip()
        if reason.startswith(("No module named", "module ")) or "has no attribute" in reason:
            return (f"{where}the config names class {path!r}, which cannot be imported: {reason}. Check the "
                    f"spelling, and that its module is importable from {os.getcwd()} (raylit puts the current "
                    f"directory on sys.path; in a job, that is the uploaded --working-dir).")
        return f"{where}{path}: {reason}"
    not_sub = re.search(r"Import path (\S+) does not correspond to a subclass of (\w+)", text)
    if not_sub:
        base = {"LightningModule": "raylit.LightningModule", "LightningDataModule": "raylit.LightningDataModule",
                "Callback": "raylit.Callback", "Logger": "raylit.loggers.Logger"}.get(not_sub.group(2),
                                                                                     not_sub.group(2))
        return f"{where}{not_sub.group(1)} is not a subclass of {base}"
    return text


def run(command: str, args: list[str]) -> int:
    """``raylit fit|validate|test|predict``: parse, build, call, and print a RAYLIT_RESULT line."""
    try:
        parser, cfg = parse_run_args(command, args)
    except ConfigError as err:
        print(f"raylit {command}: error: {err}", file=sys.stderr)
        return 2
    _warn_version_skew()
    seed = cfg.get("seed_everything")
    if seed is not False:
        from raylit.utilities.seed import seed_everything

        cfg["seed_everything"] = seed_everything(None if seed is True else int(seed))
    objects = parser.instantiate(cfg)
    trainer, model, datamodule = objects.trainer, objects.model, objects.get("data")
    kwargs: dict[str, Any] = {"datamodule": datamodule, "ckpt_path": cfg.get("ckpt_path")}
    if command in ("validate", "test"):
        kwargs["verbose"] = cfg.get("verbose")
    if command == "predict" and cfg.get("return_predictions") is not None:
        kwargs["return_predictions"] = cfg.get("return_predictions")
    output = getattr(trainer, command)(model, **kwargs)
    result = run_result(command, trainer, output)
    print(jobs.describe_result(result))
    print(jobs.RESULT_MARKER + json.dumps(result, default=str), flush=True)
    return 0


def run_result(command: str, trainer: Any, output: Any) -> dict:
    """What a run leaves behind, as JSON: checkpoint paths, final metrics, and the node it ran from."""
    result: dict[str, Any] = {"command": command, "node": socket.gethostname(),
                              "in_job": "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ,  # set by Ray for job drivers
                              "global_step": trainer.global_step, "epoch": trainer.current_epoch}
    ckpt = trainer.checkpoint_callback
    if command == "fit" and ckpt is not None:
        result["checkpoints"] = {"dirpath": getattr(ckpt, "dirpath", None),
                                 "best_model_path": getattr(ckpt, "best_model_path", "") or None,
                                 "last_model_path": getattr(ckpt, "last_model_path", "") or None}
    metrics = {}
    for key, value in trainer.callback_metrics.items():
        try:
            metrics[key] = float(value)
        except (TypeError, ValueError):
            continue
    result["metrics"] = metrics
    if command in ("validate", "test") and isinstance(output, list):
        result["results"] = output
    return result


def _warn_version_skew() -> None:
    import raylit

    client_version = os.environ.get("RAYLIT_CLIENT_VERSION")
    if client_version and client_version != raylit.__version__:
        print(f"raylit: warning: this job runs raylit {raylit.__version__} from {jobs.raylit_source_dir()}, but "
              f"it was submitted with raylit {client_version}. Install the same version on the cluster (see "
              f"cluster_configs/README.md) or submit with --ship-raylit always.", file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------------------------
def _submit_parser() -> Any:
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="raylit submit", exit_on_error=False, usage="raylit submit [options] -- <fit|validate|"
                       "test|predict> [run options]",
                       description="Submit a raylit run to a Ray cluster as a Ray job, follow its log, and report "
                                   "where its checkpoints are. Everything after `--` is the command the job runs.")
    p.add_argument("--address", type=Optional[str], default=None,
                   help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS, "
                        f"$RAY_ADDRESS, {jobs.DEFAULT_ADDRESS})")
    p.add_argument("--working-dir", type=Optional[str], default=".",
                   help="directory uploaded with the job and used as its working directory (default: .)")
    p.add_argument("--no-working-dir", action="store_true", help="upload no working directory")
    p.add_argument("--exclude", type=str, default=[], action="append",
                   help="extra upload exclusion patterns (gitignore syntax)")
    p.add_argument("--py-module", type=str, default=[], action="append",
                   help="a local package directory or .whl to ship with the job (repeatable)")
    p.add_argument("--ship-raylit", type=Literal["auto", "always", "never"], default="auto",
                   help="ship this raylit with the job: auto = when it is a source checkout")
    p.add_argument("--pip", type=str, default=[], action="append",
                   help="a pip requirement installed for the job (repeatable; nodes need registry access)")
    p.add_argument("--env", type=str, default=[], action="append",
                   help="KEY=VALUE, or KEY to copy from this environment (repeatable). Values are visible in the "
                        "job's details on the dashboard: do not pass secrets this way")
    p.add_argument("--submission-id", type=Optional[str], default=None, help="the job's id (default: generated)")
    p.add_argument("--entrypoint-num-cpus", type=Optional[float], default=None)
    p.add_argument("--entrypoint-num-gpus", type=Optional[float], default=None)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return; do not follow the log")
    p.add_argument("--no-check", action="store_true",
                   help="skip parsing the run config here before submitting (e.g. when a class_path imports "
                        "packages only the cluster has)")
    return p


def _flatten(values: list) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(v if isinstance(v, list) else [v])
    return out


def submit_command(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        own, run_argv = argv[:split], argv[split + 1:]
    else:
        own, run_argv = argv, []
    parser = _submit_parser()
    try:
        opts = parser.parse_args(own)
    except Exception as err:
        print(f"raylit submit: error: {err}\n{parser.format_usage()}", file=sys.stderr)
        return 2
    if not run_argv or run_argv[0] not in jobs.RUN_COMMANDS:
        print("raylit submit: error: say what the job runs after `--`, e.g. "
              "`raylit submit -- fit --config run.yaml`", file=sys.stderr)
        return 2
    command, run_args = run_argv[0], run_argv[1:]
    working_dir = None if opts.no_working_dir else opts.working_dir
    run_args = jobs.relocate_config_args(run_args, working_dir)
    if not opts.no_check:
        # catch a misspelt key or an unknown class here, before anything is uploaded
        cwd = os.getcwd()
        try:
            if working_dir is not None:
                os.chdir(working_dir)
            parse_run_args(command, [a for a in run_args if a != "--print_config"])
        except ConfigError as err:
            raise jobs.JobError(f"the run config does not parse here: {err}\n(--no-check skips this check)") \
                from None
        finally:
            os.chdir(cwd)
    runtime_env = jobs.build_runtime_env(
        working_dir, ship_raylit=opts.ship_raylit, py_modules=_flatten(opts.py_module), pip=_flatten(opts.pip),
        env=jobs.parse_env(_flatten(opts.env)), excludes=_flatten(opts.exclude))
    client, job_id = jobs.submit(command, run_args, address=opts.address, runtime_env=runtime_env,
                                 submission_id=opts.submission_id, entrypoint_num_cpus=opts.entrypoint_num_cpus,
                                 entrypoint_num_gpus=opts.entrypoint_num_gpus)
    address = client.get_address()
    print(f"raylit: submitted job {job_id} to {address}", file=sys.stderr)
    if opts.no_wait:
        print(f"raylit: follow it with `raylit job logs {job_id} --follow --address {address}`", file=sys.stderr)
        print(job_id)
        return 0
    try:
        jobs.follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nraylit: stopped following; job {job_id} keeps running. `raylit job stop {job_id} --address "
              f"{address}` stops it.", file=sys.stderr)
        return 130
    return _report(client, job_id)


def _report(client: Any, job_id: str) -> int:
    o = jobs.outcome(client, job_id)
    if o.succeeded:
        print(f"raylit: job {job_id} SUCCEEDED", file=sys.stderr)
        if o.result is not None:
            print(jobs.describe_result(o.result), file=sys.stderr)
        return 0
    # the log was streamed above, but the end of it (the error) is what matters: repeat it next to the status
    print("raylit: " + jobs.describe_failure(o), file=sys.stderr)
    return 1


# --------------------------------------------------------------------------------------------------------------
# job list / status / logs / stop
# --------------------------------------------------------------------------------------------------------------
def _job_parser() -> Any:
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="raylit job", exit_on_error=False,
                       description="Inspect and control raylit jobs on a Ray cluster.")
    p.add_argument("action", type=Literal["list", "status", "logs", "stop"])
    p.add_argument("job_id", type=Optional[str], nargs="?", default=None)
    p.add_argument("--address", type=Optional[str], default=None,
                   help=f"the cluster's dashboard (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, "
                        f"{jobs.DEFAULT_ADDRESS})")
    p.add_argument("--follow", "-f", action="store_true", help="logs: keep printing until the job ends")
    p.add_argument("--tail", type=Optional[int], default=None, help="logs: only the last N lines")
    p.add_argument("--wait", action="store_true", help="stop: wait until the job has stopped")
    return p


def job_command(argv: list[str]) -> int:
    parser = _job_parser()
    try:
        opts = parser.parse_args(argv)
    except Exception as err:
        print(f"raylit job: error: {err}\n{parser.format_usage()}", file=sys.stderr)
        return 2
    client = jobs.client(opts.address)
    address = client.get_address()
    if opts.action == "list":
        for info in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{info.submission_id or info.job_id}\t{info.status}\t{info.entrypoint}")
        return 0
    if not opts.job_id:
        raise jobs.JobError(f"`raylit job {opts.action}` needs a job id (`raylit job list` shows them)")
    job_id = opts.job_id
    if opts.action == "status":
        o = jobs.outcome(client, job_id)
        print(o.status)
        if o.status in ("FAILED", "STOPPED"):
            print(jobs.describe_failure(o), file=sys.stderr)
            return 1
        if o.succeeded and o.result is not None:
            print(jobs.describe_result(o.result))
        return 0
    if opts.action == "logs":
        if opts.follow:
            jobs._call(address, lambda: client.get_job_status(job_id))  # a clear error for an unknown id
            status = jobs.follow(client, job_id)
            return 0 if status == "SUCCEEDED" else 1
        logs = jobs._call(address, lambda: client.get_job_logs(job_id))
        print(jobs.log_tail(logs, opts.tail) if opts.tail else logs, end="" if opts.tail is None else "\n")
        return 0
    # stop
    stopped = jobs._call(address, lambda: client.stop_job(job_id))
    if not stopped:
        print(f"job {job_id} had already ended ({client.get_job_status(job_id)})")
        return 0
    print(f"stop requested for job {job_id}")
    if opts.wait:
        print(jobs.wait(client, job_id, timeout_s=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
