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

A token is not proof that its rows are stored, though: a non-replicated MergeTree writes the
block's id to its deduplication log *before* it renames the new part into place
(``MergeTreeSink::finishDelayedChunk``), so a process killed between the two, or an insert that
fails at the rename, leaves an id that drops every later insert of the same batch while no part
holds its rows.  ``OutcomeTables`` therefore checks a batch stored in doubt and inserts again,
without deduplication, the rows a table lacks.

Why one file of this length: the connection, the wire format and the error classification
below are one adapter; the DDL lives in ``config/clickhouse`` and the registry copy in
``registry_tables.py``.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from scanstream.engine.outcomes import ALERT_COLUMNS, AWARD_COLUMNS, DELIVERY_COLUMNS, SCAN_COLUMNS, Columns
from scanstream.engine.pipeline import BatchResult
from scanstream.engine.urls import REDACTED, redact_url
from scanstream.engine.verdicts import Verdict
from scanstream.sinks import migrations
from scanstream.sinks.exceptions import SinkError

log = logging.getLogger("scanstream.clickhouse")

#: The DDL applied by ``ClickHouseSink.ensure_schema``: ``*.sql`` files, in file-name order.
DEFAULT_DDL_DIR = Path(next(iter(importlib.import_module("scanstream.sinks.ddl").__path__)))
#: Database created by ``connect`` and used by its client.
DEFAULT_DATABASE = "scanstream"

#: ClickHouse error codes that a retry can cure: the server is busy, short of memory or disk,
#: timed out, or lost a replica or Keeper for a moment.  Every other server error (a rejected
#: statement, a type or schema mismatch) is permanent.
TRANSIENT_CODES = frozenset({
    74,   # CANNOT_READ_FROM_FILE_DESCRIPTOR  \
    75,   # CANNOT_WRITE_TO_FILE_DESCRIPTOR    | the server's disk failed, not the request:
    76,   # CANNOT_OPEN_FILE                   | the operator fixes the disk and the same
    77,   # CANNOT_CLOSE_FILE                 /  insert then succeeds
    159,  # TIMEOUT_EXCEEDED
    164,  # READONLY (a replica while it reconnects to Keeper)
    173,  # CANNOT_ALLOCATE_MEMORY
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    236,  # ABORTED
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    243,  # NOT_ENOUGH_SPACE
    252,  # TOO_MANY_PARTS
    279,  # ALL_CONNECTION_TRIES_FAILED
    285,  # TOO_FEW_LIVE_REPLICAS
    319,  # UNKNOWN_STATUS_OF_INSERT (the insert is retried under its dedup token)
    394,  # QUERY_WAS_CANCELLED (a server shutting down)
    425,  # SYSTEM_ERROR (an errno from the server's own system calls)
    439,  # CANNOT_SCHEDULE_TASK
    481,  # PATH_ACCESS_DENIED (the storage made read-only or immutable under the server)
    999,  # KEEPER_EXCEPTION
    1000,  # POCO_EXCEPTION (the server's network and file layer)
    1001,  # STD_EXCEPTION (how chdb reports a filesystem error: EPERM, EIO, ENOSPC)
})
_CODE = re.compile(r"\bCode: (\d+)")
#: How ClickHouse reports a failed system call on its own storage ("errno: 1, strerror: ...").
#: Whatever code carries it (481, 458, 1001 ... depending on the call), the request was fine
#: and the disk was not: the operator fixes the disk and the same insert then succeeds.
_ERRNO = re.compile(r"\berrno: \d+, strerror: ")


def _transient(exc: BaseException) -> bool:
    """Whether a failed insert or query may succeed when retried (see ``TRANSIENT_CODES``)."""
    if isinstance(exc, (OSError, OperationalError)):  # unreachable, reset, timed out, disk full
        return True
    text = str(exc)
    found = _CODE.search(text)
    return found is not None and (int(found.group(1)) in TRANSIENT_CODES or _ERRNO.search(text) is not None)


#: Target prefix of the embedded engine: ``chdb:/abs/path`` or ``chdb:relative/path``.
CHDB_PREFIX = "chdb:"
#: URL schemes of a ClickHouse server and their default HTTP ports.
HTTP_DEFAULT_PORTS: dict[str, int] = {"http": 8123, "https": 8443}
#: User of a URL that names none (ClickHouse's own default user).
DEFAULT_USER = "default"

#: Setting that names an insert for deduplication (needs non_replicated_deduplication_window
#: on non-replicated tables, set in the DDL).
DEDUP_TOKEN_SETTING = "insert_deduplication_token"
#: Settings of every insert.  optimize_on_insert=0: the replacing merge at insert time only
#: collapses duplicates inside one batch, which the pipeline never produces, and it cost
#: 15-30 % of a 200 000-row scan insert on chdb; merges and FINAL still collapse replays.
INSERT_SETTINGS: dict[str, Any] = {"optimize_on_insert": 0}
#: Setting that turns deduplication off for one insert (``OutcomeTables``' repair of lost rows).
DEDUPLICATE_SETTING = "insert_deduplicate"

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
#: Milliseconds carry scale 3; DateTime64(p) stores 10**p ticks per second.
_MS_SCALE = 3
#: Shorter passwords are not searched for in driver messages (see _scrub).
_MIN_SCRUB_LEN = 4
#: Longest SQL text quoted in an error message.
_SQL_IN_MESSAGE = 200


