"""The report of ``bench_worker.py``: what ran where, the figures of the phases, the per-scan
cost of the worker beside the naive agent's (``worker_bench_costs``), the goals, the JSON.

Everything here formats what the phases measured; nothing starts a service or reads a
clock except the run's total time.  Separate so that the entry point reads as the order of
the run, and so that the goals (``GOAL_*``, printed PASS / MISS, never asserted) sit next to
the lines that judge them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker_bench_costs import BACKGROUND_WINDOW_S, US_PER_S, PhaseCost
from worker_bench_phases import Latency, Throughput
from worker_bench_services import PARTITIONS

GOAL_RATE = 100_000
GOAL_RATIO = 10.0
GOAL_P99_MS = 300.0
#: Redis commands listed by their server µs per scan, and the width of the cost table's columns.
TOP_COMMANDS = 6
COST_LABEL_W, COST_VALUE_W, COST_RATIO_W = 62, 22, 14
#: How the output topics are named in the cost table.
OUTPUT_LABELS = {"results": "scan-results", "awards": "awards", "alerts": "alerts", "dlq": "dead letters"}


def code_version(root: Path) -> dict[str, Any]:
    """Commit and uncommitted changes of the code being measured (as bench_pipeline.py reports it)."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10).stdout
    try:
        changed = [line[3:] for line in git("status", "--porcelain", "--", "engine", "ext", "streams", "sinks",
                                            "config").splitlines() if len(line) > 3]
        return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted": changed}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": []}


def print_machine(info: dict[str, Any], version: dict[str, Any]) -> None:
    """The header of the report: machine, CPUs and load, library versions, commit."""
    load_avg = info["load_average"]
    print(f"machine: {info['platform']}")
    print(f"cpu:     {info['cpu']}, {info['cpu_count']} CPUs ({info['cpus_usable']} usable)"
          + (f", load average {load_avg[0]:.2f}" if load_avg else ""))
    print(f"python:  {info['python_impl']} {info['python']}, faust {info['faust']}, aiokafka {info['aiokafka']}, "
          f"kafka-python {info['kafka']}, redis-py {info['redis']}, chdb {info['chdb']}")
    print(f"engine:  commit {version['commit']}" + (f" + uncommitted changes in {', '.join(version['uncommitted'])}"
                                                     if version["uncommitted"] else ""))


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def cpu_text(cpu: dict, wall: float | None, who: str = "worker") -> str:
    """CPU use over a phase; ``agent`` is the worker or the naive agent (``who``)."""
    if not wall:
        return ""
    parts = [f"{who if k == 'agent' else k} {v / wall:.2f}" for k, v in cpu.items()
             if v is not None and "waiting" not in k]
    waited = cpu.get("agent waiting for a CPU")
    return "CPU cores busy: " + ", ".join(parts) + (
        f"; the {who}'s threads waited {waited:.1f} s in all for a CPU" if waited is not None else "")


@dataclass
class Figures:
    """What the phases of one run measured; the phases a stuck worker or ``--skip-naive`` left out are None."""

    envelopes: Throughput
    single: Throughput | None
    lat: Latency | None
    naive: Throughput | None
    naive_startup: float | None
    bare: Throughput | None
    bare_startup: float | None
    startup_s: float
    worker_stop_s: float
    retries: int
    #: per-scan cost of a phase (``envelopes``, ``naive``), when it was measured
    costs: dict[str, PhaseCost] = field(default_factory=dict)
    #: the envelope phase per worker of the group (``group_figures``)
    group: dict[str, Any] = field(default_factory=dict)


#: Below this, a ratio reads better as a fraction: "1/1,400" rather than "0.000714x".
FRACTION_BELOW = 0.1


