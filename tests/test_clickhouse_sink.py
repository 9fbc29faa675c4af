"""ClickHouse sink against the real embedded engine (chdb) and, when configured, a server.

chdb hosts one data path per process: a module-scoped fixture owns that path, each test
connects its own client to it with its own database, and closes it, so the engine is free for
another path once this module is done.  Set SCANSTREAM_CLICKHOUSE_URL
(``http://user:password@host:8123``) to also run the round trip against a ClickHouse server.
"""
from __future__ import annotations

import csv
import os
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("chdb")

from scanstream.engine.outcomes import ALERT_COLUMNS, AWARD_COLUMNS, SCAN_COLUMNS, Columns, empty, names  # noqa: E402
from scanstream.engine.pipeline import BatchResult  # noqa: E402
from scanstream.sinks.clickhouse import (  # noqa: E402
    DEFAULT_DDL_DIR,
    DELIVERY_COLUMNS,
    ClickHouseSink,
    OutcomeTables,
    batch_from_rows,
    connect,
    split_statements,
)
from scanstream.sinks.exceptions import SinkError  # noqa: E402

SERVER_URL_ENV = "SCANSTREAM_CLICKHOUSE_URL"
ROWS = 10_000
TS0 = 1_767_225_599_987  # 2025-12-31 23:59:59.987 UTC: rows cross a month (partition) boundary
TABLES = {"scan_events", "alerts", "awards", "alert_deliveries",
          "registry_batches", "registry_dealers", "registry_shipments", "registry_stores", "registry_activations",
          "registry_packing"}


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


def test_a_token_left_without_its_rows_is_repaired_when_in_doubt(sink: ClickHouseSink) -> None:
    """A non-replicated MergeTree records a block's deduplication id before it renames the new
    part into place: ``kill -9`` between the two leaves the id without the rows, and every later
    insert of the batch under that token is dropped.  Emulated by deleting the rows the token
    stored (a mutation leaves the id in place).  A batch stored in doubt (the first of an
    ``OutcomeTables``, or one after a failed attempt) gets its missing rows back, once."""
    awards = empty(AWARD_COLUMNS, 3)
    awards["scan_id"][:] = ["scan-000000", "scan-000008", "scan-000016"]
    awards["tenant"][:], awards["campaign"][:], awards["serial"][:] = 7, "spring-2026", [0, 8, 16]
    result = BatchResult(scans=scan_batch(200), alerts=empty(ALERT_COLUMNS), awards=awards)
    outcomes = OutcomeTables(sink)
    outcomes.store(result, "part-1.jsonl:601-800:0f3a")
    for table in ("scan_events", "awards"):
        sink.client.command(f"ALTER TABLE {table} DELETE WHERE 1 SETTINGS mutations_sync = 2")
    counts = "SELECT (SELECT count() FROM scan_events FINAL), (SELECT count() FROM awards FINAL)"
    outcomes.store(result, "part-1.jsonl:601-800:0f3a")  # not in doubt: the token is trusted
    assert sink.query(counts)[1] == [(0, 0)], "ClickHouse no longer drops a repeated token"
    OutcomeTables(sink).store(result, "part-1.jsonl:601-800:0f3a")  # a new process: in doubt
    assert sink.query(counts)[1] == [(200, 3)]
    raw = "SELECT (SELECT count() FROM scan_events), (SELECT count() FROM awards)"
    rows = sink.query(raw)[1]
    OutcomeTables(sink).store(result, "part-1.jsonl:601-800:0f3a")  # in doubt, nothing missing
    assert sink.query(raw)[1] == rows


