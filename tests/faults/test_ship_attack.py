"""The attack on an outbound scan (物流出库): its scan_id resent to move the goods, on a real worker.

A warehouse ships packed case X (units X*12 .. X*12+11 of batch 101, ``packing.csv``) to dealer A
(D-SH, Shanghai); the registry's fallback for those goods is D-GD-KA (Guangdong), so every later
answer tells which binding the engine used.  The attacker then re-sends the SAME scan_id with
(a) dealer B (D-ZJ, Zhejiang) to make the diverted bottles look legitimate, (b) another case code
Y to bind goods the scan never covered, (c) role consumer (the case code as a consumer's scan).
Each is a ``conflict`` with a ``scan_id_conflict`` alert, and binds and claims nothing: X's units
stay A's (not diverted in Shanghai, diverted in Hangzhou), Y's stay the registry's, the case
code's consumer first scan and Y's outbound first scan are still free.  A byte-identical
redelivery of the ship scan gets its first outcome back (``replay``) and changes nothing.

Checked on the worker's ``scan-results`` and ``alerts`` topics and in its chdb, and against the
local driver's Pipeline over the same stream with the Redis store (same phases) and the embedded
store (one batch): the same verdicts, dealer_id and diversion per scan_id.
"""
from __future__ import annotations

import collections
import subprocess
import uuid

import orjson
import pytest

from scanstream.engine.config import load
from scanstream.engine.state.embedded import EmbeddedStateStore
from scanstream.engine.state.redis import RedisStateStore
from scanstream.ext import codec
from scanstream.streams import envelope
from scanstream.streams.synthetic import DEMO_START_MS, UNITS_PER_CASE, WAREHOUSE_USER, build_world
from scanstream.streams.topics import ensure_topics
from scanstream.wiring import build_pipeline
from test_worker import LOCAL_TOML, SCANSTREAM, consume, local_config, stop, worker_config

from . import stores

pytestmark = [pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed"),
              pytest.mark.timeout(120)]

TENANT = 7
DEALER_A, DEALER_B, DEALER_C, REGISTRY_DEALER = "D-SH", "D-ZJ", "D-BJ", "D-GD-KA"
CASE_BATCH, UNIT_BATCH = 201, 101
CASE_X, CASE_Y = 7, 8  # packed cases; shipments.csv: cases 0..9 999 and units 0..49 999 to D-GD-KA
SHIP_ID = "ship-x"
MINUTE = 60_000
T = DEMO_START_MS + 3_600_000


def unit_of(case: int, i: int) -> int:
    return case * UNITS_PER_CASE + i


class Stream:
    """The attack as JSON lines, in phases: each phase is sent once the previous one is answered."""

    def __init__(self, world):
        self.world = world
        self.place = {p: world.districts[p][0][0] for p in ("3101", "3301", "4401")}  # Shanghai, Hangzhou, Guangzhou

    def code(self, batch: int, serial: int, kind: int = 0) -> str:
        return codec.encode(self.world.key, TENANT, batch, serial, kind=kind, key_id=self.world.key_id)

    def scan(self, scan_id: str, code: str, user: str, ts: int, **fields) -> bytes:
        return orjson.dumps({"scan_id": scan_id, "ts": ts, "code": code, "user_id": user, **fields})

    def phases(self) -> list[list[bytes]]:
        ship = {"scan_id": SHIP_ID, "ts": T, "code": self.code(CASE_BATCH, CASE_X, kind=1), "user_id": WAREHOUSE_USER,
                "role": "warehouse", "action": "ship", "dealer_id": DEALER_A, "region": self.place["4401"]}
        ship_line = orjson.dumps(ship)
        attacks = [
            orjson.dumps({**ship, "dealer_id": DEALER_B}),  # (a) rebind the goods to dealer B, same time
            orjson.dumps({**ship, "code": self.code(CASE_BATCH, CASE_Y, kind=1)}),  # (b) another case
            # (c) a consumer's scan of the case code (with action/dealer_id it would be invalid_event)
            orjson.dumps({k: v for k, v in {**ship, "role": "consumer"}.items() if k not in ("action", "dealer_id")}),
        ]
        sh, hz = self.place["3101"], self.place["3301"]
        later = [
            self.scan("x-unit-sh", self.code(UNIT_BATCH, unit_of(CASE_X, 0)), "wx-1", T + 10 * MINUTE, region=sh),
            self.scan("x-unit-hz", self.code(UNIT_BATCH, unit_of(CASE_X, 1)), "wx-2", T + 11 * MINUTE, region=hz),
            self.scan("x-unit-hz-2", self.code(UNIT_BATCH, unit_of(CASE_X, 2)), "wx-3", T + 12 * MINUTE, region=hz),
            self.scan("x-case-sh", self.code(CASE_BATCH, CASE_X, kind=1), "wx-4", T + 13 * MINUTE, region=sh),
            self.scan("y-unit-sh", self.code(UNIT_BATCH, unit_of(CASE_Y, 0)), "wx-5", T + 14 * MINUTE, region=sh),
            # Y's outbound first scan was not used up by (b): a genuine shipment of Y is ok and binds
            self.scan("ship-y", self.code(CASE_BATCH, CASE_Y, kind=1), WAREHOUSE_USER, T + 20 * MINUTE,
                      role="warehouse", action="ship", dealer_id=DEALER_C, region=self.place["4401"]),
        ]
        after = [self.scan("y-unit-sh-2", self.code(UNIT_BATCH, unit_of(CASE_Y, 1)), "wx-6", T + 21 * MINUTE,
                           region=sh)]
        return [[ship_line], attacks + [ship_line], later, after]


