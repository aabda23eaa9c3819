"""Session-scoped Ray for the ``@pytest.mark.ray`` tests: one small two-node cluster on this machine.

Two raylets are started with ``ray start --block`` (head on 127.0.0.1, a second node on 127.0.0.2, one CPU
each, each with its own ``--temp-dir`` and ports), and the pytest process connects to them. Every Ray test
shares it; since the node IPs differ, Ray Train sees two nodes (node_rank 0 and 1), so the multi-node test
needs no cluster of its own.

Teardown is by process id: the ``ray start`` process and every process below it (snapshotted from /proc), plus
any process whose command line names our private temp dir (Ray workers re-parented to init). Never
``ray stop``: it kills every Ray process on the host, other people's included.

Token auth: Ray 2.60 turns it on when ~/.ray/auth_token exists; our raylets and our driver run with
``RAY_AUTH_MODE=disabled`` so that all of them agree (they listen on loopback addresses only).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAY_BIN = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc; no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def kill_pids(pids: list[int], grace_s: float = 6.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace_s`` (gcs_server and raylet take ~5 s)."""
    alive = set(pids)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
                # reap it if it is our zombie child
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        alive.discard(pid)
                except ChildProcessError:
                    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                        alive.discard(pid)
            except (ProcessLookupError, FileNotFoundError):
                alive.discard(pid)
        time.sleep(0.2)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class RayNode:
    """One raylet started by ``ray start --block``; stopped by process id."""

    args: list[str]
    temp_dir: str
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def start(self) -> None:
        self.log = Path(self.temp_dir + ".log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [RAY_BIN, "start", "--block", *self.args, f"--temp-dir={self.temp_dir}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = [*_children(self.proc.pid), self.proc.pid]
        pids += [p for p in _pids_mentioning(self.temp_dir) if p not in pids]
        kill_pids(pids)
        self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class LocalCluster:
    """A head raylet plus ``len(extra_ips)`` more, each on its own loopback IP (so Ray sees distinct nodes)."""

    num_cpus_per_node: int = 1
    extra_ips: tuple[str, ...] = ("127.0.0.2",)
    root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="raylit-rt-", dir="/tmp"))
    nodes: list[RayNode] = field(default_factory=list)
    address: str = ""

    @staticmethod
    def env() -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        return env

    def _common(self) -> list[str]:
        return [
            f"--num-cpus={self.num_cpus_per_node}",
            "--num-gpus=0",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
        ]

    def start_head(self, timeout_s: float = 60.0) -> str:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        head = RayNode(
            ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false", *self._common()],
            os.path.join(self.root, "head"),
            self.env(),
        )
        self.nodes.append(head)
        head.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # the GCS port accepting connections is enough for ray.init
            self._check_alive()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return self.address
            time.sleep(0.2)
        raise TimeoutError(f"Ray head not up after {timeout_s}s: {head.log.read_text()[-3000:]}")

    def add_nodes(self) -> None:
        for i, ip in enumerate(self.extra_ips):
            node = RayNode(
                [f"--address={self.address}", f"--node-ip-address={ip}", *self._common()],
                os.path.join(self.root, f"node{i + 1}"),
                self.env(),
            )
            self.nodes.append(node)
            node.start()

    def wait_for_nodes(self, timeout_s: float = 60.0) -> None:
        """Wait until every node is alive (needs this process to be connected)."""
        import ray

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if sum(1 for n in ray.nodes() if n["Alive"]) == len(self.nodes):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{len(self.nodes)} Ray nodes not up after {timeout_s}s")

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {node.log.read_text()[-3000:]}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """The shared two-node cluster, with this process connected as a driver. Yields the LocalCluster."""
    import ray

    if ray.is_initialized():  # e.g. a test module imported this fixture: a second copy would end the first's run
        raise RuntimeError("ray_cluster: Ray is already initialised in this process; use the conftest fixture, do "
                           "not import ray_cluster into a test module")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # match the raylets (see module docstring)
    cluster = LocalCluster()
    try:
        address = cluster.start_head()
        cluster.add_nodes()  # starts while we connect
        ray.init(
            address=address,
            logging_level="WARNING",
            _node_ip_address="127.0.0.1",
            runtime_env={"worker_process_setup_hook": "raylit.launch.session.quiet_ray_workers"},
        )
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()
