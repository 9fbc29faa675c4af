"""End-to-end tests of the ``scanstream`` command: demo, run, query, audit, as real processes.

Every invocation is a subprocess of the installed console script: chdb lets one process open
one data path (and ``import chdb`` changes the working directory), so nothing here opens chdb
in-process.  Each scenario gets its own configuration, a copy of ``config/local.toml`` whose
registry and chdb paths point into this module's temporary folder, with webhooks off (no
network).  The commands run from an unrelated working directory, so relative paths in a
configuration must resolve against the configuration file.
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from scanstream.engine.outcomes import payout_keys

REPO = Path(__file__).resolve().parents[1]
LOCAL_TOML = REPO / "config" / "local.toml"
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
DEMO_SCANS = 3000
CAMPAIGN = "winter-2026"
CASE_CAMPAIGN = "open-case-2026"  # config/local.toml's 开箱有礼 campaign
#: DESIGN.md "Outputs": the per-scan fields, in order.
DESIGN_FIELDS = ["scan_id", "ts", "tenant", "kind", "batch", "serial", "code", "user_id", "role", "region",
                 "channel", "sku", "dealer_id", "verdict", "diversion", "campaign", "prize_tier", "prize_cents"]
#: scanparse.MAX_EVENT_BYTES is 64 KiB; the test's oversized line is well above it.
BIG_LINE_BYTES = 100 * 1024
T_RFC = "2026-11-20T10:00:00+08:00"  # inside the winter-2026 campaign
T_MS = 1795140000000  # the same instant in epoch milliseconds

pytestmark = pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")


# --------------------------------------------------------------------------- helpers


def sh(*args: str, cwd: Path, stdin: bytes | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``scanstream ARGS`` as a user would; text output, never raises on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "SCANSTREAM_CONFIG"}
    proc = subprocess.run([SCANSTREAM, *args], cwd=cwd, input=stdin, capture_output=True, timeout=timeout, env=env)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def write_config(path: Path, registry: str, chdb: str, batch_size: int | None = None) -> Path:
    """A copy of config/local.toml with registry.dir, sink.clickhouse and the state file beside it
    replaced, webhooks off."""
    text = LOCAL_TOML.read_text(encoding="utf-8")
    subs = [
        (r'(?m)^dir = "[^"]*"', f'dir = {json.dumps(registry)}'),
        (r'(?m)^clickhouse = "chdb:[^"]*"', f'clickhouse = {json.dumps("chdb:" + chdb)}'),
        (r'(?m)^path = "[^"]*"', f'path = {json.dumps(chdb + ".state.sqlite")}'),
        (r'(?m)^webhooks = true', 'webhooks = false'),
    ]
    if batch_size is not None:
        subs.append((r'(?m)^batch_size = \d+', f'batch_size = {batch_size}'))
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text)
        assert n == 1, f"config/local.toml changed shape: {pattern!r} matched {n} times"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def table(out: str) -> tuple[list[str], list[list[str]]]:
    """(column names, rows of cell text) of a ``scanstream query`` table; cells cut by the rule line."""
    lines = out.rstrip("\n").splitlines()
    assert len(lines) >= 3 and re.fullmatch(r"\(\d+ rows?\)", lines[-1]), out
    spans, pos = [], 0
    for dashes in lines[1].split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    cut = lambda line: [line[a:b].strip() for a, b in spans]  # noqa: E731
    rows = [cut(line) for line in lines[2:-1]]
    assert len(rows) == int(re.search(r"\d+", lines[-1]).group()), out
    return cut(lines[0]), rows


def query(config: Path, sql: str, cwd: Path) -> list[list[str]]:
    return table(ok(sh("query", "--config", str(config), sql, cwd=cwd)).stdout)[1]


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected_scan_id(line: bytes, position: str) -> str:
    """The scan_id DESIGN.md + the local driver give a line: its own, else ``pos:FILE:LINE``."""
    try:
        event = json.loads(line) if len(line) <= 65536 else None
    except ValueError:
        event = None
    sid = event.get("scan_id") if isinstance(event, dict) else None
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or sid == "" or len(str(sid)) > 256:
        return "pos:" + position
    return str(sid)


def audit_tiers(out: str) -> dict[str, str | None]:
    """code -> tier name drawn (None for "no prize"), from ``scanstream audit`` output."""
    drawn = {}
    for line in out.splitlines():
        m = re.match(r"^(\S+)  tenant=\d+ \w+ batch=\d+ serial=\d+  draw=[\d.]+  (?:tier (\S+) \(|no prize$)", line)
        if m:
            drawn[m.group(1)] = m.group(2)
    return drawn


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-e2e")


@pytest.fixture(scope="module")
def cwd(home) -> Path:
    """An unrelated working directory: no config/local.toml, no data/ folder."""
    d = home / "elsewhere"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def demo(home, cwd):
    """``scanstream demo --scans 3000`` once, on a config with local.toml's relative paths."""
    config = write_config(home / "demo" / "cfg" / "scanstream.toml", "../data/registry", "../data/chdb")
    proc = sh("demo", "--config", str(config), "--scans", str(DEMO_SCANS), cwd=cwd)
    data = home / "demo" / "data"
    return config, proc, data


