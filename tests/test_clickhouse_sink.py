"""ClickHouse sink against the real embedded engine (chdb) and, when configured, a server.

chdb hosts one data path per process: a module-scoped fixture owns that path, each test
connects its own client to it with its own database, and closes it, so the engine is free for
another path once this module is done.  Set SCANSTREAM_CLICKHOUSE_URL
(``http://user:password@host:8123``) to also run the round trip against a ClickHouse server.
"""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("chdb")

from scanstream.engine.outcomes import ALERT_COLUMNS, AWARD_COLUMNS, SCAN_COLUMNS, Columns, empty, names  # noqa: E402
from scanstream.sinks.clickhouse import (  # noqa: E402
    DEFAULT_DDL_DIR,
    DELIVERY_COLUMNS,
    ClickHouseSink,
    batch_from_rows,
    connect,
    redact,
    split_statements,
)
from scanstream.sinks.exceptions import SinkError  # noqa: E402

SERVER_URL_ENV = "SCANSTREAM_CLICKHOUSE_URL"
ROWS = 10_000
TS0 = 1_767_225_599_987  # 2025-12-31 23:59:59.987 UTC: rows cross a month (partition) boundary
TABLES = {"scan_events", "alerts", "awards", "alert_deliveries",
          "registry_batches", "registry_dealers", "registry_shipments", "registry_stores"}


@pytest.fixture(scope="module")
def chdb_target(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one chdb data path of this process."""
    return f"chdb:{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def sink(chdb_target: str, request: pytest.FixtureRequest) -> Iterator[ClickHouseSink]:
    """A sink on a database of its own, schema applied."""
    database = "t_" + re.sub(r"\W", "_", request.node.name)[:60]
    s = ClickHouseSink(connect(chdb_target, database=database))
    s.ensure_schema()
    yield s
    s.close()


def scan_batch(n: int = ROWS, prefix: str = "scan") -> Columns:
    """``n`` scans exercising every column: extremes, unicode, empty strings, ms timestamps."""
    b = empty(SCAN_COLUMNS, n)
    i = np.arange(n)
    b["scan_id"][:] = [f"{prefix}-{k:06d}" for k in range(n)]
    b["ts"][:] = TS0 + i * 7  # odd milliseconds, so a ms -> s truncation would show
    b["tenant"][:] = np.where(i % 2, 7, 65535)
    b["kind"][:] = i % 2
    b["batch"][:] = np.where(i % 3 == 0, 16_777_215, 42)
    b["serial"][:] = np.where(i % 5 == 0, 4_294_967_295, i)
    b["code"][:] = [f"2000E00058{k:014d}" for k in range(n)]
    b["user_id"][:] = [f"微信用户-{k % 97}-ñ-😀" if k % 4 else "" for k in range(n)]
    b["role"][:] = np.array(["consumer", "store", "dealer"], dtype=object)[i % 3]
    b["region"][:] = np.array(["440305", "", "110105"], dtype=object)[i % 3]
    b["verdict"][:] = np.array(["ok", "repeat", "bad_mac", "invalid_event"], dtype=object)[i % 4]
    b["diversion"][:] = "none"
    b["campaign"][:] = np.where(i % 4 == 0, "spring-2026", "")
    b["prize_tier"][:] = np.where(i % 8 == 0, "8.8元", "")
    b["prize_cents"][:] = np.where(i % 8 == 0, 880, 0)
    b["draw"][:] = np.where(i % 8 == 0, "won", "no_prize")
    b["replay"][:] = (i % 11 == 0)
    b["raw"][:] = np.where(i % 4 == 3, '{"bad": "json\\n\'quote\'"', "")
    b["reason"][:] = np.where(i % 4 == 3, "missing field code", "")
    return b


def read_back(sink: ClickHouseSink, table: str, spec: tuple[tuple[str, str, str], ...], order_by: str) -> Columns:
    """The table's rows as columns; DateTime64 columns as epoch ms, read exactly in SQL."""
    exprs = [f"toUnixTimestamp64Milli({name})" if ch.startswith("DateTime64") else name for name, _, ch in spec]
    _, rows = sink.query(f"SELECT {', '.join(exprs)} FROM {table} ORDER BY {order_by}")
    return {name: [row[k] for row in rows] for k, (name, _, _) in enumerate(spec)}


def assert_same(expected: Columns, actual: Columns, spec: tuple[tuple[str, str, str], ...]) -> None:
    for name in names(spec):
        assert actual[name] == expected[name].tolist(), name


# --------------------------------------------------------------------------- schema


def test_schema_applies_twice(sink: ClickHouseSink) -> None:
    statements = sum(len(split_statements(p.read_text(encoding="utf-8"))) for p in DEFAULT_DDL_DIR.glob("*.sql"))
    assert sink.ensure_schema() == statements  # the fixture applied it once already
    _, rows = sink.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()")
    engines = dict(rows)
    assert TABLES <= set(engines)
    assert engines["scan_events"] == "ReplacingMergeTree" and engines["alert_deliveries"] == "MergeTree"


def test_schema_drift_is_reported(sink: ClickHouseSink, tmp_path: Path) -> None:
    sink.client.command("DROP TABLE awards")
    (tmp_path / "awards.sql").write_text(
        "CREATE TABLE IF NOT EXISTS awards (scan_id String, ts DateTime) ENGINE = MergeTree ORDER BY scan_id;")
    with pytest.raises(SinkError, match="table awards: columns differ from the contract"):
        sink.ensure_schema(tmp_path)


def test_missing_ddl_folder(sink: ClickHouseSink, tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="no \\*.sql files"):
        sink.ensure_schema(tmp_path / "nowhere")


def test_split_statements_respects_quotes_and_comments() -> None:
    sql = "-- a; comment\nSELECT 'a;b' /* c; */ ;\n\nSELECT `x--y`, 'it''s', 'back\\'slash;';;"
    assert split_statements(sql) == ["SELECT 'a;b'", "SELECT `x--y`, 'it''s', 'back\\'slash;'"]
    assert len(split_statements(DEFAULT_DDL_DIR.joinpath("010_scan_events.sql").read_text())) == 1


# --------------------------------------------------------------------------- scans


def test_scan_round_trip(sink: ClickHouseSink) -> None:
    batch = scan_batch()
    assert sink.write_scans(batch) == ROWS
    assert_same(batch, read_back(sink, "scan_events", SCAN_COLUMNS, "scan_id"), SCAN_COLUMNS)
    # The driver's own DateTime64 decoding agrees: the ints were stored as ms, not s or us.
    _, rows = sink.query("SELECT ts, toString(ts) FROM scan_events WHERE scan_id = 'scan-000002'")
    (ts, text), = rows
    assert ts.replace(tzinfo=timezone.utc) == datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=timezone.utc)
    assert text == "2026-01-01 00:00:00.001"
    _, parts = sink.query("SELECT uniqExact(_partition_id) FROM scan_events")
    assert parts == [(2,)]  # 202512 and 202601


