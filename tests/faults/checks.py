"""The promises checked after a fault run, and the ``Report`` of the figures and every broken one.

- ``check_promises``: after the workers stopped, queries the stores (several chdb folders are
  merged into one, as one ClickHouse server would hold them), the topics and the Redis state:
  nothing lost or doubled, every scan answered the same way, every invalid event dead-lettered,
  prizes within stock, budget and daily cap, Redis, tables and topic agreeing;
- ``local_reference``: the local driver's outcomes for the same stream, for figures that are not
  promises (alerts);
- ``grep_secrets``: the secrets promise: no key or seed in any file or message a scenario left;
- ``Report`` and ``assert_report``.

Separate because this is the judgement, read apart from how the faults are made: it looks only
at what a scenario left behind (stores, topics, Redis, files), never at how it got there.
"""
from __future__ import annotations

import collections
import orjson
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanstream.engine.config import EngineSettings
from scanstream.streams.replies import read_replies, reply_epochs

from .inputs import find_secrets
from .scenario import Scenario
from .stores import merge_stores, probe
from .topics import TopicWatcher


def local_reference(sc: Scenario, lines: list[bytes]):
    """The local driver's outcomes for the same stream (memory state store, no sinks): what a
    worker that never failed would find, for the figures that are not promises (alerts)."""
    import tomllib
    from dataclasses import replace

    from scanstream.engine.config import parse
    from scanstream.engine.state.memory import MemoryStateStore
    from scanstream.wiring import build_pipeline

    path = sc.write_config(sc.root / "local-reference.toml", sc.root / "unused-chdb")
    saved = {k: os.environ.get(k) for k in sc._env}
    os.environ.update(sc._env)
    try:
        config = parse(tomllib.loads(path.read_text(encoding="utf-8")), path)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    config = replace(config, clickhouse="", state_backend="memory")
    return build_pipeline(config, state=MemoryStateStore()).process(lines)


@dataclass
class Report:
    scenario: str
    lines: int = 0
    scan_ids: int = 0
    rows_final: int = 0
    distinct_final: int = 0
    rows_raw: int = 0
    lost: int = 0
    doubled: int = 0
    unexpected: int = 0
    results_rows: int = 0
    results_missing: int = 0
    results_disagree: int = 0
    replies_missing: int = 0
    dead_letters: int = 0
    invalid_lines: int = 0
    invalid_not_dead_lettered: int = 0
    prizes: int = 0
    paid_cents: int = 0
    out_of_stock: int = 0
    budget_refusals: int = 0
    cap_refusals: int = 0
    campaigns: dict[str, dict[str, Any]] = field(default_factory=dict)
    kills: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        self.violations.append(msg)

    def figures(self) -> str:
        camp = "; ".join(f"{cid}: {c['prizes']} prizes, {c['paid_cents'] / 100:.2f} of {c['budget_cents'] / 100:.2f} "
                         f"yuan, tiers {c['tiers']}" for cid, c in self.campaigns.items())
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        return (f"[{self.scenario}] kills survived {self.kills}, lines {self.lines}, scans {self.scan_ids}, "
                f"rows {self.rows_final} (raw {self.rows_raw}), results rows {self.results_rows}, "
                f"dead letters {self.dead_letters}, prizes {self.prizes} ({self.paid_cents / 100:.2f} yuan), "
                f"refused: out_of_stock {self.out_of_stock}, budget {self.budget_refusals}, cap {self.cap_refusals}; "
                f"lost = {self.lost}, doubled = {self.doubled}, results missing = {self.results_missing}, "
                f"violations = {len(self.violations)}{extra}. {camp}")


def assert_report(rep: Report) -> None:
    """Print the figures (``pytest -s`` shows them) and fail with every violation."""
    print(rep.figures())
    assert not rep.violations, f"{len(rep.violations)} promises broken in {rep.scenario}:\n" + "\n".join(
        v[:2000] for v in rep.violations)


def _identity(field_bytes: bytes) -> tuple[int, int, int, int]:
    key, serial = int.from_bytes(field_bytes[:8], "little"), int.from_bytes(field_bytes[8:12], "little")
    return key >> 26, (key >> 24) & 3, key & 0xFFFFFF, serial


