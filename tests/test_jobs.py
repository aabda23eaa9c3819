"""raylit jobs against real components on this machine.

* A two-node Ray cluster started here: two raylets (head on 127.0.0.1 with the dashboard and its job server,
  a second node on 127.0.0.2), each with its own temp dir and ports, token authentication on, as in
  cluster_configs/. A local S3 server (moto's server mode) holds the checkpoints.
* The user's path through ``scripts/submit.sh`` (``raylit submit``): a project directory is shipped as the
  job's working directory, the job trains with 2 Ray workers (one per node) and writes checkpoints to ``s3://``;
  then ``raylit job status|logs|stop|list``, a failing job, and the error messages (auth, unknown job).
* ``ray up`` / ``ray exec`` / ``ray down`` with cluster_configs/onprem.yaml, over SSH on loopback, inside
  private network, PID and mount namespaces (slow; root, sshd, rsync and unshare only).

Every process is stopped by process id. Never ``ray stop``: it kills every Ray process on the host.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "raylit-test"


# --------------------------------------------------------------------------------------------------------------
# process helpers (no psutil)
# --------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pids_mentioning(text: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(entry))
            except OSError:
                continue
    return out


def kill(pids: list[int], grace_s: float = 6.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace_s`` (gcs_server and raylet take a few seconds)."""
    alive = set(pids)
    for pid in list(alive):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            alive.discard(pid)
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "gone"
            if state in ("Z", "gone"):
                alive.discard(pid)
        time.sleep(0.2)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited: {log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s: {log.read_text()[-3000:]}")


class Service:
    """A background process with its own session; stopped with everything below it, by pid."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], marker: str | None = None) -> None:
        self.log, self.marker = log, marker
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def stop(self) -> None:
        pids = [*descendants(self.proc.pid), self.proc.pid]
        if self.marker:  # Ray workers re-parented to init still name our temp dir
            pids += [p for p in pids_mentioning(self.marker) if p not in pids]
        kill(pids)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# --------------------------------------------------------------------------------------------------------------
# fixtures: S3 server, two-node cluster with job server and token auth
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    moto_server = BIN / "moto_server"
    if not moto_server.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]>=5.2.5')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = dict(os.environ)
    service = Service([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], log, env)
    try:
        wait_for_port("127.0.0.1", port, service.proc, log, timeout_s=60)
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        yield {"endpoint": endpoint, "env": creds, "client": client}
    finally:
        service.stop()


class TwoNodeCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(24)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: list[Service] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER"))}
        # token auth as in cluster_configs/: the mode and the token reach every raylet (and what it starts)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        # a job's entrypoint is `python -m raylit.cli ...`: on a node, `python` is the environment Ray runs in
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]

    def _start(self, name: str, args: list[str]) -> Service:
        temp_dir = tempfile.mkdtemp(prefix=f"raylit-jobs-{name}-", dir="/tmp")  # short: socket path limits
        service = Service([str(BIN / "ray"), "start", "--block", *args, f"--temp-dir={temp_dir}", "--num-cpus=1",
                           "--num-gpus=0", "--object-store-memory=100000000", "--disable-usage-stats",
                           *self._ports()], self.root / f"{name}.log", self.env(), marker=temp_dir)
        service.temp_dir = temp_dir
        self.nodes.append(service)
        return service

    def start(self) -> None:
        head = self._start("head", [
            "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}"])
        wait_for_port("127.0.0.1", self.gcs_port, head.proc, head.log)
        self._start("node2", [f"--address=127.0.0.1:{self.gcs_port}", "--node-ip-address=127.0.0.2"])
        wait_for_port("127.0.0.1", self.dashboard_port, head.proc, head.log)
        self.wait_for_nodes(2)

    def wait_for_nodes(self, n: int, timeout_s: float = 90) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray start exited: {node.log.read_text()[-3000:]}")
            req = urllib.request.Request(f"{self.address}/nodes?view=summary",
                                         headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    summary = json.load(r)["data"]["summary"]
                if sum(1 for s in summary if s.get("raylet", {}).get("state") == "ALIVE") >= n:
                    return
            except Exception:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{n} nodes not alive after {timeout_s}s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
            shutil.rmtree(node.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # One retry: on a heavily loaded machine a raylet can time out registering with the GCS.
    for attempt in (1, 2):
        c = TwoNodeCluster(tmp_path_factory.mktemp("cluster"))
        try:
            c.start()
            break
        except (RuntimeError, TimeoutError):
            c.stop()
            if attempt == 2:
                raise
    try:
        yield c
    finally:
        c.stop()


def client_env(cluster: TwoNodeCluster, **extra: str) -> dict[str, str]:
    """A client's environment: the token, but no RAY_AUTH_MODE (scripts/submit.sh turns it on, as documented)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
    env.update(RAY_AUTH_TOKEN=cluster.token, PYTHONUNBUFFERED="1", **extra)
    return env


def raylit(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raylit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


# --------------------------------------------------------------------------------------------------------------
# the user's project
# --------------------------------------------------------------------------------------------------------------
MODEL = '''
import json
import os
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import raylit


class Regressor(raylit.LightningModule):
    """y = 3x + 1 from noisy samples; logs val_loss; optionally fails or sleeps, for the error tests."""

    def __init__(self, lr: float = 0.1, fail_at_step: int = -1, sleep_s: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(1, 1)

    def setup(self, stage):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 1, generator=g)
        self.data = TensorDataset(x, 3 * x + 1 + 0.01 * torch.randn(256, 1, generator=g))

    def on_train_start(self):
        # the node IP and Ray Train node rank of every rank (the second node is 127.0.0.2)
        ip = "0.0.0.0"
        if self.trainer.world_size > 1:
            import ray

            node_id = ray.get_runtime_context().get_node_id()
            ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
        row = torch.tensor([*map(int, ip.split(".")), self.trainer.node_rank])
        everyone = self.all_gather(row).reshape(-1, 5)
        if self.trainer.is_global_zero:
            ranks = [(".".join(str(int(v)) for v in r[:4]), int(r[4])) for r in everyone]
            print("RANK_NODES", json.dumps(ranks), "WORLD", self.trainer.world_size, flush=True)
            # the job runs in the uploaded working dir, without what .rayignore lists
            print("SHIPPED", os.path.exists("configs/run.yaml"), os.path.exists("data.bin"), flush=True)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at_step:
            raise ValueError(f"boom at step {self.global_step}")
        time.sleep(self.hparams.sleep_s)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=64)
'''


def make_project(root: Path, dirpath: str) -> Path:
    proj = root / "proj"
    (proj / "regress").mkdir(parents=True)
    (proj / "regress" / "__init__.py").write_text("")
    (proj / "regress" / "model.py").write_text(MODEL)
    (proj / "configs").mkdir()
    (proj / "configs" / "run.yaml").write_text(textwrap.dedent(f"""
        seed_everything: 1
        model:
          class_path: regress.model.Regressor
          init_args: {{lr: 0.1}}
        trainer:
          accelerator: cpu
          devices: 1
          num_nodes: 2
          max_epochs: 2
          logger: false
          enable_progress_bar: false
          enable_model_summary: false
          callbacks:
            - class_path: raylit.callbacks.ModelCheckpoint
              init_args:
                dirpath: {dirpath}
                monitor: val_loss
                save_top_k: 1
                save_last: true
    """))
    (proj / "data.bin").write_bytes(b"x" * 1000)  # stays behind: listed in .rayignore
    (proj / ".rayignore").write_text("data.bin\n")
    return proj


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    run = f"runs/{secrets.token_hex(4)}"
    return make_project(tmp_path_factory.mktemp("user"), f"s3://{BUCKET}/{run}"), run


# --------------------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_submit_trains_on_both_nodes_with_checkpoints_in_s3(cluster, s3, project):
    proj, run = project
    env = client_env(cluster)
    s3_env = [f"--env={k}={v}" for k, v in s3["env"].items()]
    t0 = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "submit.sh"), "--address", cluster.address, "--working-dir", str(proj),
         "--submission-id", "raylit-e2e-fit", *s3_env, "--",
         "fit", "--config", str(proj / "configs" / "run.yaml"), "--trainer.max_epochs=2"],
        capture_output=True, text=True, env=env, timeout=300)
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-6000:]}"
    # the log was streamed: rank 0 reports both nodes
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RANK_NODES ")), None)
    assert line is not None, done.stdout[-4000:]
    ranks = json.loads(line.split(" ", 1)[1].rsplit(" WORLD", 1)[0])  # [[node ip, node rank] per rank]
    assert len(ranks) == 2 and len({ip for ip, _ in ranks}) == 2 and "127.0.0.2" in {ip for ip, _ in ranks}
    assert sorted(rank for _, rank in ranks) == [0, 1]
    assert "SHIPPED True False" in done.stdout
    # and the submitter says where the checkpoints are
    assert "raylit: job raylit-e2e-fit SUCCEEDED" in done.stderr
    assert f"Checkpoints: s3://{BUCKET}/{run}" in done.stderr, done.stderr[-3000:]
    assert f"last: s3://{BUCKET}/{run}/last.ckpt" in done.stderr
    print(f"submit -> SUCCEEDED in {elapsed:.1f}s")

    # the checkpoints are in S3, in Lightning's format, after 2 epochs of 2 workers (256 rows / 32 / 2 = 4 steps)
    keys = {o["Key"] for o in s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=run)["Contents"]}
    assert f"{run}/last.ckpt" in keys and any(k.endswith(".ckpt") and "epoch=1" in k for k in keys), keys
    import io

    import torch

    body = s3["client"].get_object(Bucket=BUCKET, Key=f"{run}/last.ckpt")["Body"].read()
    ckpt = torch.load(io.BytesIO(body), weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8
    assert set(ckpt["state_dict"]) == {"net.weight", "net.bias"}
    assert ckpt["hyper_parameters"]["lr"] == 0.1

    # status / logs / list from the CLI (token from the environment, mode set explicitly)
    env = client_env(cluster, RAY_AUTH_MODE="token")
    status = raylit("job", "status", "raylit-e2e-fit", "--address", cluster.address, env=env)
    assert status.returncode == 0 and status.stdout.startswith("SUCCEEDED"), status.stderr
    assert f"last: s3://{BUCKET}/{run}/last.ckpt" in status.stdout
    logs = raylit("job", "logs", "raylit-e2e-fit", "--tail", "3", "--address", cluster.address, env=env)
    assert logs.returncode == 0 and "RAYLIT_RESULT" in logs.stdout
    listing = raylit("job", "list", "--address", cluster.address, env=env)
    assert "raylit-e2e-fit\tSUCCEEDED\tpython -m raylit.cli fit --config configs/run.yaml" in listing.stdout

    # what the job carried: the project as working_dir, raylit itself as a py_module, the env vars
    import urllib.request

    req = urllib.request.Request(f"{cluster.address}/api/jobs/raylit-e2e-fit",
                                 headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        info = json.load(r)
    assert info["runtime_env"]["working_dir"].startswith("gcs://")
    assert len(info["runtime_env"]["py_modules"]) == 1  # raylit from this checkout
    assert info["runtime_env"]["env_vars"]["AWS_ENDPOINT_URL"] == s3["endpoint"]
    assert info["metadata"] == {"raylit": "fit"}


@pytest.mark.ray
@pytest.mark.slow
def test_failed_job_shows_the_tail_of_its_log_and_stop_works(cluster, project, tmp_path):
    proj, _ = project
    env = client_env(cluster, RAY_AUTH_MODE="token")
    # Both jobs run a single process (devices=1, num_nodes=1: the in-process engine), so they need no Ray
    # workers and run side by side. First a slow one, to be stopped while it runs ...
    submitted = raylit("submit", "--no-wait", "--address", cluster.address, "--working-dir", str(proj), "--",
                       "fit", "--config", str(proj / "configs" / "run.yaml"), "--trainer.num_nodes=1",
                       "--trainer.max_epochs=1000", f"--trainer.callbacks.dirpath={tmp_path / 'slow'}",
                       "--model.init_args.sleep_s=0.2", env=env)
    assert submitted.returncode == 0, submitted.stderr
    slow_id = submitted.stdout.strip().splitlines()[-1]
    assert f"raylit job logs {slow_id} --follow" in submitted.stderr

    # ... meanwhile one that fails at step 2: the submitter shows the tail of its log
    failed = raylit("submit", "--address", cluster.address, "--working-dir", str(proj), "--", "fit",
                    "--config", str(proj / "configs" / "run.yaml"), "--trainer.num_nodes=1",
                    f"--trainer.callbacks.dirpath={tmp_path / 'failing'}", "--model.init_args.fail_at_step=2",
                    env=env)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "FAILED" in failed.stderr and "--- last 40 lines of its log ---" in failed.stderr
    assert "ValueError: boom at step 2" in failed.stderr.split("--- last 40 lines")[1]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = raylit("job", "status", slow_id, "--address", cluster.address, env=env)
        if not st.stdout.startswith("PENDING"):
            break
        time.sleep(1)
    assert st.stdout.startswith("RUNNING"), (st.stdout, st.stderr)
    stop = raylit("job", "stop", slow_id, "--wait", "--address", cluster.address, env=env)
    assert stop.returncode == 0 and "STOPPED" in stop.stdout, (stop.stdout, stop.stderr)
    st = raylit("job", "status", slow_id, "--address", cluster.address, env=env)
    assert st.returncode == 1 and st.stdout.startswith("STOPPED")


@pytest.mark.ray
@pytest.mark.slow
def test_cluster_errors_are_explained(cluster):
    """Against the real job server (servers that are not Ray's are in test_cli.py)."""
    # no RAY_AUTH_MODE on the client: the job server answers 401 and raylit says how to send the token
    out = raylit("job", "list", "--address", cluster.address, env=client_env(cluster))
    assert out.returncode == 1
    assert "refused the request" in out.stderr and "RAY_AUTH_MODE=token" in out.stderr, out.stderr
    # an unknown job
    out = raylit("job", "status", "no-such-job", "--address", cluster.address,
                 env=client_env(cluster, RAY_AUTH_MODE="token"))
    assert out.returncode == 1 and "No such job" in out.stderr, out.stderr


# --------------------------------------------------------------------------------------------------------------
# ray up / exec / down with cluster_configs/onprem.yaml, over SSH, in private namespaces
# --------------------------------------------------------------------------------------------------------------
NAMESPACE_SCRIPT = r"""
set -euo pipefail
W=$1
now() { date +%s.%N; }
lap() { awk -v a="$(now)" -v b="$2" -v n="$1" 'BEGIN { printf "TIMING %s %.1fs\n", n, a - b }'; }
ip link set lo up                        # private network namespace: 127.0.0.1 and 127.0.0.2, nothing else
mkdir -p /run/sshd /tmp/ray "$W/overlay"
mount -t tmpfs tmpfs /tmp/ray            # this cluster's Ray session files, invisible to the host's Ray users
# A private HOME for root: an overlay over the real /root (the venv's interpreter lives there), whose changes
# (bashrc, token, Ray's bootstrap files) go to a tmpfs and vanish with the namespace.
mount -t tmpfs tmpfs "$W/overlay"
mkdir "$W/overlay/upper" "$W/overlay/work"
mount -t overlay overlay -o "lowerdir=/root,upperdir=$W/overlay/upper,workdir=$W/overlay/work" /root
cp -a "$W/home/." /root/
/usr/sbin/sshd -f "$W/sshd_config" -E "$W/sshd.log"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.2/22) 2>/dev/null && break; sleep 0.1; done
cd "$W"
export RAY_UP_enable_autoscaler_v2=0 RAY_USAGE_STATS_ENABLED=0
fail() { echo "FAILED $1"; tail -60 "$2" || true; exit 1; }

t=$(now); "$BIN/ray" up -y --no-config-cache cluster.yaml > ray-up.log 2>&1 || fail "ray up" ray-up.log
lap ray_up "$t"

t=$(now)
RAY_AUTH_MODE=token "$BIN/python" - > nodes.log 2>&1 <<'PY' || fail "waiting for the worker" nodes.log
import time, ray
ray.init(address="127.0.0.1:6379", logging_level="ERROR")
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    if len(alive) == 2:
        print("NODES", *alive)
        break
    time.sleep(1)
else:
    raise SystemExit(f"worker never joined: {alive}")
PY
cat nodes.log; lap worker_joined "$t"

t=$(now)
"$BIN/ray" exec --no-config-cache cluster.yaml 'RAY_AUTH_MODE=token ray status' > exec.log 2>&1 || fail "ray exec" exec.log
grep -c "local.cluster.node" exec.log | sed 's/^/EXEC_NODE_LINES /'; lap ray_exec "$t"

t=$(now)
RAYLIT_DASHBOARD_PORT=8300 PYTHON="$BIN/python" "$ROOT/scripts/submit.sh" "$W/cluster.yaml" \
  --working-dir "$W/proj" -- fit --config "$W/proj/configs/run.yaml" --trainer.num_nodes=1 \
  > submit.log 2>&1 || fail "submit" submit.log
grep -E "^raylit: job|^Checkpoints" submit.log; lap submit "$t"

t=$(now)
"$BIN/ray" down -y cluster.yaml > ray-down.log 2>&1 || fail "ray down" ray-down.log
lap ray_down "$t"
sleep 2
echo "LEFT_RAY_PROCESSES $(pgrep -fc 'raylet|gcs_server' || true)"
echo ALL_DONE
"""


def _have_namespace_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network, PID and mount namespaces)"
    for tool in ("/usr/sbin/sshd", "unshare", "ssh", "ssh-keygen", "rsync", "ip"):
        if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool)):
            return f"needs {tool} (apt-get install openssh-server rsync iproute2)"
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "--mount", "true"],
                           capture_output=True)
    return None if probe.returncode == 0 else "unshare is not permitted here"


