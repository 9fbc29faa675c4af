"""A real Redis Cluster on loopback for the tests: ``CLUSTER_NODES`` ``redis-server`` processes in
cluster mode, their slots assigned by ``redis-cli --cluster create``, no replicas, nothing on disk
unless ``persistent``.

``RedisCluster.start()`` returns when every slot is served and the cluster state is ``ok``;
``stop()`` kills the nodes and removes their folder.  ``kill_node`` / ``restart_node`` take one
primary away and bring it back, for outage tests: a ``persistent`` cluster's nodes keep an
append-only file fsynced at every write, as ``faults.processes.PrivateRedis`` does, so a
restarted node serves its slots with their state (a node that forgets its state breaks every
promise by construction; the outage tested is the node being down).  Used by the ``redis_cluster_url`` fixture of
``tests/conftest.py`` (one cluster per test session) and by ``benchmarks/``.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: Primaries of the test cluster: the smallest a cluster takes (``redis-cli`` refuses fewer).
CLUSTER_NODES = 3
#: How long the nodes get to answer and to agree on the slots.
START_TIMEOUT_S = 30.0
_POLL_S = 0.1


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports whose cluster bus port (port + 10 000) is free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


class RedisCluster:
    """``CLUSTER_NODES`` cluster-mode ``redis-server`` processes on 127.0.0.1."""

    def __init__(self, nodes: int = CLUSTER_NODES, *, persistent: bool = False):
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed: the cluster tests need it (bash .ci/services.sh installs it)")
        self.ports = _free_ports(nodes)
        self.dir = Path(tempfile.mkdtemp(prefix="scanstream-cluster-"))
        self.procs: dict[int, subprocess.Popen] = {}
        self.persistent = persistent

    @property
    def url(self) -> str:
        """A URL of one node; a cluster client finds the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _start_node(self, port: int) -> None:
        home = self.dir / str(port)
        home.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(home / "nodes.conf"), "--cluster-node-timeout", "2000",
             "--save", "", "--dir", str(home), "--logfile", str(home / "redis.log"),
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _cli(self, port: int, *args: str, timeout: float = 10.0) -> str:
        return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True,
                              text=True, timeout=timeout).stdout

    def _wait(self, check, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(_POLL_S)
        logs = "; ".join(f"{p}: {(self.dir / str(p) / 'redis.log').read_text(errors='replace')[-300:]}"
                         for p in self.ports if (self.dir / str(p) / "redis.log").exists())
        raise RuntimeError(f"Redis Cluster on ports {self.ports}: {what} not reached in {START_TIMEOUT_S} s; {logs}")

    def start(self) -> RedisCluster:
        for port in self.ports:
            self._start_node(port)
        self._wait(lambda: all("PONG" in self._cli(p, "ping") for p in self.ports), "every node answering")
        created = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                  "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                                 timeout=START_TIMEOUT_S)
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]} {created.stderr[-500:]}")
        self._wait(self.healthy, "cluster_state:ok on every node")
        return self

    def healthy(self) -> bool:
        """Every node says the cluster is ok and every slot is assigned."""
        return all("cluster_state:ok" in self._cli(p, "cluster", "info") for p in self.ports)

    def kill_node(self, port: int) -> None:
        """Stop one node abruptly (SIGKILL), as a crashed server."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def restart_node(self, port: int) -> None:
        """Start a killed node again from its nodes.conf; it serves its slots again, with their state
        when the cluster is ``persistent`` (else empty)."""
        self._start_node(port)
        self._wait(lambda: "PONG" in self._cli(port, "ping"), f"node {port} answering")
        self._wait(self.healthy, "cluster_state:ok after the restart")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