REGISTRY_FILES = {
    "batches.csv": "tenant,batch,kind,sku,product,activated,size\n"
                   "7,42,unit,BEER-500,Lager 500 ml,1,1000000\n"
                   "7,43,unit,BEER-500,Lager 500 ml (spring),0,1000\n",
    "dealers.csv": "dealer_id,tenant,name,channel,regions,manager,webhook\n"
                   "D-GD,7,Guangdong Key Accounts,KA,44,wang.li,\n",
    "shipments.csv": "tenant,batch,kind,serial_from,serial_to,dealer_id,shipped_at\n"
                     "7,42,unit,0,999999,D-GD,2026-11-01\n"
                     "7,43,unit,0,999,D-GD,2026-11-01\n",
    "stores.csv": "store_id,tenant,dealer_id,region,channel\n"
                  "S-GZ-1,7,D-GD,440106,KA\n",
}


@pytest.fixture(scope="module")
def world(home, cwd):
    """A hand-written registry, codes minted by ``codes mint``, a winner picked by ``audit``."""
    registry = home / "registry"
    registry.mkdir()
    for name, text in REGISTRY_FILES.items():
        (registry / name).write_text(text, encoding="utf-8")
    config = write_config(home / "mint.toml", str(registry), str(home / "chdb-unused"))

    def mint(batch: int, count: int, start: int) -> list[str]:
        out = ok(sh("--config", str(config), "codes", "mint", "--tenant", "7", "--batch", str(batch),
                    "--count", str(count), "--start", str(start), cwd=cwd)).stdout.split()
        assert len(out) == count
        return out

    codes = mint(42, 64, 1000)
    drawn = audit_tiers(ok(sh("audit", "--config", str(config), "--campaign", CAMPAIGN, *codes, cwd=cwd)).stdout)
    assert set(drawn) == set(codes)
    winners = [c for c in codes if drawn[c] is not None]
    losers = [c for c in codes if drawn[c] is None]
    assert winners and len(losers) >= 6
    return {"registry": registry, "winner": winners[0], "winner_tier": drawn[winners[0]], "losers": losers,
            "inactive": mint(43, 1, 5)[0], "unregistered": mint(999, 1, 5)[0]}


def scan(sid, code, user, ts=T_RFC, **extra) -> bytes:
    return json.dumps({"scan_id": sid, "ts": ts, "code": code, "user_id": user, **extra}).encode()