def check_promises(sc: Scenario, sent: list[tuple[str, bytes, str]], *, redis_url: str | None = None,
                   kills: int = 0, require_exhaustion: bool = True, reference=None) -> Report:
    """Check every promise of issue 5 after the workers stopped; returns the figures and violations.

    ``sent`` is ``ScanProducer.names()``: (outcome name, line, position) of every line published.
    ``reference`` (``local_reference``) adds figures that are not promises: alerts the local
    driver raises for the same stream that the workers did not store.
    """
    rep = Report(sc.label, kills=kills)
    assert not any(w.alive() for w in sc.workers), "stop the workers first: chdb is one process per folder"
    names = {n for n, _, _ in sent}
    rep.lines, rep.scan_ids = len(sent), len(names)

    # -- the ClickHouse side, merged into one store as one server would hold it
    store = merge_stores(sorted({w.chdb for w in sc.workers}), sc.root / "chdb-merged")
    q = probe(store, {
        "final": "SELECT count(), uniqExact(scan_id) FROM scan_events FINAL",
        "raw": "SELECT count() FROM scan_events",
        "ids": "SELECT scan_id FROM scan_events FINAL",
        "draws": "SELECT campaign, draw, count() FROM scan_events FINAL GROUP BY campaign, draw",
        "won": "SELECT scan_id, tenant, kind, batch, serial, campaign, prize_tier, prize_cents, user_id, "
               "toUnixTimestamp64Milli(ts) FROM scan_events FINAL WHERE draw = 'won'",
        "prized_not_won": "SELECT count() FROM scan_events FINAL WHERE prize_cents > 0 AND draw != 'won'",
        "awards": "SELECT scan_id, tenant, kind, batch, serial, campaign, prize_tier, prize_cents, user_id, "
                  "toUnixTimestamp64Milli(ts) FROM awards FINAL WHERE beneficiary != 'guide'",
        "commissions": "SELECT a.scan_id, a.tenant, a.kind, a.batch, a.serial, a.campaign, a.prize_cents, a.user_id, "
                       "s.code FROM (SELECT * FROM awards FINAL WHERE beneficiary = 'guide') AS a "
                       "LEFT JOIN (SELECT scan_id, code FROM scan_events FINAL) AS s ON s.scan_id = a.scan_id",
        "awards_raw": "SELECT tenant, campaign, kind, batch, serial, beneficiary, uniqExact(scan_id), "
                      "uniqExact(user_id, prize_tier, prize_cents) FROM awards "
                      "GROUP BY tenant, campaign, kind, batch, serial, beneficiary "
                      "HAVING uniqExact(scan_id) > 1 OR uniqExact(user_id, prize_tier, prize_cents) > 1",
        "invalid": "SELECT scan_id FROM scan_events FINAL WHERE verdict = 'invalid_event'",
        "replayed": "SELECT scan_id FROM scan_events FINAL WHERE replay = 1",
        "alerts": "SELECT alert_id FROM alerts FINAL",
    })
    copies = collections.Counter(n for n, _, _ in sent)
    # a scan published once whose only stored row says replay = 1: its first processing failed
    # after the claim (crash, outage) and the retry found its own claim
    rep.extra["first deliveries stored as replay=1"] = sum(1 for (sid,) in q["replayed"] if copies.get(sid) == 1)
    if reference is not None:
        want = set(reference.alerts["alert_id"].tolist())
        got = {a for (a,) in q["alerts"]}
        rep.extra["alerts"] = len(got)
        rep.extra["alerts lost vs local driver"] = len(want - got)
    (count, distinct), = q["final"]
    rep.rows_final, rep.distinct_final, rep.rows_raw = int(count), int(distinct), int(q["raw"][0][0])
    stored = {r[0] for r in q["ids"]}
    lost = names - stored
    extra = stored - names
    rep.lost = len(lost)
    rep.unexpected = len(extra)
    rep.doubled = rep.rows_final - rep.distinct_final
    if lost:
        rep.fail(f"{len(lost)} published scans are not in scan_events, e.g. {sorted(lost)[:5]}")
    if extra:
        rep.fail(f"{len(extra)} scan_events rows were never published, e.g. {sorted(extra)[:5]}")
    if rep.doubled:
        rep.fail(f"scan_events FINAL has {rep.rows_final} rows for {rep.distinct_final} scan_ids")

    # -- scan-results: every scan at least once, and every answer of a scan_id the same
    for w in sc.watchers.values():
        w.drain(idle_s=3)
    with sc.watchers["results"].lock:
        rep.results_rows = sc.results.rows
        missing = names - set(sc.results.count)
        rep.results_disagree = len(sc.results.disagree)
        disagree = dict(list(sc.results.disagree.items())[:3])
    rep.results_missing = len(missing)
    if missing:
        rep.fail(f"{len(missing)} scans never appeared on scan-results, e.g. {sorted(missing)[:5]}")
    if disagree:
        rep.fail(f"{rep.results_disagree} scan_ids got different answers on scan-results: {disagree}")

    # -- dead letters: every invalid_event line, with its reason and original bytes
    dlq = sc.watchers["dlq"]
    with dlq.lock:
        dead = list(dlq.messages)
    rep.dead_letters = len(dead)
    dead_by_pos = {dict(m.headers).get("scanstream-position", b"").decode(): m for m in dead}
    invalid = {r[0] for r in q["invalid"]}
    lines_of = {}
    for name, line, pos in sent:
        if name in invalid:
            lines_of.setdefault(name, []).append((line, pos))
    rep.invalid_lines = sum(len(v) for v in lines_of.values())
    bad = []
    copies_of = collections.Counter(n for n, _, _ in sent)
    for name, items in lines_of.items():
        for line, pos in items:
            m = dead_by_pos.get(pos)
            # a reused scan_id is answered as a replay of its first line: the reason may be that line's
            if m is None or m.value != line or (copies_of[name] == 1 and not dict(m.headers).get("scanstream-reason")):
                bad.append(pos)
    rep.invalid_not_dead_lettered = len(bad)
    if bad:
        rep.fail(f"{len(bad)} invalid events are not on the dead-letter topic with reason and bytes, e.g. {bad[:3]}")

    # -- Redis replies for the scan API
    client = sc.redis_client(redis_url)
    ordered = sorted(names)
    missing_replies = 0
    epochs = reply_epochs(sc.started, time.time())
    for i in range(0, len(ordered), 5000):
        missing_replies += sum(1 for held in read_replies(client, sc.prefix, EngineSettings.replay_ttl_hours * 3600, ordered[i:i + 5000], epochs) if not held)
    rep.replies_missing = missing_replies
    if missing_replies:
        rep.fail(f"{missing_replies} scans have no Redis reply")

    # -- prizes: one per code, budget, stock, daily cap; Redis, table and topic agree
    for campaign, draw, n in q["draws"]:
        n = int(n)
        if draw == "out_of_stock":
            rep.out_of_stock += n
        elif draw == "budget":
            rep.budget_refusals += n
        elif draw == "cap":
            rep.cap_refusals += n
    if int(q["prized_not_won"][0][0]):
        rep.fail(f"{q['prized_not_won'][0][0]} scans carry prize money without draw = won")
    won_by_code: dict[tuple, list] = collections.defaultdict(list)
    for sid, tenant, kind, batch, serial, campaign, tier, cents, user, ts in q["won"]:
        won_by_code[(campaign, int(tenant), int(kind), int(batch), int(serial))].append((sid, tier, int(cents)))
    twice = {k: v for k, v in won_by_code.items() if len(v) > 1}
    if twice:
        rep.fail(f"{len(twice)} codes won in more than one scan: {list(twice.items())[:3]}")
    if q["awards_raw"]:
        rep.fail(f"{len(q['awards_raw'])} codes have award rows of different scans or prizes: {q['awards_raw'][:3]}")
    awards = {}
    for sid, tenant, kind, batch, serial, campaign, tier, cents, user, ts in q["awards"]:
        awards[(campaign, int(tenant), int(kind), int(batch), int(serial))] = (sid, tier, int(cents), user, int(ts))
    if {k: v[0] for k, v in won_by_code.items()} != {k: (a[0], a[1], a[2]) for k, a in awards.items()}:
        only_scans = set(won_by_code) - set(awards)
        only_awards = set(awards) - set(won_by_code)
        rep.fail(f"awards table and scan_events disagree: {len(only_scans)} wins without an award row, "
                 f"{len(only_awards)} awards without a winning scan")
    # 导购 commissions: at most one per code (the table's key), paid with a prize of that code won by
    # the same scan, of the campaign's amount, to a guide whose sale scan of that unit was sent
    sellers: dict[str, set] = collections.defaultdict(set)
    for _, line, _ in sent:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("action") == "sell" and isinstance(event.get("code"), str):
            sellers[event["code"]].add(event.get("user_id"))
    guide_cents = {c.id: c.guide_cents for c in sc.campaigns}
    commissions = {}
    for sid, tenant, kind, batch, serial, campaign, cents, guide, code in q["commissions"]:
        k = (campaign, int(tenant), int(kind), int(batch), int(serial))
        commissions[k] = (sid, int(cents), guide)
        prize = awards.get(k)
        if prize is None or prize[0] != sid:
            rep.fail(f"commission {k} to {guide!r} (scan {sid}) has no prize won by that scan: {prize}")
        if int(cents) != guide_cents.get(campaign):
            rep.fail(f"commission {k} of {cents} cents; the campaign pays {guide_cents.get(campaign)}")
        if guide not in sellers.get(code, ()):
            rep.fail(f"commission {k} paid to {guide!r}, who sent no sale scan of {code!r}")
    rep.extra["commissions"] = len(commissions)
    rep.extra["units sold by guides"] = len(sellers)
    rep.prizes = len(awards)
    rep.paid_cents = sum(a[2] for a in awards.values()) + sum(c[1] for c in commissions.values())
    with sc.watchers["awards"].lock:
        topic_awards = {k: list(v) for k, v in sc.awards_seen.items()}
    for c in sc.campaigns:
        mine = {k: a for k, a in awards.items() if k[0] == c.id}
        mine_commissions = {k: a for k, a in commissions.items() if k[0] == c.id}
        paid = sum(a[2] for a in mine.values()) + sum(a[1] for a in mine_commissions.values())
        tiers = collections.Counter(a[1] for a in mine.values())
        stock = {n: s for n, _, _, s in c.tiers}
        info = {"prizes": len(mine), "commissions": len(mine_commissions), "paid_cents": paid,
                "budget_cents": c.budget_cents,
                "tiers": {n: f"{tiers.get(n, 0)}/{stock[n]}" for n in stock}}
        rep.campaigns[c.id] = info
        if paid > c.budget_cents:
            rep.fail(f"campaign {c.id}: paid {paid} cents, budget {c.budget_cents}")
        for n, got in tiers.items():
            if n not in stock or got > stock[n]:
                rep.fail(f"campaign {c.id}: tier {n} paid {got} times, stock {stock.get(n)}")
        per_day = collections.Counter((a[3], c.day(a[4])) for a in mine.values())
        info["max_prizes_user_day"] = max(per_day.values(), default=0)
        over = {k: v for k, v in per_day.items() if v > c.daily_cap}
        if over:
            rep.fail(f"campaign {c.id}: users over the daily cap {c.daily_cap}: {list(over.items())[:3]}")
        for k in mine:
            if k[1] != c.tenant:
                rep.fail(f"campaign {c.id} of tenant {c.tenant} paid a code of tenant {k[1]}: {k}")
        # the Redis state: what was granted, and what is left
        base = f"{sc.prefix}cp:{{{c.id}}}"
        h = {k.decode(): int(v) for k, v in client.hgetall(base).items()}
        # a prize is kept as "tier:cents:commission" (the guide's commission paid with it)
        granted = {(c.id, *_identity(f)): tuple(v.decode().split(":")) for f, v in client.hgetall(base + ":aw").items()}
        info["redis_prizes"] = len(granted)
        if h:
            if (h["prizes"] != len(granted) or h["budget"] != c.budget_cents - paid
                    or h.get("commissions", 0) != len(mine_commissions)):
                rep.fail(f"campaign {c.id}: Redis says {h['prizes']} prizes, {h.get('commissions')} commissions, "
                         f"budget left {h['budget']}; the awards table says {len(mine)} prizes, "
                         f"{len(mine_commissions)} commissions, {c.budget_cents - paid} left")
            for t, (n, _, _, s) in enumerate(c.tiers):
                if h.get(f"s{t}") != s - tiers.get(n, 0):
                    rep.fail(f"campaign {c.id}: Redis stock of tier {n} is {h.get(f's{t}')}, the awards table "
                             f"leaves {s - tiers.get(n, 0)}")
            if require_exhaustion and not any(h.get(f"s{t}") == 0 for t in range(len(c.tiers))):
                rep.fail(f"campaign {c.id}: no tier ran out of stock; the scenario did not test exhaustion")
        names_of = [n for n, _, _, _ in c.tiers]
        lost_awards = [k for k in granted if k not in mine]
        if lost_awards:
            rep.fail(f"campaign {c.id}: {len(lost_awards)} prizes granted in Redis are not in the awards table, "
                     f"e.g. {lost_awards[:3]}")
        for k, (t, cents, commission) in granted.items():
            a = mine.get(k)
            if a is not None and (a[1], a[2]) != (names_of[int(t)], int(cents)):
                rep.fail(f"campaign {c.id}: Redis granted {k} tier {t} {cents}, the table says {a[1]} {a[2]}")
            if int(commission) != mine_commissions.get(k, (None, 0))[1]:
                rep.fail(f"campaign {c.id}: Redis paid a commission of {commission} with {k}, the table says "
                         f"{mine_commissions.get(k)}")
            on_topic = topic_awards.get(f"{k[1]}:{k[2]}:{k[3]}:{k[4]}", [])
            if not any(r["campaign"] == c.id and r["prize_cents"] == int(cents) for r in on_topic):
                rep.fail(f"campaign {c.id}: granted prize {k} never reached the awards topic")
            for r in on_topic:  # the payout outbox: keyed by the award's own idempotency key
                if r["message_key"] != r["payout_key"] or not r["payout_key"]:
                    rep.fail(f"campaign {c.id}: award message of {k} keyed {r['message_key']!r}, payout key "
                             f"{r['payout_key']!r}")
        for dkey in client.scan_iter(match=f"{base}:ud:*", count=1000):
            for user, got in client.hgetall(dkey).items():
                if int(got) > c.daily_cap:
                    rep.fail(f"campaign {c.id}: Redis counts {int(got)} prizes for {user!r} on {dkey!r}")
    client.close()
    for name, w in sc.watchers.items():
        if w.error is not None:
            rep.fail(f"watcher of {name} failed: {w.error!r}")
    return rep


