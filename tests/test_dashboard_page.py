"""The built-in dashboard, end to end: ``scanstream demo --scans 3000 --dashboard 0`` as a real
process, its JSON panels checked against the demo's results file, and the page rendered by
headless Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it).

The demo writes to chdb and, with ``--dashboard``, serves the page from the same process (chdb
lets one process open a data path) and keeps serving after the run until SIGTERM.  The module
starts it once; every test reads from it.  Expected values come from the results file (one
line per input event): the ClickHouse tables keep one row per scan_id (``FINAL``), which is
the lines with ``replay = 0``.
"""
from __future__ import annotations

import collections
import csv
import json
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from scanstream.dashboard.labels import city_label
from scanstream.dashboard.queries import GUIDES_LIMIT, LATEST_ALERTS_LIMIT, OUTBOUND_LIMIT
from scanstream.engine.geo import division_names
from scanstream.streams.synthetic import DEALERS as DEMO_DEALERS
from scanstream.streams.synthetic import DIVERTED_CASE_DEALER

REPO = Path(__file__).resolve().parents[1]
LOCAL_TOML = REPO / "config" / "local.toml"
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEMO_SCANS = 3000
CAMPAIGN = "winter-2026"
BUDGET_CENTS = 10_000_000  # config/local.toml, campaign winter-2026
CASE_BUDGET_CENTS = 500_000  # config/local.toml, the 开箱有礼 campaign open-case-2026
VALID = ("ok", "repeat")
CHART_PANELS = {"scans_per_minute", "verdict_mix", "conversion_batch", "conversion_sku", "conversion_province",
                "repeat_rate", "new_returning", "spend_budget", "prizes_by_tier", "fraud_hotspots",
                "diversion_dealer", "diversion_region", "throughput"}
#: Panels the page draws as an HTML table.
TABLE_PANELS = {"latest_alerts", "guides", "outbound"}
#: Colours the panels give verdicts and bars (scanstream/dashboard/panels.py), as RGB.
OK_GREEN, BAD_MAC_RED, BAR_BLUE = (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28), (0x1F, 0x77, 0xB4)
STARTUP_TIMEOUT_S = 75
CHROMIUM_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")


# --------------------------------------------------------------------------- helpers


def write_config(path: Path, registry: Path, chdb: Path) -> Path:
    """config/local.toml with registry.dir, sink.clickhouse and the state file in the test's folder,
    webhooks off."""
    text = LOCAL_TOML.read_text(encoding="utf-8")
    for pattern, repl in [(r'(?m)^dir = "[^"]*"', f"dir = {json.dumps(str(registry))}"),
                          (r'(?m)^clickhouse = "chdb:[^"]*"', f"clickhouse = {json.dumps('chdb:' + str(chdb))}"),
                          (r'(?m)^path = "[^"]*"', f"path = {json.dumps(str(chdb) + '.state.sqlite')}"),
                          (r"(?m)^webhooks = true", "webhooks = false")]:
        text, n = re.subn(pattern, repl, text)
        assert n == 1, f"config/local.toml changed shape: {pattern!r} matched {n} times"
    path.write_text(text, encoding="utf-8")
    return path


def get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str) -> tuple[int, dict]:
    status, body = get(url)
    return status, json.loads(body)


