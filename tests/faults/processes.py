"""The processes a fault run starts, kills and breaks: ``scanstream worker``, a private Redis, frozen storage.

- ``Worker``: a ``scanstream worker`` subprocess of a ``Scenario`` (its own chdb folder and
  log): ``start``, ``kill9``, ``stop`` (SIGTERM);
- ``PrivateRedis``: a redis-server of our own on a free port, to stop and start (the shared one
  is never touched);
- ``FrozenStorage``: makes a chdb data folder immutable with ``chattr +i``: every insert of the
  embedded ClickHouse fails at its part directory, as on a read-only disk, until it is lifted.

Separate because this is where operating-system state lives: child processes and immutable
folders that must not outlive the test run (each registers its own ``atexit`` clean-up).  It
also says where things run from: ``REPO``, the checkout, and ``SCANSTREAM``, its console script
(every test that runs the CLI is skipped without it).
"""
from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scenario import Scenario

REPO = Path(__file__).resolve().parents[2]
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """One ``scanstream worker`` process with its own chdb folder and log (appended across restarts)."""

    def __init__(self, scenario: Scenario, label: str):
        self.scenario = scenario
        self.label = label
        self.chdb = scenario.root / f"chdb-{label}"
        self.config = scenario.write_config(scenario.root / f"worker-{label}.toml", self.chdb)
        self.log_path = scenario.root / f"worker-{label}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        atexit.register(self._last_resort)

    def start(self) -> Worker:
        if SCANSTREAM is None:
            raise RuntimeError("the scanstream console script is not installed (pip install -e .)")
        assert not self.alive(), "already running"
        self.starts += 1
        with self.log_path.open("ab") as fh:
            fh.write(f"=== harness: start #{self.starts} of worker {self.label} ===\n".encode())
            self.proc = subprocess.Popen([SCANSTREAM, "--config", str(self.config), "worker", "--loglevel", "info"],
                                         stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.scenario.root, env=self.scenario.env())
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.alive(), f"worker {self.label} is not running:\n{self.log_tail()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1
        with self.log_path.open("ab") as fh:
            fh.write(f"=== harness: kill -9 #{self.kills} of worker {self.label} ===\n".encode())

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then SIGKILL when it has not exited after ``timeout_s``; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def _last_resort(self) -> None:
        if self.alive():
            self.proc.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


class PrivateRedis:
    """A redis-server of our own on a free port, to stop and start (the shared one is never touched).

    ``--save ""`` (no snapshots) with the append-only file fsynced at every write: a Redis that
    forgets its state on a restart breaks every promise by construction (dedup bitmaps, prizes,
    stock), so persistence is a deployment requirement; the outage tested here is the service
    being down, not its data being thrown away.
    """

    def __init__(self, root: Path):
        self.dir = root / "private-redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "redis.log"
        atexit.register(self._last_resort)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30) -> PrivateRedis:
        import redis

        with self.log_path.open("ab") as fh:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir), "--daemonize", "no"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_path.read_text()[-2000:]}")
            try:
                client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=2)
                if client.ping():
                    client.close()
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on {self.port} did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _last_resort(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


#: How often ``FrozenStorage.thaw`` walks the folder again, and the pause between walks, s.
THAW_ATTEMPTS, THAW_PAUSE_S = 5, 0.2


class FrozenStorage:
    """Makes a chdb data folder's table storage immutable (``chattr -R +i``) while active.

    The embedded ClickHouse then fails every insert when it creates the new part's directory
    ("filesystem error: in create_directories: Operation not permitted"), like a server whose
    disk went read-only, and works again once the flag is lifted.  Needs CAP_LINUX_IMMUTABLE
    and a filesystem with the flag (``FrozenStorage.available``).
    """

    _active: list[Path] = []

    def __init__(self, chdb: Path):
        self.store = chdb / "store"

    @staticmethod
    def available(probe_dir: Path) -> bool:
        if shutil.which("chattr") is None:
            return False
        d = probe_dir / f"chattr-probe-{uuid.uuid4().hex[:6]}"
        d.mkdir(parents=True)
        try:
            if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
                return False
            try:
                (d / "x").touch()
                return False  # the flag is not enforced here
            except OSError:
                return True
        finally:
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)
            shutil.rmtree(d, ignore_errors=True)

    def freeze(self) -> None:
        subprocess.run(["chattr", "-R", "+i", str(self.store)], check=True, capture_output=True)
        FrozenStorage._active.append(self.store)

    def thaw(self) -> None:
        # chattr -R exits 1 when an entry under its walk could not be changed (one CI run failed so,
        # once, its stderr not kept; an entry that vanished mid-walk would do it): walk again, and
        # say what it printed if it never succeeds
        for attempt in range(THAW_ATTEMPTS):
            done = subprocess.run(["chattr", "-R", "-i", str(self.store)], capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(THAW_PAUSE_S)
        else:
            raise RuntimeError(f"chattr -R -i {self.store} failed {THAW_ATTEMPTS} times: "
                               f"{done.stderr.decode(errors='replace')[:500]}")
        if self.store in FrozenStorage._active:
            FrozenStorage._active.remove(self.store)

    def __enter__(self) -> FrozenStorage:
        self.freeze()
        return self

    def __exit__(self, *exc) -> None:
        self.thaw()


@atexit.register
def _thaw_everything() -> None:  # never leave an undeletable folder behind
    for store in list(FrozenStorage._active):
        subprocess.run(["chattr", "-R", "-i", str(store)], capture_output=True)