def test_the_check_of_a_large_batch_in_doubt_fits_the_servers_query_size(sink: ClickHouseSink) -> None:
    """A worker's batch can hold tens of thousands of scans, each named in the check of a batch
    in doubt; one query naming them all passes ClickHouse's max_query_size (256 KiB), which
    failed the batch as a syntax error and stopped the worker.  Long ids with characters that
    need escaping make the query longer than the ids."""
    n = 20_000
    scans = scan_batch(n, prefix="x" * 40 + "\\'")
    OutcomeTables(sink).store(BatchResult(scans=scans, alerts=empty(ALERT_COLUMNS), awards=empty(AWARD_COLUMNS)),
                              "big:0-19999")
    sink.client.command("ALTER TABLE scan_events DELETE WHERE serial % 2 = 0 SETTINGS mutations_sync = 2")
    OutcomeTables(sink).store(BatchResult(scans=scans, alerts=empty(ALERT_COLUMNS), awards=empty(AWARD_COLUMNS)),
                              "big:0-19999")
    assert sink.query("SELECT count() FROM scan_events FINAL")[1] == [(n,)]


def test_a_redelivered_batch_is_checked_even_late_in_a_process(sink: ClickHouseSink) -> None:
    """A worker restarted after a crash takes again every batch its consumer had not committed,
    so the batch whose rows were lost need not be the first it stores.  Such a batch answers
    every remembered scan as a replay: that makes it in doubt, and its lost rows come back; a
    batch of fresh scans with the same token is trusted (no query per ordinary batch)."""
    outcomes = OutcomeTables(sink)
    outcomes.store(BatchResult(scans=scan_batch(10, prefix="warm"), alerts=empty(ALERT_COLUMNS),
                               awards=empty(AWARD_COLUMNS)), "warm-up")  # the process's first batch
    fresh = scan_batch(100, prefix="lost")
    outcomes.store(BatchResult(scans=fresh, alerts=empty(ALERT_COLUMNS), awards=empty(AWARD_COLUMNS)), "p0:100-199")
    sink.client.command("ALTER TABLE scan_events DELETE WHERE startsWith(scan_id, 'lost') SETTINGS mutations_sync = 2")
    lost = "SELECT count() FROM scan_events FINAL WHERE startsWith(scan_id, 'lost')"
    outcomes.store(BatchResult(scans=fresh, alerts=empty(ALERT_COLUMNS), awards=empty(AWARD_COLUMNS)), "p0:100-199")
    assert sink.query(lost)[1] == [(0,)], "a batch of fresh scans was checked"
    again = dict(fresh)
    again["replay"] = np.ones(100, np.uint8)  # what the state store answers the batch taken again
    again["replay"][fresh["verdict"] == "invalid_event"] = 0  # invalid events are not remembered
    outcomes.store(BatchResult(scans=again, alerts=empty(ALERT_COLUMNS), awards=empty(AWARD_COLUMNS)), "p0:100-199")
    assert sink.query(lost)[1] == [(100,)]
    raw = "SELECT count() FROM scan_events WHERE startsWith(scan_id, 'lost')"
    rows = sink.query(raw)[1]
    outcomes.store(BatchResult(scans=again, alerts=empty(ALERT_COLUMNS), awards=empty(AWARD_COLUMNS)), "p0:100-199")
    assert sink.query(raw)[1] == rows, "a redelivered batch whose rows are held was stored again"


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


# -- the registry through ClickHouse: the same registry as the CSV files --------------------------

PREFIXES = ("44", "4403", "440304", "32", "3201", "320106")  # adcode prefixes of the three levels
TEXTS = st.text(alphabet="ab Z9,;\"'-_中文窜货", max_size=12)
#: activated_at values: zones, a fraction, the lowercase and space forms RFC 3339 allows
ACTIVATED_AT = ("2026-11-20T08:00:00+08:00", "2026-11-20T00:00:00Z", "2000-01-01T00:00:00.5z",
                "2099-06-30 23:59:59.123456-05:30")


