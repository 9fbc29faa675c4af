"""Throughput of ``engine.Pipeline`` on the embedded defaults, in scans per second.

Input: the synthetic world of ``scanstream demo`` (``streams.synthetic``: tenant 7, the demo
batches, dealers, shipments and stores, written as registry CSVs to a temporary folder)
and ``--scans`` scan events from ``generate_scans`` (genuine first scans mixed with repeats,
forgeries, malformed codes, unknown / not-activated batches, diverted goods, store scans, a
bot, a cloned code, redelivered messages and junk lines; about half of the located scans
carry only GPS). Configuration: ``--config`` (default ``config/local.toml``) with
``registry.dir`` pointed at the temporary registry, the memory state store (its ``state.path``
removed, else the embedded store would open that file) and no ClickHouse sink: what is measured
is the engine, not a database. The lines are cut into batches of
``--batch`` scans before timing, with positions as the local driver names them.

Measured:

(a) End to end: ``Pipeline.process`` over every batch, a new pipeline on a fresh
    ``MemoryStateStore`` for each run (so every run sees the same first scans, repeats and
    prize stock). One warm-up pass over the first batches, then the best of ``--repeat``.
    The process CPU time of the best run is reported next to its wall time: a ratio near 1
    means the run used one core, which is what "per core" in the goal assumes.
(b) Per stage: as many runs again, alternating with those of (a) so that both meet the same
    machine load, with timing hooks around the building blocks that
    ``engine.pipeline`` calls (the real ``Pipeline.process`` runs, nothing is copied):
    parse = ``ext.scanparse.parse_events`` + naming of events without a scan_id; verify =
    ``ext.codec.verify_batch``; enrich = ``engine.enrich.enrich``; dedup = the state store's
    ``claim``; diversion = ``engine.diversion.judge`` + ``AlertWindows.diversion_alerts`` /
    ``clone_alerts``; lottery = ``Lottery.run``. Times are exclusive (a hooked call inside
    another hooked call counts for the inner stage only). What is left of ``process`` (column
    glue, ``batch_key``, alert concatenation, building the output columns = emit) is the
    "rest" row. A stage's rate is input scans per second of that stage's time: the rate the
    pipeline would reach if that stage were its only cost. The hooked run with the lowest
    total is shown. A hook whose target is gone from the engine is reported, and its time
    falls into "rest".
(c) Baseline: ``benchmarks/baseline_pipeline.py``, the same logic in plain Python, one event
    at a time (``json.loads``, the pure-Python reference codec, dicts, ``bisect``, sets),
    on the first ``--baseline-scans`` scans of the same input (it is slow), best of
    ``--repeat`` (runs alternate with the engine's on the same sample); then one more run
    with a clock around each stage. The engine is timed on
    the same sample too: the "engine / baseline" column divides the full-input end-to-end
    rate, and on its own row the engine's rate on the very same sample (the like-for-like
    ratio), by the baseline's rate; per stage it divides the stage rates. Before
    timing, engine and baseline outcomes on the sample are compared scan by scan (verdict,
    diversion, region, channel, dealer, sku, draw, prize, replay) and in total (verdicts,
    diversion, draws, awards, alerts); a difference prints a WARNING and does not stop the run.
(d) With ``--with-chdb``: end to end again with the ClickHouse sink on embedded chdb in the
    temporary folder (``sinks.clickhouse``: each batch's scans, alerts and awards inserted
    as the local driver does, with insert dedup tokens), after a short warm-up run, best
    of ``--repeat``, tables truncated between runs.

(e) State persistence: the same input end to end with a ``state.checkpoint(run=cursor)`` after
    every batch, as the local driver (``streams.local.run``) does, once on the memory store
    (whose checkpoint keeps the cursor in the process) and once on ``EmbeddedStateStore``
    (the memory store plus its SQLite operation log, WAL, ``synchronous = FULL``) with a new
    state file in the temporary folder per run; the two alternate, ``--repeat`` runs each,
    best of each. Reported: both rates, the cost of persistence as the ratio of their times
    and in us per scan (wall and CPU), the time inside ``checkpoint``, and the bytes per scan
    in the SQLite file: main file and ``-wal`` as the run left them, the main file once the
    store is closed (the WAL folded into it), and the pickled call arguments logged.
    ``--profile-state`` runs one more embedded pass under cProfile and prints where its time
    goes (the top 25 functions by own time and the time of the store's own steps).

The garbage collector stays enabled during timed runs, as in production (the state store
holds hundreds of thousands of objects and collections are part of its cost); ``--no-gc``
disables it for comparison. ``--profile`` runs one more engine pass under cProfile and
prints the 25 functions with the most own time. The goal (end to end >= 250 000 scans/s
per core) is printed as PASS / MISS for information and never fails the run.

Run: ``python benchmarks/bench_pipeline.py [--scans N] [--batch B] [--repeat R]
[--baseline-scans M] [--quick] [--with-chdb] [--profile] [--profile-state] [--no-gc] [--json FILE]
[--trade-share F]`` (``--quick``: 50 000 scans, a 5 000-scan baseline sample, 2 runs each;
``--trade-share 0.2``: a fifth of the consumers' scans become store, guide and warehouse scans of
the same codes, each audience claiming its own first scan, the warehouse's outbound scans binding
their codes to a dealer; the "bindings" row is the cost of writing and reading those bindings).

Why one file of this length: a benchmark is read as a whole, setup, measurement and report
together; the naive baseline it compares with is ``baseline_pipeline.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import gc
import importlib
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this checkout first, so that its in-place build of ext/ is the one measured
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from baseline_pipeline import BaselinePipeline  # noqa: E402
from machine import machine
from scanstream.engine.config import load as load_config  # noqa: E402
from scanstream.wiring import build_pipeline, build_registry, build_state  # noqa: E402
from scanstream.streams.local import Cursor  # noqa: E402
from scanstream.streams.synthetic import build_world, generate_scans  # noqa: E402

GOAL_RATE = 250_000
DEMO_TENANT = 7
WARMUP_BATCHES = 10
#: Stages in pipeline order; "rest" is the time of ``process`` outside every hooked call.
STAGES = ("parse", "verify", "enrich", "dedup", "bindings", "diversion", "lottery")
STAGE_LABELS = {
    "parse": "1 parse      ext.scanparse",
    "verify": "2 verify     ext.codec",
    "enrich": "3 enrich     registry, GPS",
    "dedup": "4 dedup      state.claim",
    "bindings": "5 bindings   outbound scans, cases",
    "diversion": "5 diversion  judge + alerts",
    "lottery": "6 lottery    guides, draw + grant",
    "rest": "7 emit + glue (rest of process)",
    "emit": "7 emit       output rows",
}
#: Compared scan by scan between engine and baseline.
COMPARED_COLUMNS = ("verdict", "diversion", "region", "channel", "dealer_id", "sku", "draw", "prize_tier",
                    "prize_cents", "replay")


# ---------------------------------------------------------------------------- stage hooks

@dataclasses.dataclass(frozen=True)
class Hook:
    """A callable the pipeline uses: ``owner`` is ``module:NAME``, ``global:MODULE:NAME`` (an
    object held in a module global) or ``attr:NAME`` (an attribute of the pipeline)."""

    stage: str
    owner: str
    attr: str
    optional: bool = False  # an alternative spelling; missing is normal

    def describe(self) -> str:
        return f"{self.owner.split(':', 1)[1].replace(':', '.')}.{self.attr}"


HOOKS = (
    Hook("parse", "module:scanstream.engine.pipeline", "parse_events"),
    Hook("parse", "module:scanstream.engine.pipeline", "_name_anonymous"),
    Hook("verify", "global:scanstream.engine.pipeline:codec", "verify_batch"),
    Hook("verify", "module:scanstream.engine.pipeline", "verify_batch", optional=True),
    Hook("enrich", "module:scanstream.engine.pipeline", "enrich"),
    Hook("dedup", "attr:state", "claim"),
    Hook("bindings", "global:scanstream.engine.pipeline:bindings", "route"),
    Hook("bindings", "global:scanstream.engine.pipeline:bindings", "refuse_unknown_dealers"),
    Hook("diversion", "global:scanstream.engine.pipeline:div", "judge"),
    Hook("diversion", "attr:windows", "diversion_alerts"),
    Hook("diversion", "attr:windows", "clone_alerts"),
    Hook("lottery", "global:scanstream.engine.pipeline:guides", "unit_guides"),
    Hook("lottery", "attr:lottery", "draw"),
    Hook("lottery", "attr:lottery", "pay"),
)


class StageClock:
    """Exclusive time per stage of wrapped calls (time in nested wrapped calls is subtracted)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._children: list[float] = []

    def wrap(self, stage: str, fn: Callable) -> Callable:
        clock, children, seconds, calls = time.perf_counter, self._children, self.seconds, self.calls

        def timed(*args, **kwargs):
            children.append(0.0)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - t0
                seconds[stage] += elapsed - children.pop()
                calls[stage] += 1
                if children:
                    children[-1] += elapsed
        timed.__wrapped__ = fn
        return timed


