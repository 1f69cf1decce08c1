"""A Ray cluster of separate node processes on this machine: a head and worker nodes, each started by
`ray start --block` as a real cluster's nodes are, for the cluster tests and benchmarks/sweep_cluster.py.

What keeps it from disturbing anything else on a shared machine, and from outliving its user:
- every node has its own temp dir (under one short root in /tmp: Ray's Unix socket paths must stay
  under 108 bytes), its own free ports (no default port: another Ray may hold 6379, 8265 or 52365)
  and its own TMPDIR, so each node keeps its own blob cache, as separate machines would;
- token authentication (`RAY_AUTH_MODE=token`, the token in a file of the root named by
  `RAY_AUTH_TOKEN_PATH`) for every node and every driver given `env`: Ray 2.60 turns token
  authentication on for a head whenever ~/.ray/auth_token exists (any local `ray.init()` writes
  one), and then refuses worker nodes and drivers that do not send it;
- each node's `ray start --block` leads a session of its own, and every process of the node (GCS,
  raylet, agents, the workers the raylet forks) stays in that session: stopping or killing a node is
  signalling its session, never `ray stop`, which would stop every Ray on the machine;
- the `ray start --block` processes get SIGTERM when the process that started them dies (Linux's
  parent-death signal), so a test run killed by Ctrl-C or SIGKILL still takes its nodes down.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
NODE_ID = re.compile(r"\bnode_([0-9a-f]{56})\b")
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # small: the machine is shared; the sweep's blobs are KBs-MBs


def die_with_parent(sig: int) -> None:
    """In a child before exec: receive `sig` when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def session_members(sid: int) -> set[int]:
    """Every live process of the session `sid` (zombies excluded: they are gone but for their parent)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Signal every process of session `sid` (a node, or a driver started in its own session)."""
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_until(predicate, seconds: float, what: str, every: float = 0.5):
    """Poll `predicate` until it returns something truthy; a wait on a loaded machine, not a timing check."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds:.0f} s for {what}")
        time.sleep(every)


@dataclass
class Node:
    """One node: its `ray start --block` process (the leader of the node's session) and its Ray id."""

    name: str
    process: subprocess.Popen
    node_id: str
    tmpdir: Path  # TMPDIR of the node's processes: deploysparse-blobs/, deploysparse-point-*/
    log: Path

    @property
    def session(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return bool(session_members(self.session))


class LocalCluster:
    """`with LocalCluster() as cluster:` a head (no CPU: it only schedules), then `add_worker(...)`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dsray-", dir="/tmp"))
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        self.env = {
            **env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.port = free_port()
        self.nodes: dict[str, Node] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LocalCluster:
        try:
            self._start("head", ["--head", "--port", str(self.port), "--num-cpus", "0"], head=True)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add_worker(self, name: str, cpus: int = 1, resources: dict[str, float] | None = None) -> Node:
        args = ["--address", self.address, "--num-cpus", str(cpus), "--include-log-monitor", "false"]
        if resources:
            args += ["--resources", json.dumps(resources)]
        return self._start(name, args)

    def _start(self, name: str, args: list[str], head: bool = False) -> Node:
        folder = self.root / name
        tmpdir = folder / "tmp"
        tmpdir.mkdir(parents=True)
        log = folder / "ray-start.log"
        ports = [
            *("--node-manager-port", str(free_port())),
            *("--object-manager-port", str(free_port())),
            *("--dashboard-agent-listen-port", str(free_port())),
            *("--dashboard-agent-grpc-port", str(free_port())),
            *("--runtime-env-agent-port", str(free_port())),
            *("--metrics-export-port", str(free_port())),
        ]
        if head:
            ports += ["--include-dashboard", "false", "--dashboard-port", str(free_port())]
        before = set() if head else self.node_ids()
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    "--temp-dir",
                    str(folder / "ray"),
                    "--object-store-memory",
                    str(OBJECT_STORE_BYTES),
                    "--disable-usage-stats",
                    *ports,
                    *args,
                ],
                env={**self.env, "TMPDIR": str(tmpdir)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM),
            )
        node = Node(name, process, "", tmpdir, log)
        self.nodes[name] = node

        def joined() -> str | None:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray start for node {name} exited ({process.returncode}):\n{tail}")
            new = self.node_ids() - before
            return next(iter(new)) if len(new) == 1 else None

        node.node_id = wait_until(joined, 300, f"node {name} to join the cluster", every=1.0)
        return node

    def node_ids(self) -> set[str]:
        """The nodes `ray status` lists as alive (empty while the head is not up)."""
        try:
            result = subprocess.run(
                [RAY, "status", "--address", self.address],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            return set()
        alive = result.stdout.split("Pending:")[0]
        return set(NODE_ID.findall(alive)) if result.returncode == 0 else set()

    def kill(self, name: str) -> None:
        """Lose a node as a machine is lost: SIGKILL to every process of it at once, no draining."""
        node = self.nodes[name]
        kill_session(node.session)
        wait_until(lambda: not node.alive(), 60, f"node {name}'s processes to die")
        node.process.wait()

    def stop(self) -> None:
        """Stop every node (SIGTERM: Ray drains and stops its processes), SIGKILL what is left."""
        for node in self.nodes.values():
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not any(n.alive() for n in self.nodes.values()), 90, "Ray to stop")
        for node in self.nodes.values():
            kill_session(node.session)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=30)

    def leftovers(self) -> list[str]:
        """Processes of this cluster still alive: members of a node's session, or any process whose
        command line names the cluster's folder (a raylet or GCS would)."""
        pids = set().union(*(session_members(n.session) for n in self.nodes.values()))
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if str(self.root).encode() in (entry / "cmdline").read_bytes():
                        pids.add(int(entry.name))
        found = []
        for pid in sorted(pids):
            with contextlib.suppress(OSError):
                found.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:120]!r}")
        return found

    def remove_files(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