def test_same_token_is_a_no_op_and_final_collapses_other_tokens(sink: ClickHouseSink) -> None:
    batch = scan_batch()
    count = "SELECT count() FROM scan_events"
    sink.write_scans(batch, dedup_token="scans:p0:100-199")
    sink.write_scans(batch, dedup_token="scans:p0:100-199")
    assert sink.query(count)[1] == [(ROWS,)]
    sink.write_scans(batch, dedup_token="another-token")
    assert sink.query(count)[1] == [(2 * ROWS,)]  # a different token is a different insert ...
    assert sink.query(count + " FINAL")[1] == [(ROWS,)]  # ... which the replacing key collapses
    sink.client.command("OPTIMIZE TABLE scan_events FINAL")
    assert sink.query(count)[1] == [(ROWS,)]


def test_empty_batch_is_a_no_op(sink: ClickHouseSink) -> None:
    assert sink.write_scans(empty(SCAN_COLUMNS)) == 0
    assert sink.write_scans({}) == 0
    assert sink.query("SELECT count() FROM scan_events")[1] == [(0,)]


def test_bad_batches_name_table_and_column(sink: ClickHouseSink) -> None:
    batch = scan_batch(10)
    del batch["verdict"]
    with pytest.raises(SinkError, match=r"scan_events: batch lacks columns \['verdict'\]"):
        sink.write_scans(batch)
    batch = scan_batch(10)
    batch["tenant"] = np.full(10, 70_000, dtype=np.int64)
    with pytest.raises(SinkError, match="scan_events.tenant: value 70000 at row 0 does not fit uint16"):
        sink.write_scans(batch)
    batch = scan_batch(10)
    batch["code"] = batch["code"][:5]
    with pytest.raises(SinkError, match="scan_events.code: 5 rows; expected 10"):
        sink.write_scans(batch)