def _owner(spec: str, pipeline: Any) -> Any:
    kind, _, rest = spec.partition(":")
    try:
        if kind == "module":
            return importlib.import_module(rest)
        if kind == "global":
            module, _, name = rest.partition(":")
            return getattr(importlib.import_module(module), name, None)
        if kind == "attr":
            return getattr(pipeline, rest, None)
    except ImportError:
        return None
    raise ValueError(f"hook owner {spec!r}: expected module:, global: or attr:")


@contextlib.contextmanager
def hooked(pipeline: Any, clock: StageClock) -> Iterator[list[Hook]]:
    """Wrap every hook target found; yields the hooks that were not found; restores on exit."""
    undo: list[Callable[[], None]] = []
    missing: list[Hook] = []
    try:
        for hook in HOOKS:
            owner = _owner(hook.owner, pipeline)
            fn = getattr(owner, hook.attr, None) if owner is not None else None
            if not callable(fn):
                missing.append(hook)
                continue
            had_own = hook.attr in getattr(owner, "__dict__", {})
            setattr(owner, hook.attr, clock.wrap(hook.stage, fn))
            if had_own:
                undo.append(lambda o=owner, a=hook.attr, f=fn: setattr(o, a, f))
            else:  # an instance attribute shadowing a method: remove it again
                undo.append(lambda o=owner, a=hook.attr: delattr(o, a))
        yield missing
    finally:
        for restore in reversed(undo):
            restore()


# ---------------------------------------------------------------------------- input

@dataclasses.dataclass
class Bench:
    config: Any
    registry: Any
    lines: list[bytes]
    batches: list[tuple[list[bytes], np.ndarray]]
    sample: list[tuple[list[bytes], np.ndarray]]
    tmp: Path
    generate_s: float


def cut(lines: list[bytes], size: int, source: str = "bench") -> list[tuple[list[bytes], np.ndarray]]:
    """Batches of ``size`` lines with their positions, named as the local driver names them."""
    out = []
    for start in range(0, len(lines), size):
        chunk = lines[start:start + size]
        positions = np.array([f"{source}:{n}" for n in range(start + 1, start + len(chunk) + 1)], dtype=object)
        out.append((chunk, positions))
    return out