def chromium(*args: str, profile: Path) -> list[str]:
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1400,1800", "--virtual-time-budget=10000", *args]


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, RGB rows) of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    assert header is not None, "PNG without IHDR"
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:  # Up
            line = bytearray((x + p) & 255 for x, p in zip(line, prev))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:  # Paeth
            for i in range(stride):
                a, c = (line[i - bpp], prev[i - bpp]) if i >= bpp else (0, 0)
                b = prev[i]
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``scanstream demo --scans 3000 --dashboard 0`` until it has written everything; SIGTERM after."""
    home = tmp_path_factory.mktemp("dashboard")
    config = write_config(home / "scanstream.toml", home / "data" / "registry", home / "data" / "chdb")
    env = {k: v for k, v in os.environ.items() if k != "SCANSTREAM_CONFIG"}
    started = time.monotonic()
    proc = subprocess.Popen([SCANSTREAM, "demo", "--config", str(config), "--scans", str(DEMO_SCANS),
                             "--dashboard", "0"], cwd=home, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    output: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def drain(stream, name):
        for line in stream:
            output[name].append(line)
            if name == "stderr":
                lines.put(line)

    for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
        threading.Thread(target=drain, args=(stream, name), daemon=True).start()

    def failure(why: str) -> str:
        return f"{why}\nstdout:\n{''.join(output['stdout'])}\nstderr:\n{''.join(output['stderr'])}"

    try:
        url = None
        while time.monotonic() - started < STARTUP_TIMEOUT_S:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, failure(f"demo exited with {proc.returncode}")
                continue
            m = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if url is None and m:
                url = m.group(0)
            if "writing finished" in line:
                break
        else:
            pytest.fail(failure("the demo did not finish writing in time"))
        assert url, failure("the demo printed no dashboard URL")
        status, body = get_json(url + "api/status")
        assert status == 200 and body["writer"] == "finished", body
        yield {"url": url, "config": config, "home": home, "proc": proc, "output": output,
               "results": home / "data" / "demo-results.jsonl", "startup_s": time.monotonic() - started}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, failure(f"the demo exited with {proc.returncode} after SIGTERM")
    assert "Traceback" not in "".join(output["stderr"]), failure("traceback on stderr")


@pytest.fixture(scope="module")
def stored(served) -> list[dict]:
    """The results file's lines that are rows of the tables: first deliveries (replay = 0)."""
    lines = [json.loads(line) for line in served["results"].read_text(encoding="utf-8").splitlines()]
    assert len(lines) >= DEMO_SCANS
    return [r for r in lines if r["replay"] == 0]


def panel(served, name: str, **query) -> dict:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = get_json(f"{served['url']}api/panel/{name}{'?' + qs if qs else ''}")
    assert status == 200, body
    assert body["name"] == name and "figure" in body and "rows" in body
    return body


def records(body: dict) -> list[dict]:
    return [dict(zip(body["columns"], row)) for row in body["rows"]]


# --------------------------------------------------------------------------- JSON endpoints


def test_status_lists_every_panel(served):
    status, body = get_json(served["url"] + "api/status")
    assert status == 200
    assert body["mode"] == "writer" and body["ready"] is True and body["plotly"] is True
    assert {p["name"] for p in body["panels"]} == CHART_PANELS | TABLE_PANELS | {"overview"}
    assert CAMPAIGN in body["campaigns"] and {"id": 7, "name": "Demo Brewery"} in body["tenants"]


def test_verdict_mix_equals_the_results_file(served, stored):
    body = panel(served, "verdict_mix")
    assert {r["verdict"]: r["scans"] for r in records(body)} == dict(collections.Counter(r["verdict"] for r in stored))
    assert body["kpi"]["total"] == len(stored)
    # the figure carries the same numbers the page draws
    pie = body["figure"]["data"][0]
    assert dict(zip(pie["labels"], pie["values"])) == dict(collections.Counter(r["verdict"] for r in stored))


def test_scans_per_minute_add_up_to_the_timed_scans(served, stored):
    body = panel(served, "scans_per_minute")
    by_verdict = collections.Counter()
    for r in records(body):
        by_verdict[r["verdict"]] += r["scans"]
    timed = collections.Counter(r["verdict"] for r in stored if r["ts"])  # the demo fits in the 24 h window
    assert by_verdict == timed
    assert body["kpi"]["bucket_min"] in (1, 2, 5, 10) and body["headline"]


