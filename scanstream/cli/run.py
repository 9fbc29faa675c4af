"""``scanstream run``: the local driver over a file or stdin, on the configured backends.

Before it writes anything, a run checks that its parts belong together (``preflight``): the
input is not the results file, the state was made against this ClickHouse database and these
campaigns, and an interrupted run is finished before another starts.  Each refusal says how to
resolve it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config, open_clickhouse
from scanstream.cli.dashboard import add_writer_options, writer_dashboard
from scanstream.engine.config import Config
from scanstream.engine.state import StateStore
from scanstream.engine.summary import Summary
from scanstream.wiring import build_alerting, build_pipeline, build_registry, build_state
from scanstream.sinks.results import PARTIAL_SUFFIX, ResultsFile
from scanstream.streams.local import Cursor, Progress, covers, run as drive


class StateMismatch(RuntimeError):
    """The state and the rest of the run do not belong together; permanent until resolved as the
    message says (``--fresh`` among the ways)."""


class AlreadyDone(Exception):
    """The same run over the same input has finished before: nothing to do (exit 0)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", parents=[config_option()], help="run scans (JSON lines) through the pipeline")
    p.add_argument("--input", required=True, metavar="FILE", help="JSON lines, one scan event each; - for stdin")
    p.add_argument("--results", metavar="FILE", help="write one JSON outcome per input line, in input order")
    p.add_argument("--fresh", action="store_true",
                   help="start over: forget the embedded state at [state] path (codes claimed, budget spent, "
                        "an interrupted run) before running")
    add_writer_options(p)
    p.set_defaults(handler=main)


@dataclass
class Source:
    """The input of a run: its stream, the name its positions use, and what identifies it."""

    stream: object
    name: str
    identity: str  # the resolved path, or "stdin"


def execute(config: Config, source: Source, results: Path | None, progress_total: int | None = None,
            out=sys.stdout, dashboard=None, fresh: bool = False) -> Summary:
    """Run ``source`` through a pipeline built from ``config``; prints and returns the summary.

    ``dashboard`` (an ``scanstream.cli.dashboard.WriterDashboard``) is given the ClickHouse sink as
    soon as it is open, reads through it while the run writes, and closes it itself.
    """
    if fresh:
        reset_state(config, out)
    registry = build_registry(config)
    state = build_state(config)
    clickhouse = None
    results_file = None
    alerting = None
    try:
        cursor = preflight(config, state, source, results)
        pipeline = build_pipeline(config, registry, state)
        clickhouse = open_clickhouse(config)
        check_state(config, state, clickhouse, source, resuming=cursor is not None, fresh=fresh)
        if clickhouse is not None:
            from scanstream.sinks.registry_tables import publish_registry
            publish_registry(clickhouse, registry)
            if dashboard is not None:
                dashboard.attach(clickhouse)  # from here on the dashboard closes it
        results_file = ResultsFile(results, resume_at=cursor.results_bytes if cursor else None) if results else None
        alerting = build_alerting(config, registry, clickhouse)
        if cursor is not None:
            print(f"resuming the run over {source.identity} after line {cursor.lines:,}", file=out)
        paid_before = {c.id: state.campaign_state(c.id) for c in config.campaigns}
        summary = drive(pipeline, source.stream, config.engine.batch_size, source.name, Progress(progress_total),
                        sinks=[clickhouse] if clickhouse is not None else [], outbox=alerting, results=results_file,
                        cursor=cursor or Cursor(input=source.identity, results=str(results) if results else None))
        alerting.close()  # the open digests go out, within alerts.run_deadline_s
        pending, alerting = alerting.pending_count(), None
        if results_file is not None:
            results_file.finish()
            results_file = None
        paid_after = {c.id: state.campaign_state(c.id) for c in config.campaigns}
        summary.paid = {c: (paid_after[c].prizes - before.prizes, paid_after[c].commissions - before.commissions,
                            before.budget_left - paid_after[c].budget_left) for c, before in paid_before.items()}
        print(summary.render(state, config.campaigns), file=out)
        if pending:
            print(f"alert deliveries pending: {pending} (a webhook did not answer within the deadline); "
                  f"`scanstream alerts retry` or the next run sends them again", file=out)
        return summary
    finally:
        if alerting is not None:
            alerting.close()
        if results_file is not None:
            results_file.close()
        if clickhouse is not None and dashboard is None:
            clickhouse.close()
        state.close()


def reset_state(config: Config, out) -> None:
    """``--fresh``: delete the embedded state file (Redis state is reset by its operator)."""
    if config.state_backend != "memory" or config.state_path is None:
        print("--fresh: no embedded state file is configured ([state] path); nothing to forget", file=out)
        return
    from scanstream.engine.state.embedded import EmbeddedStateStore
    if EmbeddedStateStore.remove(config.state_path):
        print(f"--fresh: forgot the state in {config.state_path}", file=out)