def _ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as "2.5x", or "1/1,400" when small; "-" when either is missing or b is 0."""
    if a is None or not b:
        return "-"
    r = a / b
    return f"1/{1 / r:,.0f}" if 0 < r < FRACTION_BELOW else f"{r:.3g}x"


def group_figures(t: Throughput, workers: int, partitions: int, cost: PhaseCost | None,
                  idle_cpu_per_s: float | None = None) -> dict[str, Any]:
    """The envelope phase read per worker: scans per CPU-second of the workers (every scan over
    the CPU seconds of all the group's processes: on a shared 2-core machine wall time says how
    busy the machine was, CPU time what the work cost), each worker's CPU seconds, the wall
    rate and the Redis server's CPU per scan; with a kill, the rates before and after it.

    ``idle_cpu_per_s``: CPU seconds per second the group spends with nothing to do (fetch
    loops, heartbeats, timers).  That cost grows with the phase's wall time, not its scans, so
    a phase slowed down by other processes shows fewer scans per CPU-second; the ``net``
    figure takes it out (an estimate: a busy worker polls less than an idle one)."""
    total = t.cpu.get("agent")
    idle = idle_cpu_per_s * t.seconds if idle_cpu_per_s is not None and t.seconds else None
    net = total - idle if total is not None and idle is not None else None
    each = [t.cpu.get(f"worker {i + 1}") for i in range(workers)] if workers > 1 else [total]
    redis = t.cpu.get("redis server")
    per_scan = cost.per_scan() if cost is not None else {}
    return {"workers": workers, "partitions": partitions, "scans": t.done, "seconds": t.seconds,
            "complete": t.complete, "wall_scans_per_s": t.rate, "worker_cpu_s": each, "worker_cpu_s_total": total,
            "scans_per_worker_cpu_s": t.done / total if total else None,
            "idle_cpu_s_per_s": idle_cpu_per_s, "idle_cpu_s_in_phase": idle,
            "scans_per_worker_cpu_s_net_of_idle": t.done / net if net and net > 0 else None,
            "worker_cores_busy": total / t.seconds if total is not None and t.seconds else None,
            "redis_cpu_us_per_scan": redis * US_PER_S / t.done if redis is not None and t.done else None,
            "redis_cpu_us_per_scan_background": per_scan.get("redis_cpu_us_background"),
            "recovery": t.recovery or None}


def print_group(g: dict[str, Any]) -> None:
    """The per-worker figures of the envelope phase (``group_figures``)."""
    print(f"group: {g['workers']} worker{'s' if g['workers'] > 1 else ''} on {g['partitions']} partitions, "
          f"envelopes: {g['scans']:,} scans in {fmt(g['seconds'], '.1f')} s = {fmt(g['wall_scans_per_s'])} scans/s "
          f"(wall)" + ("" if g["complete"] else " (incomplete)"))
    print(f"  scans per worker CPU-second: {fmt(g['scans_per_worker_cpu_s'])} ({g['scans']:,} scans / "
          f"{fmt(g['worker_cpu_s_total'], '.1f')} CPU s of the workers: "
          + ", ".join(fmt(c, ".1f") for c in g["worker_cpu_s"]) + f"; {fmt(g['worker_cores_busy'], '.2f')} "
          f"cores busy in all)")
    if g.get("idle_cpu_s_per_s") is not None:
        print(f"  idle, the group uses {g['idle_cpu_s_per_s'] * 1000:.0f} ms of CPU per second (fetch loops, "
              f"heartbeats, timers): {fmt(g['idle_cpu_s_in_phase'], '.1f')} CPU s over the phase; net of it "
              f"{fmt(g['scans_per_worker_cpu_s_net_of_idle'])} scans per worker CPU-second")
    print(f"  Redis server CPU: {fmt(g['redis_cpu_us_per_scan'], '.1f')} us/scan (INFO cpu, every client; "
          f"the idle windows' background {fmt(g['redis_cpu_us_per_scan_background'], '.1f')} us/scan)")
    r = g.get("recovery")
    if r:
        print(f"  kill: one worker SIGKILLed {r['kill_after_s']:.1f} s into the phase at {r['answered_at_kill']:,} "
              f"answered; the group {fmt(r['before_scans_per_s'])} scans/s before it; longest stall "
              f"{r['stall_s']:.1f} s, from {r['stall_from_kill_s']:.1f} s after the kill (session timeout, "
              f"rebalance); the survivors {fmt(r['after_scans_per_s'])} scans/s after it over "
              f"{r['after_window_s']:.1f} s ({fmt(r['after_vs_before'], '.2f')}x)")


def print_costs(costs: dict[str, PhaseCost]) -> None:
    """The per-scan cost of each measured phase side by side, with worker / naive where both exist."""
    phases = [(key, costs[key]) for key in ("envelopes", "naive") if key in costs]
    if not phases:
        return
    figures = {key: cost.per_scan() for key, cost in phases}
    both = len(phases) == 2
    lw, vw, rw = COST_LABEL_W, COST_VALUE_W, COST_RATIO_W

    def line(label: str, cells: list[str], ratio: str = "") -> None:
        print(f"{label:<{lw}}" + "".join(f"{c:>{vw}}" for c in cells) + (f"{ratio:>{rw}}" if both else ""))

    def row(label: str, get, spec: str, ratio: bool = True) -> None:
        values = [get(figures[key]) for key, _ in phases]
        line(label, [fmt(v, spec) for v in values], _ratio(*values) if both and ratio else "")

    def triple(label: str, get) -> None:
        """A row of three figures per phase (e.g. calls / µs, keys / entries / bytes)."""
        cells = []
        for key, _ in phases:
            got = get(figures[key])
            cells.append(" / ".join(fmt(v, spec) for v, spec in got) if got else "-")
        line(label, cells)

    print("per-scan cost (each figure divided by the scans of its phase; worker / naive is a ratio, not a goal)")
    line("", [cost.label for _, cost in phases], "worker/naive" if both else "")
    line("scans: in the timed section / when the keys were walked",
         [f"{cost.scans:,} / {cost.walked_scans:,}" for _, cost in phases])
    row("process CPU, us/scan (user+sys, every thread, /proc)", lambda f: f["process_cpu_us"], ",.1f")
    row("Redis server CPU, us/scan (INFO cpu: the whole server)", lambda f: f["redis_cpu_us"], ",.1f")
    row(f"  background: others + idle server, 2x{BACKGROUND_WINDOW_S:g} s idle windows", lambda f:
        f["redis_cpu_us_background"], ",.1f", ratio=False)
    row("  own commands' server us/scan (own calls x us/call)", lambda f: f["redis_own_usec_est"],
        ",.2f", ratio=False)
    row("Redis commands/scan (INFO commandstats, whole server)", lambda f: f["redis_commands"], ",.2f")
    row("  background: others, from the idle windows", lambda f: f["redis_commands_background"], ",.2f",
        ratio=False)
    row("  own commands/scan (counted by the process itself)", lambda f: f["redis_own_commands"], ",.3f",
        ratio=False)
    row("  of which script calls (EVALSHA, EVAL, FCALL)", lambda f: f["redis_script_calls"], ",.3f", ratio=False)
    top: list[str] = []
    for _, cost in phases:
        top += [name for name in cost.top_commands(TOP_COMMANDS) if name not in top]
    for name in top:
        triple(f"  {name}: calls/scan / server us/scan", lambda f, name=name: (
            (f["redis_commands_by_usec"][name]["calls"], ".3f"), (f["redis_commands_by_usec"][name]["usec"], ",.2f"))
            if name in f["redis_commands_by_usec"] else None)
    row("Redis new keys/scan (walk of the run's prefix)", lambda f: f["redis_new_keys"], ".3f")
    row("Redis new entries/scan (fields, elements, members; string 1)", lambda f: f["redis_new_entries"], ".3f")
    row("Redis bytes/scan (MEMORY USAGE SAMPLES 0, the run's keys)", lambda f: f["redis_bytes_memory_usage"], ",.0f")
    row("  server used_memory change/scan (every client)", lambda f: f["redis_used_memory_delta_bytes"], ",.0f",
        ratio=False)
    families = sorted({name for key, _ in phases for name in figures[key]["redis_by_family"]})
    for name in families:
        triple(f"  family {name}: keys / entries / bytes per scan", lambda f, name=name: (
            (f["redis_by_family"][name]["keys"], ".3f"), (f["redis_by_family"][name]["entries"], ".3f"),
            (f["redis_by_family"][name]["bytes"], ",.0f")) if name in f["redis_by_family"] else None)
    row("ClickHouse insert, wall us/row (scan_events, awards, alerts)", lambda f: f["clickhouse_us_per_row"],
        ",.2f")
    row("  rows inserted per scan", lambda f: f["clickhouse_rows"], ".3f", ratio=False)
    row("  wall us/scan", lambda f: f["clickhouse_us"], ",.2f")
    row("broker bytes/scan, scans topic (key+value+headers)", lambda f: f["broker_in_bytes"], ",.1f")
    row("  messages/scan", lambda f: f["broker_in_messages"], ".4f", ratio=False)
    roles = [role for role in OUTPUT_LABELS if any(role in figures[key]["broker_out_bytes"] for key, _ in phases)]
    for role in roles:
        row(f"broker bytes/scan, {OUTPUT_LABELS[role]}", lambda f, role=role: f["broker_out_bytes"]
            .get(role), ",.1f", ratio=role == "results")
        row("  messages/scan", lambda f, role=role: f["broker_out_messages"].get(role), ".4f", ratio=False)
    row("broker bytes/scan, every output topic", lambda f: sum(v for v in f["broker_out_bytes"].values()
                                                                 if v is not None), ",.1f")
    print("  Redis: the server's counters include every client of this shared server; the idle windows (our "
          "process idle) estimate the background: other clients' work, which comes and goes, and the server's "
          "own housekeeping, which weighs on a slow phase; own commands: only the naive agent "
          "counts its own (the worker's are not counted apart). A command run by a script is "
          "counted once itself and again inside the script's usec; usec is the server's wall time in a "
          "command, which on a busy machine includes time its thread waited for a CPU, so it can exceed the "
          "CPU figure. ClickHouse: worker = its store step "
          "(three inserts per batch, materialized views included, wall time in its store thread); naive "
          "agent = its one-row insert per scan, timed in its insert thread. Broker: record bytes as a "
          "consumer reads them, not the broker's batch framing.")
    for key, cost in phases:
        for note in cost.notes:
            print(f"  note ({cost.label}): {note}")
        print(f"  {cost.label}: key walks took {cost.walk_s:.1f} s (outside the clock)")


def report(args: argparse.Namespace, fig: Figures, notes: list[str], kafka: Any, gen_s: float,
           info: dict[str, Any], version: dict[str, Any], t_run: float) -> None:
    """Print the throughput table, the latency, the notes and the goals; write ``--json`` if asked."""
    envelopes, single, lat, naive, bare = fig.envelopes, fig.single, fig.lat, fig.naive, fig.bare
    print()
    ratio = envelopes.rate / naive.rate if naive and naive.rate and envelopes.rate else None
    ratio_single = single.rate / naive.rate if naive and naive.rate and single and single.rate else None
    w = 47

    def row(label: str, t: Throughput | None) -> None:
        if t is None:
            return
        print(f"{label:<{w}} {t.done:>9,} {t.messages:>9,} {fmt(t.seconds, '.2f'):>8} {fmt(t.rate):>10} "
              f"{fmt(t.publisher_rate):>11}" + ("" if t.complete else "  (incomplete)"))

    print(f"{'throughput':<{w}} {'scans':>9} {'messages':>9} {'time s':>8} {'scans/s':>10} {'publisher':>11}")
    print(f"{'':<{w}} {'':>9} {'':>9} {'':>8} {'':>10} {'scans/s':>11}")
    row(f"worker, envelopes ({envelopes.scans / envelopes.messages:,.0f} scans each)", envelopes)
    row("worker, one scan per message", single)
    row("naive agent, one scan per message", naive)
    row("  the same without its per-event insert", bare)
    print(f"  worker rows: from the first message sent to the worker's topic until the last scan's outcome was "
          f"read back; sending took {fmt(envelopes.send_s, '.2f')} s"
          + (f" / {single.send_s:.2f} s" if single else "") + " of it")
    print(f"  publisher column: ScanPublisher alone, one thread, to a staging topic nobody reads "
          f"(publish_many in chunks of 10 000: {envelopes.publisher_messages:,} envelopes, "
          f"{envelopes.scans / max(envelopes.publisher_messages, 1):,.0f} scans each; publish_single)")
    print("  naive rows: from the first publish_single until the last outcome (the publisher is far ahead); "
          "the second row leaves out the chdb insert per scan (information only)")
    for label, t in (("envelopes", envelopes), ("single", single), ("naive", naive),
                     ("naive without insert", bare)):
        if t is not None and t.seconds:
            per_cpu = t.done / t.cpu["agent"] if t.cpu.get("agent") else None
            print(f"  {label}: {cpu_text(t.cpu, t.seconds, 'agent' if label.startswith('naive') else 'worker')}"
                  + (f"; {per_cpu:,.0f} scans per {'agent' if label.startswith('naive') else 'worker'} "
                     f"CPU second"
                     if per_cpu else ""))
    for label, t in (("envelopes", envelopes), ("single", single), ("naive", naive),
                     ("naive without insert", bare)):
        if t is not None and t.verdicts:
            total = sum(t.verdicts.values())
            print(f"  {label} verdicts: " + ", ".join(f"{v} {c / total:.1%}" for v, c in
                                                     sorted(t.verdicts.items(), key=lambda kv: -kv[1])))
    if ratio is not None:
        print(f"worker (envelopes) / naive agent: {ratio:.1f}x"
              + (f"; worker (one scan per message) / naive agent: {ratio_single:.1f}x" if ratio_single else ""))
    print()
    if fig.group:
        print_group(fig.group)
        print()
    if fig.costs:
        print_costs(fig.costs)
        print()
    if lat is not None:
        print(f"latency publish -> await_result: {lat.scans:,} scans published at {lat.achieved_rate:,.0f} "
              f"scans/s (target {lat.target_rate:,.0f}) for {lat.publish_s:.1f} s with ScanPublisher.publish; "
              f"every {args.sample_every}th awaited: {len(lat.samples_ms):,} samples")
        print(f"  p50 {fmt(lat.pct(50), '.1f')} ms   p95 {fmt(lat.pct(95), '.1f')} ms   "
              f"p99 {fmt(lat.pct(99), '.1f')} ms   "
              f"max {fmt(max(lat.samples_ms) if lat.samples_ms else None, '.1f')}"
              f" ms   timeouts (5 s): {lat.timeouts}   picked up > 5 ms late by the waiter pool: {lat.late_pickups}"
              + (f"   failed: {lat.errors}" if lat.errors else ""))
        if lat.late_pickups:
            print("  a sample picked up late was already waiting for a thread: its latency is an upper bound "
                  "(more --waiters, or a larger --sample-every)")
        print(f"  last outcome on the results topic {fmt(lat.drain_s, '.2f')} s after the last publish; "
              f"{cpu_text(lat.cpu, lat.publish_s)}")
        print()
    print(f"worker: ready and warm {fig.startup_s:.1f} s after start; stopped {fig.worker_stop_s:.1f} s after "
          f"SIGTERM; {fig.retries} retry warnings in its log")
    for note in notes:
        print(f"note: {note}")
    print()
    p99 = lat.pct(99) if lat else None
    goals = {
        "envelopes_rate": {"target": GOAL_RATE, "value": envelopes.rate,
                           "pass": bool(envelopes.complete and envelopes.rate and envelopes.rate >= GOAL_RATE)},
        "vs_naive": {"target": GOAL_RATIO, "value": ratio, "pass": bool(ratio and ratio >= GOAL_RATIO)},
        "p99_latency_ms": {"target": GOAL_P99_MS, "value": p99,
                           "at_scans_per_s": lat.achieved_rate if lat else None,
                           "pass": bool(p99 is not None and p99 < GOAL_P99_MS and lat.timeouts == 0
                                        and lat.errors == 0)},
    }

    def goal(text: str, g: dict, value: str) -> None:
        print(f"goal: {text}: {'PASS' if g['pass'] else 'MISS'} ({value})")

    goal(f">= {GOAL_RATE:,} scans/s per worker with envelopes", goals["envelopes_rate"],
         f"{fmt(envelopes.rate)} scans/s" + ("" if envelopes.complete else ", incomplete"))
    goal(f">= {GOAL_RATIO:g}x the naive agent", goals["vs_naive"],
         f"{ratio:.1f}x" if ratio is not None else "no ratio")
    goal(f"p99 publish -> outcome < {GOAL_P99_MS:g} ms at {args.latency_rate:,.0f} scans/s",
         goals["p99_latency_ms"], (f"p99 {fmt(p99, '.1f')} ms at {lat.achieved_rate:,.0f} scans/s"
                                   + (f", {lat.timeouts} timeouts" if lat.timeouts else "")) if lat else "not run")
    print("goal: Redis dedup memory <= 1.1 bits per issued code: measured by benchmarks/bench_state_memory.py")
    end_load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\nrun took {time.perf_counter() - t_run:.0f} s"
          + (f"; load average at the end {end_load[0]:.2f} (1 min), {end_load[1]:.2f} (5 min) on "
             f"{info['cpus_usable']} CPUs: other processes share them" if end_load else ""))

    if args.json:
        doc: dict[str, Any] = {
            "machine": info,
            "code": version,
            "params": {k2: (str(v) if isinstance(v, Path) else v) for k2, v in vars(args).items()},
            "setup": {"partitions": getattr(args, "partitions", PARTITIONS), "take": kafka.take,
                      "within_ms": kafka.within_ms, "workers": getattr(args, "workers", 1),
                      "session_timeout_s": kafka.session_timeout_s, "linger_ms": kafka.linger_ms,
                      "generate_s": gen_s, "load_average_end": list(end_load) if end_load else None},
            "worker": {"startup_s": fig.startup_s, "stop_s": fig.worker_stop_s, "retry_warnings": fig.retries},
            "envelopes": envelopes.as_dict(),
            "single": single.as_dict() if single else None,
            "latency": lat.as_dict() if lat else None,
            "naive": {**naive.as_dict(), "startup_s": fig.naive_startup} if naive else None,
            "naive_without_insert": {**bare.as_dict(), "startup_s": fig.bare_startup} if bare else None,
            "ratios": {"envelopes_vs_naive": ratio, "single_vs_naive": ratio_single},
            "costs": {key: cost.as_dict() for key, cost in fig.costs.items()},
            "group": fig.group or None,
            "notes": notes,
            "goals": goals,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
