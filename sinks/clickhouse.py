"""ClickHouse output: outcome batches as one columnar INSERT each, to a server or embedded chdb.

One factory, ``connect(target)``, chooses the engine from the target string: an
``http(s)://user:pass@host:port`` URL talks to a ClickHouse server over HTTP, ``chdb:path``
opens the embedded engine on a data directory.  Everything else takes the resulting
clickhouse-connect client, so the engine code path and the tests are the same for both.

Wire format choices, measured on clickhouse-connect 1.12 / chdb 26.9 (200 000 scan rows):

* ``DateTime64`` columns arrive as int64 epoch milliseconds.  clickhouse-connect writes a
  DateTime64 column as raw ticks only when its first value is a Python ``int``; numpy int64
  and ``datetime64[ms]`` arrays are taken for datetime objects and fail, and ``datetime``
  objects cost one Python object per row (0.15 s per 200 000 rows) only to be turned back
  into ticks by the driver.  So a ts column is sent
  as ``(ms * 10**(scale - 3)).tolist()``: the stored value is exactly the millisecond given.
* ``LowCardinality(String)`` columns are declared as plain ``String`` on the wire: the
  driver builds LowCardinality dictionaries in a Python loop (about 0.4 s per million values,
  most of the client time of a scan batch), while the server converts a String column to the
  table's LowCardinality type when it reads the Native block, at a fraction of that cost.
* Column types are given with the insert, so no ``DESCRIBE`` round trip precedes each batch.

Replay safety: every insert may carry ``dedup_token`` (ClickHouse's
``insert_deduplication_token``).  The DDL in ``config/clickhouse`` sets
``non_replicated_deduplication_window`` on the outcome tables, without which a plain
(non-replicated) MergeTree ignores the token; with it, re-inserting a batch with the same
token is a no-op on chdb and on a server alike.  The ReplacingMergeTree keys collapse what
still gets in twice.
"""
from __future__ import annotations

import importlib
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from scanstream.engine.outcomes import ALERT_COLUMNS, AWARD_COLUMNS, DELIVERY_COLUMNS, SCAN_COLUMNS, Columns
from scanstream.sinks.exceptions import SinkError

#: The DDL applied by ``ClickHouseSink.ensure_schema``: ``*.sql`` files, in file-name order.
DEFAULT_DDL_DIR = Path(next(iter(importlib.import_module("scanstream.sinks.ddl").__path__)))
#: Database created by ``connect`` and used by its client.
DEFAULT_DATABASE = "scanstream"

#: Target prefix of the embedded engine: ``chdb:/abs/path`` or ``chdb:relative/path``.
CHDB_PREFIX = "chdb:"
#: URL schemes of a ClickHouse server and their default HTTP ports.
HTTP_DEFAULT_PORTS: dict[str, int] = {"http": 8123, "https": 8443}
#: User of a URL that names none (ClickHouse's own default user).
DEFAULT_USER = "default"
#: Shown instead of a password in every message.
REDACTED = "***"

#: Setting that names an insert for deduplication (needs non_replicated_deduplication_window
#: on non-replicated tables, set in the DDL).
DEDUP_TOKEN_SETTING = "insert_deduplication_token"
#: Settings of every insert.  optimize_on_insert=0: the replacing merge at insert time only
#: collapses duplicates inside one batch, which the pipeline never produces, and it cost
#: 15-30 % of a 200 000-row scan insert on chdb; merges and FINAL still collapse replays.
INSERT_SETTINGS: dict[str, Any] = {"optimize_on_insert": 0}

SCAN_TABLE = "scan_events"
ALERT_TABLE = "alerts"
AWARD_TABLE = "awards"
DELIVERY_TABLE = "alert_deliveries"

