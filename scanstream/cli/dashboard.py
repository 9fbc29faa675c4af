"""``scanstream dashboard``: the built-in dashboard as a local web page; and ``--dashboard`` for writers.

The embedded ClickHouse (chdb) lets one process open a data path.  So with ``chdb:PATH``:

* ``scanstream run --dashboard [PORT]`` / ``scanstream demo --dashboard [PORT]``: the process
  that writes serves the page from a background thread, reading through the writer's own
  client (``WriterDashboard``); after the run it keeps serving until Ctrl-C or SIGTERM;
* ``scanstream dashboard``: reads the path when no writer has it open, and says so clearly
  when one has.

Against a ClickHouse server any process can read: ``scanstream dashboard`` works beside running
workers, and a writer's ``--dashboard`` opens a client of its own.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TextIO

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config, open_clickhouse
from scanstream.engine.config import Config, ConfigError
from scanstream.engine.urls import redact_url
from scanstream.sinks.clickhouse import CHDB_PREFIX
from scanstream.sinks.exceptions import SinkError

DEFAULT_PORT = 8765  # scanstream.dashboard.DEFAULT_PORT; repeated so --help does not import the server
DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEZONE = "Asia/Shanghai"
#: Part of chdb's message when another process holds the data path.
_CHDB_LOCKED = "Cannot lock file"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", parents=[config_option()],
                       help="serve the built-in dashboard (a local web page of live charts)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--timezone", default=DEFAULT_TIMEZONE, help=f"time zone of the charts (default {DEFAULT_TIMEZONE})")
    p.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS", help="page refresh interval (default 5)")
    p.set_defaults(handler=main)


def add_writer_options(p: argparse.ArgumentParser) -> None:
    """``--dashboard [PORT]`` and ``--dashboard-host`` for a command that writes (run, demo)."""
    p.add_argument("--dashboard", nargs="?", type=int, const=DEFAULT_PORT, default=None, metavar="PORT",
                   help=f"serve the dashboard while writing (port {DEFAULT_PORT} unless given; 0: any free port) "
                        "and keep serving after the run until Ctrl-C")
    p.add_argument("--dashboard-host", default=DEFAULT_HOST, metavar="HOST",
                   help=f"address the dashboard listens on (default {DEFAULT_HOST})")


def _source(config: Config) -> str:
    if config.clickhouse.startswith(CHDB_PREFIX):
        return f"embedded ClickHouse {config.clickhouse} · database {config.database}"
    return f"ClickHouse {redact_url(config.clickhouse)} · database {config.database}"


def _new_dashboard(config: Config, host: str, port: int, mode: str, timezone: str = DEFAULT_TIMEZONE,
                   refresh_s: float = 5.0):
    from scanstream.dashboard import Dashboard

    if not config.clickhouse:
        raise ConfigError("sink.clickhouse: the dashboard reads ClickHouse and none is configured "
                          "(e.g. clickhouse = \"chdb:../data/chdb\")")
    try:
        return Dashboard(host=host, port=port, campaigns=config.campaigns,
                         tenants={t.id: t.name for t in config.tenants.values()}, timezone=timezone,
                         refresh_s=refresh_s, source=_source(config), mode=mode)
    except OSError as exc:
        raise ConfigError(f"dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except (KeyError, ValueError) as exc:  # zoneinfo: unknown or malformed zone name
        raise ConfigError(f"--timezone {timezone!r}: not a known time zone ({exc})") from None


def wait_for_stop() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(text: str, out: TextIO | None = None) -> None:
    print(f"dashboard: {text}", file=out or sys.stderr, flush=True)


class WriterDashboard:
    """The dashboard of a writing process (``run``/``demo --dashboard``).

    Created before any work, so a busy port fails first; serves at once (panels answer 503
    until ClickHouse is open).  ``attach`` is called by ``scanstream.cli.run.execute`` with the
    writer's sink: with chdb the page reads through that same client (chdb allows one process
    per path, and clickhouse-connect serialises calls on a chdb client); with a server it opens
    a client of its own.  ``close`` stops serving and closes the sink it was given.
    """

    def __init__(self, config: Config, host: str, port: int):
        self.config = config
        self.dashboard = _new_dashboard(config, host, port, mode="writer").start()
        self._writer_sink = None
        _say(f"{self.dashboard.url} (served by this process while it writes)")

    @property
    def url(self) -> str:
        return self.dashboard.url

    def attach(self, sink) -> None:
        """Read from the writer's ``sink``; the dashboard closes it in ``close`` (after the run)."""
        self._writer_sink = sink
        if self.config.clickhouse.startswith(CHDB_PREFIX):
            self.dashboard.attach(sink)
        else:
            self.dashboard.attach(open_clickhouse(self.config, create_schema=False), owned=True)

    def finished(self) -> None:
        self.dashboard.writer_finished()

    def serve_until_stopped(self) -> None:
        self.finished()
        _say(f"writing finished; still serving {self.url} - press Ctrl-C to stop")
        wait_for_stop()

    def close(self) -> None:
        self.dashboard.close()
        if self._writer_sink is not None:
            self._writer_sink.close()
            self._writer_sink = None
        _say("stopped")


def writer_dashboard(args: argparse.Namespace, config: Config) -> WriterDashboard | None:
    """The dashboard ``--dashboard`` asks for, serving already; None without the flag."""
    port = getattr(args, "dashboard", None)
    if port is None:
        return None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--dashboard {port}: expected a port number 0..65535")
    return WriterDashboard(config, args.dashboard_host, port)


def _locked_message(config: Config, pid: int | None) -> str:
    path = config.clickhouse[len(CHDB_PREFIX):]
    who = f"process {pid}" if pid else "another process"
    return (f"scanstream: the embedded ClickHouse at {path} is open in {who} (a `scanstream run`, `demo` or "
            "`dashboard`?); chdb lets one process open a data path at a time. Serve the page from the process "
            "that writes (`scanstream run --dashboard` or `scanstream demo --dashboard`), or run "
            "`scanstream dashboard` when it has finished.")


def main(args: argparse.Namespace) -> int:
    config = load_config(args)
    if not config.clickhouse:
        raise ConfigError("sink.clickhouse: the dashboard reads ClickHouse and none is configured "
                          "(e.g. clickhouse = \"chdb:../data/chdb\")")
    embedded = config.clickhouse.startswith(CHDB_PREFIX)
    if embedded:
        from scanstream.dashboard import chdb_path_holder

        holder = chdb_path_holder(config.clickhouse)
        if holder is not None:
            print(_locked_message(config, holder), file=sys.stderr)
            return exits.UNAVAILABLE  # held by another process: the same command works once it ends
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected a port number 0..65535")
    dashboard = _new_dashboard(config, args.host, args.port, mode="reader", timezone=args.timezone,
                               refresh_s=args.refresh)
    try:
        try:
            # a reader creates missing tables on chdb (an empty page, not errors); on a server the
            # writers own the schema and the reader may lack DDL rights
            sink = open_clickhouse(config, create_schema=embedded)
        except SinkError as exc:
            if embedded and _CHDB_LOCKED in str(exc):
                print(_locked_message(config, None), file=sys.stderr)
                return exits.UNAVAILABLE
            raise
        dashboard.attach(sink, owned=True)
        dashboard.start()
        if not dashboard.has_plotly:
            _say("plotly is not installed, the page will have no charts: pip install 'scanstream[embedded]'")
        _say(f"serving {dashboard.url} ({_source(config)}) - press Ctrl-C to stop")
        wait_for_stop()
    finally:
        dashboard.close()
        _say("stopped")
    return exits.OK
