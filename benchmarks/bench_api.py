"""Publish -> outcome latency through the HTTP gateway and through the Python publisher, in one run.

One run starts a Tansu broker on a free port, one ``scanstream worker`` (Redis state under a fresh
key prefix of ``--redis-url``, chdb in a temporary folder) and one ``scanstream api`` (rate limits
off, ``deadline_ms`` ``--deadline-ms``), as bench_worker.py does, then for each ``--rates`` value
drives the same kind of scans (fresh scan_ids of the demo world) two ways, each from a load
generator in a process of its own (this file with ``--drive``), open loop (scans are sent on a
fixed schedule whatever the answers do, so a slow answer cannot slow the offered load down):

- ``direct``: ``ScanPublisher.publish`` on the schedule, and ``await_result(..., event=)`` for
  every scan in a pool of waiting threads (what a scan API in Python does);
- ``http``: ``POST /v1/scans`` per scan over a pool of keep-alive connections (requests written and
  read by hand: a client library would cost as much CPU as the gateway).

Latency is from the scheduled send to the answer.  Printed per rate and path: scans offered and
answered, the achieved rate, p50/p95/p99/max, and every HTTP status (202: the deadline passed,
the scan is still processed; 5xx would be a bug).  Nothing is asserted: the machine is two shared
cores running the broker, Redis, the worker, the gateway and the load generator together.

Run: ``python benchmarks/bench_api.py [--rates 200,2000,5000] [--seconds 5] [--deadline-ms 1000]
[--fetch-wait-ms MS]``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(ROOT / "tests"))  # config_writer: the worker configurations tests use too

SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
#: Threads that wait for outcomes on the direct path (each holds a Redis connection while waiting).
WAITERS = 64
#: HTTP connections the load generator keeps open to the gateway: phones each open their own, so
#: enough that the gateway, not the generator's pool, decides what waits (``[api] max_in_flight``).
HTTP_CONNECTIONS = 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------- load generators (own process)

def drive_direct(spec: dict, events: list[dict]) -> dict:
    from scanstream.streams.publisher import ScanPublisher

    latencies, statuses, lock = [], {}, threading.Lock()
    rate, timeout = spec["rate"], spec["timeout_s"]
    with ScanPublisher(spec["bootstrap"], topic=spec["topic"], redis_url=spec["redis_url"],
                       prefix=spec["prefix"]) as pub, ThreadPoolExecutor(WAITERS) as pool:
        def wait(event: dict, due: float) -> None:
            outcome = pub.await_result(event["scan_id"], timeout=timeout, event=event)
            with lock:
                key = "answered" if outcome is not None else "no answer"
                statuses[key] = statuses.get(key, 0) + 1
                if outcome is not None:
                    latencies.append(time.perf_counter() - due)

        start = time.perf_counter() + 0.2
        for i, event in enumerate(events):
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            pub.publish(event)
            pool.submit(wait, event, due)
        sent_s = time.perf_counter() - start
    return {"latencies": latencies, "statuses": statuses, "sent_s": sent_s}


async def _drive_http(spec: dict, events: list[dict]) -> dict:
    """POST each scan over a pool of keep-alive HTTP/1.1 connections, written and read by hand.

    An HTTP client library costs about a millisecond of CPU a request here (httpx), as much as the
    gateway itself, so at 2 000 scans/s the generator, not the gateway, would be measured.  A
    request is queued at its scheduled time; a free connection sends it; its latency counts from
    the schedule, so a queue in the generator is in the figure, never hidden by it."""
    import orjson

    latencies, statuses = [], {}
    rate, timeout = spec["rate"], spec["timeout_s"]
    host, port = spec["url"].removeprefix("http://").rsplit(":", 1)
    queue: asyncio.Queue = asyncio.Queue()

    def request(event: dict) -> bytes:
        body = orjson.dumps(event)
        return (f"POST /v1/scans HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def connection() -> None:
        reader = writer = None
        while True:
            item = await queue.get()
            if item is None:
                break
            data, due = item
            try:
                if reader is not None and reader.at_eof():  # the gateway closed it while idle (keep-alive
                    writer.close()                           # timeout), as a browser would see, it reconnects
                    reader = writer = None
                reused = writer is not None
                while True:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, int(port))
                    try:
                        writer.write(data)
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                        break
                    except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
                        if not reused or getattr(exc, "partial", b"") != b"":
                            raise
                        # closed as the request went out, before a byte of answer: sent once more on a
                        # new connection, as HTTP clients do (the same scan_id: a resend is safe by contract)
                        writer.close()
                        reader = writer = None
                        reused = False
                status = head[9:12].decode()
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                if status in ("200", "202"):
                    latencies.append(time.perf_counter() - due)
                key = status
                if re.search(rb"(?i)connection: *close", head):
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                key = type(exc).__name__
                if writer is not None:
                    writer.close()
                reader = writer = None
            statuses[key] = statuses.get(key, 0) + 1

    workers = [asyncio.create_task(connection()) for _ in range(HTTP_CONNECTIONS)]
    start = time.perf_counter() + 0.2
    for i, event in enumerate(events):
        due = start + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        queue.put_nowait((request(event), due))
    sent_s = time.perf_counter() - start
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return {"latencies": latencies, "statuses": statuses, "sent_s": sent_s}


def drive(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    events = json.loads(Path(spec["events"]).read_text())
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    out = drive_direct(spec, events) if spec["mode"] == "direct" else asyncio.run(_drive_http(spec, events))
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------- the run

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="200,2000,5000", help="offered scans per second, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of load per rate and path (default 5)")
    p.add_argument("--deadline-ms", type=int, default=1000, help="the gateway's [api] deadline_ms (default 1000)")
    p.add_argument("--fetch-wait-ms", type=int, default=None,
                   help="the worker's [kafka] fetch_wait_ms (default: the configuration's)")
    p.add_argument("--idle-seconds", type=float, default=3.0,
                   help="seconds with no load before the runs, to measure each process's fixed cost (default 3)")
    p.add_argument("--redis-url", default=os.environ.get("SCANSTREAM_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--config", type=Path, default=ROOT / "config" / "local.toml")
    p.add_argument("--drive", type=Path, help=argparse.SUPPRESS)  # the load generator's own process
    args = p.parse_args(argv)
    if args.drive:
        return drive(args.drive)
    if SCANSTREAM is None:
        print("error: the scanstream console script is not installed (pip install -e .)", file=sys.stderr)
        return 2
    import httpx
    import redis

    from scanstream.engine.config import load
    from scanstream.streams.broker import TansuBroker, free_port
    from scanstream.streams.synthetic import build_world
    from worker_bench_load import make_events
    from worker_bench_services import PARTITIONS, Proc, delete_prefix, topic_names, write_config

    rates = [int(r) for r in args.rates.split(",")]
    tag = uuid.uuid4().hex[:8]
    prefix = f"scanstream-bench:{tag}:"
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    client = redis.Redis.from_url(args.redis_url)
    names = topic_names(tag)
    broker = TansuBroker(log_path=tmp / "tansu.log").start()
    procs: list[Proc] = []
    try:
        base = load(args.config)
        world = build_world(7, base.keys.get(7, 1), 1)
        world.write_registry(tmp / "registry")
        broker.create_topics({n: PARTITIONS for k, n in names.items() if k != "group"})
        fetch = {} if args.fetch_wait_ms is None else {"fetch_wait_ms": args.fetch_wait_ms}
        cfg = write_config(args.config, tmp / "bench.toml", tmp / "registry", tmp / "chdb", broker.bootstrap, names,
                           args.redis_url, prefix, **fetch)
        with cfg.open("a", encoding="utf-8") as f:
            f.write(f"\n[api]\ndeadline_ms = {args.deadline_ms}\nip_rate_per_s = 0\nuser_rate_per_s = 0\n")
        config = load(cfg)
        port = free_port()
        procs.append(Proc("worker", [SCANSTREAM, "--config", str(cfg), "worker"], tmp / "worker.log", tmp))
        procs.append(Proc("api", [SCANSTREAM, "--config", str(cfg), "api", "--port", str(port)], tmp / "api.log", tmp))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not all(pr.alive() for pr in procs):
                raise SystemExit("the gateway or the worker did not get ready:\n" + procs[0].log_tail() + "\n"
                                 + procs[1].log_tail())
            time.sleep(0.2)
        k = config.kafka
        print(f"setup: Tansu {broker.bootstrap}, {PARTITIONS} partitions, worker take {k.take} / within {k.within_ms} "
              f"ms, fetch wait {k.fetch_wait_ms} ms, publisher linger {k.linger_ms} ms; gateway {url} deadline "
              f"{args.deadline_ms} ms; load generators in their own processes, open loop; "
              f"{os.cpu_count()} CPUs shared by all of it")
        print(f"{'rate':>6} {'path':>6} {'offered':>8} {'answered':>8} {'sent/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'p99 ms':>8} {'max ms':>8}  statuses")
        seed = 100
        for event in make_events(world, 50, seed, f"w{tag}"):  # the worker's group join, the first batches
            httpx.post(f"{url}/v1/scans", json=event, timeout=60)
        # the fixed cost: what each process spends with nothing to do (fetch polling, timers), which
        # the per-scan figures below carry divided by the rate
        before = ({pr.name: cpu_s(pr.pid) for pr in procs}, redis_cpu_s(client))
        time.sleep(args.idle_seconds)
        idle = {pr.name: cpu_s(pr.pid) - before[0][pr.name] for pr in procs}
        idle["redis"] = redis_cpu_s(client) - before[1]
        print(f"{'idle':>6} CPU % of a core over {args.idle_seconds:g} s with no scans: "
              + ", ".join(f"{name} {100 * sec / args.idle_seconds:.1f}" for name, sec in idle.items()), flush=True)
        for rate in rates:
            for mode in ("direct", "http"):
                seed += 1
                n = int(rate * args.seconds)
                events = make_events(world, n, seed, f"{mode[0]}{rate}-{tag}")
                events_path = tmp / f"events-{rate}-{mode}.json"
                events_path.write_text(json.dumps(events))
                spec = {"mode": mode, "rate": rate, "timeout_s": 30.0, "events": str(events_path), "url": url,
                        "bootstrap": broker.bootstrap, "topic": names["scans"], "redis_url": args.redis_url,
                        "prefix": prefix}
                spec_path = tmp / f"spec-{rate}-{mode}.json"
                spec_path.write_text(json.dumps(spec))
                before = ({pr.name: cpu_s(pr.pid) for pr in procs}, redis_cpu_s(client),
                          resource.getrusage(resource.RUSAGE_CHILDREN))
                run = subprocess.run([sys.executable, __file__, "--drive", str(spec_path)], capture_output=True,
                                     text=True, timeout=args.seconds * 4 + 120)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cost = {pr.name: cpu_s(pr.pid) - before[0][pr.name] for pr in procs}
                cost["redis"] = redis_cpu_s(client) - before[1]
                cost["load"] = (after.ru_utime + after.ru_stime) - (before[2].ru_utime + before[2].ru_stime)
                if mode == "direct":
                    cost.pop("api")  # idle on this path
                if run.returncode != 0:
                    print(f"{rate:>6} {mode:>6} load generator failed: {run.stderr[-500:]}")
                    continue
                got = json.loads(run.stdout.strip().splitlines()[-1])
                lat = [1000 * x for x in got["latencies"]]
                print(f"{rate:>6} {mode:>6} {len(events):>8,} {len(lat):>8,} {len(events) / got['sent_s']:>8,.0f} "
                      f"{percentile(lat, 50):>8.0f} {percentile(lat, 95):>8.0f} {percentile(lat, 99):>8.0f} "
                      f"{max(lat, default=float('nan')):>8.0f}  {got['statuses']}", flush=True)
                print(f"{'':>15} CPU us per scan: " + ", ".join(f"{name} {1e6 * sec / len(events):,.0f}"
                                                              for name, sec in cost.items()), flush=True)
    finally:
        for pr in reversed(procs):
            pr.stop()
        broker.stop()
        delete_prefix(client, prefix)
        client.close()
        if os.environ.get("BENCH_API_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