def test_insert_failure_names_table_and_rows(sink: ClickHouseSink) -> None:
    sink.client.command("DROP TABLE alerts")
    with pytest.raises(SinkError, match="insert of 3 rows into alerts failed") as info:
        sink.write_alerts(empty(ALERT_COLUMNS, 3))
    assert (info.value.table, info.value.rows) == ("alerts", 3)


# --------------------------------------------------------------------------- other outputs


def test_alert_round_trip(sink: ClickHouseSink) -> None:
    b = empty(ALERT_COLUMNS, 3)
    b["alert_id"][:] = ["div-1", "div-2", "clone-1"]
    b["ts"][:] = [TS0, TS0 + 1, TS0 + 2]
    b["tenant"][:] = 7
    b["alert"][:] = ["diversion", "diversion", "cloned_code"]
    b["subtype"][:] = ["region", "region+channel", "users"]
    b["dealer_id"][:] = ["D-广州", "D-广州", ""]
    b["manager"][:] = ["张三", "张三", ""]
    b["city"][:] = ["1101", "3101", ""]
    b["code"][:] = ["", "", "2000E00058003RJ08V9QZJM3"]
    b["window_start"][:] = TS0 - 600_000
    b["window_end"][:] = TS0 + 1
    b["count"][:] = [3, 5, 4_294_967_295]
    b["detail"][:] = ['{"regions": ["1101"]}', "{}", '{"users": ["u1", "u2"]}']
    sink.write_alerts(b, dedup_token="alerts:1")
    sink.write_alerts(b, dedup_token="alerts:2")  # a replay under a new token
    actual = read_back(sink, "alerts FINAL", ALERT_COLUMNS, "tenant, alert_id")
    order = np.argsort(b["alert_id"])
    assert_same({k: v[order] for k, v in b.items()}, actual, ALERT_COLUMNS)


def test_award_round_trip_pays_a_code_once(sink: ClickHouseSink) -> None:
    b = empty(AWARD_COLUMNS, 3)
    b["scan_id"][:] = ["s1", "s2", "s3"]
    b["ts"][:] = [TS0, TS0 + 10, TS0 + 20]
    b["tenant"][:] = 7
    b["campaign"][:] = "spring-2026"
    b["kind"][:] = 0
    b["batch"][:] = 42
    b["serial"][:] = [1, 2, 1]  # s3 is the same code as s1
    b["user_id"][:] = ["用户甲", "user-b", "用户甲"]
    b["prize_tier"][:] = ["8.8元", "88元", "8.8元"]
    b["prize_cents"][:] = [880, 8800, 880]
    sink.write_awards(b)
    actual = read_back(sink, "awards FINAL", AWARD_COLUMNS, "serial")
    assert actual["serial"] == [1, 2] and actual["scan_id"] == ["s3", "s2"]  # the last write wins
    assert actual["ts"] == [TS0 + 20, TS0 + 10] and actual["prize_tier"] == ["8.8元", "88元"]
    assert sink.query("SELECT sum(prize_cents) FROM awards FINAL")[1] == [(880 + 8800,)]


def test_delivery_round_trip_from_notifier_records(sink: ClickHouseSink) -> None:
    records = [
        {"alert_id": "div-1", "ts": TS0, "channel_format": "wecom", "status": "delivered", "attempts": 1,
         "url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=REDACTED", "http_status": 200, "error": ""},
        {"alert_id": "div-2", "ts": TS0 + 999, "channel_format": "generic", "status": "failed", "attempts": 3,
         "url": "http://hooks.example/x", "http_status": 503, "error": "HTTP 503: 服务不可用"},
    ]
    batch = batch_from_rows(records, DELIVERY_COLUMNS)
    assert sink.write_deliveries(batch, dedup_token="deliveries:1") == 2
    assert sink.write_deliveries(batch, dedup_token="deliveries:1") == 2  # replayed: dropped by the server
    assert_same(batch, read_back(sink, "alert_deliveries", DELIVERY_COLUMNS, "alert_id"), DELIVERY_COLUMNS)


def test_query_returns_names_and_rows(sink: ClickHouseSink) -> None:
    sink.write_scans(scan_batch(100))
    columns, rows = sink.query(
        "SELECT verdict, count() AS n FROM scan_events WHERE tenant = {tenant:UInt16} GROUP BY verdict ORDER BY verdict",
        {"tenant": 7})
    assert columns == ["verdict", "n"]
    assert rows == [("invalid_event", 25), ("repeat", 25)]  # tenant 7 is every odd row
    with pytest.raises(SinkError, match="no_such_table"):
        sink.query("SELECT * FROM no_such_table")


