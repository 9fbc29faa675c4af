"""The payout outbox's idempotency key (DESIGN.md "Outputs"; issue 15 item 6).

A payment service passes each award's ``payout_key`` on as its out_trade_no, so the key is what
stands between a replayed or re-won award and a red packet sent twice.  The attacks first: a
code that wins again after its state was lost (a wiped Redis, a restored backup) must carry the
same key, whoever scanned it; a key must not be forgeable into another award's by text in a
campaign id; an awards table of the contract before keys must be carried over with its keys,
also when the process dies half way.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from scanstream.engine.config import load
from scanstream.engine.outcomes import (
    AWARD_COLUMNS,
    BENEFICIARY_CONSUMER,
    BENEFICIARY_GUIDE,
    BENEFICIARY_TRADE,
    PAYOUT_KEY_HEX,
    names,
    payout_keys,
)
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.streams.synthetic import build_world, generate_scans
from scanstream.wiring import build_pipeline

REPO = Path(__file__).resolve().parents[1]
LOCAL_TOML = REPO / "config" / "local.toml"


def key(tenant=7, campaign="winter-2026", kind=0, batch=42, serial=123456, beneficiary=BENEFICIARY_CONSUMER) -> str:
    return payout_keys(np.array([tenant], np.uint16), np.array([campaign], object), np.array([kind], np.uint8),
                       np.array([batch], np.uint32), np.array([serial], np.uint32),
                       np.array([beneficiary], object))[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("payout-world")
    config = load(LOCAL_TOML)
    w = build_world(7, config.keys.get(7, 1), 1)
    w.write_registry(base / "registry")
    config = replace(config, registry_dir=base / "registry", clickhouse="")
    return config, generate_scans(w, 4000, seed=5)


# --------------------------------------------------------------------------- the attacks


def test_a_code_won_again_after_its_state_was_lost_carries_the_same_key(world):
    """State lost (a fresh store): the same code wins again through another scan and another
    user; the payment service, given the same out_trade_no, refuses to pay it twice."""
    config, lines = world
    first = build_pipeline(config, state=MemoryStateStore()).process(lines).awards
    assert len(first["scan_id"]) > 0, "a world without awards would prove nothing"
    i = 0
    won_line = next(line for line in lines if orjson.loads(line).get("scan_id") == first["scan_id"][i])
    again_event = orjson.loads(won_line) | {"scan_id": "attacker-1", "user_id": "attacker"}
    again = build_pipeline(config, state=MemoryStateStore()).process([orjson.dumps(again_event)]).awards
    assert again["user_id"].tolist() == ["attacker"]  # the lost state let the code win again ...
    assert again["payout_key"].tolist() == [first["payout_key"][i]]  # ... under the same key


def test_a_redelivered_stream_pays_under_the_keys_of_the_first_time(world):
    """The same stream in two parts over one state, or whole over another, gives equal keys."""
    config, lines = world
    whole = build_pipeline(config, state=MemoryStateStore()).process(lines).awards["payout_key"].tolist()
    pipeline = build_pipeline(config, state=MemoryStateStore())
    halves = [pipeline.process(lines[:1700]), pipeline.process(lines[1700:])]
    assert sorted(k for h in halves for k in h.awards["payout_key"].tolist()) == sorted(whole)


def test_a_redelivered_winning_scan_repeats_its_award_under_the_same_key(world):
    """The outbox repeats an award when its scan is redelivered (the stream has such scans):
    the repeat carries the first key, so the payment service pays it once; distinct awards
    never share a key."""
    config, lines = world
    awards = build_pipeline(config, state=MemoryStateStore()).process(lines).awards
    by_key: dict[str, set] = {}
    for k, scan_id in zip(awards["payout_key"].tolist(), awards["scan_id"].tolist()):
        by_key.setdefault(k, set()).add(scan_id)
    assert len(by_key) < len(awards["scan_id"]), "no redelivered winner: the test proves nothing"
    assert all(len(scan_ids) == 1 for scan_ids in by_key.values())


@pytest.mark.parametrize("field, other", [
    ("tenant", 8), ("campaign", "winter-2027"), ("kind", 1), ("batch", 43), ("serial", 123457),
    ("beneficiary", BENEFICIARY_GUIDE), ("beneficiary", BENEFICIARY_TRADE),
])
def test_every_field_of_the_award_changes_the_key(field, other):
    assert key(**{field: other}) != key()


def test_no_campaign_id_can_shift_text_into_the_next_field():
    """Concatenated text would let campaign "a|1" with serial 2 equal campaign "a" with "1|2"."""
    assert key(campaign='a", 0, 42') != key(campaign="a")
    assert key(campaign="winter-2026", serial=1) != key(campaign="winter-202", serial=61)


def test_the_key_is_sha256_of_the_award_as_a_json_array():
    """The derivation a payment service can reproduce (and that keys already paid were made with):
    SHA-256 of [version, tenant, campaign, kind, batch, serial, beneficiary] as compact JSON, for
    campaign ids with quotes, backslashes, newlines and Chinese text too."""
    import hashlib
    from scanstream.engine.outcomes import PAYOUT_KEY_VERSION
    rows = [(7, "winter-2026", 0, 101, 4242, BENEFICIARY_CONSUMER), (65535, '冬季"红包"\\n\n', 1, 2**24 - 1,
            2**32 - 1, BENEFICIARY_GUIDE), (0, "", 2, 0, 0, BENEFICIARY_TRADE)]
    got = payout_keys(*(np.array(c, dtype) for c, dtype in zip(zip(*rows), (np.uint16, object, np.uint8, np.uint32,
                                                                          np.uint32, object))))
    assert got.tolist() == [hashlib.sha256(orjson.dumps([PAYOUT_KEY_VERSION, *r])).hexdigest()[:PAYOUT_KEY_HEX]
                            for r in rows]
    assert got[0] == hashlib.sha256(b'["scanstream-payout-v1",7,"winter-2026",0,101,4242,"consumer"]').hexdigest()[:32]


def test_keys_fit_wechat_pay_out_trade_no():
    k = key()
    assert len(k) == PAYOUT_KEY_HEX <= 32 and re.fullmatch(r"[0-9a-f]+", k)
    assert key() == k  # a pure function of the award


def test_awards_carry_their_beneficiary_and_the_engine_s_key(world):
    config, lines = world
    awards = build_pipeline(config, state=MemoryStateStore()).process(lines).awards
    assert list(awards) == names(AWARD_COLUMNS)
    # consumers' prizes and the demo's 开箱有礼 prizes for store owners
    assert set(awards["beneficiary"].tolist()) == {BENEFICIARY_CONSUMER, BENEFICIARY_TRADE}
    assert awards["payout_key"].tolist() == payout_keys(awards["tenant"], awards["campaign"], awards["kind"],
                                                        awards["batch"], awards["serial"],
                                                        awards["beneficiary"]).tolist()


# --------------------------------------------------------------------------- the table made before keys

chdb = pytest.importorskip("chdb")

from scanstream.sinks import migrations  # noqa: E402
from scanstream.sinks.clickhouse import ClickHouseSink, connect  # noqa: E402

#: config/clickhouse/030_awards.sql as it was before payout keys.
OLD_AWARDS_DDL = """CREATE TABLE awards
(scan_id String, ts DateTime64(3, 'UTC'), tenant UInt16, campaign LowCardinality(String), kind UInt8,
 batch UInt32, serial UInt32, user_id String, prize_tier LowCardinality(String), prize_cents UInt32)