#: Tables whose columns must equal a contract; ``ensure_schema`` checks them after the DDL, so
#: an older table left in place by ``IF NOT EXISTS`` fails at start, not at the first insert.
CONTRACT_TABLES: dict[str, tuple[tuple[str, str, str], ...]] = {
    SCAN_TABLE: SCAN_COLUMNS,
    ALERT_TABLE: ALERT_COLUMNS,
    AWARD_TABLE: AWARD_COLUMNS,
    DELIVERY_TABLE: DELIVERY_COLUMNS,
}

ColumnSpec = tuple[tuple[str, str, str], ...]

#: ``state_runs`` (config/clickhouse/050_state_runs.sql): the runs of embedded states.
STATE_RUN_COLUMNS: ColumnSpec = (
    ("state_id", "O", "String"),
    ("run", "uint64", "UInt64"),
    ("input", "O", "String"),
    ("ts", "int64", "DateTime64(3, 'UTC')"),
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATETIME64 = re.compile(r"^DateTime64\(\s*(\d)\s*(?:,.*)?\)$")
_LOW_CARDINALITY = re.compile(r"^LowCardinality\((.*)\)$")
# Greedy up to the netloc's last '@', as urlsplit reads it: an unencoded '@' in a password
# must not leave the rest of the password visible.
_URL_PASSWORD = re.compile(r"(//[^/@:]*:)([^/]*)(@)")
#: Milliseconds carry scale 3; DateTime64(p) stores 10**p ticks per second.
_MS_SCALE = 3
#: Shorter passwords are not searched for in driver messages (see _scrub).
_MIN_SCRUB_LEN = 4
#: Longest SQL text quoted in an error message.
_SQL_IN_MESSAGE = 200


# --------------------------------------------------------------------------- connect


def redact(target: str) -> str:
    """``target`` with the password of a ``scheme://user:password@host`` URL replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), target)


def _scrub(text: str, secret: str | None) -> str:
    # Driver messages do not quote credentials (they travel in a header); this is a second
    # guard.  A very short secret would match inside ordinary words and garble the message.
    return text.replace(secret, REDACTED) if secret and len(secret) >= _MIN_SCRUB_LEN else text


def _quote_identifier(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise SinkError(f"{what} {name!r}: expected a plain identifier (letters, digits, '_', not starting with a digit)")
    return f"`{name}`"


def connect(target: str, *, database: str = DEFAULT_DATABASE) -> Client:
    """A clickhouse-connect client for ``target``, using ``database`` (created when missing).

    ``target`` is ``http(s)://user:password@host:port`` for a ClickHouse server, or
    ``chdb:path`` for the embedded engine with its data in directory ``path`` (relative paths
    are resolved against the current directory now, because chdb may change it).  chdb allows
    one data path per process (and one process per path): every client of a process must use
    the same path until all of them are closed.  Failures raise ``SinkError`` naming the target
    with its password redacted.
    """
    db_sql = _quote_identifier(database, "database")
    if not isinstance(target, str) or not target.strip():
        raise SinkError(f"ClickHouse target {target!r}: expected 'http(s)://user:password@host:port' or 'chdb:path'")
    target = target.strip()
    if target.startswith(CHDB_PREFIX):
        client, secret = _connect_chdb(target), None
    else:
        client, secret = _connect_http(target)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {db_sql}")
    except ClickHouseError as exc:
        client.close()
        raise SinkError(f"ClickHouse {redact(target)}: cannot create database {database!r}: "
                        f"{_scrub(str(exc), secret)}") from None
    client.database = database
    return client


def connect_readonly(target: str, *, database: str = DEFAULT_DATABASE) -> Client:
    """A client of an existing ``database`` that cannot write: nothing is created, not even the
    database or a chdb folder, and queries run with ClickHouse's ``readonly = 2``.

    Raises ``SinkError`` when the database does not exist yet (``scanstream run`` or ``demo``
    create it), so a reader works on a full disk and leaves the data folder as it was.
    """
    target = target.strip()
    _quote_identifier(database, "database")
    missing = f"no database {database!r} in {redact(target)} yet; `scanstream run` or `scanstream demo` creates it"
    if target.startswith(CHDB_PREFIX):
        folder = Path(os.path.abspath(os.path.expanduser(target[len(CHDB_PREFIX):].removeprefix("//"))))
        if not (folder / "metadata").is_dir():  # opening chdb on it would lay out a new data folder
            raise SinkError(missing)
        client, secret = _connect_chdb(target), None
    else:
        client, secret = _connect_http(target)
    try:
        found = client.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                             parameters={"db": database}).result_rows[0][0]
        if not found:
            raise SinkError(missing)
        client.database = database
        readonly = client.server_settings.get("readonly")
        if readonly is not None and readonly.value == "0":  # a read-only server user is already so
            client.set_client_setting("readonly", "2")  # 2: reads, and settings a query may need
    except ClickHouseError as exc:
        client.close()
        raise SinkError(f"ClickHouse {redact(target)}: {_scrub(str(exc), secret)}") from None
    except BaseException:
        client.close()
        raise
    return client


def _connect_http(target: str) -> tuple[Client, str | None]:
    shown = redact(target)
    try:
        parts = urllib.parse.urlsplit(target)
        port = parts.port
    except ValueError as exc:
        raise SinkError(f"ClickHouse target {shown!r}: not a URL ({exc}); expected "
                        "'http(s)://user:password@host:port' or 'chdb:path'") from None
    if parts.scheme not in HTTP_DEFAULT_PORTS or not parts.hostname:
        raise SinkError(f"ClickHouse target {shown!r}: expected 'http(s)://user:password@host:port' or 'chdb:path'")
    if parts.path not in ("", "/") or parts.query:
        raise SinkError(f"ClickHouse target {shown!r}: expected no path or query after host:port "
                        "(the database is the 'database' argument)")
    password = urllib.parse.unquote(parts.password) if parts.password else ""
    import clickhouse_connect  # deferred: a chdb-only process never needs the HTTP stack warm

    try:
        client = clickhouse_connect.get_client(
            interface=parts.scheme,
            host=parts.hostname,
            port=port or HTTP_DEFAULT_PORTS[parts.scheme],
            username=urllib.parse.unquote(parts.username) if parts.username else DEFAULT_USER,
            password=password,
            # no session: the worker's store thread and its registry reloader share this client,
            # and ClickHouse refuses two queries at once in one session; nothing here needs one
            autogenerate_session_id=False,
        )
    except (ClickHouseError, OSError) as exc:
        host = f"{parts.hostname}:{port or HTTP_DEFAULT_PORTS[parts.scheme]}"
        # from None: the driver's exception chain may quote the request, so it is not re-raised.
        raise SinkError(f"ClickHouse server {host} ({shown}) is unreachable or refused the connection: "
                        f"{_scrub(str(exc), password)}") from None
    return client, password or None


def _connect_chdb(target: str) -> Client:
    raw = target[len(CHDB_PREFIX):]
    if raw.startswith("//"):  # clickhouse-connect's chdb:///abs/path spelling
        raw = raw[2:]
    if not raw:
        raise SinkError(f"chdb target {target!r}: expected a data directory, as in 'chdb:/var/lib/scanstream'")
    # Absolute before the engine is touched: importing or starting chdb may change the
    # working directory, after which a relative path would point elsewhere.
    path = Path(os.path.abspath(os.path.expanduser(raw)))
    if path.exists() and not path.is_dir():
        raise SinkError(f"chdb target {target!r}: {path} is a file; expected a data directory")
    cwd = os.getcwd()
    try:
        path.mkdir(parents=True, exist_ok=True)
        import clickhouse_connect

        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    except ImportError as exc:
        raise SinkError(f"chdb target {target!r}: the embedded engine is not installed ({exc}); "
                        "expected 'pip install scanstream[embedded]'") from None
    except (ClickHouseError, OSError, RuntimeError) as exc:
        raise SinkError(f"chdb target {target!r} ({path}): cannot open the embedded engine: {exc}. "
                        "A process can use one chdb path at a time, and a path one process at a time") from exc
    finally:
        if os.getcwd() != cwd:
            os.chdir(cwd)


# --------------------------------------------------------------------------- DDL


def split_statements(sql: str) -> list[str]:
    """The ``;``-separated statements of ``sql``, comments removed, empty ones dropped.

    Quotes (``'``, ``"``, backticks, with backslash escapes) are respected, so a ``;`` or
    ``--`` inside a literal does not split or truncate a statement.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    quote: str | None = None
    while i < n:
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < n:
                current.append(sql[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
            i += 1
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise SinkError(f"unterminated /* comment at offset {i}; expected a closing */")
            current.append(" ")
            i = end + 2
        elif ch == ";":
            statements.append("".join(current).strip())
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    if quote:
        raise SinkError(f"unterminated {quote} quote; expected a closing {quote}")
    statements.append("".join(current).strip())
    return [s for s in statements if s]


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True, slots=True)
class _WireColumn:
    """How one contract column goes on the wire."""

    name: str
    dtype: str  # numpy dtype of the batch column
    wire_type: str  # ClickHouse type declared to the driver
    ticks_per_ms: int  # DateTime64: ms -> stored ticks multiplier; 0 otherwise
    ms_per_tick: int  # DateTime64 with scale < 3: ms -> ticks divisor; 0 otherwise


@lru_cache(maxsize=64)
def _wire_plan(column_spec: ColumnSpec) -> tuple[_WireColumn, ...]:
    plan = []
    for name, dtype, ch_type in column_spec:
        wire_type = ch_type
        lc = _LOW_CARDINALITY.match(ch_type)
        if lc:
            # The server converts String -> LowCardinality(String) when reading a Native
            # block; the driver's own dictionary encoding is a slow Python loop.
            wire_type = lc.group(1)
        ticks_per_ms = ms_per_tick = 0
        dt64 = _DATETIME64.match(ch_type)
        if dt64:
            scale = int(dt64.group(1))
            if scale >= _MS_SCALE:
                ticks_per_ms = 10 ** (scale - _MS_SCALE)
            else:
                ms_per_tick = 10 ** (_MS_SCALE - scale)
        plan.append(_WireColumn(name, dtype, wire_type, ticks_per_ms, ms_per_tick))
    return tuple(plan)


def _length(batch: Mapping[str, Any]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _epoch_ms(values: Any, name: str, table: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "M":  # datetime64 of any unit: normalise to ms
        return arr.astype("datetime64[ms]").view(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    raise SinkError(f"{table}.{name}: got dtype {arr.dtype}; expected int64 epoch milliseconds", table=table)


def _numeric(values: Any, dtype: str, name: str, table: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype != np.dtype(dtype):
        converted = arr.astype(dtype)
        # astype wraps or truncates silently (70000 -> 4464 for uint16); refuse a lossy cast.
        bad = np.flatnonzero(converted != arr)
        if bad.size:
            value = arr[bad[0]]
            value = value.item() if isinstance(value, np.generic) else value
            raise SinkError(f"{table}.{name}: value {value!r} at row {bad[0]} does not fit {dtype}; "
                            f"expected values of the contract dtype {dtype}", table=table, rows=len(arr))
        arr = converted
    # The driver's fast numeric path hands the buffer to C: it must be contiguous.
    return np.ascontiguousarray(arr)


def _wire_data(batch: Mapping[str, Any], plan: tuple[_WireColumn, ...], table: str, n: int) -> list[Any]:
    data: list[Any] = []
    for col in plan:
        values = batch[col.name]
        if len(values) != n:
            raise SinkError(f"{table}.{col.name}: {len(values)} rows; expected {n} like the batch's other columns",
                            table=table, rows=n)
        if col.ticks_per_ms or col.ms_per_tick:
            ms = _epoch_ms(values, col.name, table)
            if col.ticks_per_ms > 1:
                ticks = ms * col.ticks_per_ms
            elif col.ms_per_tick:
                ticks = ms // col.ms_per_tick
            else:
                ticks = ms
            # Python ints take the driver's raw-ticks path; numpy scalars would be treated as datetimes.
            data.append(ticks.tolist())
        elif col.dtype == "O":
            data.append(values)
        else:
            data.append(_numeric(values, col.dtype, col.name, table))
    return data


def batch_from_rows(rows: Iterable[Mapping[str, Any]], column_spec: ColumnSpec) -> Columns:
    """A columnar batch from row dicts (e.g. the notifier's delivery records); missing fields
    are zero or empty, as in ``engine.outcomes.empty``."""
    rows = list(rows)
    out: Columns = {}
    for name, dtype, _ in column_spec:
        if dtype == "O":
            arr = np.empty(len(rows), dtype=object)
            arr[:] = [row.get(name, "") for row in rows]
        else:
            arr = np.array([row.get(name, 0) for row in rows], dtype=dtype)
        out[name] = arr
    return out


# --------------------------------------------------------------------------- sink


class ClickHouseSink:
    """Writes outcome batches to ClickHouse through a clickhouse-connect client.

    The sink owns no connection logic: give it any client (``connect`` makes one for a server
    or for chdb).  Each ``write_*`` is one columnar INSERT; pass ``dedup_token`` (stable for a
    batch, e.g. derived from the Kafka offsets it covers) so a batch re-sent after a crash is
    not stored twice.
    """

    def __init__(self, client: Client):
        self.client = client

    # ---- schema -------------------------------------------------------

    def ensure_schema(self, ddl_dir: Path = DEFAULT_DDL_DIR) -> int:
        """Apply every ``*.sql`` file of ``ddl_dir`` in file-name order, then check that the
        outcome tables have the contract columns.  Idempotent.  Returns the statement count."""
        ddl_dir = Path(ddl_dir)
        files = sorted(ddl_dir.glob("*.sql")) if ddl_dir.is_dir() else []
        if not files:
            raise SinkError(f"DDL folder {ddl_dir}: no *.sql files; expected the schema (default {DEFAULT_DDL_DIR})")
        applied = 0
        for path in files:
            for statement in split_statements(path.read_text(encoding="utf-8")):
                try:
                    self.client.command(statement)
                except ClickHouseError as exc:
                    first_line = statement.splitlines()[0][:_SQL_IN_MESSAGE]
                    raise SinkError(f"DDL {path.name}: {first_line!r} failed: {exc}") from exc
                applied += 1
        self.check_schema()
        return applied

    def check_schema(self) -> None:
        """Raise ``SinkError`` when an outcome table's columns differ from its contract."""
        _, rows = self.query(
            "SELECT table, name, type FROM system.columns WHERE database = currentDatabase() "
            "AND table IN {tables:Array(String)} AND default_kind != 'MATERIALIZED' ORDER BY table, position",
            {"tables": list(CONTRACT_TABLES)},
        )
        found: dict[str, list[tuple[str, str]]] = {}
        for table, name, ch_type in rows:
            found.setdefault(table, []).append((name, ch_type))
        for table, spec in CONTRACT_TABLES.items():
            expected = [(name, ch_type) for name, _, ch_type in spec]
            actual = found.get(table, [])
            if actual != expected:
                diff = sorted(set(actual) ^ set(expected))
                raise SinkError(f"table {table}: columns differ from the contract (sinks/clickhouse.py, "
                                f"engine/outcomes.py) in {diff or 'order'}; expected {expected}", table=table)

    # ---- writes ---------------------------------------------------------

    def insert(self, table: str, batch: Mapping[str, Any], column_spec: ColumnSpec, *,
               dedup_token: str | None = None) -> int:
        """Store ``batch`` (column name -> array) in ``table`` with ONE columnar insert.

        Only the columns of ``column_spec`` are written, in its order.  ``dedup_token`` makes a
        repeat of this insert a no-op on tables with a deduplication window.  An empty batch
        is not sent.  Returns the rows written.
        """
        _quote_identifier(table, "table")
        n = _length(batch)
        if n == 0:
            return 0
        missing = [name for name, _, _ in column_spec if name not in batch]
        if missing:
            raise SinkError(f"{table}: batch lacks columns {missing}; expected all of "
                            f"{[name for name, _, _ in column_spec]}", table=table, rows=n)
        plan = _wire_plan(tuple(column_spec))
        data = _wire_data(batch, plan, table, n)
        settings = dict(INSERT_SETTINGS)
        if dedup_token:
            settings[DEDUP_TOKEN_SETTING] = dedup_token
        try:
            self.client.insert(
                table,
                data,
                column_names=[c.name for c in plan],
                column_type_names=[c.wire_type for c in plan],
                column_oriented=True,
                settings=settings,
            )
        except (ClickHouseError, OSError) as exc:
            raise SinkError(f"insert of {n} rows into {table} failed: {exc}", table=table, rows=n) from exc
        return n

    def write_scans(self, batch: Columns, *, dedup_token: str | None = None) -> int:
        """Store per-scan outcomes (``SCAN_COLUMNS``) in ``scan_events``."""
        return self.insert(SCAN_TABLE, batch, SCAN_COLUMNS, dedup_token=dedup_token)

    def write_alerts(self, batch: Columns, *, dedup_token: str | None = None) -> int:
        """Store fired alerts (``ALERT_COLUMNS``) in ``alerts``."""
        return self.insert(ALERT_TABLE, batch, ALERT_COLUMNS, dedup_token=dedup_token)

    def write_awards(self, batch: Columns, *, dedup_token: str | None = None) -> int:
        """Store granted prizes (``AWARD_COLUMNS``) in ``awards``."""
        return self.insert(AWARD_TABLE, batch, AWARD_COLUMNS, dedup_token=dedup_token)

    def write_deliveries(self, batch: Columns, *, dedup_token: str | None = None) -> int:
        """Store webhook delivery records (``DELIVERY_COLUMNS``) in ``alert_deliveries``;
        ``batch_from_rows`` turns the notifier's record dicts into a batch."""
        return self.insert(DELIVERY_TABLE, batch, DELIVERY_COLUMNS, dedup_token=dedup_token)

    # ---- the runs of embedded states -----------------------------------------

    def state_runs(self, state_id: str) -> tuple[int, int]:
        """(the last run of ``state_id`` recorded here, runs of other states recorded here)."""
        _, rows = self.query("SELECT max(if(state_id = {id:String}, run, 0)), countIf(state_id != {id:String}) "
                             "FROM state_runs", parameters={"id": state_id})
        return int(rows[0][0]), int(rows[0][1])

    def record_state_run(self, state_id: str, run: int, input_name: str, ts_ms: int) -> None:
        """Say that run ``run`` of ``state_id`` writes here from now on."""
        self.insert("state_runs", {"state_id": np.array([state_id], object), "run": np.array([run], np.uint64),
                                   "input": np.array([input_name], object), "ts": np.array([ts_ms], np.int64)},
                    STATE_RUN_COLUMNS)

    # ---- reads ------------------------------------------------------------

    def query(self, sql: str, parameters: Mapping[str, Any] | Sequence[Any] | None = None
              ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a SELECT; returns (column names, rows).  ``parameters`` bind ``{name:Type}``
        placeholders (server-side binding) or ``%(name)s`` ones (client-side)."""
        try:
            result = self.client.query(sql, parameters=parameters)
        except ClickHouseError as exc:
            raise SinkError(f"query {sql[:_SQL_IN_MESSAGE]!r} failed: {exc}") from exc
        return list(result.column_names), [tuple(row) for row in result.result_rows]

    def close(self) -> None:
        """Close the client (for chdb: release the engine handle, so another path may be opened)."""
        self.client.close()