def test_overview_tiles(served, stored):
    kpi = panel(served, "overview")["kpi"]
    valid = [r for r in stored if r["verdict"] in VALID]
    scanners = {r["user_id"] for r in valid if r["role"] == "consumer" and r["user_id"]}
    won = [r for r in stored if r["draw"] == "won"]
    assert kpi["scans"] == len(stored)
    assert kpi["valid_scans"] == len(valid)
    assert kpi["scanners"] == len(scanners)
    assert kpi["codes"] == len({(r["tenant"], r["kind"], r["batch"], r["serial"]) for r in valid})
    assert kpi["counterfeit_scans"] == sum(r["verdict"] == "bad_mac" for r in stored)
    # spend: the prizes of the winning scans and the guides' commissions they earned (no prize themselves)
    assert kpi["prizes"] == len(won) and kpi["spent_cents"] - kpi["commission_cents"] == sum(r["prize_cents"] for r in won)
    assert kpi["budget_cents"] == BUDGET_CENTS + CASE_BUDGET_CENTS  # every campaign of the tenant


def test_conversion_by_batch_and_sku(served, stored):
    with (served["home"] / "data" / "registry" / "batches.csv").open(newline="", encoding="utf-8") as f:
        batches = {(int(b["tenant"]), int(b["batch"]), b["kind"] or "unit"): (b["sku"], int(b["size"]))
                   for b in csv.DictReader(f)}
    scanned = collections.defaultdict(set)
    for r in stored:
        if r["verdict"] in VALID:
            scanned[(r["tenant"], r["batch"], "case" if r["kind"] == 1 else "unit")].add(r["serial"])
    rows = records(panel(served, "conversion_batch"))
    assert {(r["tenant"], r["batch"], r["kind"]): (r["sku"], r["issued"]) for r in rows} == batches
    for r in rows:
        key = (r["tenant"], r["batch"], r["kind"])
        assert r["scanned"] == len(scanned[key]), key
        assert r["rate_pct"] == pytest.approx(100 * len(scanned[key]) / r["issued"], abs=1e-3)
    by_sku = collections.Counter()
    for key, (sku, _) in batches.items():
        by_sku[sku] += len(scanned[key])
    assert {r["sku"]: r["scanned"] for r in records(panel(served, "conversion_sku"))} == dict(by_sku)


def test_conversion_by_province_counts_shipped_codes(served, stored):
    rows = records(panel(served, "conversion_province"))
    assert sum(r["scanned"] for r in rows) == len({(r["kind"], r["batch"], r["serial"]) for r in stored
                                                   if r["verdict"] in VALID and r["dealer_id"]})
    assert all(0 <= r["scanned"] <= r["issued"] for r in rows)


def test_repeat_rate_and_new_scanners(served, stored):
    codes = collections.defaultdict(set)
    for r in stored:
        if r["verdict"] in VALID and r["role"] == "consumer" and r["user_id"]:
            codes[r["user_id"]].add((r["tenant"], r["kind"], r["batch"], r["serial"]))
    repeaters = sum(len(c) > 1 for c in codes.values())
    kpi = panel(served, "repeat_rate")["kpi"]
    assert (kpi["scanners"], kpi["repeat_scanners"]) == (len(codes), repeaters)
    assert kpi["rate_pct"] == pytest.approx(100 * repeaters / len(codes), abs=1e-3)
    # every scanner is new in exactly one period
    assert panel(served, "new_returning")["kpi"]["new"] == len(codes)


