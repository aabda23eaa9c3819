"""Run raylit commands on a Ray cluster as Ray Jobs: submit, follow, status, logs, stop.

A job is ``python -m raylit.cli <fit|validate|test|predict> <args>`` executed by the cluster's job server
(the dashboard, port 8265, which needs ``ray[default]`` on the head). The user's code travels with the job:
``working_dir`` (zipped and uploaded; honours .gitignore/.rayignore) and, while raylit itself is a source
checkout, the raylit package as a ``py_modules`` entry, so cluster and client run the same raylit.

When a run ends, ``raylit.cli`` prints one ``RAYLIT_RESULT {json}`` line (checkpoint paths, metrics);
:func:`find_result` reads it back out of the job's log, which is how ``raylit submit`` reports where the
checkpoints are without any storage of its own.

Everything that talks to Ray imports it inside the function: ``import raylit`` must not import Ray.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RESULT_MARKER = "RAYLIT_RESULT "
RUN_COMMANDS = ("fit", "validate", "test", "predict")
# Never worth uploading with a job; Ray also skips what .gitignore / .rayignore list.
DEFAULT_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
                    "lightning_logs", "checkpoints", "*.ckpt", "dist", "build", "*.egg-info"]
_NOT_DASHBOARD_PORTS = {6379: "the GCS port", 10001: "the Ray Client port (ray://)", 8076: "the object manager"}


class JobError(RuntimeError):
    """A problem with the cluster or the job, with the fix in the message; the CLI prints it without a
    traceback."""


# --------------------------------------------------------------------------------------------------------------
# where the cluster is
# --------------------------------------------------------------------------------------------------------------
def resolve_address(address: str | None = None) -> str:
    """The job server's URL: ``address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` (as Ray's own
    ``ray job`` CLI does), else the local default; ``http://`` is added when no scheme is given."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") \
        or DEFAULT_ADDRESS
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise JobError(f"{address!r} is a Ray Client address; jobs are submitted to the dashboard's HTTP address "
                       f"instead, e.g. http://<head>:8265 (`ray dashboard <cluster.yaml>` forwards it to "
                       f"http://127.0.0.1:8265).")
    if "://" not in address:
        address = "http://" + address
    return address


def _where_to_look(address: str) -> str:
    return ("Check that the cluster is up (`ray status` on the head, or `ray exec <cluster.yaml> 'ray status'`), "
            "that the dashboard port is reachable from here (for a `ray up` cluster, keep `ray dashboard "
            "<cluster.yaml>` running and use http://127.0.0.1:8265; on Kubernetes, `kubectl port-forward "
            "svc/<cluster>-head-svc 8265:8265`), and that the address is the dashboard's (port 8265), not "
            f"the GCS's (6379). Address used: {address} (from --address, RAY_API_SERVER_ADDRESS or RAY_ADDRESS).")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, and say what to check, when nothing answers at ``address`` (a TCP connect, no HTTP)."""
    parts = urllib.parse.urlsplit(address)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if port in _NOT_DASHBOARD_PORTS:
        raise JobError(f"{address}: port {port} is {_NOT_DASHBOARD_PORTS[port]}, not the dashboard's HTTP port "
                       f"(8265 by default). " + _where_to_look(address))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise JobError(f"Cannot reach the Ray cluster's job server at {address}: {reason}. "
                       + _where_to_look(address)) from None


def client(address: str | None = None) -> Any:
    """A connected ``JobSubmissionClient``, or a :class:`JobError` that says what to check."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    check_reachable(address)
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise JobError(_auth_help(address, str(err))) from None
    except ConnectionError as err:
        raise JobError(f"{address} accepts connections but is not a Ray job server ({err}). "
                       + _where_to_look(address)) from None
    except RuntimeError as err:  # e.g. a 404 on /api/version: some other HTTP server
        raise JobError(f"{address} did not answer like a Ray dashboard: {err} " + _where_to_look(address)) from None


def _auth_help(address: str, detail: str) -> str:
    mode = os.environ.get("RAY_AUTH_MODE", "<unset>")
    return (f"The Ray cluster at {address} refused the request: {detail.splitlines()[0]}\n"
            f"It uses token authentication (Ray 2.52+). Export RAY_AUTH_MODE=token (now: {mode}) and provide the "
            f"cluster's token as RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. For a `ray up` "
            f"cluster of cluster_configs/ it is your own ~/.ray/auth_token (copied to the nodes); on KubeRay, "
            f"`kubectl get secret <cluster> -o jsonpath='{{.data.auth_token}}' | base64 -d`.")


