"""The services ``bench_worker.py`` starts and measures: topics and the worker's configuration,
subprocesses, their CPU accounting, and the Redis keys of a run.

Separate from the phases because none of it knows what a phase does: it is the plumbing
(names, configuration files, processes, ``/proc`` and ``INFO cpu`` readings, cleanup) that
every phase, the worker's and the naive agent's alike, stands on.

``write_config`` imports ``config_writer`` from tests/, which ``bench_worker.py`` puts on
``sys.path`` before it imports this module.
"""
from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

PARTITIONS = 4
SESSION_TIMEOUT_S = 4
#: What Faust logs once a worker has its first assignment in its group (``wait_ready``).
READY_LINE = "[^Worker]: Ready"
#: How often ``wait_ready`` reads the workers' logs.
READY_POLL_S = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---------------------------------------------------------------------------- topics and configuration


def topic_names(tag: str) -> dict[str, str]:
    return {k: f"bench-{k}-{tag}" for k in ("scans", "results", "awards", "alerts", "dlq", "group")}


def write_config(base: Path, path: Path, registry: Path, chdb: Path, bootstrap: str, names: dict[str, str],
                 redis_url: str, prefix: str, **kafka_settings) -> Path:
    """``base`` with the registry, chdb, webhooks off, Redis state under ``prefix``, the topics and
    any other ``[kafka]`` keys given."""
    from config_writer import worker_toml
    kafka = {"bootstrap": bootstrap, "group": names["group"], "partitions": PARTITIONS,
             "session_timeout_s": SESSION_TIMEOUT_S,
             **{f"{k}_topic": names[k] for k in ("scans", "results", "awards", "alerts", "dlq")}, **kafka_settings}
    try:
        text = worker_toml(base.read_text(encoding="utf-8"), registry=registry, chdb=chdb, state="redis",
                           redis={"url": redis_url, "prefix": prefix}, kafka=kafka)
    except ValueError as exc:
        raise SystemExit(f"{base}: {exc}") from None
    path.write_text(text, encoding="utf-8")
    from scanstream.engine.config import load
    load(path)  # fail here, with the key's name, rather than in the worker's log
    return path


# ---------------------------------------------------------------------------- processes and CPU


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for the worker's metrics), chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]



class Proc:
    """A subprocess with its log; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path):
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.p = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> float:
        """Seconds the process took to exit after SIGTERM (killed after ``timeout_s``)."""
        t = time.perf_counter()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._log.close()
        return time.perf_counter() - t

    def kill9(self) -> None:
        """SIGKILL, as a crashed machine would stop it: no shutdown, nothing flushed or committed."""
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(30)


def wait_ready(procs: list[Proc], timeout_s: float) -> float:
    """Seconds until every worker of a group logged its first assignment (``READY_LINE``).

    A member's first assignment completes only once every member has joined that generation,
    so from then on the group holds them all, each with its partitions, and no join rebalances
    it during a phase."""
    t = time.perf_counter()
    deadline = t + timeout_s
    while True:
        waiting = []
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited before the group formed; its log ends with:\n"
                                   f"{proc.log_tail()}")
            try:
                if READY_LINE not in proc.log_path.read_text(errors="replace"):
                    waiting.append(proc.name)
            except OSError:
                waiting.append(proc.name)
        if not waiting:
            return time.perf_counter() - t
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{', '.join(waiting)} had no assignment in the group within {timeout_s:.0f} s")
        time.sleep(READY_POLL_S)


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def runq_wait_s(pid: int | None) -> float | None:
    """Seconds the threads of a process spent runnable but waiting for a CPU (``/proc/PID/task/*/schedstat``)."""
    if pid is None:
        return None
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):  # a thread that just ended
                continue
    except OSError:
        return None
    return total / 1e9


def redis_cpu_s(client) -> float | None:
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except Exception:  # noqa: BLE001 - optional information
        return None


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU seconds spent by the worker (or agent), the broker, Redis and this process over a phase."""

    def __init__(self, agent_pid: int | None, broker_pid: int | None, redis_client):
        self.pids = {"agent": agent_pid, "broker": broker_pid}
        self.redis = redis_client

    def read(self) -> dict[str, float | None]:
        out = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        out["agent waiting for a CPU"] = runq_wait_s(self.pids["agent"])
        out["redis server"] = redis_cpu_s(self.redis)  # every client's work, not only this run's
        out["bench"] = self_cpu_s()
        return out

    @staticmethod
    def spent(a: dict, b: dict) -> dict[str, float | None]:
        return {k: (b[k] - a[k]) if a.get(k) is not None and b.get(k) is not None else None for k in a}


class GroupCpuMeter(CpuMeter):
    """A ``CpuMeter`` over the workers of one group: ``agent`` is their sum (and the time their
    threads waited for a CPU, summed too), ``worker i`` each one's when there are several.

    A worker about to be killed is ``freeze``-d first: its reading stays the last one taken,
    since a reaped process has no ``/proc`` entry left to read."""

    def __init__(self, worker_pids: list[int], broker_pid: int | None, redis_client):
        super().__init__(worker_pids[0] if worker_pids else None, broker_pid, redis_client)
        self.worker_pids = list(worker_pids)
        self._frozen: dict[int, tuple[float | None, float | None]] = {}

    def freeze(self, pid: int) -> None:
        self._frozen[pid] = (proc_cpu_s(pid), runq_wait_s(pid))

    def _worker(self, pid: int) -> tuple[float | None, float | None]:
        return self._frozen[pid] if pid in self._frozen else (proc_cpu_s(pid), runq_wait_s(pid))

    def read(self) -> dict[str, float | None]:
        each = [self._worker(pid) for pid in self.worker_pids]
        cpu = [c for c, _ in each]
        waited = [w for _, w in each]
        out: dict[str, float | None] = {
            "agent": sum(cpu) if None not in cpu else None,
            "broker": proc_cpu_s(self.pids["broker"]),
            "agent waiting for a CPU": sum(waited) if None not in waited else None,
            "redis server": redis_cpu_s(self.redis),  # every client's work, not only this run's
            "bench": self_cpu_s(),
        }
        if len(each) > 1:
            out.update({f"worker {i + 1}": c for i, c in enumerate(cpu)})
        return out


# ---------------------------------------------------------------------------- Redis keys


def delete_prefix(client, prefix: str) -> int:
    """Delete every key under ``prefix`` (this run's keys only)."""
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            n += client.unlink(*batch)
            batch.clear()
    if batch:
        n += client.unlink(*batch)
    return n