def test_prizes_and_spend_against_budget(served, stored):
    won = [r for r in stored if r["draw"] == "won"]
    tiers = collections.Counter(r["prize_tier"] for r in won)
    rows = records(panel(served, "prizes_by_tier"))
    assert {r["prize_tier"]: r["prizes"] for r in rows} == dict(tiers)
    assert sum(r["cents"] for r in rows) == sum(r["prize_cents"] for r in won)
    # the budget pays prizes and guides' commissions: spend = prizes + commissions
    spend = panel(served, "spend_budget")
    mine = [r for r in won if r["campaign"] == CAMPAIGN]
    commission = spend["kpi"][CAMPAIGN]["commission_cents"]
    assert spend["kpi"][CAMPAIGN]["budget_cents"] == BUDGET_CENTS
    assert spend["kpi"][CAMPAIGN]["spent_cents"] == sum(r["prize_cents"] for r in mine) + commission
    assert sum(k["spent_cents"] - k["commission_cents"] for k in spend["kpi"].values()) == sum(
        r["prize_cents"] for r in won)
    assert sum(k["commission_cents"] for k in spend["kpi"].values()) == panel(served, "overview")["kpi"][
        "commission_cents"]
    left = next(t for t in spend["figure"]["data"] if t["name"] == f"{CAMPAIGN}: budget left")
    assert left["y"][0] == BUDGET_CENTS / 100
    assert left["y"][-1] == pytest.approx((BUDGET_CENTS - sum(r["prize_cents"] for r in mine) - commission) / 100)


def test_diversion_by_dealer_and_region(served, stored):
    diverted = collections.Counter((r["dealer_id"], r["diversion"]) for r in stored if r["diversion"] != "none")
    assert diverted, "the demo diverts goods"
    rows = records(panel(served, "diversion_dealer"))
    assert {(r["dealer_id"], r["diversion"]): r["scans"] for r in rows} == dict(diverted)
    out_of_territory = collections.Counter((r["dealer_id"], r["region"][:2]) for r in stored
                                           if r["diversion"] in ("region", "region+channel"))
    rows = records(panel(served, "diversion_region"))
    assert {(r["dealer_id"], r["province"]): r["scans"] for r in rows} == dict(out_of_territory)


def test_counterfeit_hot_spots(served, stored):
    bad = collections.Counter(r["region"][:2] for r in stored if r["verdict"] == "bad_mac" and r["region"])
    rows = records(panel(served, "fraud_hotspots"))
    assert {r["province"]: r["counterfeit_scans"] for r in rows if r["counterfeit_scans"]} == dict(bad)
    alerts = panel(served, "overview")["kpi"]["alerts"]
    if alerts.get("cloned_code"):
        # the demo's cloned code: one label copied and scanned by wx-clone-0..5 across provinces
        clones = sum(r["verdict"] in VALID and r["user_id"].startswith("wx-clone-") for r in stored)
        assert sum(r["cloned_code_scans"] for r in rows) == clones
        assert sum(r["cloned_code_alerts"] for r in rows) == alerts["cloned_code"]


def test_regions_and_dealers_are_named(served, stored):
    names = division_names()
    bad = {r["region"][:2] for r in stored if r["verdict"] == "bad_mac" and r["region"]}
    rows = records(panel(served, "fraud_hotspots"))
    assert {r["province_name"] for r in rows if r["counterfeit_scans"]} == {names[p] for p in bad}
    assert "广东省" in {names[p] for p in bad}  # the demo forges codes in Shenzhen
    dealers = {d[0]: d[1] for d in DEMO_DEALERS}
    rows = records(panel(served, "diversion_dealer"))
    assert rows and all(r["dealer_name"] == dealers[r["dealer_id"]] for r in rows)
    body = panel(served, "diversion_region")
    assert {r["province_name"] for r in records(body)} == {names[r["province"]] for r in records(body)}


def test_latest_alerts_name_where_and_who(served, stored):
    body = panel(served, "latest_alerts")
    rows = records(body)
    alerts = panel(served, "overview")["kpi"]["alerts"]
    assert len(rows) == min(LATEST_ALERTS_LIMIT, sum(alerts.values()))
    assert [r["ts_ms"] for r in rows] == sorted((r["ts_ms"] for r in rows), reverse=True)  # newest first
    names = division_names()
    dealers = {d[0]: d[1] for d in DEMO_DEALERS}
    cells = [dict(zip(body["table"]["columns"], r["cells"])) for r in body["table"]["rows"]]
    for row, cell in zip(rows, cells):
        assert cell["where"] == city_label(names[row["city"][:2]], names[row["city"]], row["city"])
        assert cell["dealer"] == dealers.get(row["dealer_id"], row["dealer_id"] or "(no dealer)")
        # the test's configuration turns webhooks off: nothing was sent
        assert row["delivery"] == "" and cell["delivery"].startswith("not sent")
    # goods of Shanghai Trading turn up in Shenzhen stores
    assert any(c["where"] == "广东省 深圳市" and c["dealer"] == "Shanghai Trading" for c in cells)