@st.composite
def registries(draw) -> dict[str, list[dict[str, str]]]:
    """A valid registry, as the rows of its CSV files: every column of the schema, with
    quotes, commas, semicolons and CJK in the free text, empty optional cells, both kinds, and
    空码赋值 ranges within their batch's size, activated at times in several zones."""
    tenants = draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=2, unique=True))
    batch_keys = draw(st.lists(st.tuples(st.sampled_from(tenants), st.sampled_from(["unit", "case", ""]),
                                         st.integers(0, 2 ** 20 - 1)), max_size=5,
                               unique_by=lambda k: (k[0], k[1] or "unit", k[2])))
    batches = [{"tenant": str(t), "batch": str(b), "kind": k, "sku": draw(TEXTS), "product": draw(TEXTS),
                "activated": draw(st.sampled_from("01")), "size": draw(st.sampled_from(["", "0", "24", "1000000"]))}
               for t, k, b in batch_keys]
    ids = draw(st.lists(st.from_regex(r"D-[A-Z0-9]{1,6}", fullmatch=True), min_size=1, max_size=4, unique=True))
    dealers = [{"dealer_id": d, "tenant": str(draw(st.sampled_from(tenants))), "name": draw(TEXTS),
                "channel": draw(st.sampled_from(["", "KA", "流通"])),
                "regions": ";".join(draw(st.lists(st.sampled_from(PREFIXES), max_size=3, unique=True))),
                "manager": draw(TEXTS), "webhook": draw(st.sampled_from(["", "https://example.com/hook?k=1"])),
                "secret_env": draw(st.sampled_from(["", "DEALER_SECRET"])),
                "robot": draw(st.sampled_from(["", "generic", "wecom", "dingtalk", "feishu", "WeCom"])),
                "manager_id": draw(st.sampled_from(["", "zhangsan", "ou_7d8a6e6df7621556ce0d21922b676706"]))}
               for d in ids]
    shipments = []
    for t, k, b in batch_keys:  # disjoint ranges of one batch, each to a dealer of the batch's tenant
        theirs = [d["dealer_id"] for d in dealers if d["tenant"] == str(t)]
        cuts = sorted(draw(st.lists(st.integers(0, 2 ** 24 - 1), max_size=4, unique=True)))
        for lo, hi in zip(cuts[::2], cuts[1::2]):
            if theirs:
                shipments.append({"tenant": str(t), "batch": str(b), "kind": k, "serial_from": str(lo),
                                  "serial_to": str(hi), "dealer_id": draw(st.sampled_from(theirs)),
                                  "shipped_at": draw(st.sampled_from(["", "2026-11-01"]))})
    stores = []
    for store_id in draw(st.lists(st.from_regex(r"S-[0-9]{1,4}", fullmatch=True), max_size=4, unique=True)):
        tenant = draw(st.sampled_from(tenants))
        theirs = [""] + [d["dealer_id"] for d in dealers if d["tenant"] == str(tenant)]
        stores.append({"store_id": store_id, "tenant": str(tenant), "dealer_id": draw(st.sampled_from(theirs)),
                       "region": draw(st.sampled_from(["", "440304", "320106"])),
                       "channel": draw(st.sampled_from(["", "KA", "流通"]))})
    activations = []
    for b in batches:  # disjoint ranges of one batch, within its size when it has one
        last = int(b["size"]) - 1 if b["size"] not in ("", "0") else 2 ** 32 - 1
        cuts = sorted(draw(st.lists(st.integers(0, last), max_size=4, unique=True)))
        for lo, hi in zip(cuts[::2], cuts[1::2]):
            activations.append({"tenant": b["tenant"], "batch": b["batch"], "kind": b["kind"],
                                "serial_from": str(lo), "serial_to": str(hi),
                                "sku": draw(TEXTS.filter(str.strip)), "product": draw(TEXTS),
                                "activated_at": draw(st.sampled_from(ACTIVATED_AT))})
    packing = []
    cases = [b for b in batches if b["kind"] == "case"]
    for b in batches:  # 箱码关联: disjoint unit ranges of a unit batch, each in a case of the same tenant
        theirs = [c for c in cases if c["tenant"] == b["tenant"]]
        if b["kind"] == "case" or not theirs:
            continue
        last = int(b["size"]) - 1 if b["size"] not in ("", "0") else 2 ** 32 - 1
        cuts = sorted(draw(st.lists(st.integers(0, last), max_size=4, unique=True)))
        for lo, hi in zip(cuts[::2], cuts[1::2]):
            case = draw(st.sampled_from(theirs))
            case_last = int(case["size"]) - 1 if case["size"] not in ("", "0") else 2 ** 32 - 1
            packing.append({"tenant": b["tenant"], "case_batch": case["batch"],
                            "case_serial": str(draw(st.integers(0, case_last))), "unit_batch": b["batch"],
                            "unit_serial_from": str(lo), "unit_serial_to": str(hi)})
    return {"batches.csv": batches, "dealers.csv": dealers, "shipments.csv": shipments, "stores.csv": stores,
            "activations.csv": activations, "packing.csv": packing}