# --------------------------------------------------------------------------- connect


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
        raise SinkError(f"ClickHouse {redact_url(target)}: cannot create database {database!r}: "
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
    missing = f"no database {database!r} in {redact_url(target)} yet; `scanstream run` or `scanstream demo` creates it"
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
        raise SinkError(f"ClickHouse {redact_url(target)}: {_scrub(str(exc), secret)}") from None
    except BaseException:
        client.close()
        raise
    return client


def _connect_http(target: str) -> tuple[Client, str | None]:
    shown = redact_url(target)
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
                        f"{_scrub(str(exc), password)}", transient=True) from None
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
        self._outcomes = OutcomeTables(self)  # one for the process: it knows which batch is in doubt

    # ---- schema -------------------------------------------------------

    def ensure_schema(self, ddl_dir: Path = DEFAULT_DDL_DIR) -> int:
        """Apply every ``*.sql`` file of ``ddl_dir`` in file-name order, then check that the
        outcome tables have the contract columns.  Idempotent.  Returns the statement count."""
        ddl_dir = Path(ddl_dir)
        files = sorted(ddl_dir.glob("*.sql")) if ddl_dir.is_dir() else []
        if not files:
            raise SinkError(f"DDL folder {ddl_dir}: no *.sql files; expected the schema (default {DEFAULT_DDL_DIR})")
        migrations.before_ddl(self)  # a table of an older contract is set aside for the DDL to recreate
        applied = 0
        for path in files:
            for statement in split_statements(path.read_text(encoding="utf-8")):
                try:
                    self.command(statement)
                except SinkError as exc:
                    first_line = statement.splitlines()[0][:_SQL_IN_MESSAGE]
                    raise SinkError(f"DDL {path.name}: {first_line!r} failed: {exc.__cause__}",
                                    transient=exc.transient) from exc.__cause__
                applied += 1
        carried = migrations.after_ddl(self)
        if carried:
            log.info("carried %d awards made before payout keys into the new awards table", carried)
        self.check_schema()
        return applied

    def command(self, statement: str) -> None:
        """Run one statement that returns no rows (DDL, RENAME)."""
        try:
            self.client.command(statement)
        except ClickHouseError as exc:
            raise SinkError(f"statement {statement[:_SQL_IN_MESSAGE]!r} failed: {exc}",
                            transient=_transient(exc)) from exc

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
               dedup_token: str | None = None, deduplicate: bool = True) -> int:
        """Store ``batch`` (column name -> array) in ``table`` with ONE columnar insert.

        Only the columns of ``column_spec`` are written, in its order.  ``dedup_token`` makes a
        repeat of this insert a no-op on tables with a deduplication window; ``deduplicate=False``
        stores the rows even when ClickHouse has seen the same block.  An empty batch is not
        sent.  Returns the rows written.
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
        if not deduplicate:
            settings[DEDUPLICATE_SETTING] = 0
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
            raise SinkError(f"insert of {n} rows into {table} failed: {exc}", table=table, rows=n,
                            transient=_transient(exc)) from exc
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

    def store(self, result: BatchResult, token: str) -> None:
        """The ``Sink`` of the outcome tables: ``OutcomeTables(self).store``, one per sink."""
        self._outcomes.store(result, token)

    def stored_keys(self, table: str, key: Sequence[str], batch: Columns) -> set[tuple]:
        """The values of ``key`` (columns of ``table``) that ``table`` holds for the rows of
        ``batch`` (matched on the key's last column, then compared whole)."""
        _quote_identifier(table, "table")
        columns = ", ".join(_quote_identifier(name, "column") for name in key)
        last = key[-1]
        sql = (f"SELECT DISTINCT {columns} FROM {_quote_identifier(table, 'table')} "
               f"WHERE {_quote_identifier(last, 'column')} IN %(values)s")
        held: set[tuple] = set()
        for chunk in _key_chunks(sorted(set(np.asarray(batch[last]).tolist()))):
            held |= {tuple(row) for row in self.query(sql, parameters={"values": tuple(chunk)})[1]}
        return held

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
            raise SinkError(f"query {sql[:_SQL_IN_MESSAGE]!r} failed: {exc}", transient=_transient(exc)) from exc
        return list(result.column_names), [tuple(row) for row in result.result_rows]

    def close(self) -> None:
        """Close the client (for chdb: release the engine handle, so another path may be opened)."""
        self.client.close()


class OutcomeTables:
    """The ``Sink`` of a batch's outcome tables: awards, then alerts, then scans.

    In that order so that every scan row a dashboard shows is backed by the award and the alert
    it implies, whatever insert fails.  Each insert carries ``TOKEN:table`` as its deduplication
    token, so a batch stored again (a retry, a redelivery) is dropped.  ``tables`` is anything
    with ``write_awards``, ``write_alerts`` and ``write_scans`` (a ``ClickHouseSink``).

    A batch is stored *in doubt* when an earlier attempt may have left its token without its
    rows (see the module's docstring):

    * the first batch this object stores: the process before may have died storing it (the
      local driver takes batches one by one, so after a restart only its first batch can be
      one that was being stored);
    * a batch stored after an attempt that raised;
    * a batch processed before, by any process: every scan the state store remembers answered
      as a replay (``redelivered``).  A worker's redelivered messages after a crash are that,
      however many batches the consumer had not committed; a batch of fresh scans cannot have
      been stored under its token before, and a scan API's occasional retry inside a batch of
      fresh scans does not make the batch one.

    After the inserts of such a batch, each table is asked which of the batch's rows it holds
    (``ROW_KEYS``, through ``tables.stored_keys``, in queries of bounded size: a few tens of ms
    for 5 000 rows), and the rows it lacks are inserted again without deduplication.  What that
    adds twice collapses like any replay: the ReplacingMergeTree keys of the outcome tables, the
    distinct-count states of the views fed from scan_events.
    """

    #: Per outcome table: the columns that identify a row of a batch in it.  A scan is named by
    #: its scan_id and verdict (a conflict shares the scan_id of an earlier row).  Not by its
    #: replay flag: a redelivered batch answers its scans as replays, and the rows its first
    #: storing left (replay 0) are the ones readers should see; only a scan held under no row
    #: is missing.
    ROW_KEYS: dict[str, tuple[str, ...]] = {
        AWARD_TABLE: ("tenant", "campaign", "kind", "batch", "serial", "beneficiary"),
        ALERT_TABLE: ("tenant", "alert_id"),
        SCAN_TABLE: ("verdict", "scan_id"),
    }

    def __init__(self, tables) -> None:
        self.tables = tables
        self.in_doubt = True  # the first batch: a process before may have died storing it

    def store(self, result: BatchResult, token: str) -> None:
        doubt = self.in_doubt or redelivered(result.scans)
        self.in_doubt = True  # stays in doubt unless this store completes
        self.tables.write_awards(result.awards, dedup_token=f"{token}:awards")
        self.tables.write_alerts(result.alerts, dedup_token=f"{token}:alerts")
        self.tables.write_scans(result.scans, dedup_token=f"{token}:scans")
        if doubt and hasattr(self.tables, "stored_keys"):
            for table, batch, spec in ((AWARD_TABLE, result.awards, AWARD_COLUMNS),
                                       (ALERT_TABLE, result.alerts, ALERT_COLUMNS),
                                       (SCAN_TABLE, result.scans, SCAN_COLUMNS)):
                self._repair(table, batch, spec)
        self.in_doubt = False

    def _repair(self, table: str, batch: Columns, spec: ColumnSpec) -> None:
        """Insert again, without deduplication, the rows of ``batch`` that ``table`` lacks."""
        if _length(batch) == 0:
            return
        key = self.ROW_KEYS[table]
        held = self.tables.stored_keys(table, key, batch)
        wanted = list(zip(*(np.asarray(batch[name]).tolist() for name in key)))
        missing = np.array([i for i, row in enumerate(wanted) if row not in held], np.int64)
        if len(missing):
            self.tables.insert(table, {name: np.asarray(values)[missing] for name, values in batch.items()}, spec,
                               deduplicate=False)


#: Bytes of literal values one key query may carry: a quarter of ClickHouse's default
#: ``max_query_size`` (256 KiB), which applies to the query text the values are bound into.
KEY_QUERY_BYTES = 64 * 1024


def _key_chunks(values: list) -> Iterator[list]:
    """``values`` in runs whose quoted literals stay under ``KEY_QUERY_BYTES``; a value is
    counted as if every byte needed an escape, so no content can make a run too long."""
    chunk: list = []
    size = 0
    for value in values:
        cost = 2 * len(str(value).encode()) + 4  # quotes, the separator, escapes
        if chunk and size + cost > KEY_QUERY_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(value)
        size += cost
    if chunk:
        yield chunk


def redelivered(scans: Columns) -> bool:
    """Whether a batch was processed before: each of its scans that the state store remembers
    (all but invalid events and conflicts, whose answers are not kept) answered as a replay.
    A batch with no such scan counts as redelivered too: nothing in it says otherwise, and
    checking it costs little."""
    verdict = np.asarray(scans.get("verdict", ()))
    if not len(verdict):
        return False
    remembered = (verdict != Verdict.INVALID_EVENT.label) & (verdict != Verdict.CONFLICT.label)
    return bool(np.all(np.asarray(scans["replay"])[remembered] == 1))
