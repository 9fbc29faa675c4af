"""The command line's contract with scripts and operators (issue 14): ``--version``, distinct exit
statuses for each kind of failure, where a worker's metrics listen, and the progress line of
``codes verify``.

Each test states the attack or the mistake first: a failure that would exit with another kind's
status, a metrics server reachable on an address nobody asked for, a progress line that leaks
into a pipe.
"""
from __future__ import annotations

import ast
import errno
import os
import pty
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from scanstream import cli
from scanstream.cli import codes as codes_cmd
from scanstream.cli import exits
from scanstream.cli.run import StateMismatch
from scanstream.cli.worker import metrics_address
from scanstream.engine import config as config_mod
from scanstream.engine.config import CONFIG_ENV, ConfigError
from scanstream.engine.registry import RegistryError
from scanstream.engine.state import StateUnavailable
from scanstream.engine.state.embedded import StateFileError, StateInUse
from scanstream.sinks.exceptions import SinkError
from scanstream.streams.local import InputChanged
from scanstream.streams.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[1]
CLI_DIR = REPO / "scanstream" / "cli"
CODE_7 = "2000E00058003RJ08V9QZJM3"  # DESIGN.md: tenant 7, batch 42, serial 123456, key 0 of config/local.toml
#: Seconds a test waits for a local HTTP answer or a subprocess: generous, never asserted on.
WAIT_S = 60
#: An address of the loopback network other than 127.0.0.1 (Linux answers on all of 127/8).
OTHER_LOOPBACK = "127.0.0.2"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    """Run as a user would, from the repository root with the default config/local.toml."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(REPO)


def script() -> str:
    """The installed ``scanstream`` console script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("scanstream")
    found = str(beside) if beside.exists() else shutil.which("scanstream")
    assert found, "the scanstream console script is not installed (pip install -e .)"
    return found


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != CONFIG_ENV}


# --- --version -----------------------------------------------------------------------------------