@pytest.fixture(scope="module")
def handwritten(world, home) -> tuple[Path, list[tuple[int, str, dict]]]:
    """scans.jsonl: good scans, a redelivery, junk and blank lines; with what each line must give.

    Returns (file, [(line number, expected scan_id, expected fields)]) for every non-blank line.
    """
    w = world
    n_code, url_code, div_code, crlf_code = w["losers"][:4]
    first = scan("s-1", w["winner"], "u-1", region="440106")
    big = json.dumps({"scan_id": "s-big", "ts": T_RFC, "code": n_code, "user_id": "u-9",
                      "pad": "x" * BIG_LINE_BYTES}).encode()
    bad_mac = w["winner"][:-1] + ("0" if w["winner"][-1] != "0" else "1")
    lines: list[tuple[bytes, str | None, dict]] = [  # (line, scan_id or None for pos:, expected)
        (first, "s-1", {"verdict": "ok", "draw": "won", "prize_tier": w["winner_tier"], "replay": 0,
                        "ts": T_MS, "tenant": 7, "batch": 42, "campaign": CAMPAIGN, "sku": "BEER-500", "dealer_id": "D-GD", "diversion": "none"}),
        (b"", None, {}),
        (scan("s-2", n_code, "u-2", ts=T_MS, region="440305"), "s-2",
         {"verdict": "ok", "draw": "no_prize", "prize_tier": "", "prize_cents": 0, "ts": T_MS}),
        (b"not json at all", None, {"verdict": "invalid_event", "reason": re.compile(r"^not JSON")}),
        (first, "s-1", {"verdict": "ok", "draw": "won", "prize_tier": w["winner_tier"], "replay": 1}),
        (b"   \t ", None, {}),
        (json.dumps({"scan_id": "s-3", "ts": T_RFC, "user_id": "u-3"}).encode(), "s-3",
         {"verdict": "invalid_event", "reason": re.compile(r"missing required field 'code'")}),
        (big, None, {"verdict": "invalid_event", "reason": re.compile(r"exceeds the limit")}),
        (json.dumps({"scan_id": "s-4", "ts": "yesterday", "code": 42, "user_id": ["u"]}).encode(), "s-4",
         {"verdict": "invalid_event",
          "reason": re.compile(r"(?=.*user_id must be a string)(?=.*code must be a string)(?=.*ts 'yesterday')")}),
        (scan("s-5", n_code, "u-5", region="440305"), "s-5",
         {"verdict": "repeat", "prize_cents": 0, "prize_tier": ""}),
        (scan("s-6", bad_mac, "u-6"), "s-6", {"verdict": "bad_mac", "prize_cents": 0}),
        (scan("s-7", "HELLO", "u-7"), "s-7", {"verdict": "malformed"}),
        (scan("s-8", w["inactive"], "u-8"), "s-8", {"verdict": "not_activated", "batch": 43}),
        (scan("s-9", w["unregistered"], "u-9"), "s-9", {"verdict": "unknown_batch", "batch": 999}),
        (b"[1, 2, 3]", None, {"verdict": "invalid_event", "reason": re.compile(r"not a JSON object")}),
        (scan("s-10", "https://q.example.cn/c/" + url_code, "u-10", region="440106"), "s-10",
         {"verdict": "ok", "batch": 42, "tenant": 7}),
        (scan("s-11", div_code, "u-11", region="110101"), "s-11",
         {"verdict": "ok", "diversion": "region", "dealer_id": "D-GD", "region": "110101"}),
        (scan(12, crlf_code, "u-12", region="440106") + b"\r", "12", {"verdict": "ok", "user_id": "u-12"}),
        (b"", None, {}),
    ]
    path = home / "input" / "scans.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"\n".join(line for line, _, _ in lines) + b"\n")
    expected = []
    for number, (line, sid, fields) in enumerate(lines, start=1):
        if line.strip():
            expected.append((number, sid or f"pos:{path.name}:{number}", fields))
    return path, expected


def check_expected(rows: list[dict], expected: list[tuple[int, str, dict]]) -> None:
    assert [r["scan_id"] for r in rows] == [sid for _, sid, _ in expected]
    for row, (number, sid, fields) in zip(rows, expected):
        for key, want in fields.items():
            got = row[key]
            if isinstance(want, re.Pattern):
                assert want.search(got), f"line {number} ({sid}): {key}={got!r} !~ {want.pattern}"
            else:
                assert got == want, f"line {number} ({sid}): {key}={got!r}, expected {want!r}"


# --------------------------------------------------------------------------- 1 demo + query