def test_guides_table(served, stored):
    """Sales, units and opened units per guide from the results file; commissions are what the
    budgets paid beyond the prizes of the winning scans."""
    sold = [r for r in stored if r["role"] == "guide" and r["verdict"] in VALID]
    sales = collections.Counter((r["tenant"], r["user_id"]) for r in sold)
    first = {}  # unit -> (ts, scan_id, guide) of its first guide
    for r in sold:
        if r["kind"] == 0:
            unit, sale = (r["tenant"], r["batch"], r["serial"]), (r["ts"], r["scan_id"], r["user_id"])
            first[unit] = min(first.get(unit, sale), sale)
    units = collections.Counter((unit[0], guide) for unit, (_, _, guide) in first.items())
    opened = collections.Counter()
    for r in stored:
        sale = first.get((r["tenant"], r["batch"], r["serial"])) if r["kind"] == 0 else None
        if sale and r["role"] == "consumer" and r["user_id"] and r["verdict"] == "ok" and r["ts"] >= sale[0]:
            opened[(r["tenant"], sale[2])] += 1
    body = panel(served, "guides")
    rows, kpi = records(body), body["kpi"]
    overview = panel(served, "overview")["kpi"]
    won = sum(r["prize_cents"] for r in stored if r["draw"] == "won")
    assert (kpi["sales"], kpi["units"], kpi["consumer_scans"]) == (
        sum(sales.values()), sum(units.values()), sum(opened.values()))
    assert kpi["commission_cents"] == overview["spent_cents"] - won == overview["commission_cents"]
    assert kpi["commissions"] == overview["commissions"]
    assert len(rows) == min(GUIDES_LIMIT, kpi["guides"]) and kpi["guides"] >= len(sales)
    for r in rows:
        key = (r["tenant"], r["user_id"])
        assert (r["sales"], r["units"], r["consumer_scans"]) == (sales[key], units[key], opened[key]), key
    order = [(-r["commission_cents"], -r["sales"]) for r in rows]
    assert order == sorted(order)  # most commission first
    assert [c["cells"][0] for c in body["table"]["rows"]] == [r["user_id"] for r in rows]
    assert body["table"]["empty"] and (body["headline"] or not rows)


