"""The report of ``bench_worker.py``: what ran where, the figures of the phases, the goals, the JSON.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker_bench_phases import Latency, Throughput
from worker_bench_services import PARTITIONS

GOAL_RATE = 100_000
GOAL_RATIO = 10.0
GOAL_P99_MS = 300.0


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
            "setup": {"partitions": PARTITIONS, "take": kafka.take, "within_ms": kafka.within_ms,
                      "session_timeout_s": kafka.session_timeout_s, "linger_ms": kafka.linger_ms,
                      "generate_s": gen_s, "load_average_end": list(end_load) if end_load else None},
            "worker": {"startup_s": fig.startup_s, "stop_s": fig.worker_stop_s, "retry_warnings": fig.retries},
            "envelopes": envelopes.as_dict(),
            "single": single.as_dict() if single else None,
            "latency": lat.as_dict() if lat else None,
            "naive": {**naive.as_dict(), "startup_s": fig.naive_startup} if naive else None,
            "naive_without_insert": {**bare.as_dict(), "startup_s": fig.bare_startup} if bare else None,
            "ratios": {"envelopes_vs_naive": ratio, "single_vs_naive": ratio_single},
            "notes": notes,
            "goals": goals,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
