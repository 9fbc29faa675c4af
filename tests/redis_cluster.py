"""A real Redis Cluster on loopback for the tests: ``CLUSTER_NODES`` ``redis-server`` primaries in
cluster mode, their slots assigned by ``redis-cli --cluster create``, ``replicas`` replicas each
(none by default), nothing on disk unless ``persistent``.

``RedisCluster.start()`` returns when every slot is served and the cluster state is ``ok``;
``stop()`` kills the nodes and removes their folder.  ``kill_node`` / ``restart_node`` take one
primary away and bring it back, for outage tests: a ``persistent`` cluster's nodes keep an
append-only file fsynced at every write, as ``faults.processes.PrivateRedis`` does, so a
restarted node serves its slots with their state (a node that forgets its state breaks every
promise by construction; the outage tested is the node being down).  With replicas, a killed
primary's replica takes its slots over (a failover, after ``NODE_TIMEOUT_MS``) and the killed node,
restarted, comes back as a replica of it.  Used by the ``redis_cluster_url`` fixture of
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
#: How long a node may not answer before the others count it failed (and a replica takes over).
NODE_TIMEOUT_MS = 2000
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
    """``CLUSTER_NODES`` cluster-mode ``redis-server`` primaries on 127.0.0.1, ``replicas`` replicas each."""

    def __init__(self, nodes: int = CLUSTER_NODES, *, persistent: bool = False, replicas: int = 0):
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed: the cluster tests need it (bash .ci/services.sh installs it)")
        self.replicas = replicas
        self.ports = _free_ports(nodes * (1 + replicas))
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
             "--cluster-config-file", str(home / "nodes.conf"), "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--save", "", "--repl-diskless-sync-delay", "0", "--dir", str(home), "--logfile", str(home / "redis.log"),
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
                                  "--cluster-replicas", str(self.replicas), "--cluster-yes"], capture_output=True, text=True,
                                 timeout=START_TIMEOUT_S)
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]} {created.stderr[-500:]}")
        self._wait(self.healthy, "cluster_state:ok on every node")
        # a replica that never synced with its primary may not take its slots over
        self._wait(lambda: all("master_link_status:up" in self._cli(p, "info", "replication")
                               for p in self.ports if "role:slave" in self._cli(p, "info", "replication")),
                   "every replica in sync")
        return self

    def healthy(self) -> bool:
        """Every running node says the cluster is ok (every slot is served)."""
        return all("cluster_state:ok" in self._cli(p, "cluster", "info") for p in self.procs)

    def primaries(self, failed: bool = False) -> list[int]:
        """The ports of the primaries that serve slots, as a running node sees them now (with those
        it counts failed or possibly failed, when ``failed``)."""
        seen = self._cli(next(iter(self.procs)), "cluster", "nodes")
        return sorted(int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in map(str.split, seen.splitlines())
                      if len(f) > 8 and "master" in f[2] and (failed or "fail" not in f[2]))

    def replicas_of(self, port: int) -> list[int]:
        """The ports of the running replicas of the primary on ``port``."""
        seen = self._cli(port, "cluster", "nodes").splitlines()
        me = next(f[0] for f in map(str.split, seen) if "myself" in f[2])
        return sorted(int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in map(str.split, seen)
                      if "slave" in f[2] and f[3] == me and "fail" not in f[2])

    def wait_failover(self, port: int) -> int:
        """After ``kill_node(port)`` of a primary: wait until one of its replicas serves its slots
        and the cluster is ok again; that replica's port."""
        before = set(self.primaries(failed=True)) | {port}
        self._wait(lambda: len(set(self.primaries()) - before) == 1 and self.healthy(), f"a replica of {port} promoted")
        (promoted,) = set(self.primaries()) - before
        return promoted

    def kill_node(self, port: int) -> None:
        """Stop one node abruptly (SIGKILL), as a crashed server."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def restart_node(self, port: int) -> None:
        """Start a killed node again from its nodes.conf; it serves its slots again, with their state
        when the cluster is ``persistent`` (else empty), or, when a replica took them over
        meanwhile, becomes that replica's replica."""
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
