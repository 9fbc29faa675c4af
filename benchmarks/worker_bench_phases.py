"""The timed phases of ``bench_worker.py`` and what each one measured.

``staged_phase`` (envelopes, single-scan messages: the publisher alone, then the worker on
the same scans), ``latency_phase`` (paced ``publish`` with sampled ``await_result``) and
``naive_phase`` (``naive_agent.py`` started, warmed up and timed) share a ``Ctx`` with the
run's broker, Redis, results counter and worker.  A phase given a ``CostProbe`` (or, for the
naive agent, ``costs=True``) also takes the readings of ``worker_bench_costs`` at the same
instants as its CPU meter, and walks the Redis keys before and after, outside its clock.  Separate from the entry point because this
is the measurement itself: what the clock covers and how an incomplete phase is accounted
for, apart from the setup before it and the report after it.
"""
from __future__ import annotations

import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker_bench_costs import (SETTLE_BOUND_S, SETTLE_QUIET_S, CostProbe, PhaseCost, messages_totals,
                                naive_redis_calls, naive_store)
from worker_bench_load import build_messages, read_back, replay
from worker_bench_results import ResultCounter
from worker_bench_services import PARTITIONS, CpuMeter, Proc

#: How long the latency phase waits for a worker that fell behind.
DRAIN_BOUND_S = 15.0
#: What the naive agent puts after the run's prefix in its key names (``naive_agent.py``).
NAIVE_KEY_PREFIX = "naive:"
#: The survivors' rate after a kill is measured until this share of the phase is answered: at the
#: very end some partitions are drained while others are not, which says nothing about the group.
RECOVERY_TAIL_SHARE = 0.9


# ---------------------------------------------------------------------------- run context


@dataclass
class Ctx:
    """What the phases share: the run's folder, broker, topics, Redis, results counter and worker."""

    tmp: Path
    broker: Any
    names: dict[str, str]
    redis_url: str
    prefix: str
    redis: Any
    linger_ms: int
    counter: ResultCounter | None = None
    worker: Proc | None = None  # the first worker of the group
    cpu: CpuMeter | None = None
    procs: list[Proc] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    partitions: int = PARTITIONS
    group: list[Proc] = field(default_factory=list)  # every worker in the consumer group
    killed: Proc | None = None  # the worker killed on purpose (``--kill-after``)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def alive(self) -> bool:
        """Every worker of the group runs, but the one killed on purpose."""
        return all(proc.alive() for proc in self.group or [self.worker] if proc is not self.killed)

    def trouble(self) -> str:
        """Why a phase stalled: which worker exited, else each worker's last warning."""
        procs = [proc for proc in self.group or [self.worker] if proc is not self.killed]
        gone = [proc.name for proc in procs if not proc.alive()]
        if gone:
            return f"{', '.join(gone)} exited"
        return "; ".join(f"{proc.name}: {worker_trouble(proc)}" for proc in procs)

    def expected(self, events: list[dict]) -> int:
        """The count the results counter reaches once every scan of ``events`` is answered."""
        return len({ev["scan_id"] for ev in events}) if self.counter.distinct else len(events)


# ---------------------------------------------------------------------------- throughput


@dataclass
class Throughput:
    scans: int
    messages: int
    seconds: float | None
    publisher_s: float
    send_s: float | None = None
    cpu: dict = field(default_factory=dict)
    done: int = 0
    publisher_messages: int = 0
    complete: bool = True
    verdicts: dict = field(default_factory=dict)
    recovery: dict = field(default_factory=dict)  # around a worker killed in the phase (``KillPlan``)

    @property
    def rate(self) -> float | None:
        return self.done / self.seconds if self.seconds and self.done else None

    @property
    def publisher_rate(self) -> float:
        return self.scans / self.publisher_s if self.publisher_s else float("inf")

    def as_dict(self) -> dict:
        return {"scans": self.scans, "scans_done": self.done, "complete": self.complete, "messages": self.messages,
                "scans_per_message": self.scans / self.messages if self.messages else None,
                "seconds": self.seconds, "scans_per_s": self.rate,
                "publisher_s": self.publisher_s, "publisher_scans_per_s": self.publisher_rate,
                "publisher_messages": self.publisher_messages, "replay_send_s": self.send_s, "cpu_s": self.cpu,
                "verdicts": self.verdicts, "recovery": self.recovery or None}


@dataclass
class KillPlan:
    """One worker of the group killed with SIGKILL ``after_s`` seconds into a phase.

    ``before_kill`` runs just before the signal (the CPU meter and the metrics readings of a
    process that is about to vanish); ``at`` is the perf_counter time of the kill once done."""

    after_s: float
    victim: Proc
    before_kill: Callable[[], None] = lambda: None
    at: float | None = None

    def arm(self, ctx: Ctx) -> threading.Timer:
        def fire() -> None:
            self.before_kill()
            ctx.killed = self.victim  # first, so that no wait takes the kill for a crash
            self.victim.kill9()
            self.at = time.perf_counter()
            print(f"  killed {self.victim.name} (SIGKILL) {self.after_s:g} s into the phase", flush=True)

        timer = threading.Timer(self.after_s, fire)
        timer.daemon = True
        timer.start()
        return timer