def prepare(args: argparse.Namespace, tmp: Path) -> Bench:
    config = load_config(args.config)
    pairs = [k for t, k in config.keys.pairs() if t == DEMO_TENANT]
    if not pairs:
        raise SystemExit(f"bench_pipeline: {args.config} has no key for tenant {DEMO_TENANT}, "
                         f"which the demo world uses")
    key_id = max(pairs)  # as scanstream demo chooses
    world = build_world(DEMO_TENANT, config.keys.get(DEMO_TENANT, key_id), key_id)
    registry_dir = tmp / "registry"
    world.write_registry(registry_dir)
    overrides: dict[str, Any] = {"registry_dir": registry_dir, "clickhouse": "", "state_backend": "memory"}
    fields = {f.name for f in dataclasses.fields(config)}
    if "registry_source" in fields:
        overrides["registry_source"] = "files"  # the registry is the CSV folder just written
    if "state_path" in fields:
        overrides["state_path"] = None  # the memory store; (e) gives the embedded store a file in tmp
    config = dataclasses.replace(config, **overrides)
    started = time.perf_counter()
    lines = generate_scans(world, args.scans, seed=args.seed)[:args.scans]
    if args.trade_share:
        lines = as_trade_scans(lines, args.trade_share, args.seed)
    generate_s = time.perf_counter() - started
    sample = lines[:args.baseline_scans]
    return Bench(config, build_registry(config), lines, cut(lines, args.batch), cut(sample, args.batch), tmp,
                 generate_s)


#: The trade roles ``--trade-share`` gives scans, in turn: each has an audience apart from consumers'.
TRADE_ROLES = ("store", "guide", "warehouse")
#: The dealer ``--trade-share``'s warehouse scans ship to (a dealer of the demo world).
OUTBOUND_DEALER = "D-GD-KA"


def as_trade_scans(lines: list[bytes], share: float, seed: int) -> list[bytes]:
    """``share`` of the consumers' scans made the trade's (a store, a guide or a warehouse scanning
    the same code under its own account): the stream of a channel programme, in which the same
    codes are claimed by several audiences.  Chosen by a hash of the scan_id and ``seed``, so a
    redelivered scan stays the same event (a changed one would be a conflict)."""
    out = []
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None  # a junk line stays junk
        if isinstance(event, dict) and event.get("role", "consumer") == "consumer" and "scan_id" in event:
            h = zlib.crc32(f"{seed}:{event['scan_id']}".encode())
            if h / 2**32 < share:
                role = TRADE_ROLES[h % len(TRADE_ROLES)]
                # a warehouse's scan is an outbound scan: it binds the code to the dealer, the cost
                # of bindings that every later scan of the code then reads; a guide's is a sale,
                # which makes the guide the unit's guide for the commissions of its later wins
                action = {"warehouse": {"action": "ship", "dealer_id": OUTBOUND_DEALER},
                          "guide": {"action": "sell"}}.get(role, {})
                line = orjson.dumps({**event, "role": role, "user_id": f"{role}-{h % 500}", **action})
        out.append(line)
    return out


# ---------------------------------------------------------------------------- timing

@contextlib.contextmanager
def gc_mode(enabled: bool) -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    if not enabled:
        gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def new_pipeline(bench: Bench):
    return build_pipeline(bench.config, bench.registry, build_state(bench.config))