def preflight(config: Config, state: StateStore, source: Source, results: Path | None) -> Cursor | None:
    """The cursor to resume from, or None for a new run; ``StateMismatch`` when the state's last
    run is unfinished and this is not the same run."""
    prior = Cursor.of(state.meta("run"))
    if prior is not None and prior.finished:
        # the run had stored everything; only the results file's move into place may be missing
        if prior.results and Path(prior.results + PARTIAL_SUFFIX).exists():
            os.replace(prior.results + PARTIAL_SUFFIX, prior.results)
        # the same command again (after a crash or Ctrl-C at its very end, or by mistake) must
        # not overwrite its results with a second pass answered as redeliveries
        same = (prior.input == source.identity and prior.results == (str(results) if results else None)
                and source.identity != "stdin")
        if same:
            done = covers(source.stream, prior)
            source.stream.seek(0)
            if done:
                raise AlreadyDone(f"the run over {prior.input} has finished" +
                                  (f"; its results are in {prior.results}" if prior.results else "") +
                                  ". Nothing to do: give another --results to see the scans answered as "
                                  "redeliveries, or --fresh to start over")
        return None
    if prior is None or prior.lines == 0:
        return None
    command = f"scanstream run --input {prior.input}" + (f" --results {prior.results}" if prior.results else "")
    if prior.input != source.identity or prior.results != (str(results) if results else None):
        raise StateMismatch(f"the last run over {prior.input} stopped after line {prior.lines:,}; finish it first "
                            f"(run `{command}` again: it continues where it stopped), or start over with --fresh")
    if prior.results and not Path(prior.results + PARTIAL_SUFFIX).exists():
        raise StateMismatch(f"the interrupted run's results ({prior.results}{PARTIAL_SUFFIX}) are gone, so it cannot "
                            f"continue; start over with --fresh")
    return prior


def campaigns_digest(config: Config) -> dict[str, str]:
    """Per campaign, a digest of everything that decides its draws and limits (seed included)."""
    return {c.id: hashlib.blake2b(orjson.dumps([c.tenant, c.start_ms, c.end_ms, c.budget_cents, c.daily_cap,
                                                [[t.name, t.cents, t.probability, t.stock] for t in c.tiers],
                                                list(c.skus), list(c.regions), c.utc_offset_minutes])
                                  + c.key, digest_size=12).hexdigest()
            for c in config.campaigns}


def check_state(config: Config, state: StateStore, clickhouse, source: Source, *, resuming: bool,
                fresh: bool) -> None:
    """Refuse a state that was not made against this database and these campaigns; then record
    this run in the state and the database.  Only the embedded state is checked: a Redis state
    is shared by workers and runs by design."""
    state_id = getattr(state, "state_id", None)
    if state_id is None:
        return
    target = f"{config.clickhouse.split('@')[-1]} database {config.database}" if clickhouse is not None else "none"
    made_for = state.meta("database")
    if made_for is not None and made_for != target:
        raise StateMismatch(f"the state in {config.state_path} was made with ClickHouse {made_for}, not {target}; "
                            f"configure that database again, or start over with --fresh")
    digests, known = campaigns_digest(config), state.meta("campaigns") or {}
    changed = sorted(c for c in digests if c in known and known[c] != digests[c])
    if changed:
        raise StateMismatch(f"campaigns {changed} are configured differently from when the state in "
                            f"{config.state_path} paid for them (budget, tiers, stock, cap, seed, dates or "
                            f"filters); restore their configuration, give the change a new campaign id, or start "
                            f"over with --fresh")
    runs = int(state.meta("runs") or 0)
    recorded, others = clickhouse.state_runs(state_id) if clickhouse is not None else (runs, 0)
    if recorded not in (runs, runs + 1):  # runs + 1: the last start stopped between the two records
        older = "ClickHouse" if recorded < runs else "the state"
        raise StateMismatch(f"the state in {config.state_path} has done {runs} runs and database {config.database} "
                            f"records {recorded} of them: {older} is from an older copy; restore the matching "
                            f"pair, or start over with --fresh")
    if runs == 0 and others and not fresh:
        raise StateMismatch(f"database {config.database} already holds the outcomes of another state ({others} runs) "
                            f"and the state in {config.state_path} is new: configure the state file those runs "
                            f"used, or pass --fresh to start a new state on purpose")
    if resuming:
        return
    if clickhouse is not None:
        clickhouse.record_state_run(state_id, runs + 1, source.identity, int(time.time() * 1000))
    state.checkpoint(runs=runs + 1, database=target, campaigns={**known, **digests})


def open_input(path: str) -> Source:
    """The --input of ``path`` (``-`` for stdin)."""
    if path == "-":
        return Source(sys.stdin.buffer, "stdin", "stdin")
    return Source(open(path, "rb"), Path(path).name, str(Path(path).resolve()))


def main(args: argparse.Namespace) -> int:
    config = load_config(args)
    results = Path(args.results).absolute() if args.results else None
    if results is not None and not results.parent.is_dir():
        print(f"scanstream: cannot write --results {args.results!r}: folder {str(results.parent)!r} does not exist",
              file=sys.stderr)
        return exits.IO_ERROR
    if results is not None and args.input != "-" and _same_file(args.input, results):
        print(f"scanstream: --results {args.results!r} is the --input file; its scans would be overwritten. "
              f"Give the results another name", file=sys.stderr)
        return exits.USAGE
    try:
        source = open_input(args.input)
    except OSError as exc:
        print(f"scanstream: cannot read --input {args.input!r}: {exc.strerror}", file=sys.stderr)
        return exits.DATA
    dashboard = None
    try:
        with source.stream:
            dashboard = writer_dashboard(args, config)
            try:
                execute(config, source, results, dashboard=dashboard, fresh=args.fresh)
            except AlreadyDone as done:
                print(f"scanstream: {done}")
                return exits.OK
        if dashboard is not None:
            dashboard.serve_until_stopped()
    finally:
        if dashboard is not None:
            dashboard.close()
    return exits.OK


def _same_file(a: str | Path, b: str | Path) -> bool:
    """True when both name one file (links included), or ``b`` or its partial file is ``a``."""
    for candidate in (Path(b), Path(str(b) + PARTIAL_SUFFIX)):
        try:
            if os.path.samefile(a, candidate):
                return True
        except OSError:
            if Path(a).resolve() == candidate.resolve():
                return True
    return False
