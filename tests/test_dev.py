"""``scanstream dev`` end to end: the production path on this machine, run for a bounded time.

Each test starts the command in a fresh folder (``scanstream init``), waits for the demo's
outcomes to come back through Redis, reads the dashboard and the metrics it announced, stops
it with Ctrl-C (SIGINT) and checks that what it started is gone and what it found is not.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from scanstream.streams.broker import free_port

SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
SCANS = 3_000
#: Bounds of a run: the stack starting, 3 000 scans published and answered, and stopping.
RUN_S = 240
STOP_S = 60

pytestmark = pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Dev:
    """A running ``scanstream dev --demo``, its output read line by line as it comes."""

    def __init__(self, folder: Path) -> None:
        self.metrics_port = free_port()
        self.proc = subprocess.Popen(
            [SCANSTREAM, "dev", "--demo", "--scans", str(SCANS), "--dashboard-port", "0",
             "--metrics-port", str(self.metrics_port)],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, deadline: float) -> re.Match:
        """The first line matching ``pattern`` from now on; fails with the output so far."""
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        pytest.fail(f"no line matching {pattern!r}; output:\n{''.join(self.output)[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"dev did not stop within {STOP_S} s of Ctrl-C:\n{''.join(self.output)[-4000:]}")
        while (line := self.lines.get(timeout=10)) is not None:
            self.output.append(line)
        return self.proc.returncode


def init(folder: Path, redis_url: str) -> None:
    """A working folder as an operator makes one, its configuration pointed at ``redis_url``."""
    subprocess.run([SCANSTREAM, "init", str(folder)], check=True, capture_output=True)
    config = folder / "config" / "local.toml"
    config.write_text(config.read_text(encoding="utf-8") + f'\n[redis]\nurl = "{redis_url}"\n', encoding="utf-8")


def run_demo(dev: Dev) -> dict[str, int]:
    """Drive a dev run to its demo's outcomes; returns the pids it said it started."""
    deadline = time.monotonic() + RUN_S
    pids = {"broker": int(dev.wait_for(r"started the Tansu broker pid (\d+)", deadline)[1])}
    started = dev.wait_for(r"started redis-server pid (\d+)|using the Redis at", deadline)
    if started[1]:
        pids["redis"] = int(started[1])
    dashboard = dev.wait_for(r"dashboard (http://\S+)", deadline)[1]
    published = int(dev.wait_for(r"demo: published ([\d,]+) scans", deadline)[1].replace(",", ""))
    back = dev.wait_for(r"demo: ([\d,]+) outcomes back .*; ([\d,]+) not answered", deadline)
    assert int(back[1].replace(",", "")) == published > SCANS * 0.9
    assert back[2] == "0"
    with urllib.request.urlopen(f"http://127.0.0.1:{dev.metrics_port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    counted = sum(float(v) for v in re.findall(r'^scanstream_scans_total\{[^}]*\} (\S+)$', metrics, re.M))
    assert counted >= published, "the worker's metrics do not count the demo's scans"
    with urllib.request.urlopen(dashboard, timeout=10) as answer:
        assert answer.status == 200
    return pids


@pytest.mark.timeout(RUN_S + 2 * STOP_S)
def test_dev_answers_the_demo_through_the_machines_redis_and_leaves_it_running(tmp_path, redis_url) -> None:
    import redis

    init(tmp_path, redis_url)
    dev = Dev(tmp_path)
    try:
        pids = run_demo(dev)
    finally:
        status = dev.stop()
    assert status == 0, "".join(dev.output)[-4000:]
    assert "redis" not in pids, "dev started a Redis although one answered"
    assert not alive(pids["broker"]), "the broker dev started is still running"
    assert redis.Redis.from_url(redis_url).ping(), "dev stopped a Redis it had not started"
    assert "everything it started has stopped" in "".join(dev.output)


@pytest.mark.timeout(RUN_S + 2 * STOP_S)
def test_dev_starts_a_redis_of_its_own_when_none_answers_and_stops_it(tmp_path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: CI must provide it")
    init(tmp_path, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    dev = Dev(tmp_path)
    try:
        pids = run_demo(dev)
    finally:
        status = dev.stop()
    assert status == 0, "".join(dev.output)[-4000:]
    assert not alive(pids["redis"]), "the redis-server dev started is still running"
    assert not alive(pids["broker"]), "the broker dev started is still running"