def _count_at(history: list[tuple[float, int]], t: float, base: int) -> int:
    """The results counter's count at ``t`` (its last reading by then), ``base`` before any."""
    return max((n for at, n in history if at <= t), default=base)


def recovery_figures(history: list[tuple[float, int]], base: int, target: int, t0: float, t_kill: float,
                     t_end: float) -> dict:
    """The group's rate before a kill and the survivors' after it, from the counter's history.

    before: scans/s from the phase's start until the kill (its first answers come in bursts, so a
    clock started at the first one would overstate it); stall: the longest time without a new
    answer after the kill (the killed worker's session timing out, then the rebalance: no member
    works while the partitions move); after: scans/s from the end of that stall until
    ``RECOVERY_TAIL_SHARE`` of the phase was answered."""
    mine = [(at, n) for at, n in history if t0 <= at <= t_end and n > base]
    if not mine or t_kill <= t0:
        return {}
    at_kill = _count_at(history, t_kill, base)
    before = (at_kill - base) / (t_kill - t0)
    last_t, last_n, stall = t_kill, at_kill, (t_kill, t_kill)
    for at, n in mine:
        if at > t_kill and n > last_n:
            if at - last_t > stall[1] - stall[0]:
                stall = (last_t, at)
            last_t, last_n = at, n
    tail = base + RECOVERY_TAIL_SHARE * (target - base)
    t_tail = next((at for at, n in mine if n >= tail), t_end)
    if t_tail <= stall[1]:  # the backlog was nearly done when the survivors resumed: use what is left
        t_tail = t_end
    after_n = _count_at(history, t_tail, base) - _count_at(history, stall[1], base)
    after = after_n / (t_tail - stall[1]) if t_tail > stall[1] else None
    return {"kill_after_s": t_kill - t0, "answered_at_kill": at_kill - base, "before_scans_per_s": before,
            "stall_s": stall[1] - stall[0], "stall_from_kill_s": stall[0] - t_kill,
            "after_scans_per_s": after, "after_window_s": t_tail - stall[1],
            "after_vs_before": after / before if after is not None and before else None}


def staged_phase(ctx: Ctx, events: list[dict], single: bool, per_envelope: int, timeout_s: float,
                 label: str, probe: CostProbe | None = None, kill: KillPlan | None = None) -> Throughput:
    """Time the publisher alone (to a staging topic), then the worker on the same scans (replayed).

    With a ``probe``, its readings are taken around the worker's part and ``probe.result`` is
    the phase's cost (the scans topic's bytes are those of the messages replayed).  With a
    ``kill``, one worker of the group is killed that many seconds after the replay began, and
    the phase's ``recovery`` holds the rates before and after (``recovery_figures``)."""
    from scanstream.streams.publisher import ScanPublisher

    staging = f"bench-staging-{uuid.uuid4().hex[:8]}"
    ctx.broker.create_topics({staging: ctx.partitions})
    n = len(events)
    with ScanPublisher(ctx.broker.bootstrap, topic=staging, linger_ms=ctx.linger_ms) as pub:
        t = time.perf_counter()
        if single:
            for ev in events:
                pub.publish_single(ev)
        else:
            for lo in range(0, n, 10_000):
                pub.publish_many(events[lo:lo + 10_000])
        pub.flush()
        publisher_s = time.perf_counter() - t
        sealed = pub.stats()["singles" if single else "envelopes"]
    if single or per_envelope > 0:
        messages = build_messages(events, ctx.partitions, None if single else per_envelope)
    else:  # the publisher's own envelopes, as it sealed them at full speed
        messages = read_back(ctx.broker.bootstrap, staging, ctx.partitions, n)
    try:  # free the broker's memory; Tansu may not support it
        ctx.broker.admin().delete_topics([staging])
    except Exception:  # noqa: BLE001
        pass
    expected = ctx.expected(events)
    base = ctx.counter.count
    target = base + expected
    mix = ctx.counter.verdict_snapshot()
    if probe is not None:
        probe.begin()  # untimed: a walk of the keys and an idle window of the Redis server
    before = ctx.cpu.read()
    timer = kill.arm(ctx) if kill is not None else None
    t0, send_s = replay(ctx.broker.bootstrap, ctx.names["scans"], messages)
    t_end = ctx.counter.wait_for(target, timeout_s, ctx.alive)
    if timer is not None:
        timer.cancel()  # a phase done before its kill kills nobody
        timer.join()
    cpu = CpuMeter.spent(before, ctx.cpu.read())
    if probe is not None:
        probe.end()
    done = expected if t_end is not None else expected - (target - ctx.counter.count)
    seconds = (t_end if t_end is not None else time.perf_counter()) - t0
    if t_end is None:
        ctx.note(f"{label}: only {done:,} of {expected:,} outcomes after {seconds:.0f} s; {ctx.trouble()}")
    recovery = {}
    if kill is not None and kill.at is not None:
        with ctx.counter.cond:
            history = list(ctx.counter.history)
        recovery = recovery_figures(history, base, target, t0, kill.at, t0 + seconds)
    elif kill is not None:
        ctx.note(f"{label}: done in {seconds:.1f} s, before the kill planned at {kill.after_s:g} s")
    if probe is not None:
        # a worker cut short goes on answering: the walk's keys go with the scans answered by then
        walked = expected if t_end is not None else expected - (target - ctx.counter.count)
        probe.finish(done, walked, seconds, cpu.get("agent"), messages_totals(messages), t_end is not None)
    return Throughput(expected, len(messages), seconds, publisher_s, send_s, cpu, done, sealed, t_end is not None,
                      dict(ctx.counter.verdict_snapshot() - mix), recovery)