def test_outbound_table(served, stored):
    """Outbound scans, cases, units (packing.csv expanded) and diverted scans per dealer from the
    results file and the registry; the demo's case shipped to Zhejiang and opened in Guangzhou
    raises an alert that names the outbound scan."""
    packed = collections.defaultdict(list)
    with (served["home"] / "data" / "registry" / "packing.csv").open(newline="", encoding="utf-8") as f:
        for p in csv.DictReader(f):
            packed[(int(p["tenant"]), int(p["case_batch"]), int(p["case_serial"]))].append(
                (int(p["unit_batch"]), int(p["unit_serial_from"]), int(p["unit_serial_to"])))
    scans, cases, units = collections.Counter(), collections.defaultdict(set), collections.defaultdict(set)
    for r in stored:
        if r["role"] != "warehouse" or r["verdict"] not in VALID:
            continue
        key = (r["tenant"], r["dealer_id"])
        scans[key] += 1
        if r["kind"] == 1:
            cases[key].add((r["batch"], r["serial"]))
            for batch, lo, hi in packed[(r["tenant"], r["batch"], r["serial"])]:
                units[key].update((batch, s) for s in range(lo, hi + 1))
        else:
            units[key].add((r["batch"], r["serial"]))
    diverted = collections.Counter((r["tenant"], r["dealer_id"]) for r in stored
                                   if r["diversion"] not in ("none", "") and r["dealer_id"])
    assert scans, "the demo ships cases"
    body = panel(served, "outbound")
    rows, kpi = records(body), body["kpi"]
    assert len(rows) == min(OUTBOUND_LIMIT, len(set(scans) | set(diverted)))
    for r in rows:
        key = (r["tenant"], r["dealer_id"])
        assert (r["outbound_scans"], r["cases"], r["units"], r["diverted_scans"]) == (
            scans[key], len(cases[key]), len(units[key]), diverted[key]), key
    assert [r["outbound_scans"] for r in rows] == sorted((r["outbound_scans"] for r in rows), reverse=True)
    assert (kpi["outbound_scans"], kpi["dealers"]) == (sum(scans.values()), len(scans))
    assert kpi["units"] == sum(len(u) for u in units.values())
    alerts = panel(served, "overview")["kpi"]["alerts"]
    assert 1 <= next(r["case_alerts"] for r in rows if r["dealer_id"] == DIVERTED_CASE_DEALER)
    assert kpi["case_alerts"] <= alerts.get("diversion", 0)
    dealers = {d[0]: d[1] for d in DEMO_DEALERS}
    assert [c["cells"][0] for c in body["table"]["rows"]] == [dealers[r["dealer_id"]] for r in rows]


def test_throughput_saw_the_run(served, stored):
    # the dashboard samples the row count every second from when ClickHouse opened, and once
    # more when the writer finished
    deadline = time.monotonic() + 10
    while True:
        body = panel(served, "throughput")
        rows = records(body)
        if len(rows) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rows) >= 2, rows
    # every line was written (redeliveries too); a replacing merge may have collapsed some since
    lines = len(served["results"].read_text(encoding="utf-8").splitlines())
    assert len(stored) <= rows[-1]["rows_written"] <= lines
    assert body["kpi"]["rows"] == rows[-1]["rows_written"] and body["kpi"]["peak"] > 0


def test_tenant_filter_and_bad_requests(served, stored):
    body = panel(served, "verdict_mix", tenant=1)  # config tenant 1 scanned nothing
    assert body["rows"] == []
    assert panel(served, "verdict_mix", tenant=7)["kpi"]["total"] == sum(r["tenant"] == 7 for r in stored)
    assert get_json(served["url"] + "api/panel/nope")[0] == 404
    assert get_json(served["url"] + "api/panel/verdict_mix?tenant=x")[0] == 400
    assert get(served["url"] + "static/../server.py")[0] == 404


def test_plotly_is_served_from_the_installed_package(served):
    status, body = get(served["url"] + "vendor/plotly.min.js")
    assert status == 200 and len(body) > 1_000_000
    assert re.match(rb"/\*\*\s*\* plotly\.js v\d", body)


def test_dashboard_command_explains_a_locked_chdb_path(served):
    env = {k: v for k, v in os.environ.items() if k != "SCANSTREAM_CONFIG"}
    proc = subprocess.run([SCANSTREAM, "dashboard", "--config", str(served["config"]), "--port", "0"], check=False,
                          capture_output=True, text=True, timeout=60, env=env, cwd=served["home"])
    assert proc.returncode == 5, proc.stderr  # unavailable: held by another process
    assert f"process {served['proc'].pid}" in proc.stderr
    assert "--dashboard" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- the page in Chromium


