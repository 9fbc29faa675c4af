"""The built-in dashboard in the operators' language, against a real chdb over HTTP.

A small stream (registry dealers, scans, alerts and their webhook delivery records) is stored in
one chdb database through ``ClickHouseSink``; a ``Dashboard`` on a free port reads it, and the
tests read its JSON API as the page does:

* regions are named in Chinese (广东省, 深圳市) from ``geo_regions``, which must hold exactly
  the names ``engine.geo.division_names`` reads from cpca's table (the one loader);
* dealers are named as the registry names them;
* the latest-alerts list is newest first, bounded, and says how each alert's delivery ended.

chdb hosts one data path per process: the module-scoped fixture opens one and closes it at the
end, so other modules can open theirs.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pytest

pytest.importorskip("chdb")

from scanstream.dashboard import Dashboard
from scanstream.dashboard.labels import LABEL_LINE_CELLS, city_label, wrap_label
from scanstream.dashboard.queries import LATEST_ALERTS_LIMIT
from scanstream.engine.geo import division_names
from scanstream.engine.outcomes import ALERT_COLUMNS, DELIVERY_COLUMNS, SCAN_COLUMNS
from scanstream.engine.registry_schema import SCHEMA as REGISTRY_SCHEMA
from scanstream.sinks.clickhouse import ClickHouseSink, connect
from scanstream.sinks.registry_tables import insert_spec

TENANT, BUSY_TENANT = 7, 9
#: More alerts than the list shows, for the busy tenant.
BUSY_ALERTS = LATEST_ALERTS_LIMIT + 10
DEALERS = {"D-SH": "Shanghai Trading", "D-GD": "华南大区广州经销商有限公司"}


def ms(local: str) -> int:
    """Epoch milliseconds of an RFC 3339 time."""
    return int(datetime.fromisoformat(local).timestamp() * 1000)


def columns(rows: Sequence[Mapping[str, Any]], spec) -> dict[str, np.ndarray]:
    """A columnar batch from row dicts, element by element (a list value stays one element)."""
    out = {}
    for name, dtype, _ in spec:
        if dtype == "O":
            arr = np.empty(len(rows), dtype=object)
            for i, row in enumerate(rows):
                arr[i] = row.get(name, "")
        else:
            arr = np.array([row.get(name, 0) for row in rows], dtype=dtype)
        out[name] = arr
    return out


def scan(scan_id: str, at: str, verdict: str, region: str, *, dealer: str = "", diversion: str = "none",
         serial: int = 0) -> dict[str, Any]:
    return {"scan_id": scan_id, "ts": ms(at), "tenant": TENANT, "kind": 0, "batch": 101, "serial": serial,
            "code": f"CODE-{serial}", "user_id": f"u-{scan_id}", "role": "consumer", "region": region,
            "sku": "BEER-500", "dealer_id": dealer, "verdict": verdict, "diversion": diversion, "replay": 0}


def alert(alert_id: str, at: str, kind: str, subtype: str, city: str, dealer: str = "", *,
          tenant: int = TENANT) -> dict[str, Any]:
    return {"alert_id": alert_id, "ts": ms(at), "tenant": tenant, "alert": kind, "subtype": subtype,
            "dealer_id": dealer, "city": city, "count": 1, "window_start": ms(at), "window_end": ms(at)}


def delivery(alert_id: str, at: str, status: str, *, attempts: int = 1, http_status: int = 0,
             error: str = "") -> dict[str, Any]:
    return {"alert_id": alert_id, "ts": ms(at), "channel_format": "wecom",
            "url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=REDACTED", "status": status,
            "attempts": attempts, "http_status": http_status, "error": error}


DAY = "2026-11-20"
SCANS = [
    # D-SH's goods (Shanghai) scanned in Shenzhen (440305, 南山区): out of territory
    scan("s1", f"{DAY}T10:00:00+08:00", "ok", "440305", dealer="D-SH", diversion="region", serial=1),
    scan("s2", f"{DAY}T10:01:00+08:00", "ok", "310101", dealer="D-SH", serial=2),
    # a forged code in Futian, Shenzhen
    scan("s3", f"{DAY}T10:02:00+08:00", "bad_mac", "440304", serial=3),
    scan("s4", f"{DAY}T10:03:00+08:00", "ok", "440106", dealer="D-GD", diversion="channel", serial=4),
]
ALERTS = [
    alert("a-unsent", f"{DAY}T10:00:00+08:00", "diversion", "region", "4403", "D-SH"),
    alert("a-delivered", f"{DAY}T10:05:00+08:00", "diversion", "region", "4403", "D-SH"),
    alert("a-failed", f"{DAY}T10:10:00+08:00", "diversion", "channel", "4501", "D-GD"),
    alert("a-pending", f"{DAY}T10:15:00+08:00", "cloned_code", "provinces", "1101"),
] + [alert(f"busy-{i:03d}", f"{DAY}T11:{i % 60:02d}:{i // 60:02d}+08:00", "diversion", "region", "4401", "D-GD",
           tenant=BUSY_TENANT) for i in range(BUSY_ALERTS)]
DELIVERIES = [
    # a deadline passed first (pending), then it arrived
    delivery("a-delivered", f"{DAY}T10:05:01+08:00", "pending", attempts=1, error="deadline"),
    delivery("a-delivered", f"{DAY}T10:06:00+08:00", "delivered", attempts=2, http_status=200),
    # the robot refused it: a 4xx is final
    delivery("a-failed", f"{DAY}T10:10:01+08:00", "failed", attempts=1, http_status=400,
             error="errcode 93000: invalid webhook key"),
    delivery("a-pending", f"{DAY}T10:15:01+08:00", "pending", attempts=3, error="timed out"),
]


@dataclass
class Served:
    sink: ClickHouseSink
    dashboard: Dashboard

    def panel(self, name: str, **query: Any) -> dict:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = get(f"{self.dashboard.url}api/panel/{name}{'?' + qs if qs else ''}")
        assert status == 200, body
        return body


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def records(body: dict) -> list[dict]:
    return [dict(zip(body["columns"], row)) for row in body["rows"]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    sink = ClickHouseSink(connect(f"chdb:{tmp_path_factory.mktemp('chdb-names')}", database="names"))
    dashboard = None
    try:
        sink.ensure_schema()
        dealers = [{"dealer_id": d, "tenant": t, "name": name, "channel": "KA", "regions": [region]}
                   for t in (TENANT, BUSY_TENANT) for (d, name), region in zip(DEALERS.items(), ("31", "44"))]
        for f in REGISTRY_SCHEMA:
            if f.table == "registry_dealers":
                sink.insert(f.table, columns(dealers, insert_spec(f)), insert_spec(f))
        sink.write_scans(columns(SCANS, SCAN_COLUMNS), dedup_token="names:scans")
        sink.write_alerts(columns(ALERTS, ALERT_COLUMNS), dedup_token="names:alerts")
        sink.write_deliveries(columns(DELIVERIES, DELIVERY_COLUMNS), dedup_token="names:deliveries")
        dashboard = Dashboard(port=0, tenants={TENANT: "Demo Brewery"}).start()
        dashboard.attach(sink)
        yield Served(sink, dashboard)
    finally:
        if dashboard is not None:
            dashboard.close()
        sink.close()


# --------------------------------------------------------------------------- names


def test_geo_regions_holds_the_names_of_the_one_loader(served: Served) -> None:
    _, rows = served.sink.query("SELECT code, name FROM geo_regions")
    assert dict(rows) == dict(division_names())
    assert (division_names()["44"], division_names()["4403"], division_names()["1101"]) == ("广东省", "深圳市", "北京市")


def test_regions_are_named_in_chinese(served: Served) -> None:
    body = served.panel("diversion_region")
    assert [(r["dealer_id"], r["dealer_name"], r["province"], r["province_name"], r["scans"])
            for r in records(body)] == [("D-SH", "Shanghai Trading", "44", "广东省", 1)]
    assert body["figure"]["data"][0]["x"] == ["广东省"]
    assert "Shanghai Trading goods in 广东省" in body["headline"]
    body = served.panel("fraud_hotspots")
    # the forged code in Shenzhen; Beijing has the cloned-code alert only
    assert {r["province_name"]: r["counterfeit_scans"] for r in records(body)} == {"广东省": 1, "北京市": 0}
    assert "广东省" in body["figure"]["data"][0]["y"]
    body = served.panel("conversion_province")
    assert {r["province"]: r["province_name"] for r in records(body)} == {"31": "上海市", "44": "广东省"}


def test_dealers_are_named_as_the_registry_names_them(served: Served) -> None:
    body = served.panel("diversion_dealer")
    assert {r["dealer_id"]: r["dealer_name"] for r in records(body)} == DEALERS
    labels = body["figure"]["data"][0]["y"]
    # a long Chinese name is shown whole, in lines the chart has room for
    wrapped = [label for label in labels if "<br>" in label]
    assert [label.replace("<br>", "") for label in wrapped] == [DEALERS["D-GD"]]


# --------------------------------------------------------------------------- latest alerts


def test_latest_alerts_newest_first_with_their_delivery(served: Served) -> None:
    body = served.panel("latest_alerts", tenant=TENANT)
    rows = records(body)
    assert [(r["alert_id"], r["delivery"]) for r in rows] == [
        ("a-pending", "pending"), ("a-failed", "failed"), ("a-delivered", "delivered"), ("a-unsent", "")]
    delivered = rows[2]
    assert (delivered["deliveries"], delivered["attempts"], delivered["http_status"]) == (2, 3, 200)
    assert (rows[1]["http_status"], rows[1]["error"]) == (400, "errcode 93000: invalid webhook key")
    assert [r["time"] for r in rows] == ["2026-11-20 10:15:00", "2026-11-20 10:10:00", "2026-11-20 10:05:00",
                                         "2026-11-20 10:00:00"]  # China time, the dashboard's zone
    table = body["table"]
    assert table["columns"] == ["time (Asia/Shanghai)", "alert", "dealer", "where", "scans", "delivery"]
    states = [r["state"] for r in table["rows"]]
    assert states == ["pending", "failed", "delivered", "not sent"]
    cells = {r["state"]: dict(zip(table["columns"], r["cells"])) for r in table["rows"]}
    assert cells["delivered"]["where"] == "广东省 深圳市" and cells["delivered"]["dealer"] == "Shanghai Trading"
    assert cells["failed"]["where"] == "广西壮族自治区 南宁市" and cells["failed"]["dealer"] == DEALERS["D-GD"]
    assert cells["pending"]["where"] == "北京市"  # a municipality is named once
    assert cells["failed"]["delivery"].startswith("failed · HTTP 400 · errcode 93000")
    assert cells["delivered"]["delivery"] == "delivered · HTTP 200 · 3 attempts"
    assert body["kpi"]["delivery"] == {"delivered": 1, "failed": 1, "pending": 1, "not sent": 1}
    assert body["headline"].startswith("latest 4 alerts")


def test_latest_alerts_are_bounded(served: Served) -> None:
    rows = records(served.panel("latest_alerts", tenant=BUSY_TENANT))
    assert len(rows) == LATEST_ALERTS_LIMIT
    newest = sorted((a for a in ALERTS if a["tenant"] == BUSY_TENANT), key=lambda a: (a["ts"], a["alert_id"]),
                    reverse=True)[:LATEST_ALERTS_LIMIT]
    assert [r["alert_id"] for r in rows] == [a["alert_id"] for a in newest]
    assert all(r["delivery"] == "" and r["dealer_name"] == DEALERS["D-GD"] for r in rows)
    assert len(records(served.panel("latest_alerts"))) == LATEST_ALERTS_LIMIT  # all tenants


def test_status_lists_the_alerts_table(served: Served) -> None:
    status, body = get(served.dashboard.url + "api/status")
    assert status == 200
    (entry,) = [p for p in body["panels"] if p["name"] == "latest_alerts"]
    assert entry["kind"] == "table" and entry["wide"]
    status, body = get(served.dashboard.url + "api/panel/latest_alerts?tenant=abc")
    assert status == 400 and "tenant" in body["error"]


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("name", [
    "广西壮族自治区", "新疆维吾尔自治区自治区直辖县级行政区划", "Guangdong Traditional Trade", "华南大区 KA 广州经销商有限公司",
    "广东省", "", "A & B <Trading>",
])
def test_wrap_label_keeps_every_character_within_the_line_width(name: str) -> None:
    wrapped = wrap_label(name)
    lines = wrapped.split("<br>") if wrapped else []
    # nothing is cut: the lines put back together are the name (spaces at a break aside)
    unescaped = [line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for line in lines]
    assert re.sub(r"\s", "", "".join(unescaped)) == re.sub(r"\s", "", name)
    for line in unescaped:
        width = sum(2 if "\u4e00" <= c <= "\u9fff" else 1 for c in line)
        assert width <= LABEL_LINE_CELLS or " " not in line, line  # only a single long word may overrun
    assert "<" not in "".join(lines).replace("<br>", "")  # a name's own markup is escaped


@pytest.mark.parametrize(("province", "city_name", "city", "want"), [
    ("广东省", "深圳市", "4403", "广东省 深圳市"),
    ("北京市", "北京市", "1101", "北京市"),
    ("", "", "9901", "9901"),
    ("广东省", "", "4499", "广东省 4499"),
    ("", "", "", "–"),
])
def test_city_label(province: str, city_name: str, city: str, want: str) -> None:
    assert city_label(province, city_name, city) == want