# --------------------------------------------------------------------------- secrets


def _searchable_files(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".toml" and not path.name.startswith("key-"):
            yield path  # configuration and key files hold the secrets by design


def grep_secrets(scenarios: list[Scenario]) -> tuple[list[str], int, int]:
    """Test 6: each scenario's keys, seeds and draw keys searched in every file it left (worker
    logs, the private Redis's log, chdb data) and every message of its results, dead-letter,
    awards and alerts topics (consumed again from the start).  Returns (hits, files, messages)."""
    found, files = [], 0
    for sc in scenarios:
        for path in _searchable_files(sc.root):
            files += 1
            found += [f"{hit} in {path}" for hit in find_secrets(path.read_bytes(), sc.needles)]
    watchers = [TopicWatcher(sc.bootstrap, sc.topics[name], sc.partitions, needles=sc.needles)
                for sc in scenarios for name in ("results", "dlq", "awards", "alerts")]
    for w in watchers:
        w.start()
    time.sleep(2)
    for w in watchers:  # all consume at once; each is done when its topic stays quiet
        w.drain(idle_s=3, timeout_s=300)
    for w in watchers:
        w.stop()
        if w.error is not None:
            raise RuntimeError(f"consuming {w.topic} failed: {w.error!r}")
        found += w.secrets_found
    return found, files, sum(w.count for w in watchers)
