"""The dashboard's web server: the page, its static files, Plotly from the installed package,
and one JSON endpoint per panel.

Starlette on uvicorn, the HTTP gateway's stack (``scanstream.api``), in a daemon thread: one
event loop holds every connection, so a slow or idle client costs a socket, not a thread (the
standard library's threading server gave each connection a thread, and had a backlog of 5), and
keep-alive connections are closed after ``KEEP_ALIVE_S``.  The panel endpoints are plain
functions that Starlette runs in its bounded thread pool, because the queries block.  The port is
bound when the dashboard is created (so a busy port fails before a run starts).
Until a ClickHouse sink is attached (``attach``) the panel endpoints answer 503, so a writer
can start serving the page before it has opened ClickHouse.

Queries: every panel query and the throughput sampler go through one lock, so the dashboard
runs one query at a time on its client.  In a writer process the client may be the writer's
own (chdb allows one process per data path): clickhouse-connect's chdb backend serialises
every call on a client with its own handle lock, so dashboard reads and the writer's inserts
interleave between calls, never inside one.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import importlib.util
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from scanstream.dashboard import panels as panels_mod
from scanstream.dashboard.queries import ROWS_WRITTEN_SQL
from scanstream.sinks.exceptions import SinkError

log = logging.getLogger("scanstream.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_TIMEZONE = "Asia/Shanghai"
#: How often the page polls the panels, seconds.
DEFAULT_REFRESH_S = 5.0
#: How often the throughput sampler counts the rows of scan_events, seconds; samples kept.
SAMPLE_EVERY_S = 1.0
MAX_SAMPLES = 3600

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
#: Every answer is fresh data (or a file that changes with the installed version): never cached,
#: never sniffed into another type.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
#: Pending connections the listening socket queues (the standard library's server kept 5).
BACKLOG = 128
#: An idle keep-alive connection is closed after this many seconds.
KEEP_ALIVE_S = 5
#: How long ``start`` and ``close`` wait for the server thread.
START_TIMEOUT_S = 10.0
#: Plotly's bundled browser build inside the ``plotly`` Python package.
PLOTLY_PACKAGE = "plotly"
PLOTLY_FILE = ("package_data", "plotly.min.js")


class NotReady(Exception):
    """No ClickHouse is attached yet (a writer still starting)."""


def plotly_js_path() -> Path | None:
    """``plotly.min.js`` of the installed ``plotly`` package, found without importing it; None when absent."""
    spec = importlib.util.find_spec(PLOTLY_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*PLOTLY_FILE)
    return path if path.is_file() else None


def chdb_path_holder(target: str) -> int | None:
    """The process holding the chdb data path of ``target`` (``chdb:PATH``), if another process holds it.

    The embedded engine keeps ``PATH/status`` (which names its PID) locked with ``flock`` while
    a process has the path open; a lock we cannot take means another process has it.  Returns
    that process's PID (0 when the file does not name one), or None when the path is free.
    """
    raw = target.removeprefix("chdb:")
    raw = raw.removeprefix("//")
    status = Path(os.path.abspath(os.path.expanduser(raw))) / "status"
    try:
        fh = status.open("rb")
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        except OSError:
            return None
        else:
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None
        try:
            for line in fh.read(4096).decode("utf-8", "replace").splitlines():
                if line.startswith("PID:"):
                    return int(line.split(":", 1)[1].strip())
        except ValueError:
            pass
    return 0


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


class Dashboard:
    """The dashboard of one process: its HTTP server, the attached sink and the throughput sampler.

    ``campaigns`` and ``tenants`` come from the loaded configuration (budgets and names are
    not in ClickHouse).  ``source`` describes the data for the page header (e.g. the redacted
    ClickHouse target); ``mode`` is ``writer`` (served by the process that writes) or ``reader``.
    """

    def __init__(self, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, campaigns: Sequence[Any] = (),
                 tenants: Mapping[int, str] | None = None, timezone: str = DEFAULT_TIMEZONE,
                 refresh_s: float = DEFAULT_REFRESH_S, source: str = "", mode: str = "reader"):
        ZoneInfo(timezone)  # raises for an unknown zone, before anything starts
        self.campaigns = tuple(campaigns)
        self.tenants = dict(tenants or {})
        self.timezone = timezone
        self.refresh_s = refresh_s
        self.source = source
        self.mode = mode
        self.writer_state = "starting" if mode == "writer" else None
        self.started = time.time()
        self._sink = None
        self._owns_sink = False
        self._lock = threading.Lock()  # one query at a time on the sink's client
        self._samples: deque[tuple[float, int]] = deque(maxlen=MAX_SAMPLES)
        self._sample_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._plotly = plotly_js_path()
        self._plotly_bytes: bytes | None = None
        # binds now: a busy port is an error before any work starts
        self._socket = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                            backlog=BACKLOG)
        self.server = uvicorn.Server(uvicorn.Config(
            _app(self), loop="asyncio", http="h11", lifespan="off", log_level="warning", access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S, server_header=False))

    # ---- lifecycle ------------------------------------------------------

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self._socket.getsockname()[0]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    @property
    def has_plotly(self) -> bool:
        return self._plotly is not None

    def start(self) -> Dashboard:
        """Serve from a daemon thread; returns self."""
        t = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, name="dashboard-http",
                             daemon=True)
        t.start()
        self._threads.append(t)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def attach(self, sink, *, owned: bool = False) -> None:
        """Read from ``sink`` (a ``ClickHouseSink``) from now on; ``owned``: close it in ``close``."""
        with self._lock:
            self._sink, self._owns_sink = sink, owned
        if self.mode == "writer":
            self.writer_state = "running"
        t = threading.Thread(target=self._sample_loop, name="dashboard-sampler", daemon=True)
        t.start()
        self._threads.append(t)

    def detach(self) -> None:
        """Stop reading (the sink is closed elsewhere)."""
        with self._lock:
            self._sink = None

    def close(self) -> None:
        """Stop serving and sampling; close the sink when it was handed over as owned."""
        self._stop.set()
        self.server.should_exit = True
        for t in self._threads:
            if t.name == "dashboard-http":
                t.join(START_TIMEOUT_S)
        self._socket.close()
        with self._lock:
            sink, owned, self._sink = self._sink, self._owns_sink, None
        if sink is not None and owned:
            sink.close()

    # ---- queries ----------------------------------------------------------

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        with self._lock:
            if self._sink is None:
                raise NotReady("waiting for the writer to open ClickHouse")
            return self._sink.query(sql, dict(params or {}))

    def writer_finished(self) -> None:
        """The writer is done: say so on the page, and sample the final row count at once."""
        self.writer_state = "finished"
        self._sample()

    def _sample(self) -> None:
        try:
            _, rows = self.query(ROWS_WRITTEN_SQL)
            self._samples.append((time.time(), int(rows[0][0])))
            self._sample_error = None
        except NotReady:
            pass
        except (SinkError, OSError) as exc:
            self._sample_error = str(exc)
            log.debug("throughput sample failed: %s", exc)

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_EVERY_S)

    def throughput(self) -> dict:
        """Samples as [[wall-clock time, rows written, rows/s since the previous sample]] and key figures."""
        zone = ZoneInfo(self.timezone)
        samples = list(self._samples)
        out, rates = [], []
        for i, (t, n) in enumerate(samples):
            rate = 0.0
            if i:
                pt, pn = samples[i - 1]
                rate = max(n - pn, 0) / max(t - pt, 1e-6)
            rates.append(rate)
            out.append([dt.datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], n, round(rate, 1)])
        return {"samples": out, "current": rates[-1] if rates else 0.0, "peak": max(rates, default=0.0),
                "written": samples[-1][1] - samples[0][1] if samples else 0, "rows": samples[-1][1] if samples else 0,
                "tz": self.timezone, "error": self._sample_error}

    def panel(self, name: str, tenant: int = -1, window_min: int = panels_mod.DEFAULT_WINDOW_MIN) -> dict:
        """Run one panel; raises KeyError for an unknown name, NotReady, SinkError."""
        panel = panels_mod.PANELS_BY_NAME[name]
        ctx = panels_mod.Context(query=self.query, tenant=tenant, tz=self.timezone, window_min=window_min,
                                 campaigns=self.campaigns, throughput=self.throughput)
        started = time.perf_counter()
        result = panel.build(ctx)
        result.update(name=panel.name, title=panel.title, note=panel.note, sql=ctx.sql_used,
                      params=ctx.params(), ms=round(1000 * (time.perf_counter() - started), 1))
        return result

    def status(self) -> dict:
        zone = ZoneInfo(self.timezone)
        return {
            "mode": self.mode, "writer": self.writer_state, "ready": self._sink is not None,
            "source": self.source, "timezone": self.timezone, "refresh_s": self.refresh_s,
            "tenants": [{"id": k, "name": v} for k, v in sorted(self.tenants.items())],
            "campaigns": [c.id for c in self.campaigns], "plotly": self.has_plotly,
            "now": dt.datetime.now(zone).strftime("%Y-%m-%d %H:%M:%S"),
            "panels": [{"name": p.name, "title": p.title, "note": p.note, "wide": p.wide, "kind": p.kind}
                       for p in panels_mod.PANELS],
        }

    def plotly_bytes(self) -> bytes | None:
        if self._plotly is None:
            return None
        if self._plotly_bytes is None:
            self._plotly_bytes = self._plotly.read_bytes()
        return self._plotly_bytes


def _json_response(status: int, value: Any) -> Response:
    return Response(_json(value), status_code=status, media_type="application/json", headers=NO_STORE)


def _static(name: str) -> Response:
    # only files that are in the static folder, by their plain name
    if "/" in name or name.startswith(".") or not (STATIC_DIR / name).is_file():
        return _json_response(404, {"error": f"no such file {name!r}"})
    kind = STATIC_TYPES.get(Path(name).suffix, "application/octet-stream")
    return Response((STATIC_DIR / name).read_bytes(), media_type=kind, headers=NO_STORE)


def _app(dashboard: Dashboard) -> Starlette:
    """The page, its files and the JSON endpoints of ``dashboard``, as an ASGI application."""

    def index(request: Request) -> Response:
        return _static("index.html")

    def static(request: Request) -> Response:
        return _static(request.path_params["name"])

    def plotly(request: Request) -> Response:
        body = dashboard.plotly_bytes()
        if body is None:
            return Response(b"// plotly is not installed: pip install 'scanstream[embedded]'\n", status_code=404,
                            media_type=STATIC_TYPES[".js"], headers=NO_STORE)
        return Response(body, media_type=STATIC_TYPES[".js"], headers={**NO_STORE, "Cache-Control": "max-age=86400"})

    def status(request: Request) -> Response:
        return _json_response(200, dashboard.status())

    def panels(request: Request) -> Response:
        return _json_response(200, dashboard.status()["panels"])

    def panel(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in panels_mod.PANELS_BY_NAME:
            return _json_response(404, {"error": f"no panel {name!r}; expected one of {list(panels_mod.PANELS_BY_NAME)}"})
        try:
            tenant = int(request.query_params.get("tenant") or -1)
            window = int(request.query_params.get("window") or panels_mod.DEFAULT_WINDOW_MIN)
            if not -1 <= tenant <= 65535 or not 1 <= window <= panels_mod.MAX_WINDOW_MIN:
                raise ValueError
        except ValueError:
            return _json_response(400, {"name": name, "error": "tenant: expected -1 (all) or 0..65535; "
                                                               f"window: expected 1..{panels_mod.MAX_WINDOW_MIN} minutes"})
        try:
            return _json_response(200, dashboard.panel(name, tenant, window))
        except NotReady as exc:
            return _json_response(503, {"name": name, "error": str(exc)})
        except SinkError as exc:
            log.warning("panel %s: %s", name, exc)
            return _json_response(500, {"name": name, "error": str(exc)})
        except Exception as exc:  # a bug in a panel must not take the page down
            log.exception("panel %s failed", name)
            return _json_response(500, {"name": name, "error": f"{type(exc).__name__}: {exc}"})

    def favicon(request: Request) -> Response:
        return Response(b"", status_code=204, media_type="image/x-icon")

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json_response(404, {"error": f"no such page {request.url.path!r}"})

    return Starlette(routes=[
        Route("/", index), Route("/index.html", index), Route("/static/{name:path}", static),
        Route("/vendor/plotly.min.js", plotly), Route("/api/status", status), Route("/api/panels", panels),
        Route("/api/panel/{name:path}", panel), Route("/favicon.ico", favicon),
    ], exception_handlers={404: not_found, 405: not_found})