def engine_pass(bench: Bench, batches, use_gc: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one pass over ``batches`` on a fresh pipeline."""
    pipeline = new_pipeline(bench)
    process = pipeline.process
    with gc_mode(use_gc):
        c0 = time.process_time()
        t0 = time.perf_counter()
        for chunk, positions in batches:
            process(chunk, positions)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    return wall, cpu


def hooked_pass(bench: Bench, batches, use_gc: bool, outcome: Counter | None = None
                ) -> tuple[float, StageClock, list[Hook]]:
    """Seconds inside ``process`` and per stage; counts outcomes between batches (not timed)."""
    pipeline = new_pipeline(bench)
    clock = StageClock()
    inside = 0.0
    with hooked(pipeline, clock) as missing, gc_mode(use_gc):
        for chunk, positions in batches:
            t0 = time.perf_counter()
            result = pipeline.process(chunk, positions)
            inside += time.perf_counter() - t0
            if outcome is not None:
                outcome.update(result.scans["verdict"].tolist())
    return inside, clock, missing


def baseline_pass(bench: Bench, batches, use_gc: bool, stage_times: dict[str, float] | None = None
                  ) -> tuple[float, list]:
    """Seconds of one baseline pass over ``batches`` (fresh state), and its results."""
    base = BaselinePipeline(bench.config)
    results = []
    with gc_mode(use_gc):
        t0 = time.perf_counter()
        for chunk, positions in batches:
            results.append(base.process(chunk, positions, stage_times))
        wall = time.perf_counter() - t0
    return wall, results


def chdb_passes(bench: Bench, repeat: int, use_gc: bool) -> dict[str, Any]:
    """End to end with the ClickHouse sink on embedded chdb, tables emptied before each run."""
    from scanstream.sinks.clickhouse import AWARD_TABLE, ALERT_TABLE, SCAN_TABLE, ClickHouseSink, connect
    sink = ClickHouseSink(connect(f"chdb:{bench.tmp / 'chdb'}", database=bench.config.database))
    try:
        sink.ensure_schema()
        times = []
        for rep in range(repeat + 1):  # the first run warms chdb up and is not counted
            for table in (SCAN_TABLE, ALERT_TABLE, AWARD_TABLE, "scans_minute", "diversion_minute", "ingest_minute"):
                sink.client.command(f"TRUNCATE TABLE IF EXISTS {table}")
            pipeline = new_pipeline(bench)
            batches = bench.batches[:WARMUP_BATCHES] if rep == 0 else bench.batches
            with gc_mode(use_gc):
                t0 = time.perf_counter()
                for chunk, positions in batches:
                    r = pipeline.process(chunk, positions)
                    token = f"bench{rep}:{positions[0]}-{positions[-1]}"
                    sink.write_scans(r.scans, dedup_token=f"{token}:scans")
                    sink.write_alerts(r.alerts, dedup_token=f"{token}:alerts")
                    sink.write_awards(r.awards, dedup_token=f"{token}:awards")
                wall = time.perf_counter() - t0
            if rep:
                times.append(wall)
        stored = int(sink.client.query(f"SELECT count() FROM {SCAN_TABLE}").result_rows[0][0])
    finally:
        sink.close()
    n = len(bench.lines)
    return {"scans": n, "best_s": min(times), "times_s": times, "scans_per_s": n / min(times), "rows_stored": stored}


# ---------------------------------------------------------------------------- (e) state persistence

#: The driver's digest of the input read so far (blake2b, 16 bytes, hex): its length is what counts.
CURSOR_DIGEST = "0" * 32


def state_files(path: Path) -> dict[str, int]:
    """Sizes of the SQLite file and its -wal and -shm files (0 when absent)."""
    return {suffix or "main": (Path(str(path) + suffix).stat().st_size if Path(str(path) + suffix).exists() else 0)
            for suffix in ("", "-wal", "-shm")}


def persistence_pass(bench: Bench, batches, use_gc: bool, path: Path | None,
                     profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """One pass over ``batches`` with a checkpoint after every batch, as ``streams.local.run`` makes
    them; on the memory store (``path`` None) or on an embedded store at ``path`` (removed after).
    Wall and CPU seconds, seconds inside ``checkpoint``, and for the embedded store its files."""
    config = bench.config if path is None else dataclasses.replace(bench.config, state_path=path)
    state = build_state(config)
    if (path is None) == hasattr(state, "path"):
        raise SystemExit(f"bench_pipeline: (e) wanted {'an embedded' if path else 'the memory'} store, "
                         f"build_state gave {type(state).__name__}")
    snapshots = [0]
    if path is not None:
        take = state._snapshot

        def counted() -> None:
            snapshots[0] += 1
            take()
        state._snapshot = counted
    pipeline = build_pipeline(config, bench.registry, state)
    process, checkpoint, clock = pipeline.process, state.checkpoint, time.perf_counter
    cursor = Cursor(input="bench", results="bench.results", digest=CURSOR_DIGEST)
    in_checkpoint = 0.0
    out: dict[str, Any] = {}
    try:
        with gc_mode(use_gc):
            if profile is not None:
                profile.enable()
            c0 = time.process_time()
            t0 = clock()
            for chunk, positions in batches:
                process(chunk, positions)
                cursor.lines += len(chunk)
                cursor.results_bytes += 200 * len(chunk)
                t1 = clock()
                checkpoint(run=dataclasses.asdict(cursor))
                in_checkpoint += clock() - t1
            cursor.finished = True
            checkpoint(run=dataclasses.asdict(cursor))
            out["wall_s"] = clock() - t0
            out["cpu_s"] = time.process_time() - c0
            if profile is not None:
                profile.disable()
        out["checkpoint_s"] = in_checkpoint
        out["checkpoints"] = len(batches) + 1
        if path is not None:
            out["files_open"] = state_files(path)  # as the run left them (the WAL not yet folded in)
            out["log_bytes"] = state._log_bytes  # pickled call arguments logged since the last snapshot
            out["snapshot_bytes"] = state._snapshot_bytes
            out["snapshots"] = snapshots[0]
    finally:
        state.close()
    if path is not None:
        out["files_closed"] = state_files(path)  # the last connection folds the WAL into the file
        type(state).remove(path)
        Path(str(path) + ".lock").unlink(missing_ok=True)
    return out


def persistence_passes(bench: Bench, repeat: int, use_gc: bool) -> dict[str, Any]:
    """Memory and embedded store with a checkpoint per batch, alternating runs, best of each."""
    folder = bench.tmp / "state"
    folder.mkdir(exist_ok=True)
    persistence_pass(bench, bench.batches[:WARMUP_BATCHES], use_gc, folder / "warmup.sqlite")
    runs: dict[str, list[dict[str, Any]]] = {"memory": [], "embedded": []}
    for rep in range(repeat):
        runs["memory"].append(persistence_pass(bench, bench.batches, use_gc, None))
        runs["embedded"].append(persistence_pass(bench, bench.batches, use_gc, folder / f"run{rep}.sqlite"))
    n = len(bench.lines)
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    mem, emb = best["memory"], best["embedded"]
    open_bytes = emb["files_open"]["main"] + emb["files_open"]["-wal"]
    return {
        "scans": n, "checkpoints": emb["checkpoints"], "folder": str(folder),
        "filesystem": _filesystem(folder),
        "memory": {"best_s": mem["wall_s"], "cpu_s": mem["cpu_s"], "scans_per_s": rate(n, mem["wall_s"]),
                   "times_s": [r["wall_s"] for r in runs["memory"]]},
        "embedded": {"best_s": emb["wall_s"], "cpu_s": emb["cpu_s"], "scans_per_s": rate(n, emb["wall_s"]),
                     "times_s": [r["wall_s"] for r in runs["embedded"]], "checkpoint_s": emb["checkpoint_s"],
                     "snapshots": emb["snapshots"], "files_open": emb["files_open"],
                     "files_closed": emb["files_closed"], "log_bytes": emb["log_bytes"],
                     "snapshot_bytes": emb["snapshot_bytes"]},
        "embedded_over_memory_time": emb["wall_s"] / mem["wall_s"],
        "cost_us_per_scan": (emb["wall_s"] - mem["wall_s"]) / n * 1e6,
        "cost_cpu_us_per_scan": (emb["cpu_s"] - mem["cpu_s"]) / n * 1e6,
        "checkpoint_us_per_scan": emb["checkpoint_s"] / n * 1e6,
        "file_bytes_per_scan": open_bytes / n,
        "closed_file_bytes_per_scan": emb["files_closed"]["main"] / n,
        "logged_bytes_per_scan": (emb["log_bytes"] + emb["snapshot_bytes"]) / n,
    }


def _filesystem(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts), or '?'."""
    try:
        best, kind = "", "?"
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) \
                    and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
        return kind
    except OSError:
        return "?"