#: scan_id -> its rows in order: (verdict, dealer_id, diversion, replay)
EXPECTED = {
    SHIP_ID: [("ok", DEALER_A, "none", 0)] + [("conflict", None, None, 0)] * 3 + [("ok", DEALER_A, "none", 1)],
    "x-unit-sh": [("ok", DEALER_A, "none", 0)],
    "x-unit-hz": [("ok", DEALER_A, "region", 0)],
    "x-unit-hz-2": [("ok", DEALER_A, "region", 0)],
    "x-case-sh": [("ok", DEALER_A, "none", 0)],  # (c) claimed no consumer first scan of the case
    "y-unit-sh": [("ok", REGISTRY_DEALER, "region", 0)],  # (b) bound nothing
    "ship-y": [("ok", DEALER_C, "none", 0)],
    "y-unit-sh-2": [("ok", DEALER_C, "region", 0)],
}


def by_scan_id(rows) -> dict[str, list[dict]]:
    out = collections.defaultdict(list)
    for row in rows:
        out[row["scan_id"]].append(row)
    return dict(out)


def judged(rows: dict[str, list[dict]]) -> dict[str, list[tuple]]:
    """(verdict, dealer_id, diversion, replay) per row; a conflict's dealer_id and diversion left out."""
    return {sid: [(r["verdict"], None, None, r["replay"]) if r["verdict"] == "conflict" else
                  (r["verdict"], r["dealer_id"], r["diversion"], r["replay"]) for r in got]
            for sid, got in rows.items()}


def local_rows(pipeline, phases: list[list[bytes]]) -> tuple[dict[str, list[dict]], list[dict]]:
    """The local driver's outcome rows per scan_id and its alerts, one ``process`` call per phase."""
    rows, alerts = [], []
    for lines in phases:
        result = pipeline.process(lines)
        s = result.scans
        rows += [{c: (s[c][i].item() if hasattr(s[c][i], "item") else s[c][i])
                  for c in ("scan_id", "verdict", "dealer_id", "diversion", "replay")} for i in range(len(lines))]
        alerts += [{"alert": a, "subtype": st} for a, st in zip(result.alerts["alert"].tolist(),
                                                                result.alerts["subtype"].tolist())]
    return by_scan_id(rows), alerts