def test_demo_summary_and_query_agree_with_results_file(demo, cwd):
    config, proc, data = demo
    out = ok(proc).stdout
    scans_file, results_file = data / "demo-scans.jsonl", data / "demo-results.jsonl"
    assert scans_file.is_file() and results_file.is_file() and (data / "registry" / "batches.csv").is_file()
    rows = results(results_file)
    nonblank = [line for line in scans_file.read_bytes().split(b"\n") if line.strip()]
    assert len(rows) == len(nonblank) >= DEMO_SCANS

    # the summary: scans, verdict lines, campaign line, alerts, and the Next: hints
    m = re.search(r"^scans: ([\d,]+)  \(redelivered scan_ids: ([\d,]+)\)$", out, re.M)
    assert m, out
    assert int(m.group(1).replace(",", "")) == len(rows)
    assert int(m.group(2).replace(",", "")) == sum(r["replay"] for r in rows) > 0
    verdict_block = out.split("\nverdicts:\n", 1)[1].split("\ndiversion:", 1)[0]
    printed = {v: int(c.replace(",", "")) for v, c in re.findall(r"^  (\w+)\s+([\d,]+)\s+[\d.]+ %$", verdict_block, re.M)}
    assert printed == collections.Counter(r["verdict"] for r in rows)
    assert {"ok", "repeat", "bad_mac", "malformed", "invalid_event"} <= set(printed)
    won = [r for r in rows if r["draw"] == "won" and r["replay"] == 0]
    # 导购 commissions: award rows of their own (the results file has one row per scan)
    commissions = query(config, "SELECT scan_id, campaign, user_id, prize_cents FROM awards FINAL "
                                "WHERE beneficiary = 'guide'", cwd)
    for campaign in (CAMPAIGN, CASE_CAMPAIGN):  # the consumers' red packets and 开箱有礼
        m = re.search(rf"^campaign {campaign}: ([\d,]+) prizes, ([\d,.]+) yuan paid this run", out, re.M)
        assert m, out
        mine = [r for r in won if r["campaign"] == campaign]
        earned = [int(c[3]) for c in commissions if c[1] == campaign]
        assert int(m.group(1).replace(",", "")) == len(mine) > 0
        assert round(float(m.group(2).replace(",", "")) * 100) == sum(r["prize_cents"] for r in mine) + sum(earned)
    assert re.search(rf"^campaign {CAMPAIGN}: .*; {len(commissions):,} guide commissions included$", out, re.M), out
    # each commission: config/local.toml's 1 yuan, with a consumer's prize won by the same scan, to the
    # guide whose sale scan of that bottle came first in the stream
    assert len(commissions) > 0 and {int(c[3]) for c in commissions} == {100}
    first_guide: dict[str, str] = {}
    for line in scans_file.read_bytes().split(b"\n"):
        event = orjson.loads(line) if line.startswith(b"{") else None
        if isinstance(event, dict) and event.get("action") == "sell":
            first_guide.setdefault(event["code"], event["user_id"])
    by_scan = {r["scan_id"]: r for r in won}
    for scan_id, campaign, guide, _ in commissions:
        assert campaign == CAMPAIGN and by_scan[scan_id]["role"] == "consumer"
        assert first_guide[by_scan[scan_id]["code"]] == guide
    assert {r["role"] for r in won if r["campaign"] == CASE_CAMPAIGN} == {"store"}
    assert {r["kind"] for r in won if r["campaign"] == CASE_CAMPAIGN} == {1}  # case codes
    alerts_block = out.split("\nalerts:", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"^  cloned_code/provinces\s+1$", alerts_block, re.M), out
    assert re.search(r"^  diversion/region\s+\d+$", alerts_block, re.M), out
    hints = out.split("\nNext:\n", 1)[1]
    assert f"scanstream --config {config} query " in hints
    assert f"audit --campaign {CAMPAIGN} CODE" in hints

    # relative paths of the config resolved against the config file, not the working directory
    assert not (cwd / "data").exists() and not (cwd / ".." / "data" / "chdb").exists()
    assert (data / "chdb").is_dir()

    # scan_events FINAL == distinct scan_ids of the results file, verdict by verdict
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(r["scan_id"], r)
    got = query(config, "SELECT verdict, count() FROM scan_events FINAL GROUP BY verdict", cwd)
    assert {v: int(c) for v, c in got} == collections.Counter(r["verdict"] for r in first.values())

    # ... == non-blank lines of demo-scans.jsonl minus redelivered duplicates (a scan_id seen before)
    ids = [expected_scan_id(line, f"{scans_file.name}:{n}")
           for n, line in enumerate(scans_file.read_bytes().split(b"\n"), start=1) if line.strip()]
    assert ids == [r["scan_id"] for r in rows]
    duplicates = len(ids) - len(set(ids))
    assert duplicates > 0
    (total,), = query(config, "SELECT count() FROM scan_events FINAL", cwd)
    assert int(total) == len(first) == len(nonblank) - duplicates

    # awards hold exactly the prizes and commissions the run paid
    (n_awards, cents), = query(config, "SELECT count(), sum(prize_cents) FROM awards FINAL", cwd)
    assert (int(n_awards), int(cents)) == (len(won) + len(commissions),
                                           sum(r["prize_cents"] for r in won) + 100 * len(commissions))
    # ... each under the payout key the engine derives from it, a consumer's prize, no key twice
    keyed = query(config, "SELECT tenant, campaign, kind, batch, serial, beneficiary, payout_key FROM awards FINAL",
                  cwd)
    columns = list(zip(*keyed))
    assert list(columns[6]) == payout_keys(*(np.array(c, dtype) for c, dtype in zip(
        columns[:6], (np.uint16, object, np.uint8, np.uint32, np.uint32, object)))).tolist()
    # trade: 开箱有礼; guide: commissions
    assert set(columns[5]) == {"consumer", "trade", "guide"} and len(set(columns[6])) == len(won) + len(commissions)