def test_version_prints_the_installed_version_and_exits_0():
    proc = subprocess.run([script(), "--version"], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"scanstream {metadata.version('scanstream')}\n"
    assert proc.stderr == ""


def test_version_needs_no_configuration(tmp_path, monkeypatch, capsys):
    """An empty folder (no config/local.toml) is where a new user first asks for the version."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"scanstream {metadata.version('scanstream')}"


# --- exit statuses ---------------------------------------------------------------------------------

def test_exit_statuses_are_distinct():
    codes = [exits.OK, exits.CHECK_FAILED, exits.USAGE, exits.CONFIG, exits.DATA, exits.UNAVAILABLE,
             exits.IO_ERROR, exits.SOFTWARE, exits.INTERRUPTED]
    assert len(set(codes)) == len(codes)
    assert sorted(exits.MEANINGS) == sorted(codes)


def _kafka_timeout() -> BaseException:
    from kafka.errors import KafkaTimeoutError
    return KafkaTimeoutError("Failed to update metadata after 30.0 secs.")


def _redis_down() -> BaseException:
    from redis.exceptions import ConnectionError as RedisConnectionError
    return RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


def _state_disk_full() -> BaseException:
    """The embedded state's SQLite file on a full disk, as ``EmbeddedStateStore`` reports it."""
    try:
        raise StateUnavailable("state file 'data/state.sqlite': cannot be written or read: disk I/O error") \
            from sqlite3.OperationalError("disk I/O error")
    except StateUnavailable as exc:
        return exc


#: What a sub-command raises -> the status ``scanstream`` must exit with, and a word its one line says.
FAILURES: dict[str, tuple[Callable[[], BaseException], int, str]] = {
    "config": (lambda: ConfigError("registry.dir: '/nope' is not a folder"), 3, "registry.dir"),
    "registry": (lambda: RegistryError("dealers.csv:3: column name: quote opened here is never closed"), 4,
                 "dealers.csv:3"),
    "state mismatch": (lambda: StateMismatch("the state was made against database other"), 4, "database other"),
    "input changed": (lambda: InputChanged("scans.jsonl is not the input the interrupted run read"), 4,
                      "scans.jsonl"),
    "state file of another format": (lambda: StateFileError("state file 'x' has format 9"), 4, "format 9"),
    "rejected statement": (lambda: SinkError("Code: 62. Syntax error", transient=False), 4, "Syntax error"),
    "clickhouse down": (lambda: SinkError("cannot connect to http://clickhouse:8123", transient=True), 5,
                        "cannot connect"),
    "redis down (state)": (lambda: StateUnavailable("redis at 127.0.0.1:1: connection refused"), 5,
                           "connection refused"),
    "state held by another process": (lambda: StateInUse("state file 'x' is in use by another scanstream process"),
                                      5, "in use"),
    "broker down": (_kafka_timeout, 5, "KafkaTimeoutError"),
    "redis down (client)": (_redis_down, 5, "Connection refused"),
    "connection refused": (lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), 5,
                           "Connection refused"),
    "state's disk full": (_state_disk_full, 6, "disk I/O error"),
    "disk full": (lambda: OSError(errno.ENOSPC, "No space left on device", "results.jsonl.partial"), 6,
                  "No space left"),
    "read-only disk": (lambda: OSError(errno.EROFS, "Read-only file system", "state.sqlite"), 6, "Read-only"),
    "no permission": (lambda: PermissionError(errno.EACCES, "Permission denied", "results.jsonl"), 6,
                      "Permission denied"),
    "interrupted": (lambda: KeyboardInterrupt(), 130, "interrupted"),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_each_kind_of_failure_exits_with_its_own_status_and_one_line(name, monkeypatch, capsys):
    make, status, word = FAILURES[name]

    def failing(args):
        raise make()

    monkeypatch.setattr(codes_cmd, "run_verify", failing)  # read when the parser is built
    assert cli.main(["codes", "verify", CODE_7]) == status
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scanstream: ") and word in lines[0], err
    assert "Traceback" not in err


def test_a_closed_pipe_is_no_error(monkeypatch, capsys):
    """``scanstream codes mint ... | head``: the reader leaving is the end of the job, not a disk error."""
    def failing(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(codes_cmd, "run_verify", failing)
    assert cli.main(["codes", "verify", CODE_7]) == 0
    assert capsys.readouterr().err == ""


def test_a_bug_exits_70_with_its_traceback_not_1(monkeypatch, capsys):
    """1 means "a code is not ok"; a script must not read a crash as that."""
    def failing(args):
        return {}["missing"]

    monkeypatch.setattr(codes_cmd, "run_verify", failing)
    assert cli.main(["codes", "verify", CODE_7]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "internal error" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["no-such-command"], ["codes", "verify", "--no-such-option"],
                                  ["worker", "--metrics-port", "0"], ["worker", "--metrics-port", "65536"],
                                  ["worker", "--metrics-port", "9464", "--metrics-host", "http://0.0.0.0"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_real_failures_of_the_installed_command(tmp_path):
    """The statuses as a shell sees them, one real failure of each kind the CLI checks itself."""
    def sh(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
        return subprocess.run([script(), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                              timeout=WAIT_S)

    missing_config = sh("codes", "verify", CODE_7, cwd=tmp_path)  # no config/local.toml here
    assert missing_config.returncode == 3, missing_config.stderr
    bad_registry = sh("registry", "check", "--dir", str(tmp_path / "no-such-registry"))
    assert bad_registry.returncode == 4 and "registry error" in bad_registry.stderr, bad_registry.stderr
    unwritable = sh("codes", "mint", "--tenant", "7", "--batch", "1", "--count", "1",
                    "--out", str(tmp_path / "no-such-folder" / "codes.txt"))
    assert unwritable.returncode == 6 and "does not exist" in unwritable.stderr, unwritable.stderr
    not_ok = sh("codes", "verify", CODE_7[:-1] + "0")
    assert not_ok.returncode == 1 and "bad_mac" in not_ok.stdout, not_ok.stderr
    for proc in (missing_config, bad_registry, unwritable, not_ok):
        assert "Traceback" not in proc.stderr


def test_no_sub_command_returns_a_bare_number():
    """Every status a sub-command returns is a named one of ``exits``, so the table stays true."""
    offenders = []
    for path in sorted(CLI_DIR.glob("*.py")):
        if path.name == "exits.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            returned = node.value if isinstance(node, ast.Return) else None
            if isinstance(returned, ast.Constant) and type(returned.value) is int:  # True/False are no status
                offenders.append(f"{path.name}:{node.lineno}: return {returned.value}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "exit" and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, int):
                offenders.append(f"{path.name}:{node.lineno}: exit({node.args[0].value})")
    assert offenders == []


def test_readme_documents_every_exit_status():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    cli_section = readme.split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    documented = sorted(int(m) for m in re.findall(r"^\| (\d+) \|", cli_section, re.M))
    assert documented == sorted(exits.MEANINGS)


def test_help_lists_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code, meaning in exits.MEANINGS.items():
        assert f"{code:>3}  {meaning}" in out


# --- where the worker's metrics listen -------------------------------------------------------------

def free_port() -> int:
    """A TCP port free on every local address at the time of asking."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=WAIT_S) as reply:
        return reply.read().decode()


def refused(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (the connection is refused)."""
    try:
        scrape(host, port)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    return False


def config_with(tmp_path: Path, kafka: str = "") -> config_mod.Config:
    body = ('[[tenants]]\nid = 7\nkeys = [{ key_id = 0, hex = "000102030405060708090a0b0c0d0e0f" }]\n'
            + (f"[kafka]\n{kafka}\n" if kafka else ""))
    path = tmp_path / "scanstream.toml"
    path.write_text(body, encoding="utf-8")
    return config_mod.load(path)


def test_metrics_address_follows_option_then_configuration_then_loopback(tmp_path):
    plain = config_with(tmp_path)
    assert metrics_address(plain, None, None) is None  # no --metrics-port: no server at all
    assert metrics_address(plain, None, 9464) == ("127.0.0.1", 9464)
    opened = config_with(tmp_path, 'metrics_host = "0.0.0.0"')
    assert metrics_address(opened, None, 9464) == ("0.0.0.0", 9464)
    assert metrics_address(opened, OTHER_LOOPBACK, 9464) == (OTHER_LOOPBACK, 9464)  # the option wins


def test_worker_parses_metrics_host_and_port():
    args = cli.build_parser().parse_args(["worker", "--metrics-port", "9108", "--metrics-host", "0.0.0.0"])
    assert (args.metrics_host, args.metrics_port) == ("0.0.0.0", 9108)
    args = cli.build_parser().parse_args(["worker"])
    assert (args.metrics_host, args.metrics_port) == (None, None)


def test_metrics_by_default_listen_on_loopback_only():
    """Attack: reach the metrics on another address of the machine.  By default it is refused."""
    port = free_port()
    server = WorkerMetrics().serve(port)
    try:
        assert "scanstream_scans" in scrape("127.0.0.1", port)
        assert refused(OTHER_LOOPBACK, port)
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_listen_on_the_configured_host_only(tmp_path):
    host, port = metrics_address(config_with(tmp_path, f'metrics_host = "{OTHER_LOOPBACK}"'), None, free_port())
    server = WorkerMetrics().serve(port, host)
    try:
        assert "scanstream_scans" in scrape(OTHER_LOOPBACK, port)
        assert refused("127.0.0.1", port)  # not also on the default address
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_on_every_interface_when_configured(tmp_path):
    host, port = metrics_address(config_with(tmp_path, 'metrics_host = "0.0.0.0"'), None, free_port())
    server = WorkerMetrics().serve(port, host)
    try:
        assert "scanstream_scans" in scrape("127.0.0.1", port)
        assert "scanstream_scans" in scrape(OTHER_LOOPBACK, port)
    finally:
        server.shutdown()
        server.server_close()


# --- a worker whose broker does not answer ----------------------------------------------------------

#: The bound the test configures; what it asserts is the kind of exit and the one line, and that
#: the worker gave up at all (within WAIT_S), never how fast.
CONNECT_TIMEOUT_S = 2


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:{port}", "no-such-broker.invalid:9092", "127.0.0.1:{redis}"],
                         ids=["nothing-listens", "name-does-not-resolve", "not-a-kafka-server"])
def test_a_worker_whose_broker_does_not_answer_stops_with_one_line_naming_it(tmp_path, bootstrap):
    """The mistake: a typo in kafka.bootstrap, or the broker not started yet.  Before, the worker
    logged about 40 lines over 30 s and ended on a traceback; now one line names the address and
    the key to fix, and the status says "a service is unavailable" (5), so a supervisor retries."""
    address = bootstrap.format(port=free_port(), redis=6379)
    (tmp_path / "worker.toml").write_text(
        '[[tenants]]\nid = 7\nkeys = [{ key_id = 0, hex = "000102030405060708090a0b0c0d0e0f" }]\n'
        f'[kafka]\nbootstrap = "{address}"\nconnect_timeout_s = {CONNECT_TIMEOUT_S}\n', encoding="utf-8")
    proc = subprocess.run([script(), "--config", str(tmp_path / "worker.toml"), "worker"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == exits.UNAVAILABLE, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert address in lines[0] and "kafka.connect_timeout_s" in lines[0] and "Traceback" not in proc.stderr


def test_connect_timeout_is_validated(tmp_path):
    for bad in ("0", "nan", "-1", '"soon"'):
        with pytest.raises(ConfigError, match="connect_timeout_s"):
            config_with(tmp_path, f"connect_timeout_s = {bad}")
    assert config_with(tmp_path, "connect_timeout_s = 3.5").kafka.connect_timeout_s == 3.5


# --- codes verify: progress ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def many_codes(tmp_path_factory) -> Path:
    """More codes than two verify blocks, so the progress line is drawn more than once."""
    path = tmp_path_factory.mktemp("codes") / "codes.txt"
    count = 2 * codes_cmd.VERIFY_BLOCK + 7
    proc = subprocess.run([script(), "codes", "mint", "--tenant", "7", "--batch", "42", "--count", str(count),
                           "--out", str(path)], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr
    return path


def verify(codes_file: Path, *options: str, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    with codes_file.open("rb") as stdin:
        return subprocess.run([script(), "codes", "verify", *options], stdin=stdin, stdout=subprocess.PIPE,
                              stderr=stderr, cwd=REPO, env=clean_env(), timeout=WAIT_S)


def progress_lines(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[\r\n]", text) if part.strip()]


def test_verify_prints_nothing_on_stderr_that_is_not_a_terminal(many_codes):
    """A pipe or a log file gets the verdicts on stdout and not a byte of progress on stderr."""
    proc = verify(many_codes)
    assert proc.returncode == 0 and proc.stderr == b""
    assert len(proc.stdout.splitlines()) == 2 * codes_cmd.VERIFY_BLOCK + 7


def test_verify_progress_forced_onto_a_pipe_counts_every_code(many_codes):
    total = 2 * codes_cmd.VERIFY_BLOCK + 7
    quiet, shown = verify(many_codes), verify(many_codes, "--progress")
    assert shown.returncode == 0 and shown.stdout == quiet.stdout  # the verdicts are not touched
    lines = progress_lines(shown.stderr.decode())
    assert lines, "no progress was shown"
    assert all(re.fullmatch(r"[\d,]+ codes verified  [\d,]+ codes/s", line) for line in lines), lines
    counts = [int(line.split()[0].replace(",", "")) for line in lines]
    assert counts == sorted(counts) and counts[-1] == total  # grows, and ends at the number of codes
    assert len(counts) <= total // codes_cmd.VERIFY_BLOCK + 2  # at most once a block, plus the final line
    assert shown.stderr.endswith(b"\n")  # the last line is finished: a shell prompt starts on its own line


def test_verify_shows_progress_on_a_terminal_without_being_asked(many_codes):
    leader, follower = pty.openpty()
    try:
        proc = verify(many_codes, stderr=follower)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # EIO: every writer of the terminal has gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    lines = progress_lines(seen.decode())
    assert lines and lines[-1].startswith(f"{2 * codes_cmd.VERIFY_BLOCK + 7:,} codes verified"), seen[-500:]


def test_a_write_refused_by_query_s_read_only_session_is_a_data_error_not_an_outage():
    """The sink marks READONLY transient (a replica reconnecting); for ``query`` it is the user's write."""
    from scanstream.cli.query import exit_status
    refused_write = SinkError("query 'DROP TABLE scan_events' failed: Code: 164. DB::Exception: default: Cannot "
                              "execute query in readonly mode. (READONLY)", transient=True)
    assert exit_status(refused_write) == 4
    assert exit_status(SinkError("query 'SELECT 1' failed: Code: 209. (SOCKET_TIMEOUT)", transient=True)) == 5
    assert exit_status(SinkError("query 'SELEC 1' failed: Code: 62. (SYNTAX_ERROR)", transient=False)) == 4