def test_resent_outbound_scan_cannot_move_the_goods(broker, redis_deployment, redis_prefix, tmp_path):
    from kafka import KafkaProducer

    config = load(LOCAL_TOML)
    world = build_world(TENANT, config.keys.get(TENANT, 1), 1)
    registry = tmp_path / "registry"
    world.write_registry(registry)
    phases = Stream(world).phases()

    names = {k: f"ship-attack-{k}-{uuid.uuid4().hex[:8]}" for k in ("scans", "results", "awards", "alerts", "dlq",
                                                                     "group")}
    config_path = worker_config(tmp_path / "worker.toml", registry, tmp_path / "chdb", broker.bootstrap, names,
                                redis_prefix + "worker:", "redis", redis_url=redis_deployment.url,
                                cluster=redis_deployment.cluster)
    ensure_topics(load(config_path).kafka)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([SCANSTREAM, "--config", str(config_path), "worker", "--loglevel", "info"],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        results: list[bytes] = []
        for i, lines in enumerate(phases):
            # one envelope on partition 0: the attacker's lines arrive after the answer they try to overturn
            producer.send(names["scans"], envelope.encode(lines), partition=0,
                          headers=[(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())])
            producer.flush()
            want = sum(map(len, phases[:i + 1]))
            results = consume(broker.bootstrap, names["results"], want, timeout_s=40 if i == 0 else 20)
            assert worker.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert len(results) == want, (i, results, log_path.read_text(errors="replace")[-3000:])
        alerts = [orjson.loads(line) for line in consume(broker.bootstrap, names["alerts"], 3, timeout_s=10)]
    finally:
        producer.close()
        stop(worker)
    assert "Traceback" not in log_path.read_text(errors="replace")

    # the worker's answers: every attack a conflict, the goods still A's, the redelivery its first answer
    rows = by_scan_id(orjson.loads(line) for line in results)
    assert judged(rows) == EXPECTED
    first, *attacked, again = rows[SHIP_ID]
    assert {k: v for k, v in again.items() if k != "replay"} == {k: v for k, v in first.items() if k != "replay"}
    sent = [orjson.loads(line) for line in phases[1][:3]]
    assert [(r["code"], r["role"]) for r in attacked] == [(e["code"], e["role"]) for e in sent]  # in attack order
    assert [r["prize_cents"] for r in attacked] == [0, 0, 0]
    assert DEALER_B not in {r["dealer_id"] for r in attacked}  # the attacker's dealer is nowhere
    conflicts = [a for a in alerts if a["alert"] == "scan_id_conflict"]
    assert len(conflicts) == 3 and {a["subtype"] for a in conflicts} == {"same_user"}, alerts
    assert all(orjson.loads(a["detail"])["scan_id"] == SHIP_ID for a in conflicts)

    # what the worker stored: the first outcome is the scan's row; 3 conflicts, 3 alerts
    stored = stores.probe(tmp_path / "chdb", {
        "scans": "SELECT scan_id, verdict, dealer_id, diversion FROM scan_events FINAL ORDER BY scan_id",
        "ship": f"SELECT verdict, count() FROM scan_events WHERE scan_id = '{SHIP_ID}' GROUP BY verdict",
        "alerts": "SELECT count() FROM alerts FINAL WHERE alert = 'scan_id_conflict'",
    })
    assert {r[0]: tuple(r[1:]) for r in stored["scans"]} == {sid: got[0][:3] for sid, got in EXPECTED.items()}
    assert collections.Counter({v: int(n) for v, n in stored["ship"]})["conflict"] == 3, stored["ship"]
    assert int(stored["alerts"][0][0]) == 3

    # the local driver, Redis store, the same phases; the embedded store, the whole stream in one batch
    redis_store = RedisStateStore.from_url(redis_deployment.url, prefix=redis_prefix + "local:",
                                           cluster=redis_deployment.cluster)
    try:
        local, local_alerts = local_rows(build_pipeline(local_config(registry), state=redis_store), phases)
    finally:
        redis_store.close()
    embedded_store = EmbeddedStateStore(tmp_path / "state.sqlite")
    try:
        one_batch, _ = local_rows(build_pipeline(local_config(registry), state=embedded_store),
                                  [[line for lines in phases for line in lines]])
    finally:
        embedded_store.close()
    assert judged(local) == judged(one_batch) == judged(rows)
    assert sorted(a["subtype"] for a in local_alerts if a["alert"] == "scan_id_conflict") == ["same_user"] * 3