ENGINE = ReplacingMergeTree ORDER BY (tenant, campaign, kind, batch, serial)"""
OLD_ROWS = 250


@pytest.fixture(scope="module")
def chdb_target(tmp_path_factory) -> str:
    return f"chdb:{tmp_path_factory.mktemp('payout-chdb')}"


def old_database(target: str, database: str) -> ClickHouseSink:
    """A database whose awards table has the old contract and ``OLD_ROWS`` awards in it."""
    sink = ClickHouseSink(connect(target, database=database))
    sink.command(OLD_AWARDS_DDL)
    rows = ", ".join(f"('s-{i}', fromUnixTimestamp64Milli(toInt64({1_795_140_000_000 + i})), 7, 'winter-2026', 0, 42, {1000 + i}, 'u-{i}', 'small', 88)"
                     for i in range(OLD_ROWS))
    sink.command(f"INSERT INTO awards VALUES {rows}")
    return sink


def carried_awards(sink: ClickHouseSink) -> dict[str, list]:
    columns, rows = sink.query("SELECT * FROM awards FINAL ORDER BY serial")
    return {name: [row[i] for row in rows] for i, name in enumerate(columns)}


def test_an_awards_table_made_before_payout_keys_is_carried_over_with_its_keys(chdb_target):
    sink = old_database(chdb_target, "before_keys")
    try:
        sink.ensure_schema()
        got = carried_awards(sink)
        assert got["serial"] == [1000 + i for i in range(OLD_ROWS)]
        assert set(got["beneficiary"]) == {BENEFICIARY_CONSUMER}
        assert got["payout_key"] == [key(serial=1000 + i) for i in range(OLD_ROWS)]
        assert got["user_id"][3] == "u-3" and got["prize_cents"][3] == 88
        _, kept = sink.query(f"SELECT count() FROM {migrations.AWARDS_CARRIED}")
        assert kept == [(OLD_ROWS,)]  # the old rows stay, renamed, for the operator
        sink.ensure_schema()  # again: nothing moves twice
        _, count = sink.query("SELECT count() FROM awards")
        assert count == [(OLD_ROWS,)]
    finally:
        sink.close()


def test_a_migration_that_died_half_way_finishes_on_the_next_start(chdb_target, monkeypatch):
    sink = old_database(chdb_target, "died_half_way")
    try:
        monkeypatch.setattr(migrations, "CARRY_PAGE_ROWS", 100)
        real_insert = sink.insert
        inserted = []

        def insert_then_die(table, batch, spec, **options):
            if len(inserted) == 2:  # two pages in, the process dies before the third
                raise KeyboardInterrupt
            inserted.append(table)
            return real_insert(table, batch, spec, **options)

        sink.insert = insert_then_die
        with pytest.raises(KeyboardInterrupt):
            sink.ensure_schema()
        sink.insert = real_insert
        _, tables = sink.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
        assert (migrations.AWARDS_SET_ASIDE,) in tables and (migrations.AWARDS_CARRIED,) not in tables
        sink.ensure_schema()  # the next start
        _, count = sink.query("SELECT count(), uniqExact(payout_key) FROM awards")
        assert count == [(OLD_ROWS, OLD_ROWS)]  # the two pages carried before were not carried twice
    finally:
        sink.close()


def readme_reconcile_queries() -> list[str]:
    """The reconciliation SQL README "Paying red packets" gives the payment service."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Paying red packets: the payout outbox", 1)[1].split("\n### ", 1)[0]
    sql = re.search(r"```sql\n(.*?)```", section, re.S).group(1)
    return [statement.strip() for statement in sql.split(";") if "SELECT" in statement]  # comments kept


def test_readme_reconciliation_finds_the_unsent_awards_and_the_payments_without_one(chdb_target):
    sink = old_database(chdb_target, "reconcile")
    try:
        sink.ensure_schema()
        keys = carried_awards(sink)["payout_key"]
        sink.command("CREATE TABLE payouts_sent (payout_key String, status String, sent_at DateTime) "
                     "ENGINE = MergeTree ORDER BY payout_key")
        sent = keys[::2] + ["f" * 32]  # every other award was paid, and one payment matches no award
        sink.command("INSERT INTO payouts_sent VALUES " + ", ".join(f"('{k}', 'SUCCESS', now())" for k in sent))
        unsent_sql, orphans_sql = readme_reconcile_queries()
        _, unsent = sink.query(unsent_sql)
        assert sorted(row[0] for row in unsent) == sorted(keys[1::2])
        _, orphans = sink.query(orphans_sql)
        assert [row[0] for row in orphans] == ["f" * 32]
    finally:
        sink.close()