#: The embedded store's own steps, for ``--profile-state``: label, file suffix ("~": built-in), function
#: name(s), and the caller to count calls from (None: every caller).
MEMORY_OPS = ("claim", "grant", "count", "distinct", "mark_once", "block", "define_campaigns")
STATE_STEPS = (
    ("EmbeddedStateStore._logged (all, incl. the memory store's work)", "engine/state/embedded.py", "_logged", None),
    ("  MemoryStateStore methods (the state's work, as without a log)", "engine/state/memory.py", MEMORY_OPS,
     "_logged"),
    ("  pickle.dumps of the call arguments", "~", "<built-in method _pickle.dumps>", "_logged"),
    ("EmbeddedStateStore.checkpoint (all)", "engine/state/embedded.py", "checkpoint", None),
    ("  sqlite3 executemany (INSERT of the logged calls, meta)", "~",
     "<method 'executemany' of 'sqlite3.Connection' objects>", "checkpoint"),
    ("  sqlite3 execute (BEGIN IMMEDIATE)", "~", "<method 'execute' of 'sqlite3.Connection' objects>",
     "checkpoint"),
    ("  sqlite3 commit (Connection.__exit__: WAL write + fsync)", "~",
     "<method '__exit__' of 'sqlite3.Connection' objects>", "checkpoint"),
    ("  EmbeddedStateStore._snapshot (all)", "engine/state/embedded.py", "_snapshot", None),
    ("    pickle.dumps of the structures", "~", "<built-in method _pickle.dumps>", "_snapshot"),
    ("    sqlite3 execute (snapshot INSERT, DELETE of the log)", "~",
     "<method 'execute' of 'sqlite3.Connection' objects>", "_snapshot"),
)


def _step_time(stats: pstats.Stats, file: str, names: tuple[str, ...], caller: str | None) -> tuple[int, float]:
    """Calls and cumulative seconds of the functions ``names`` in ``file`` (from ``caller`` only)."""
    calls, cum = 0, 0.0
    for (f, _, fn), (_, nc, _, ct, callers) in stats.stats.items():
        if fn not in names or not f.endswith(file):
            continue
        if caller is None:
            calls, cum = calls + nc, cum + ct
        else:
            for (_, _, cfn), info in callers.items():
                if cfn == caller:
                    calls, cum = calls + info[1], cum + info[3]
    return calls, cum


def profile_state(bench: Bench, use_gc: bool, top: int = 25) -> str:
    """cProfile of one embedded pass with checkpoints: the store's steps and the own-time top list."""
    prof = cProfile.Profile()
    folder = bench.tmp / "state"
    folder.mkdir(exist_ok=True)
    run = persistence_pass(bench, bench.batches, use_gc, folder / "profile.sqlite", profile=prof)
    stats = pstats.Stats(prof)
    n = len(bench.lines)
    lines = [f"embedded pass under cProfile: {run['wall_s']:.3f} s for {n:,} scans, {run['snapshots']} snapshot(s) "
             f"(cProfile slows Python code down)",
             f"  {'step':<66} {'calls':>7} {'cum s':>8} {'us/scan':>8}"]
    for label, file, name, caller in STATE_STEPS:
        calls, cum = _step_time(stats, file, (name,) if isinstance(name, str) else name, caller)
        if calls:
            lines.append(f"  {label:<66} {calls:>7,} {cum:>8.3f} {cum / n * 1e6:>8.2f}")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = "\n".join(lines) + "\n" + out.getvalue().replace(str(ROOT) + os.sep, "")
    site = next((p for p in sys.path if p.endswith("site-packages")), None)
    return text.replace(site + os.sep, "site-packages/") if site else text


# ---------------------------------------------------------------------------- agreement

def engine_outcomes(bench: Bench, batches) -> dict[str, list]:
    """Scan columns (as lists), awards and alerts of an engine pass, for the comparison."""
    pipeline = new_pipeline(bench)
    scans: dict[str, list] = {c: [] for c in COMPARED_COLUMNS}
    awards, alerts = [], []
    for chunk, positions in batches:
        r = pipeline.process(chunk, positions)
        for c in COMPARED_COLUMNS:
            scans[c].extend(r.scans[c].tolist())
        awards.extend(zip(r.awards["prize_tier"].tolist(), r.awards["prize_cents"].tolist()))
        alerts.extend(zip(r.alerts["alert"].tolist(), r.alerts["subtype"].tolist()))
    return {"scans": scans, "awards": awards, "alerts": alerts}


def baseline_outcomes(results) -> dict[str, list]:
    scans: dict[str, list] = {c: [] for c in COMPARED_COLUMNS}
    awards, alerts = [], []
    for r in results:
        for row in r.scans:
            for c in COMPARED_COLUMNS:
                scans[c].append(row[c])
        awards.extend((a["prize_tier"], a["prize_cents"]) for a in r.awards)
        alerts.extend((a["alert"], a["subtype"]) for a in r.alerts)
    return {"scans": scans, "awards": awards, "alerts": alerts}