@pytest.fixture(scope="module")
def rendered(served, tmp_path_factory):
    """A screenshot and the DOM of the page after 10 s of virtual time, from two Chromium runs at once."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
    out = tmp_path_factory.mktemp("chromium")
    png = out / "dashboard.png"
    shot = subprocess.Popen(chromium(f"--screenshot={png}", served["url"], profile=out / "profile-shot"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dump = subprocess.Popen(chromium("--dump-dom", served["url"], profile=out / "profile-dom"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dom, dom_err = dump.communicate(timeout=CHROMIUM_TIMEOUT_S)
    _, shot_err = shot.communicate(timeout=CHROMIUM_TIMEOUT_S)
    assert dump.returncode == 0, dom_err.decode(errors="replace")[-2000:]
    assert shot.returncode == 0, shot_err.decode(errors="replace")[-2000:]
    return png, dom.decode("utf-8", "replace")


def test_page_renders_every_chart(rendered, stored):
    _, dom = rendered
    sections = re.findall(r'<section class="panel[^"]*" id="panel-([a-z_]+)"[^>]*>', dom)
    assert set(sections) == CHART_PANELS | TABLE_PANELS
    # one Plotly chart per chart panel, a table per table panel, each drawn at least once, none
    # showing an error
    assert dom.count('class="plot-container plotly"') == len(CHART_PANELS)
    assert dom.count('class="main-svg"') >= len(CHART_PANELS)
    assert len(re.findall(r'data-rendered="[1-9]\d*"', dom)) == len(CHART_PANELS | TABLE_PANELS)
    assert not re.search(r'class="error">[^<]', dom), re.findall(r'class="error">([^<]*)', dom)
    assert 'id="banner" class="banner" hidden' in dom
    # the data is in the drawn charts: legend entries, and the tiles' total
    for text in ("bad_mac", "ok", "region", "writer finished"):
        assert f">{text}<" in dom, text
    # names in the operators' language, whole: the alerts list's cells and the charts' labels
    for text in ("广东省 深圳市", "Shanghai Trading", "not sent (no webhook, or webhooks off)"):
        assert f"<td>{text}</td>" in dom, text
    assert "<td>Zhejiang E-commerce</td>" in dom  # the outbound table: the dealer its case was shipped to
    assert ">广东省<" in dom and ">湖南省<" in dom
    assert f">{len(stored):,}<" in dom


def test_screenshot_shows_charts(rendered):
    png, _ = rendered
    assert png.is_file() and png.stat().st_size > 50_000
    width, height, rows = decode_png(png.read_bytes())
    assert (width, height) == (1400, 1800)
    colors = collections.Counter()
    for row in rows:
        colors.update(zip(row[0::3], row[1::3], row[2::3]))
    total = width * height
    background = sum(n for c, n in colors.items() if min(c) >= 240)
    assert background < 0.92 * total, "the page is almost blank"
    assert len(colors) > 500, "too few colours for charts"
    # solid fills of the charts: ok slice of the verdict pie, bad_mac bars and slice, conversion bars
    assert colors[OK_GREEN] > 2_000
    assert colors[BAD_MAC_RED] > 200
    assert colors[BAR_BLUE] > 5_000


# --------------------------------------------------------------------------- after the writer


def test_reader_serves_the_same_numbers_after_the_writer_stopped(served, stored):
    """Last in this module (it stops the demo): SIGTERM ends the writer with status 0 and frees
    the chdb path; then ``scanstream dashboard`` opens it and serves the same panels."""
    demo = served["proc"]
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=20) == 0
    env = {k: v for k, v in os.environ.items() if k != "SCANSTREAM_CONFIG"}
    reader = subprocess.Popen([SCANSTREAM, "dashboard", "--config", str(served["config"]), "--port", "0"],
                              cwd=served["home"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        url, seen = None, []
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = reader.stderr.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
            url = m.group(1) if m else None
        assert url, "".join(seen)
        status, body = get_json(url + "api/status")
        assert status == 200 and body["mode"] == "reader" and body["writer"] is None and body["ready"]
        status, body = get_json(url + "api/panel/verdict_mix")
        assert status == 200
        assert {r[0]: r[1] for r in body["rows"]} == dict(collections.Counter(r["verdict"] for r in stored))
    finally:
        reader.send_signal(signal.SIGTERM)
        try:
            assert reader.wait(timeout=20) == 0
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