def facts(registry) -> dict[str, object]:
    """What a registry answers, independent of row order (dealer indexes become dealer ids)."""
    b, d, s, st_ = registry.batches, registry.dealers, registry.shipments, registry.stores
    a, p = registry.activations, registry.packing
    ids = d.dealer_id.tolist()
    p_group = (p.start >> np.uint64(32)).astype(np.int64)
    group = (s.start >> np.uint64(32)).astype(np.int64)
    a_group = (a.start >> np.uint64(32)).astype(np.int64)
    return {
        "batches": [b.key.tolist(), b.sku.tolist(), b.product.tolist(), b.activated.tolist(), b.size.tolist()],
        "dealers": sorted(zip(ids, d.tenant.tolist(), d.name.tolist(), d.channel.tolist(),
                              map(sorted, d.regions), d.manager.tolist(), d.webhook.tolist(), d.secret_env.tolist(),
                              d.has_regions.tolist(), d.robot.tolist(), d.manager_id.tolist())),
        "shipments": sorted(zip(s.group_key[group].tolist(), (s.start & np.uint64(0xFFFFFFFF)).tolist(),
                                (s.end & np.uint64(0xFFFFFFFF)).tolist(), [ids[i] for i in s.dealer])),
        "stores": {key: (ids[st_.dealer[row]] if st_.dealer[row] >= 0 else "", st_.region[row], st_.channel[row])
                   for key, row in st_.index.items()},
        "activations": sorted(zip(a.group_key[a_group].tolist(), (a.start & np.uint64(0xFFFFFFFF)).tolist(),
                                  (a.end & np.uint64(0xFFFFFFFF)).tolist(), a.at_ms.tolist(), a.sku.tolist(),
                                  a.product.tolist())),
        "packing": sorted(zip(p.group_key[p_group].tolist(), (p.start & np.uint64(0xFFFFFFFF)).tolist(),
                              (p.end & np.uint64(0xFFFFFFFF)).tolist(), p.case_batch.tolist(), p.case_serial.tolist())),
    }


# 20 registries: each costs a schema and a round trip through chdb (about 2 s here)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(given_rows=registries())
def test_the_registry_read_back_from_clickhouse_answers_as_its_csv_files(chdb_target: str, tmp_path: Path,
                                                                        given_rows) -> None:
    """Files -> loader -> ClickHouse tables -> a worker's registry: every column of the schema
    arrives (a lost ``secret_env`` sent every signed webhook unsigned)."""
    from scanstream.engine.registry import Registry
    from scanstream.engine.registry_schema import SCHEMA
    from scanstream.sinks.registry_tables import publish_registry, read_registry
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    for f in SCHEMA:
        with (folder / f.file).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, [c.name for c in f.columns])
            writer.writeheader()
            writer.writerows(given_rows[f.file])
    given = Registry.load(folder)
    s = ClickHouseSink(connect(chdb_target, database="registry_round_trip"))
    try:
        s.ensure_schema()
        publish_registry(s, given)
        assert facts(read_registry(s)) == facts(given)
    finally:
        s.close()


def test_the_registry_tables_have_the_columns_of_the_schema(sink: ClickHouseSink) -> None:
    """The DDL of config/clickhouse and engine/registry_schema.py name the same columns and types."""
    from scanstream.engine.registry_schema import SCHEMA
    for f in SCHEMA:
        _, rows = sink.query(f"SELECT name, type FROM system.columns WHERE database = currentDatabase() "
                             f"AND table = '{f.table}' ORDER BY position")
        ddl = {name: re.sub(r"^LowCardinality\((.*)\)$", r"\1", type_) for name, type_ in rows}
        assert ddl == {c.name: c.clickhouse for c in f.columns}, f.table