def compare(engine: dict[str, list], baseline: dict[str, list]) -> dict[str, Any]:
    """Totals of both sides and their differences; ``agree`` is False on any difference."""
    totals = {
        "verdicts": (Counter(engine["scans"]["verdict"]), Counter(baseline["scans"]["verdict"])),
        "diversion": (Counter(engine["scans"]["diversion"]), Counter(baseline["scans"]["diversion"])),
        "draws": (Counter(engine["scans"]["draw"]), Counter(baseline["scans"]["draw"])),
        "awards": (Counter(t for t, _ in engine["awards"]), Counter(t for t, _ in baseline["awards"])),
        "alerts": (Counter("/".join(a) for a in engine["alerts"]), Counter("/".join(a) for a in baseline["alerts"])),
    }
    per_scan = {}
    n = len(engine["scans"]["verdict"])
    for c in COMPARED_COLUMNS:
        e, b = engine["scans"][c], baseline["scans"][c]
        bad = [i for i in range(min(n, len(b))) if e[i] != b[i]]
        if bad or len(b) != n:
            per_scan[c] = {"differ": len(bad) + abs(len(b) - n),
                           "first": None if not bad else {"row": bad[0], "engine": e[bad[0]], "baseline": b[bad[0]]}}
    differ = {k: {"engine": dict(e), "baseline": dict(b)} for k, (e, b) in totals.items() if e != b}
    return {
        "agree": not differ and not per_scan,
        "totals": {k: {"engine": dict(e), "baseline": dict(b)} for k, (e, b) in totals.items()},
        "totals_differ": differ,
        "per_scan_differ": per_scan,
    }


# ---------------------------------------------------------------------------- report