def worker_trouble(proc: Proc) -> str:
    """The worker's last warning or error, for a phase that stalled."""
    lines = [line for line in proc.log_tail(400).splitlines() if "WARNING" in line or "ERROR" in line]
    return f"its last warning: {lines[-1].strip()[:400]}" if lines else "no warning in its log"


# ---------------------------------------------------------------------------- latency


@dataclass
class Latency:
    target_rate: float
    scans: int
    publish_s: float
    samples_ms: list[float]
    timeouts: int
    late_pickups: int
    cpu: dict = field(default_factory=dict)
    drain_s: float | None = None
    errors: int = 0

    @property
    def achieved_rate(self) -> float:
        return self.scans / self.publish_s if self.publish_s else 0.0

    def pct(self, q: float) -> float | None:
        return float(np.percentile(self.samples_ms, q)) if self.samples_ms else None

    def as_dict(self) -> dict:
        return {"target_scans_per_s": self.target_rate, "achieved_scans_per_s": self.achieved_rate,
                "scans": self.scans, "publish_s": self.publish_s, "samples": len(self.samples_ms),
                "timeouts": self.timeouts, "errors": self.errors, "late_pickups": self.late_pickups,
                "p50_ms": self.pct(50), "p95_ms": self.pct(95), "p99_ms": self.pct(99),
                "max_ms": max(self.samples_ms) if self.samples_ms else None,
                "drain_after_publish_s": self.drain_s, "cpu_s": self.cpu}


def latency_phase(ctx: Ctx, events: list[dict], rate: float, every: int, waiters: int,
                  await_timeout_s: float = 5.0) -> Latency:
    from scanstream.streams.publisher import ScanPublisher

    pub = ScanPublisher(ctx.broker.bootstrap, topic=ctx.names["scans"], linger_ms=ctx.linger_ms,
                        redis_url=ctx.redis_url, prefix=ctx.prefix)
    pub.watcher()  # connect and subscribe before the clock starts
    q: queue.SimpleQueue = queue.SimpleQueue()
    samples: list[float] = []
    late = timeouts = 0
    errors: list[str] = []
    lock = threading.Lock()

    def waiter() -> None:
        nonlocal late, timeouts
        while True:
            item = q.get()
            if item is None:
                return
            scan_id, t_pub = item
            lag = time.perf_counter() - t_pub
            try:
                outcome = pub.await_result(scan_id, timeout=await_timeout_s)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the phase goes on
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            dt = time.perf_counter() - t_pub
            with lock:
                if outcome is None:
                    timeouts += 1
                else:
                    samples.append(dt * 1000)
                    if lag > 0.005:
                        late += 1

    threads = [threading.Thread(target=waiter, name=f"await-{i}", daemon=True) for i in range(waiters)]
    for th in threads:
        th.start()
    n = len(events)
    target = ctx.counter.count + ctx.expected(events)
    before = ctx.cpu.read()
    try:
        t0 = time.perf_counter()
        i = 0
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            while i < due:
                ev = events[i]
                t = time.perf_counter()
                pub.publish(ev)
                if i % every == 0:
                    q.put((ev["scan_id"], t))
                i += 1
            time.sleep(0.0005)
        publish_s = time.perf_counter() - t0
        pub.flush(30)
        # a worker that fell behind need not catch up: it is stopped after this phase
        t_end = ctx.counter.wait_for(target, DRAIN_BOUND_S, ctx.alive, stall_s=DRAIN_BOUND_S)
        drain = t_end - (t0 + publish_s) if t_end is not None else None
        if t_end is None:
            ctx.note(f"latency phase: {target - ctx.counter.count:,} outcomes still missing {DRAIN_BOUND_S:.0f} s "
                     f"after the last publish (the worker fell behind the paced rate)")
        for _ in threads:
            q.put(None)
        for th in threads:
            th.join(await_timeout_s + 5)
    finally:
        pub.close(10)
    cpu = CpuMeter.spent(before, ctx.cpu.read())
    if errors:
        ctx.note(f"latency phase: {len(errors)} await_result calls failed, e.g. {errors[0]}")
    return Latency(rate, n, publish_s, samples, timeouts, late, cpu, drain, len(errors))


