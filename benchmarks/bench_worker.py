"""Scans per second through ``scanstream worker`` (one, or a group) on real services, and publish -> outcome latency.

One run starts everything it needs and removes it afterwards:

- a Tansu broker (``streams.broker.TansuBroker``, Kafka protocol, in memory) on a free port,
  with uniquely named topics of ``--partitions`` partitions (default 4);
- the Redis at ``--redis-url`` (default ``$SCANSTREAM_REDIS_URL`` or
  redis://127.0.0.1:6379/0), used under a fresh random key prefix whose keys are deleted at
  the end (nothing else is touched);
- the synthetic world of ``scanstream demo`` (``streams.synthetic``) written as a registry to
  a temporary folder, and a configuration made from ``--config`` (default
  ``config/local.toml``: its tenants, keys, campaign, diversion settings) with the registry,
  ``state.backend = "redis"`` under that prefix, chdb in the temporary folder, webhooks off,
  the topics, ``kafka.partitions`` (``--partitions``) and ``kafka.session_timeout_s = 4``;
  ``kafka.take`` (unless ``--take``) and ``kafka.within_ms`` keep their defaults;
- ``--workers`` ``scanstream worker`` subprocesses (default 1; as tests/test_worker.py starts
  one) in one consumer group, each with a chdb folder and a metrics port of its own, then,
  for the baseline, ``benchmarks/naive_agent.py`` as a subprocess on topics, a consumer
  group and a chdb folder of its own.

Every scan's outcome comes out on the results topic; a consumer in this process, with
``assign()`` (no group, so no join delay) and a short fetch wait, counts the scans they carry
(envelopes opened) and notes when each count was reached.  That count is the completion
signal of every phase.  Each phase uses scan streams of its own (``generate_scans`` with its
own seed; scan_ids prefixed per phase, so no scan is a redelivery of an earlier phase's;
events the publisher would refuse, the stream's junk lines, are left out).  Later phases
reuse codes of earlier ones (the demo world has about 230 000 fresh codes in its shipped
ranges), so more of their scans are ``repeat``.

Phases, in this order:

0. Warm-up: ``--warmup`` scans through ``ScanPublisher.publish_many``; the time from start to
   their last outcome includes the worker's start (imports, chdb, registry, group join).
1. Envelopes (the goal): ``--scans`` scans (default 200 000).  ``ScanPublisher.publish_many``
   (linger ``kafka.linger_ms``, chunks of 10 000) first publishes them to a staging topic
   that nobody consumes, timed alone: that is the publisher's own rate, one thread of this
   process.  The worker then gets the same scans as the messages a publisher sends, built
   with the publisher's own functions (``encode_events``, ``code_keys``, ``partition_for``)
   into envelopes of ``--envelope-scans`` scans per partition (default 125: one publisher
   sealing every 5 ms at 100 000 scans/s over 4 partitions), sent to the worker's topic
   as fast as kafka-python goes; the clock runs from the first send until the last scan's
   outcome arrived.  This isolates the worker: with the live publisher on this machine the
   figure would be the publisher's (reported next to it), and both would share the CPUs.
   ``--envelope-scans 0`` replays the staging topic instead: the envelopes as
   ``publish_many`` sealed them at full speed (thousands of scans each).  Envelope size
   matters: the worker takes ``kafka.take`` messages per batch, whatever they carry.
2. Single-scan messages: ``--single-scans`` scans (default 10 000) through
   ``ScanPublisher.publish_single`` (one ``application/json`` message per scan), staged and
   replayed the same way.
3. Latency: ``ScanPublisher.publish`` paced at ``--latency-rate`` scans/s (default 10 000)
   for ``--latency-seconds`` (default 10) straight to the worker's topic; every
   ``--sample-every``-th scan (default 20) is awaited with ``await_result`` by a pool of
   ``--waiters`` threads (default 256), and its latency is the time from just before
   ``publish`` to the moment ``await_result`` returned.  A sample whose waiter picked it
   up late (all threads busy) would overstate its latency; how many did is reported.
4. Naive agent: the worker is stopped, ``naive_agent.py`` started; ``--naive-scans`` scans
   (default 5 000) through ``publish_single``, after a small warm-up, timed from the first
   publish until the last outcome or ``--naive-seconds`` (default 60), whichever comes
   first (the rate is then scans done / time).  Then the same agent with ``--no-insert``
   (no ClickHouse insert per scan), bounded at 20 s, for information: what the per-event
   insert costs the naive design.

Several workers (``--workers N``): the warm-up waits until each of them logged its first
assignment, so the group holds them all before any scan and no join rebalances it during a
phase.  The figure that matters is then scans per CPU-second of the workers: the phase's scans
over the CPU seconds of all the workers' processes.  On this shared 2-core machine the wall
rate says how busy the machine was; the CPU figure says what the work cost, so N workers that
scale keep it where one worker has it.  The report prints it with each worker's CPU seconds,
the wall rate and the Redis server's CPU µs per scan (JSON: ``group``).  A 5 s idle window
before the envelope phase measures what the workers spend with nothing to do (fetch loops,
heartbeats, timers): a cost per second, which a phase slowed down by other processes pays
longer, so the figure is also given net of it.  ``--kill-after S``
kills the group's last worker (SIGKILL) S seconds into the envelope phase; the counter then
counts each scan_id once (the survivors answer the killed worker's uncommitted batches again)
and the report gives the group's rate before the kill, the stall (session timeout, then the
rebalance) and the survivors' rate after it (``worker_bench_phases.recovery_figures``).  The
later phases run on the survivors.  Under a backlog a worker takes ``kafka.take`` messages
(1 000 by default: 125 000 scans in envelopes) and answers them together, so such a run needs
a ``--take`` that makes batches much shorter than the phase.

CPU seconds of the worker (or agent), the broker, the Redis server (``INFO cpu``: every
client's work, other users' too) and this process are taken around each phase, so a figure
can be read against the machine's cores: everything here shares them.  So is the time the
worker's threads spent runnable but waiting for a CPU (``/proc/PID/task/*/schedstat``), and
the load average at the start and the end: on a busy machine the figures are pessimistic.

Per-scan cost (``worker_bench_costs.py``), for the envelope phase and the naive agent's phase,
printed side by side with their ratio (never judged):

- process CPU, µs per scan: user + system of the worker (or agent), every thread, from /proc;
- Redis server CPU, µs per scan (``INFO cpu``) and commands per scan (``INFO commandstats``:
  calls and usec per command, the top ones listed; a command a script runs counts as one of
  its own and inside its script's usec).  Both are server-wide: other users' work is in them,
  and is estimated, with the server's own housekeeping, from idle windows of 2 s just before
  and after the phase (printed beside them); the naive agent also counts its own commands;
- new Redis keys, entries (hash fields, list elements, set and sorted-set members; a string is
  one) and bytes per scan, by key family: the keys under the phase's prefix walked before and
  after the phase, outside its clock (SCAN + TYPE + HLEN / LLEN / SCARD / ZCARD, and ``MEMORY
  USAGE key SAMPLES 0`` summed: the run's keys only); the server's used_memory difference beside;
- ClickHouse (chdb) insert cost, wall µs per row inserted into scan_events, awards and alerts:
  the worker's ``store`` step seconds from its ``/metrics`` (it is started with
  ``--metrics-port``), the naive agent's one-row inserts timed by itself (``--stats-file``);
- broker bytes per scan: key + value + headers of the records of the scans topic (the messages
  the benchmark sends) and of each output topic (read back by the benchmark's consumers).

Goals (printed PASS / MISS, never asserted): >= 100 000 scans/s per worker with
envelopes and >= 10x the naive agent; p99 publish -> outcome < 300 ms at 10 000 scans/s.
The fourth goal of the issue, Redis dedup memory <= 1.1 bits per issued code, is measured by
``benchmarks/bench_state_memory.py``, not here.

Run: ``python benchmarks/bench_worker.py [--scans N] [--envelope-scans N] [--single-scans N]
[--naive-scans N] [--naive-seconds S] [--latency-rate R] [--latency-seconds S] [--skip-naive]
[--workers N] [--partitions P] [--take N] [--kill-after S] [--keep] [--json FILE]`` (about 3 minutes with the
defaults on an idle 2-CPU machine).

The code: this file is the command line and the order of the run (inputs, services,
phases, cleanup); ``worker_bench_load.py`` generates the scans and the publisher's messages,
``worker_bench_services.py`` holds the configuration, subprocesses, CPU accounting and Redis
cleanup, ``worker_bench_results.py`` counts the outcomes, ``worker_bench_phases.py`` times the
phases, ``worker_bench_costs.py`` takes the per-scan cost readings and
``worker_bench_report.py`` prints the figures and goals and writes the JSON.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this checkout first, so that its in-place build of ext/ is the one measured
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))
sys.path.insert(2, str(ROOT / "tests"))  # config_writer: the worker configurations tests use too

from machine import machine  # noqa: E402
from worker_bench_costs import CostProbe, GroupStore, TopicTally  # noqa: E402
from worker_bench_load import make_events  # noqa: E402
from worker_bench_phases import Ctx, KillPlan, latency_phase, naive_phase, staged_phase  # noqa: E402
from worker_bench_report import (GOAL_RATE, Figures, code_version, fmt, group_figures, print_machine,  # noqa: E402
                                 report)
from worker_bench_results import ResultCounter  # noqa: E402
from worker_bench_services import (PARTITIONS, GroupCpuMeter, Proc, delete_prefix, free_port,  # noqa: E402
                                    topic_names, wait_ready, write_config)

REDIS_URL_ENV = "SCANSTREAM_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Scans per envelope: what one publisher sealing every 5 ms at 100 000 scans/s over 4 partitions sends.
DEFAULT_ENVELOPE_SCANS = 125
#: The bound on the naive agent without insert.
BARE_BOUND_S = 20.0
#: The worker's output topics other than the results, tallied for their bytes per scan.
TALLIED_OUTPUTS = ("awards", "alerts", "dlq")
#: How long the workers get to start and form their group, and then to answer the warm-up.
STARTUP_BOUND_S = 180.0
#: The idle window before the envelope phase in which the workers' CPU use with nothing to do
#: (fetch loops, heartbeats, timers) is measured: a cost per second, not per scan.
IDLE_WINDOW_S = 5.0
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scans", type=int, default=200_000, help="scans of the envelope phase (default 200000)")
    p.add_argument("--envelope-scans", type=int, default=DEFAULT_ENVELOPE_SCANS,
                   help=f"scans per envelope sent to the worker (default {DEFAULT_ENVELOPE_SCANS}: one publisher at "
                        f"{GOAL_RATE:,} scans/s, 5 ms linger, {PARTITIONS} partitions); 0: the envelopes "
                        f"publish_many sealed at full speed")
    p.add_argument("--single-scans", type=int, default=10_000,
                   help="scans of the single-scan-per-message phase (default 10000)")
    p.add_argument("--naive-scans", type=int, default=5_000, help="scans through the naive agent (default 5000)")
    p.add_argument("--naive-seconds", type=float, default=60.0,
                   help="bound on the naive agent's timed phase, seconds (default 60)")
    p.add_argument("--latency-rate", type=float, default=10_000, help="paced publish rate, scans/s (default 10000)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="length of the paced phase (default 10)")
    p.add_argument("--sample-every", type=int, default=20, help="await every N-th paced scan (default 20)")
    p.add_argument("--waiters", type=int, default=256, help="threads awaiting sampled outcomes (default 256)")
    p.add_argument("--warmup", type=int, default=2_000, help="scans before the timed phases (default 2000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the first stream; later phases add 1, 2, ...")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "local.toml",
                   help="configuration to start from (default config/local.toml)")
    p.add_argument("--redis-url", default=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL),
                   help=f"Redis (default ${REDIS_URL_ENV} or {DEFAULT_REDIS_URL})")
    p.add_argument("--skip-naive", action="store_true", help="do not run the naive agent")
    p.add_argument("--workers", type=int, default=1,
                   help="scanstream worker processes in one consumer group, each with its own chdb (default 1)")
    p.add_argument("--partitions", type=int, default=PARTITIONS,
                   help=f"partitions of every topic, at least --workers (default {PARTITIONS})")
    p.add_argument("--take", type=int, metavar="N",
                   help="kafka.take of the workers: messages per batch (default: the configuration's). Under a "
                        "backlog a worker takes that many at once, and answers them together: a --kill-after run "
                        "needs batches much shorter than the phase to show the rates before and after")
    p.add_argument("--kill-after", type=float, metavar="S",
                   help="kill one worker (SIGKILL) S seconds into the envelope phase and report the survivors' rate "
                        "after the rebalance against the group's before (needs --workers 2 or more)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs, chdb)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    for name in ("scans", "single_scans", "naive_scans", "warmup", "sample_every", "waiters", "workers",
                 "partitions"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.take is not None and args.take < 1:
        p.error("--take must be at least 1")
    if args.workers > args.partitions:
        p.error("--workers above --partitions: a worker without a partition would idle in the group")
    if args.kill_after is not None and (args.kill_after <= 0 or args.workers < 2):
        p.error("--kill-after needs a number of seconds above 0 and --workers 2 or more (one must survive)")
    if args.envelope_scans < 0:
        p.error("--envelope-scans must be 0 or more")
    if args.latency_rate <= 0 or args.latency_seconds <= 0 or args.naive_seconds <= 0:
        p.error("--latency-rate, --latency-seconds and --naive-seconds must be above 0")
    return args



def main(argv=None) -> int:
    args = parse_args(argv)
    if SCANSTREAM is None:
        print("error: the scanstream console script is not installed (pip install -e .)", file=sys.stderr)
        return 2
    import redis

    from scanstream.engine.config import load
    from scanstream.streams.broker import TansuBroker
    from scanstream.streams.publisher import ScanPublisher
    from scanstream.streams.synthetic import build_world

    info, version = machine("numpy", "orjson", "faust", "aiokafka", "kafka", "redis", "chdb"), code_version(ROOT)
    print_machine(info, version)
    base_config = load(args.config)
    client = redis.Redis.from_url(args.redis_url, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"error: Redis does not answer on {args.redis_url}: {exc}", file=sys.stderr)
        return 2
    tag = uuid.uuid4().hex[:8]
    prefix = f"scanstream-bench:{tag}:"
    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    broker = TansuBroker(log_path=tmp / "tansu.log")
    ctx = Ctx(tmp, broker, topic_names(tag), args.redis_url, prefix, client, base_config.kafka.linger_ms,
              partitions=args.partitions)
    naive_names, bare_names = topic_names(f"naive-{tag}"), topic_names(f"naive-bare-{tag}")
    tally: TopicTally | None = None
    t_run = time.perf_counter()
    try:
        # ------------------------------------------------------------ inputs
        t = time.perf_counter()
        world = build_world(7, base_config.keys.get(7, 1), 1)
        world.write_registry(tmp / "registry")
        seeds = iter(range(args.seed, args.seed + 10))
        latency_n = int(args.latency_rate * args.latency_seconds)
        warm = make_events(world, args.warmup, next(seeds), "w")
        env_events = make_events(world, args.scans, next(seeds), "e")
        single_events = make_events(world, args.single_scans, next(seeds), "s")
        lat_events = make_events(world, latency_n, next(seeds), "l")
        naive_events = make_events(world, args.naive_scans, next(seeds), "n") if not args.skip_naive else []
        naive_warm = make_events(world, 50, next(seeds), "nw") if not args.skip_naive else []
        bare_events = make_events(world, args.naive_scans, next(seeds), "b") if not args.skip_naive else []
        bare_warm = make_events(world, 50, next(seeds), "bw") if not args.skip_naive else []
        gen_s = time.perf_counter() - t

        broker.start()
        all_topics = {n: args.partitions for k, n in ctx.names.items() if k != "group"}
        for names in (naive_names, bare_names):
            all_topics.update({n: args.partitions for k, n in names.items() if k != "group"})
        broker.create_topics(all_topics)
        # one configuration per worker: the same group and topics, a chdb folder of its own (chdb
        # opens a folder in one process only), as workers on separate machines would have
        members = ["worker"] if args.workers == 1 else [f"worker-{i + 1}" for i in range(args.workers)]
        take = {"take": args.take} if args.take is not None else {}
        cfgs = [write_config(args.config, tmp / f"{name}.toml", tmp / "registry", tmp / f"chdb-{name}",
                             broker.bootstrap, ctx.names, args.redis_url, prefix, partitions=args.partitions, **take)
                for name in members]
        cfg_naive = write_config(args.config, tmp / "naive.toml", tmp / "registry", tmp / "chdb-naive",
                                 broker.bootstrap, naive_names, args.redis_url, prefix, partitions=args.partitions)
        cfg_bare = write_config(args.config, tmp / "naive-bare.toml", tmp / "registry", tmp / "chdb-naive",
                                broker.bootstrap, bare_names, args.redis_url, prefix, partitions=args.partitions)
        k = load(cfgs[0]).kafka
        print(f"setup:   Tansu {broker.bootstrap} (pid {broker.pid}), Redis {args.redis_url} under a fresh prefix, "
              f"chdb in a temp folder; topics of {args.partitions} partitions; {len(members)} worker"
              f"{'s in one group' if len(members) > 1 else ''}: take {k.take} messages or "
              f"{k.within_ms} ms, session timeout {k.session_timeout_s:g} s; publisher linger {k.linger_ms} ms")
        print(f"input:   synthetic world of `scanstream demo` ({args.config.name}); streams generated in "
              f"{gen_s:.1f} s: "
              f"warm-up {len(warm):,}, envelopes {len(env_events):,}, single {len(single_events):,}, "
              f"latency {len(lat_events):,}, naive {len(naive_events):,} scans")
        print(flush=True)

        # ------------------------------------------------------------ worker
        # with a kill, count each scan once: the survivors answer the killed worker's uncommitted batches again
        ctx.counter = ResultCounter(broker.bootstrap, ctx.names["results"], args.partitions,
                                    distinct=args.kill_after is not None)
        ctx.counter.start()
        tally = TopicTally(broker.bootstrap, {role: ctx.names[role] for role in TALLIED_OUTPUTS}, args.partitions)
        tally.start()
        metrics_urls = []
        t = time.perf_counter()
        for name, cfg in zip(members, cfgs):
            metrics_port = free_port()
            metrics_urls.append(f"http://127.0.0.1:{metrics_port}/metrics")
            ctx.group.append(Proc(name, [SCANSTREAM, "--config", str(cfg), "worker", "--loglevel", "info",
                                         "--metrics-port", str(metrics_port)], tmp / f"{name}.log", tmp))
            ctx.procs.append(ctx.group[-1])
        ctx.worker = ctx.group[0]
        # every worker in the group before any scan: a late joiner would rebalance it mid-phase
        group_s = wait_ready(ctx.group, STARTUP_BOUND_S)
        with ScanPublisher(broker.bootstrap, topic=ctx.names["scans"], linger_ms=ctx.linger_ms) as pub:
            pub.publish_many(warm)
            pub.flush(30)
        if ctx.counter.wait_for(ctx.expected(warm), STARTUP_BOUND_S, ctx.alive, stall_s=STARTUP_BOUND_S) is None:
            raise RuntimeError(f"no outcome for the warm-up scans within {STARTUP_BOUND_S:.0f} s; "
                               f"{ctx.trouble()}")
        startup_s = time.perf_counter() - t
        print(f"[0] {'worker' if len(members) == 1 else f'{len(members)} workers'} started and warmed up: "
              f"{len(warm):,} scans answered {startup_s:.1f} s after the start"
              + (f" (the group formed in {group_s:.1f} s)" if len(members) > 1 else ""), flush=True)
        ctx.cpu = GroupCpuMeter([proc.pid for proc in ctx.group], broker.pid, client)
        idle_start = ctx.cpu.read()
        time.sleep(IDLE_WINDOW_S)
        idle_cpu_s = GroupCpuMeter.spent(idle_start, ctx.cpu.read()).get("agent")
        store = GroupStore(metrics_urls)
        kill = None
        if args.kill_after is not None:
            victim, victim_url = ctx.group[-1], metrics_urls[-1]

            def before_kill() -> None:  # the last readings of a process about to vanish
                ctx.cpu.freeze(victim.pid)
                store.refresh(victim_url)

            kill = KillPlan(args.kill_after, victim, before_kill)

        costs = {}
        probe = CostProbe("worker, envelopes", client, prefix,
                          outputs=lambda: {"results": ctx.counter.topic_totals(), **tally.totals()},
                          settle=tally.settle, store=store)
        envelopes = staged_phase(ctx, env_events, False, args.envelope_scans, 300, "envelope phase", probe, kill)
        costs["envelopes"] = probe.result
        group = group_figures(envelopes, len(members), args.partitions, probe.result,
                              idle_cpu_s / IDLE_WINDOW_S if idle_cpu_s is not None else None)
        print(f"[1] envelopes: {envelopes.done:,} of {envelopes.scans:,} scans in {envelopes.messages:,} messages "
              f"({envelopes.scans / envelopes.messages:,.0f} scans each) in {fmt(envelopes.seconds, '.2f')} s; "
              f"publisher alone {envelopes.publisher_s:.2f} s", flush=True)
        single = lat = None
        if envelopes.complete:
            single = staged_phase(ctx, single_events, True, 0, 300, "single-scan phase")
            print(f"[2] single-scan messages: {single.done:,} of {single.scans:,} scans in "
                  f"{fmt(single.seconds, '.2f')} s; publisher alone {single.publisher_s:.2f} s", flush=True)
        if single is not None and single.complete:
            lat = latency_phase(ctx, lat_events, args.latency_rate, args.sample_every, args.waiters)
            print(f"[3] latency: {lat.scans:,} scans published in {lat.publish_s:.1f} s, {len(lat.samples_ms):,} "
                  f"outcomes awaited", flush=True)
        else:
            ctx.note("the worker is stuck: later worker phases skipped")
        retries = sum(len(re.findall(r"retrying in", proc.log_path.read_text(errors="replace")))
                      for proc in ctx.group)
        worker_stop_s = max(proc.stop() for proc in ctx.group)

        naive = naive_startup = bare = bare_startup = None
        if not args.skip_naive:
            naive, naive_startup, costs["naive"] = naive_phase(ctx, cfg_naive, naive_names, naive_events, naive_warm,
                                                               args.naive_seconds, "naive agent", costs=True)
            print(f"[4] naive agent: {naive.done:,} of {naive.scans:,} scans in {fmt(naive.seconds, '.1f')} s "
                  f"(started and warmed up in {naive_startup:.1f} s)", flush=True)
            bare, bare_startup, _ = naive_phase(ctx, cfg_bare, bare_names, bare_events, bare_warm,
                                                min(args.naive_seconds, BARE_BOUND_S), "naive agent without insert",
                                                ("--no-insert",))
            print(f"[5] naive agent without the per-event insert: {bare.done:,} of {bare.scans:,} scans in "
                  f"{fmt(bare.seconds, '.1f')} s (started and warmed up in {bare_startup:.1f} s)", flush=True)

        # ------------------------------------------------------------ report
        report(args, Figures(envelopes, single, lat, naive, naive_startup, bare, bare_startup, startup_s,
                             worker_stop_s, retries, {k2: c for k2, c in costs.items() if c is not None},
                             group),
               ctx.notes, k, gen_s, info, version, t_run)
        return 0
    finally:
        t_clean = time.perf_counter()
        cleanup = [*((f"stop {proc.name}", proc.stop) for proc in ctx.procs),
                   *([("results consumer", ctx.counter.stop)] if ctx.counter else []),
                   *([("output tally", tally.stop)] if tally else []), ("broker", broker.stop),
                   ("Redis keys", lambda: delete_prefix(client, prefix)), ("Redis client", client.close)]
        slow = []
        for name, step in cleanup:
            t = time.perf_counter()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"cleanup: {name}: {exc!r}", file=sys.stderr)
            if time.perf_counter() - t > 1:
                slow.append(f"{name} {time.perf_counter() - t:.0f} s")
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"cleanup took {time.perf_counter() - t_clean:.0f} s" + (f" ({', '.join(slow)})" if slow else ""))


if __name__ == "__main__":
    sys.exit(main())