# --------------------------------------------------------------------------- 2 run on a file


def test_run_handwritten_file(handwritten, world, home, cwd):
    path, expected = handwritten
    # batch_size 4: the redelivery of s-1 lands in another batch (and another insert) than s-1
    config = write_config(home / "run" / "scanstream.toml", str(world["registry"]), str(home / "run" / "chdb"),
                          batch_size=4)
    out_file = home / "run" / "out.jsonl"
    proc = ok(sh("run", "--input", str(path), "--results", str(out_file), "--config", str(config), cwd=cwd))
    assert re.search(rf"^scans: {len(expected)}  \(redelivered scan_ids: 1\)$", proc.stdout, re.M), proc.stdout

    rows = results(out_file)
    assert len(rows) == len(expected)  # one object per non-blank line, blank lines skipped
    for row in rows:
        assert all(f in row for f in DESIGN_FIELDS), sorted(set(DESIGN_FIELDS) - set(row))
        assert row["diversion"] in ("none", "region", "channel", "region+channel")
        assert (row["reason"] != "") == (row["verdict"] == "invalid_event")
    check_expected(rows, expected)
    s1 = [r for r in rows if r["scan_id"] == "s-1"]
    assert len(s1) == 2 and s1[0]["prize_cents"] > 0
    same = ("verdict", "draw", "campaign", "prize_tier", "prize_cents", "code", "tenant", "batch", "serial")
    assert {k: s1[1][k] for k in same} == {k: s1[0][k] for k in same}
    assert [r["replay"] for r in s1] == [0, 1]

    # ClickHouse: every line was inserted, FINAL keeps one row per scan_id, the original s-1
    (raw_rows,), = query(config, "SELECT count() FROM scan_events", cwd)
    assert int(raw_rows) == len(rows)
    final = query(config, "SELECT scan_id, verdict, replay, prize_cents FROM scan_events FINAL ORDER BY scan_id", cwd)
    by_id = {sid: (verdict, int(replay), int(cents)) for sid, verdict, replay, cents in final}
    assert len(final) == len(by_id) == len({r["scan_id"] for r in rows})
    firsts = {}
    for r in rows:
        firsts.setdefault(r["scan_id"], (r["verdict"], r["replay"], r["prize_cents"]))
    assert by_id == firsts
    assert by_id["s-1"][1] == 0
    assert {f"pos:{path.name}:{n}" for n, sid, _ in expected if sid.startswith("pos:")} <= set(by_id)
    (n_awards, cents), = query(config, "SELECT count(), sum(prize_cents) FROM awards FINAL", cwd)
    assert (int(n_awards), int(cents)) == (1, s1[0]["prize_cents"])


# --------------------------------------------------------------------------- 3 stdin