# --------------------------------------------------------------------------- connect


def test_relative_chdb_path_is_resolved_and_cwd_kept(chdb_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(chdb_target.removeprefix("chdb:"))
    monkeypatch.chdir(path.parent)
    # The same engine path spelt relatively: a different path would be refused by chdb.
    client = connect(f"chdb:{path.name}", database="relative")
    try:
        assert os.getcwd() == str(path.parent)
        assert client.command("SELECT currentDatabase()") == "relative"
    finally:
        client.close()


def test_bad_url_names_host_not_password() -> None:
    secret = "s3cr3t-Pa55"
    with pytest.raises(SinkError) as info:
        connect(f"http://scanner:{secret}@127.0.0.1:1")
    text = str(info.value)
    assert "127.0.0.1:1" in text and "scanner:***@" in text
    seen: BaseException | None = info.value
    while seen is not None:  # nowhere in the chain either
        assert secret not in str(seen)
        seen = seen.__cause__ or seen.__context__


@pytest.mark.parametrize("target", ["", "ftp://h:1", "clickhouse.example:8123", "chdb:", "http://u:pw@h:8123/db"])
def test_unusable_targets_say_what_was_expected(target: str) -> None:
    with pytest.raises(SinkError, match="expected"):
        connect(target)


def test_bad_database_name(chdb_target: str) -> None:
    with pytest.raises(SinkError, match="expected a plain identifier"):
        connect(chdb_target, database="x; DROP DATABASE y")


def test_redact() -> None:
    assert redact("https://u:p%40ss@h:8443") == "https://u:***@h:8443"
    assert redact("http://u:p@ss:w@h:8123") == "http://u:***@h:8123"  # unencoded '@' in the password
    assert redact("http://h:8123") == "http://h:8123"
    assert redact("chdb:/var/lib/x") == "chdb:/var/lib/x"


# --------------------------------------------------------------------------- server


@pytest.mark.skipif(not os.environ.get(SERVER_URL_ENV), reason=f"{SERVER_URL_ENV} is not set (no ClickHouse server)")
def test_server_round_trip() -> None:
    database = f"scanstream_test_{uuid.uuid4().hex[:8]}"
    s = ClickHouseSink(connect(os.environ[SERVER_URL_ENV], database=database))
    try:
        assert s.ensure_schema() == s.ensure_schema()
        batch = scan_batch()
        s.write_scans(batch, dedup_token="server:1")
        s.write_scans(batch, dedup_token="server:1")
        assert s.query("SELECT count() FROM scan_events")[1] == [(ROWS,)]
        s.write_scans(batch, dedup_token="server:2")
        assert s.query("SELECT count() FROM scan_events FINAL")[1] == [(ROWS,)]
        assert_same(batch, read_back(s, "scan_events FINAL", SCAN_COLUMNS, "scan_id"), SCAN_COLUMNS)
    finally:
        s.client.command(f"DROP DATABASE IF EXISTS `{database}`")
        s.close()


def test_registry_round_trip_keeps_every_dealer_column(sink: ClickHouseSink, tmp_path: Path) -> None:
    """A worker reading the registry from ClickHouse must get the signing secret's variable name:
    a dealer read back without it would have its webhooks sent unsigned."""
    from scanstream.engine.registry import Registry
    from scanstream.sinks.registry_tables import publish_registry, read_registry
    files = {
        "batches.csv": "tenant,batch,sku,product,activated,size\n7,42,SKU-A,Lager,1,1000\n",
        "dealers.csv": "dealer_id,tenant,name,channel,regions,manager,webhook,secret_env\n"
                       "D-1,7,One,KA,44;3201,wang,https://example.com/hook,DEALER_D1_SECRET\n"
                       "D-2,7,Two,,,li,,\n",
        "shipments.csv": "tenant,batch,serial_from,serial_to,dealer_id,shipped_at\n7,42,0,999,D-1,2026-11-01\n",
        "stores.csv": "store_id,tenant,dealer_id,region,channel\nS-1,7,D-1,440304,KA\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    given = Registry.load(tmp_path)
    publish_registry(sink, given)
    back = read_registry(sink)
    order = lambda r: np.argsort(r.dealers.dealer_id)  # noqa: E731
    for column in ("dealer_id", "manager", "webhook", "secret_env"):
        assert getattr(back.dealers, column)[order(back)].tolist() == getattr(given.dealers, column)[order(given)].tolist()
    assert sorted(back.dealers.secret_env.tolist()) == ["", "DEALER_D1_SECRET"]