# ---------------------------------------------------------------------------- naive agent


def naive_phase(ctx: Ctx, config: Path, names: dict[str, str], events: list[dict], warmup: list[dict],
                limit_s: float, label: str, extra: tuple[str, ...] = (),
                costs: bool = False) -> tuple[Throughput, float, PhaseCost | None]:
    """Start naive_agent.py, warm it up, then time ``events`` through it (single-scan messages).

    With ``costs``, the readings of ``worker_bench_costs`` are taken around the timed part (the
    agent's keys under the run's prefix + ``NAIVE_KEY_PREFIX``, its inserts from its stats
    file); a phase cut short by its bound stops the agent before the second walk of the keys."""
    from scanstream.streams.publisher import ScanPublisher

    stem = re.sub(r"\W+", "-", label)
    stats_path = ctx.tmp / f"{stem}.stats.json"
    agent = Proc(label, [sys.executable, str(Path(__file__).with_name("naive_agent.py")), "--config", str(config),
                         "--loglevel", "info", *extra, *(("--stats-file", str(stats_path)) if costs else ())],
                 ctx.tmp / f"{stem}.log", ctx.tmp)
    ctx.procs.append(agent)
    counter = ResultCounter(ctx.broker.bootstrap, names["results"], ctx.partitions)
    counter.start()
    try:
        with ScanPublisher(ctx.broker.bootstrap, topic=names["scans"], linger_ms=ctx.linger_ms) as pub:
            t = time.perf_counter()
            for ev in warmup:
                pub.publish_single(ev)
            pub.flush(30)
            if counter.wait_for(len(warmup), 120, agent.alive, stall_s=120) is None:
                raise RuntimeError(f"{label}: no outcome for its warm-up scans within 120 s; its log ends with:\n"
                                   f"{agent.log_tail()}")
            startup = time.perf_counter() - t
            meter = CpuMeter(agent.pid, ctx.broker.pid, ctx.redis)
            probe = None
            if costs:
                probe = CostProbe(label, ctx.redis, ctx.prefix + NAIVE_KEY_PREFIX,
                                  outputs=lambda: {"results": counter.topic_totals()},
                                  settle=lambda: counter.settle(SETTLE_QUIET_S, SETTLE_BOUND_S),
                                  store=lambda: naive_store(stats_path),
                                  own_calls=lambda: naive_redis_calls(stats_path))
                probe.begin()  # untimed: a walk of the keys and an idle window of the Redis server
            base = counter.count
            mix = counter.verdict_snapshot()
            before = meter.read()
            t0 = time.perf_counter()
            for ev in events:
                pub.publish_single(ev)
            pub.flush(30)
            publisher_s = time.perf_counter() - t0
        target = len(warmup) + len(events)
        t_end = counter.wait_for(target, max(limit_s - (time.perf_counter() - t0), 0.1), agent.alive,
                                 stall_s=limit_s)
        cpu = CpuMeter.spent(before, meter.read())
        if probe is not None:
            probe.end()
        done = len(events) if t_end is not None else counter.count - len(warmup)
        seconds = (t_end if t_end is not None else time.perf_counter()) - t0
        if t_end is None:
            ctx.note(f"{label}: {done:,} of {len(events):,} scans within the {limit_s:.0f} s bound; "
                     f"its rate is scans done / {seconds:.1f} s")
        cost = None
        if probe is not None:
            if t_end is None:  # cut short: no more keys once it stopped and its last outcomes are in
                agent.stop()
                counter.settle(SETTLE_QUIET_S, SETTLE_BOUND_S)
            # the scans topic: the messages of the scans it answered (all of them sent, same sizes)
            sent = build_messages(events[:max(done, 0)], ctx.partitions, None)
            cost = probe.finish(done, counter.count - base, seconds, cpu.get("agent"), messages_totals(sent),
                                t_end is not None)
        return Throughput(len(events), len(events), seconds, publisher_s, None, cpu, done, len(events),
                          t_end is not None, dict(counter.verdict_snapshot() - mix)), startup, cost
    finally:
        counter.stop()
        agent.stop()