def code_version() -> dict[str, Any]:
    """Commit and uncommitted changes of the engine being measured (it may be under work)."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    try:
        # porcelain lines are "XY path": two status letters and a space before the path
        changed = [line[3:] for line in git("status", "--porcelain", "--", "engine", "ext", "streams",
                                            "sinks").splitlines() if len(line) > 3]
        return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted": changed}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": []}


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def profile_engine(bench: Bench, top: int = 25) -> str:
    pipeline = new_pipeline(bench)
    prof = cProfile.Profile()
    prof.enable()
    for chunk, positions in bench.batches:
        pipeline.process(chunk, positions)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue().replace(str(ROOT) + os.sep, "")
    site = next((p for p in sys.path if p.endswith("site-packages")), None)
    return text.replace(site + os.sep, "site-packages/") if site else text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scans", type=int, default=200_000, help="scans in the input (default 200000)")
    p.add_argument("--batch", type=int, default=5000, help="scans per Pipeline.process call (default 5000)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement, best is reported (default 3)")
    p.add_argument("--baseline-scans", type=int, default=20_000,
                   help="first scans of the input for the pure-Python baseline (default 20000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic world's scans (default 7)")
    p.add_argument("--trade-share", type=float, default=0.0, metavar="F",
                   help="make this share of the scans store, guide and warehouse scans of the same codes (default 0)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "local.toml",
                   help="configuration (default config/local.toml); its registry and sink are replaced")
    p.add_argument("--with-chdb", action="store_true", help="also time end to end with the chdb ClickHouse sink")
    p.add_argument("--profile", action="store_true", help="print the top 25 functions of one engine pass (cProfile)")
    p.add_argument("--profile-state", action="store_true",
                   help="print where an embedded-store pass with checkpoints spends its time (cProfile)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: --scans 50000 --baseline-scans 5000 --repeat 2")
    p.add_argument("--no-gc", action="store_true", help="disable the garbage collector during timed runs")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.scans, args.baseline_scans, args.repeat = 50_000, 5_000, 2
    if args.scans < 1 or args.batch < 1 or args.repeat < 1 or args.baseline_scans < 1:
        p.error("--scans, --batch, --repeat and --baseline-scans must be at least 1")
    args.baseline_scans = min(args.baseline_scans, args.scans)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    use_gc = not args.no_gc
    info, version = machine("numpy", "orjson", "chdb"), code_version()
    load = info["load_average"]
    print(f"machine: {info['platform']}")
    print(f"cpu:     {info['cpu']}, {info['cpu_count']} CPUs ({info['cpus_usable']} usable)"
          + (f", load average {load[0]:.2f}" if load else ""))
    print(f"python:  {info['python_impl']} {info['python']}, numpy {info['numpy']}, orjson {info['orjson']}"
          + (f", chdb {info['chdb']}" if args.with_chdb else ""))
    print(f"engine:  commit {version['commit']}" + (f" + uncommitted changes in {', '.join(version['uncommitted'])}"
                                                     if version["uncommitted"] else ""))

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmpdir:
        bench = prepare(args, Path(tmpdir))
        n, m = len(bench.lines), sum(len(c) for c, _ in bench.sample)
        cfg = bench.config
        print(f"input:   {n:,} scans of the demo world (seed {args.seed}, generated in {bench.generate_s:.1f} s), "
              f"{len(bench.batches)} batches of {args.batch:,}; {args.config.name} with registry in a temp folder, "
              f"memory state, no sink, GPS {'on' if cfg.engine.resolve_gps else 'off'}, "
              f"{len(cfg.campaigns)} campaign(s), trade scans made of {args.trade_share:.0%} of the consumers' "
              f"(--trade-share)")
        print(f"timing:  best of {args.repeat} after a warm-up; garbage collector {'on' if use_gc else 'off'}; "
              f"baseline on the first {m:,} scans")

        # correctness first: a fast engine that disagrees with the baseline is worth knowing about
        baseline_probe = BaselinePipeline(cfg)
        agreement = compare(engine_outcomes(bench, bench.sample), baseline_outcomes(baseline_pass(bench, bench.sample,
                                                                                                 use_gc)[1]))
        if agreement["agree"]:
            v = agreement["totals"]["verdicts"]["engine"]
            print(f"check:   engine and baseline agree scan by scan on the {m:,}-scan sample "
                  f"({', '.join(f'{k} {c:,}' for k, c in sorted(v.items(), key=lambda kv: -kv[1]))}; "
                  f"GPS in the baseline: {baseline_probe.resolver_kind})")
        else:
            print(f"WARNING: engine and baseline outcomes differ on the {m:,}-scan sample "
                  f"(GPS in the baseline: {baseline_probe.resolver_kind}):")
            for what, sides in agreement["totals_differ"].items():
                keys = sorted(set(sides["engine"]) | set(sides["baseline"]))
                print(f"           {what}: " + ", ".join(f"{k} {sides['engine'].get(k, 0):,} vs "
                                                        f"{sides['baseline'].get(k, 0):,}" for k in keys
                                                        if sides['engine'].get(k, 0) != sides['baseline'].get(k, 0))
                      + "  (engine vs baseline)")
            for col, d in agreement["per_scan_differ"].items():
                first = d["first"]
                print(f"           {col}: {d['differ']:,} scans differ" + (
                    f", first at row {first['row']}: engine {first['engine']!r}, baseline {first['baseline']!r}"
                    if first else ""))
        print()

        # (a) end to end and (b) per stage, alternating, so that both see the same machine load
        engine_pass(bench, bench.batches[:WARMUP_BATCHES], use_gc)
        outcome: Counter[str] = Counter()
        e2e_runs, hooked_runs = [], []
        for rep in range(args.repeat):
            e2e_runs.append(engine_pass(bench, bench.batches, use_gc))
            hooked_runs.append(hooked_pass(bench, bench.batches, use_gc, outcome if rep == 0 else None))
        best_e2e = min(e2e_runs, key=lambda r: r[0])
        e2e_rate = rate(n, best_e2e[0])
        cpu_ratio = best_e2e[1] / best_e2e[0]
        inside, clock, missing = min(hooked_runs, key=lambda r: r[0])
        stage_s = {s: clock.seconds.get(s, 0.0) for s in STAGES}
        stage_s["rest"] = max(inside - sum(stage_s.values()), 0.0)

        # (c) baseline, and the engine on the same sample, alternating (the check above warmed both up)
        sample_runs, base_runs = [], []
        for _ in range(args.repeat):
            sample_runs.append(engine_pass(bench, bench.sample, use_gc))
            base_runs.append(baseline_pass(bench, bench.sample, use_gc)[0])
        best_sample, best_base = min(sample_runs, key=lambda r: r[0]), min(base_runs)
        base_stage_s: dict[str, float] = {}
        base_timed_s = baseline_pass(bench, bench.sample, use_gc, base_stage_s)[0]
        base_rate = rate(m, best_base)
        sample_rate = rate(m, best_sample[0])

        chdb = chdb_passes(bench, args.repeat, use_gc) if args.with_chdb else None
        persistence = persistence_passes(bench, args.repeat, use_gc)

        # ---------------------------------------------------------------- table
        print(f"outcomes of the {n:,} scans: " + ", ".join(f"{k} {c:,}" for k, c in outcome.most_common()))
        print()

        def row(label: str, scans_s: float | None, seconds: float | None, share: float | None = None,
                base_s: float | None = None, base_share: float | None = None, ratio: float | None = None) -> None:
            print(f"{label:<38} {fmt_rate(scans_s):>11} {'' if seconds is None else f'{seconds:.3f}':>8} "
                  f"{'' if share is None else f'{share:.1%}':>6}  {fmt_rate(base_s) if base_s else '':>10} "
                  f"{'' if base_share is None else f'{base_share:.1%}':>6}  "
                  f"{'' if ratio is None else f'{ratio:.1f}x':>8}")

        print(f"{'':<38} {'engine':>11} {'':>8} {'':>6}  {'baseline':>10} {'':>6}  {'engine /':>8}")
        print(f"{'':<38} {'scans/s':>11} {'time s':>8} {'share':>6}  {'scans/s':>10} {'share':>6}  {'baseline':>8}")
        row("end to end, Pipeline.process", e2e_rate, best_e2e[0], ratio=e2e_rate / base_rate)
        print(f"  per stage (best hooked run: {inside:.3f} s inside process, exclusive time per stage)")
        base_total = sum(base_stage_s.values())
        for s in (*STAGES, "rest"):
            seconds = stage_s[s]
            b = base_stage_s.get("emit" if s == "rest" else s)
            eng_stage = rate(n, seconds) if seconds else None
            base_stage = rate(m, b) if b else None
            row("  " + STAGE_LABELS[s], eng_stage, seconds, seconds / inside, base_stage,
                b / base_total if b else None, eng_stage / base_stage if eng_stage and base_stage else None)
        required = [h for h in missing if not h.optional]
        if required:
            print(f"  note: hook(s) not found in this engine, their time is in 'rest': "
                  f"{', '.join(h.describe() for h in required)}")
        row(f"engine on the first {m:,} scans", sample_rate, best_sample[0], ratio=sample_rate / base_rate)
        row(f"baseline on the first {m:,} scans", base_rate, best_base)
        print(f"  (baseline: pure Python, one event at a time; its per-stage column comes from one more run "
              f"with clocks around each stage, {base_timed_s:.3f} s)")
        if chdb is not None:
            row("end to end + chdb sink writes", chdb["scans_per_s"], chdb["best_s"])
            print(f"  (the sink adds {chdb['best_s'] - best_e2e[0]:.3f} s, "
                  f"{(chdb['best_s'] - best_e2e[0]) / chdb['best_s']:.0%} of the run; "
                  f"{chdb['rows_stored']:,} rows in scan_events afterwards: redelivered scan_ids share a row "
                  f"once the ReplacingMergeTree merges)")
        print()
        ps, pm, pe = persistence, persistence["memory"], persistence["embedded"]
        fo, fc = pe["files_open"], pe["files_closed"]
        print(f"(e) state persistence: a checkpoint after each of the {len(bench.batches)} batches (and one at the "
              f"end) as streams.local.run; embedded store's file in the temp folder ({ps['filesystem']}); "
              f"runs alternate, best of {args.repeat}")
        print(f"  {'memory store + checkpoint':<36} {fmt_rate(pm['scans_per_s']):>11} {pm['best_s']:>8.3f}  "
              f"cpu {pm['cpu_s']:.3f} s")
        print(f"  {'EmbeddedStateStore + checkpoint':<36} {fmt_rate(pe['scans_per_s']):>11} {pe['best_s']:>8.3f}  "
              f"cpu {pe['cpu_s']:.3f} s; {pe['checkpoint_s']:.3f} s in checkpoint "
              f"({pe['checkpoint_s'] / ps['checkpoints'] * 1e3:.2f} ms each), {pe['snapshots']} snapshot(s)")
        print(f"  persistence cost: embedded / memory time x{ps['embedded_over_memory_time']:.3f} "
              f"({ps['embedded_over_memory_time'] - 1:+.1%}); {ps['cost_us_per_scan']:+.2f} us per scan wall, "
              f"{ps['cost_cpu_us_per_scan']:+.2f} us CPU, of which checkpoint {ps['checkpoint_us_per_scan']:.2f} us")
        print(f"  written: {fo['main']:,} B + -wal {fo['-wal']:,} B after the run = "
              f"{ps['file_bytes_per_scan']:.1f} B per scan (-shm {fo['-shm']:,} B); "
              f"after close {fc['main']:,} B = {ps['closed_file_bytes_per_scan']:.1f} B per scan; "
              f"pickled calls + snapshot {ps['logged_bytes_per_scan']:.1f} B per scan")
        print()
        cpu_rate = rate(n, best_e2e[1])
        print(f"one core: CPU time / wall time of the best end-to-end run = {cpu_ratio:.2f} "
              f"({cpu_rate:,.0f} scans per CPU second)")
        if cpu_ratio > 1.1:
            print("  more than one core was busy: the rate per core is lower than the wall-time rate")
        elif cpu_ratio < 0.9:
            busy = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
            print(f"  the process waited for a CPU {1 - cpu_ratio:.0%} of the time (machine busy{busy}): "
                  f"wall-time rates are pessimistic; rerun on an idle machine")
        goal_pass = e2e_rate >= GOAL_RATE
        print(f"goal: end to end >= {GOAL_RATE:,} scans/s per core: {'PASS' if goal_pass else 'MISS'} "
              f"({e2e_rate:,.0f} scans/s wall time, {e2e_rate / GOAL_RATE:.2f}x the goal)")

        if args.profile:
            print()
            print("profile of one engine pass (cProfile, top 25 by own time; cProfile slows Python code down):")
            print(profile_engine(bench))
        if args.profile_state:
            print()
            print("profile of one embedded-store pass with a checkpoint per batch (cProfile):")
            print(profile_state(bench, use_gc))

        if args.json:
            doc = {
                "machine": info,
                "code": version,
                "params": {"scans": n, "batch": args.batch, "batches": len(bench.batches), "repeat": args.repeat,
                           "baseline_scans": m, "seed": args.seed, "config": str(args.config), "gc": use_gc,
                           "resolve_gps": cfg.engine.resolve_gps, "warmup_batches": WARMUP_BATCHES},
                "outcomes": dict(outcome),
                "end_to_end": {"scans": n, "best_s": best_e2e[0], "cpu_s": best_e2e[1], "cpu_per_wall": cpu_ratio,
                               "scans_per_cpu_s": cpu_rate,
                               "times_s": [r[0] for r in e2e_runs], "scans_per_s": e2e_rate,
                               "vs_baseline": e2e_rate / base_rate},
                "stages": {s: {"seconds": stage_s[s], "scans_per_s": rate(n, stage_s[s]) if stage_s[s] else None,
                               "share": stage_s[s] / inside, "calls": clock.calls.get(s, 0)}
                           for s in (*STAGES, "rest")},
                "stages_inside_process_s": inside,
                "stages_runs_inside_s": [r[0] for r in hooked_runs],
                "missing_hooks": [h.describe() for h in missing if not h.optional],
                "engine_sample": {"scans": m, "best_s": best_sample[0], "times_s": [r[0] for r in sample_runs],
                                  "scans_per_s": sample_rate, "vs_baseline": sample_rate / base_rate},
                "baseline": {"scans": m, "best_s": best_base, "times_s": base_runs, "scans_per_s": base_rate,
                             "resolver": baseline_probe.resolver_kind,
                             "stages": {s: {"seconds": t, "scans_per_s": rate(m, t), "share": t / base_total}
                                        for s, t in base_stage_s.items()}},
                "agreement": agreement,
                "chdb": chdb,
                "persistence": persistence,
                "goals": {"end_to_end": {"target": GOAL_RATE, "value": e2e_rate, "pass": goal_pass}},
            }
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