def _onprem_test_config(work: Path, name: str) -> dict:
    """cluster_configs/onprem.yaml as written, with these changes only: this machine's addresses and key, one
    worker, and (because both "machines" share one host and network namespace) the second node's own IP,
    temp dir and ports. The setup commands run as written, except the raylit wheel install, which would
    replace the developer's editable raylit in the shared venv; the test checks the wheel arrived instead."""
    cfg = yaml.safe_load((ROOT / "cluster_configs" / "onprem.yaml").read_text())
    cfg["cluster_name"] = name
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=["127.0.0.2"])
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(work / "id_ed25519")}
    cfg["min_workers"] = cfg["max_workers"] = 1
    wheel = f"~/raylit-dist/raylit-{__import__('raylit').__version__}-py3-none-any.whl"
    cfg["setup_commands"] = [f"test -f {wheel}" if "--force-reinstall" in c else c for c in cfg["setup_commands"]]
    common = " --num-cpus=1 --object-store-memory=100000000"
    cfg["head_start_ray_commands"] = [c + common + " --node-ip-address=127.0.0.1"
                                      for c in cfg["head_start_ray_commands"]]
    cfg["worker_start_ray_commands"] = [
        c + common + " --node-ip-address=127.0.0.2 --temp-dir=/tmp/ray/node2 --object-manager-port=8077"
                     " --dashboard-agent-listen-port=52366 --metrics-export-port=8091"
        for c in cfg["worker_start_ray_commands"]]
    return cfg