def test_run_reads_stdin(handwritten, world, home, cwd):
    path, expected = handwritten
    config = write_config(home / "stdin" / "scanstream.toml", str(world["registry"]), str(home / "stdin" / "chdb"))
    out_file = home / "stdin" / "out.jsonl"
    proc = ok(sh("--config", str(config), "run", "--input", "-", "--results", str(out_file), cwd=cwd,
                 stdin=path.read_bytes()))
    assert re.search(rf"^scans: {len(expected)}  ", proc.stdout, re.M), proc.stdout
    rows = results(out_file)
    stdin_expected = [(n, sid.replace(f"pos:{path.name}:", "pos:stdin:"), fields) for n, sid, fields in expected]
    check_expected(rows, stdin_expected)
    final = query(config, "SELECT scan_id FROM scan_events FINAL ORDER BY scan_id", cwd)
    assert sorted(sid for sid, in final) == sorted({sid for _, sid, _ in stdin_expected})


# --------------------------------------------------------------------------- 4 audit


def test_audit_matches_what_the_demo_paid(demo, cwd):
    config, proc, data = demo
    ok(proc)
    rows = [r for r in results(data / "demo-results.jsonl") if r["replay"] == 0]
    won = {r["code"]: r["prize_tier"] for r in rows if r["draw"] == "won" and r["campaign"] == CAMPAIGN}
    no_prize = sorted({r["code"] for r in rows if r["draw"] == "no_prize" and r["campaign"] == CAMPAIGN})[:50]
    assert won and no_prize
    out = ok(sh("--config", str(config), "audit", "--campaign", CAMPAIGN, *won, *no_prize, cwd=cwd)).stdout
    assert out.splitlines()[0].startswith(f"campaign {CAMPAIGN} (tenant 7); tiers by cumulative probability:")
    drawn = audit_tiers(out)
    assert {c: drawn.get(c) for c in won} == won
    assert {c: drawn.get(c, "missing") for c in no_prize} == {c: None for c in no_prize}

    code = next(iter(won))
    bad = code[:-1] + ("0" if code[-1] != "0" else "1")
    proc = sh("audit", "--campaign", CAMPAIGN, code, bad, "--config", str(config), cwd=cwd)
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    assert f"{bad}  bad_mac: no draw" in proc.stdout.splitlines()
    assert audit_tiers(proc.stdout) == {code: won[code]}


# --------------------------------------------------------------------------- 5 errors


def test_missing_registry_dir_exits_3(world, home, cwd, handwritten):
    config = write_config(home / "err-reg" / "scanstream.toml", str(home / "no-such-registry"),
                          str(home / "err-reg" / "chdb"))
    proc = sh("--config", str(config), "run", "--input", str(handwritten[0]), cwd=cwd)
    assert proc.returncode == 3, proc  # registry.dir is a configuration key
    assert "registry.dir" in proc.stderr and "no-such-registry" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_registry_row_exits_4_naming_file_and_line(world, home, cwd, handwritten):
    registry = home / "bad-registry"
    shutil.copytree(world["registry"], registry)
    with (registry / "batches.csv").open("a", encoding="utf-8") as fh:
        fh.write("7,forty-four,unit,BEER-500,Lager,1,1000\n")  # line 4
    config = write_config(home / "err-row" / "scanstream.toml", str(registry), str(home / "err-row" / "chdb"))
    proc = sh("run", "--config", str(config), "--input", str(handwritten[0]), cwd=cwd)
    assert proc.returncode == 4, proc
    assert "batches.csv:4" in proc.stderr and "batch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_audit_unknown_campaign_exits_3(demo, cwd):
    config = demo[0]
    proc = sh("--config", str(config), "audit", "--campaign", "summer-1999", "2000E00058003RJ08V9QZJM3", cwd=cwd)
    assert proc.returncode == 3, proc
    assert "campaigns" in proc.stderr and "summer-1999" in proc.stderr and CAMPAIGN in proc.stderr
    assert "Traceback" not in proc.stderr