def _call(address: str, fn: Callable[[], Any]) -> Any:
    """Run a client call, turning Ray's errors into JobErrors."""
    from ray.exceptions import AuthenticationError

    try:
        return fn()
    except AuthenticationError as err:
        raise JobError(_auth_help(address, str(err))) from None
    except RuntimeError as err:
        text = str(err)
        if "does not exist" in text or "404" in text:
            raise JobError(f"No such job on {address}: {text} (`raylit job list` shows the jobs).") from None
        raise


# --------------------------------------------------------------------------------------------------------------
# what a job carries
# --------------------------------------------------------------------------------------------------------------
def raylit_source_dir() -> Path:
    import raylit

    return Path(raylit.__file__).resolve().parent


def raylit_is_source_checkout() -> bool:
    """True when raylit runs from a source tree (editable install or PYTHONPATH), not from site-packages: then
    the cluster's raylit (a release, installed by the cluster config) may differ, so the job ships ours."""
    return not any(part in ("site-packages", "dist-packages") for part in raylit_source_dir().parts)


def parse_env(items: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` sets a value; a bare ``KEY`` copies it from this environment (and must be set here)."""
    env = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key:
            raise JobError(f"--env {item!r}: expected KEY=VALUE or KEY")
        if not sep:
            if key not in os.environ:
                raise JobError(f"--env {key}: {key} is not set in this environment (use --env {key}=VALUE)")
            value = os.environ[key]
        env[key] = value
    return env


def build_runtime_env(working_dir: str | None, *, ship_raylit: str = "auto", py_modules: list[str] | None = None,
                      pip: list[str] | None = None, env: dict[str, str] | None = None,
                      excludes: list[str] | None = None, base: dict | None = None) -> dict[str, Any]:
    """The runtime_env of a raylit job. ``ship_raylit``: "auto" (ship this raylit when it is a source checkout
    not already inside ``working_dir``), "always" or "never"."""
    runtime_env: dict[str, Any] = dict(base or {})
    modules = [str(Path(m).resolve()) for m in (py_modules or [])] + list(runtime_env.get("py_modules", []))
    if working_dir is not None:
        wd = Path(working_dir).resolve()
        if not wd.is_dir():
            raise JobError(f"--working-dir {working_dir!r} is not a directory")
        runtime_env["working_dir"] = str(wd)
        runtime_env["excludes"] = list(runtime_env.get("excludes", [])) + DEFAULT_EXCLUDES + list(excludes or [])
    if ship_raylit not in ("auto", "always", "never"):
        raise JobError(f"--ship-raylit {ship_raylit!r}: expected auto, always or never")
    src = raylit_source_dir()
    inside_wd = working_dir is not None and src.parent == Path(working_dir).resolve()
    if ship_raylit == "always" or (ship_raylit == "auto" and raylit_is_source_checkout() and not inside_wd):
        modules.append(str(src))
    if modules:
        runtime_env["py_modules"] = modules
    if pip:
        runtime_env["pip"] = list(runtime_env.get("pip", [])) + list(pip)
    import raylit

    env_vars = dict(runtime_env.get("env_vars", {}))
    env_vars.update(env or {})
    # the job compares it with its own raylit and warns about a mismatch
    env_vars.setdefault("RAYLIT_CLIENT_VERSION", raylit.__version__)
    runtime_env["env_vars"] = env_vars
    return runtime_env


def entrypoint(command: str, args: list[str]) -> str:
    """The shell command the job runs. ``python -m raylit.cli`` (not the ``raylit`` script) so that it also
    works when raylit arrives as a py_module, which installs no console script."""
    if command not in RUN_COMMANDS:
        raise JobError(f"cannot submit {command!r}: expected one of {', '.join(RUN_COMMANDS)}")
    return shlex.join(["python", "-m", "raylit.cli", command, *args])


def relocate_config_args(args: list[str], working_dir: str | None) -> list[str]:
    """Rewrite ``--config PATH`` so that it names the same file inside the job, whose working directory is the
    uploaded ``working_dir``; a config outside ``working_dir`` would not travel with the job."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            out += [arg, _relocate(args[i + 1], working_dir)]
            i += 2
            continue
        if arg.startswith("--config="):
            out.append("--config=" + _relocate(arg.split("=", 1)[1], working_dir))
        else:
            out.append(arg)
        i += 1
    return out


def _relocate(path: str, working_dir: str | None) -> str:
    if working_dir is None or path.lstrip().startswith(("{", "[")) or "://" in path:
        return path  # no upload, inline YAML/JSON, or a URL: nothing to rewrite
    local = Path(path).resolve()
    wd = Path(working_dir).resolve()
    if not local.is_file():
        raise JobError(f"--config {path}: no such file")
    try:
        return local.relative_to(wd).as_posix()
    except ValueError:
        raise JobError(f"--config {path} is outside the working directory {wd}, so the job would not see it. "
                       f"Move it into {wd} or pass a --working-dir that contains it.") from None


# --------------------------------------------------------------------------------------------------------------
# submit, follow, report
# --------------------------------------------------------------------------------------------------------------
@dataclass
class JobOutcome:
    job_id: str
    status: str
    message: str
    logs: str
    result: dict | None

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def submit(command: str, args: list[str], *, address: str | None = None, runtime_env: dict | None = None,
           submission_id: str | None = None, entrypoint_num_cpus: float | None = None,
           entrypoint_num_gpus: float | None = None, metadata: dict | None = None) -> tuple[Any, str]:
    """Submit ``raylit <command> <args>``; return (client, job id)."""
    c = client(address)
    kwargs: dict[str, Any] = dict(entrypoint=entrypoint(command, args), runtime_env=runtime_env or {},
                                  metadata={"raylit": command, **(metadata or {})})
    if submission_id:
        kwargs["submission_id"] = submission_id
    if entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
    if entrypoint_num_gpus is not None:
        kwargs["entrypoint_num_gpus"] = entrypoint_num_gpus
    return c, _call(c.get_address(), lambda: c.submit_job(**kwargs))


def follow(c: Any, job_id: str, out: TextIO | None = None) -> str:
    """Copy the job's log to ``out`` as it is written, until the job ends; return its final status."""
    import logging

    out = out if out is not None else sys.stdout
    # the SDK logs "WebSocket closed ..." at INFO when a job ends; the job's status is reported instead
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

    async def _tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(_tail())
    except RuntimeError:
        pass  # the websocket closed early (e.g. the head restarted): fall back to polling below
    return wait(c, job_id)


def wait(c: Any, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(c.get_job_status(job_id))
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise JobError(f"job {job_id} still {status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def outcome(c: Any, job_id: str) -> JobOutcome:
    info = _call(c.get_address(), lambda: c.get_job_info(job_id))
    logs = c.get_job_logs(job_id)
    return JobOutcome(job_id=job_id, status=str(info.status), message=info.message or "", logs=logs,
                      result=find_result(logs))


def find_result(logs: str) -> dict | None:
    """The last ``RAYLIT_RESULT {json}`` line that ``raylit.cli`` printed, if any."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                return json.loads(line[len(RESULT_MARKER):])
            except json.JSONDecodeError:
                return None
    return None


def log_tail(logs: str, lines: int = 40) -> str:
    return "\n".join(logs.rstrip("\n").splitlines()[-lines:])


def describe_failure(o: JobOutcome, lines: int = 40) -> str:
    head = f"Job {o.job_id} {o.status}"
    if o.message:
        head += f": {o.message.strip().splitlines()[-1]}"
    if not o.logs.strip():
        return head + "\n(the job wrote no log; `ray status` on the head shows whether it is waiting for resources)"
    return f"{head}\n--- last {lines} lines of its log ---\n{log_tail(o.logs, lines)}\n---"


def describe_result(result: dict) -> str:
    """Human-readable lines for a RAYLIT_RESULT: where the checkpoints are."""
    lines = []
    ckpt = result.get("checkpoints") or {}
    if ckpt.get("dirpath"):
        lines.append(f"Checkpoints: {ckpt['dirpath']}")
    for key, label in (("best_model_path", "best"), ("last_model_path", "last")):
        if ckpt.get(key):
            lines.append(f"  {label}: {ckpt[key]}")
    if result.get("in_job") and ckpt.get("dirpath") and "://" not in ckpt["dirpath"]:
        lines.append("  (a local path on the node that ran rank 0: use an s3:// or gs:// dirpath, or shared "
                     "storage, to keep checkpoints beyond the node's life)")
    if result.get("metrics"):
        lines.append("Metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result["metrics"].items())))
    return "\n".join(lines) if lines else "No checkpoints were written."