@pytest.mark.ray
@pytest.mark.slow
def test_ray_up_onprem_config_end_to_end(tmp_path):
    why_not = _have_namespace_tools()
    if why_not:
        pytest.skip(why_not)
    work = tmp_path
    home = work / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(24))
    # the node image: login shells get nothing special; the config's setup commands add the venv activation.
    # ~/raylit-venv already "exists" (a link to this checkout's venv), so its `python3 -m venv` step is skipped.
    (home / ".bashrc").write_text("")
    (home / ".profile").write_text('[ -f ~/.bashrc ] && . ~/.bashrc\n')
    (home / "raylit-venv").symlink_to(BIN.parent)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "id_ed25519")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host_key")], check=True)
    (work / "authorized_keys").write_text((work / "id_ed25519.pub").read_text())
    (work / "sshd_config").write_text(textwrap.dedent(f"""\
        ListenAddress 127.0.0.1
        ListenAddress 127.0.0.2
        HostKey {work}/host_key
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        AuthorizedKeysFile {work}/authorized_keys
        UsePAM no
        StrictModes no
        PidFile {work}/sshd.pid
        MaxStartups 50
        MaxSessions 50
    """))
    (work / "dist").mkdir()
    (work / "dist" / f"raylit-{__import__('raylit').__version__}-py3-none-any.whl").write_bytes(b"placeholder")
    make_project(work, str(work / "ckpt"))  # work/proj, checkpoints to a local dir (both nodes are this host)
    name = f"raylit-onprem-test-{secrets.token_hex(3)}"
    (work / "cluster.yaml").write_text(yaml.safe_dump(_onprem_test_config(work, name)))
    (work / "ns.sh").write_text(NAMESPACE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME="/root", BIN=str(BIN), ROOT=str(ROOT), PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    t0 = time.monotonic()
    try:
        done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "--mount",
                               "--propagation", "private", "bash", str(work / "ns.sh"), str(work)],
                              capture_output=True, text=True, env=env, timeout=300)
    finally:
        for suffix in (".state", ".lock"):  # the local provider's bookkeeping, kept in the host's /tmp
            Path(f"/tmp/cluster-{name}{suffix}").unlink(missing_ok=True)
    out = done.stdout
    print(out, f"\nTOTAL {time.monotonic() - t0:.1f}s")
    assert done.returncode == 0 and "ALL_DONE" in out, f"{out[-5000:]}\n{done.stderr[-3000:]}"
    assert "NODES 127.0.0.1 127.0.0.2" in out
    assert "EXEC_NODE_LINES" in out and "EXEC_NODE_LINES 0" not in out
    # a job through scripts/submit.sh CONFIG (dashboard tunnel over SSH, token auth); one process, to keep the
    # test short: the 2-worker, 2-node run is test_submit_trains_on_both_nodes_with_checkpoints_in_s3
    assert "raylit: job" in out and "SUCCEEDED" in out
    assert any(p.name == "last.ckpt" for p in (work / "ckpt").iterdir())
    assert "LEFT_RAY_PROCESSES 0" in out  # ray down stopped everything (inside the namespace)