def test_query_bad_sql_exits_4(demo, cwd):
    config = demo[0]
    proc = sh("--config", str(config), "query", "SELEC verdict FRM scan_events", cwd=cwd)
    assert proc.returncode == 4, proc  # a statement the server rejects: no retry cures it
    assert proc.stderr.startswith("scanstream: ") and "SELEC verdict FRM scan_events" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_run_missing_input_exits_4(demo, cwd, home):
    proc = sh("--config", str(demo[0]), "run", "--input", str(home / "nope.jsonl"), cwd=cwd)
    assert proc.returncode == 4, proc
    assert "--input" in proc.stderr and "nope.jsonl" in proc.stderr and "Traceback" not in proc.stderr


def test_run_unwritable_results_is_a_clean_error(world, home, cwd, handwritten):
    config = write_config(home / "err-out" / "scanstream.toml", str(world["registry"]), str(home / "err-out" / "chdb"))
    proc = sh("--config", str(config), "run", "--input", str(handwritten[0]),
              "--results", str(home / "no-such-dir" / "out.jsonl"), cwd=cwd)
    assert proc.returncode == 6
    assert "Traceback" not in proc.stderr and "no-such-dir" in proc.stderr


# --------------------------------------------------------------------------- 6 run twice


def test_run_twice_same_input_keeps_one_row_per_scan_id(demo, home, cwd):
    demo_config, proc, data = demo
    ok(proc)
    config = write_config(home / "twice" / "scanstream.toml", str(data / "registry"), str(home / "twice" / "chdb"))
    scans_file = data / "demo-scans.jsonl"
    outs, commissions = [], []
    for i, fresh in ((1, []), (2, []), (3, ["--fresh"])):
        out_file = home / "twice" / f"out-{i}.jsonl"
        proc = ok(sh("--config", str(config), "run", "--input", str(scans_file), "--results", str(out_file), *fresh,
                     cwd=cwd))
        outs.append(results(out_file))
        commissions.append(int(re.search(r"; ([\d,]+) guide commissions included$", proc.stdout, re.M)
                               .group(1).replace(",", "")))
    # the state is kept: the second run is a redelivery of every readable scan, answered as the
    # first time (an invalid event is judged by its own bytes again); --fresh starts over
    assert outs[1] == [{**r, "replay": 1 if r["reason"] == "" else r["replay"]} for r in outs[0]]
    assert outs[2] == outs[0]
    distinct = {r["scan_id"] for r in outs[0]}
    (total, unique), = query(config, "SELECT count(), uniqExact(scan_id) FROM scan_events FINAL", cwd)
    assert int(total) == int(unique) == len(distinct)
    won = [r for r in outs[0] if r["draw"] == "won" and r["replay"] == 0]
    (n_awards,), = query(config, "SELECT count() FROM awards FINAL WHERE beneficiary != 'guide'", cwd)
    assert int(n_awards) == len(won)
    # guides' commissions: paid by the first run, none by the second (every prize given back),
    # the same again by the --fresh run, and stored once
    assert commissions[0] == commissions[2] > 0 and commissions[1] == 0
    (n_commissions,), = query(config, "SELECT count() FROM awards FINAL WHERE beneficiary = 'guide'", cwd)
    assert int(n_commissions) == commissions[0]


# --------------------------------------------------------------------------- insert deduplication


@pytest.mark.parametrize("how", ["stdin", "same-basename"])
def test_different_inputs_with_same_name_all_reach_clickhouse(how, world, home, cwd):
    base = home / f"token-{how}"
    config = write_config(base / "scanstream.toml", str(world["registry"]), str(base / "chdb"))
    day1 = b"\n".join(scan(f"day1-{i}", world["losers"][i], f"u-{i}") for i in range(3)) + b"\n"
    day2 = b"\n".join(scan(f"day2-{i}", world["losers"][i + 3], f"u-{i}") for i in range(3)) + b"\n"
    for day, text in (("a", day1), ("b", day2)):
        if how == "stdin":
            ok(sh("--config", str(config), "run", "--input", "-", cwd=cwd, stdin=text))
        else:
            f = base / day / "scans.jsonl"
            f.parent.mkdir(parents=True)
            f.write_bytes(text)
            ok(sh("--config", str(config), "run", "--input", str(f), cwd=cwd))
    got = sorted(sid for sid, in query(config, "SELECT scan_id FROM scan_events FINAL", cwd))
    assert got == sorted([f"day1-{i}" for i in range(3)] + [f"day2-{i}" for i in range(3)])
