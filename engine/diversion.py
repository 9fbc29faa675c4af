"""Diversion (窜货) and cloned-code detection, and the windowed alerts they raise.

A scan is *diverted* when its place is under none of its dealer's region prefixes
(``region``) or its channel differs from the dealer's (``channel``).  Alerts count evidence
in tumbling event-time windows and fire once per key and window, at the scan that reaches
the threshold: the alert (its id, time and count) is therefore the same whatever the batch
size, because the state store answers each scan's count in scan order.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import orjson

from engine import outcomes
from engine.registry import Registry
from engine.verdicts import Verdict

DIVERSION_LABELS = np.array(["none", "region", "channel", "region+channel"], dtype=object)
REGION, CHANNEL = 1, 2
MS_PER_MINUTE = 60_000
#: Window state lives this many windows past its end, so late scans still count.
WINDOW_RETENTION = 2


@dataclass(frozen=True)
class DiversionSettings:
    window_minutes: int = 10
    thresholds: dict[str, int] = field(default_factory=lambda: {"consumer": 3, "store": 1, "dealer": 1})
    clone_window_minutes: int = 10
    clone_max_users: int = 3  # more distinct users than this in a window is a clone


def judge(registry: Registry, dealer: np.ndarray, region: np.ndarray, channel: np.ndarray,
          verdict: np.ndarray) -> np.ndarray:
    """Diversion bits per scan (REGION | CHANNEL), for ok/repeat scans with a known dealer."""
    out = np.zeros(len(dealer), np.uint8)
    rows = np.nonzero(((verdict == Verdict.OK) | (verdict == Verdict.REPEAT)) & (dealer >= 0))[0]
    if not len(rows):
        return out
    d = dealer[rows]
    known_region = region[rows] != ""
    bad_region = np.zeros(len(rows), bool)
    if known_region.any():
        bad_region[known_region] = ~registry.authorised(d[known_region], region[rows][known_region])
    dealer_channel = registry.dealers.channel[d]
    bad_channel = (channel[rows] != "") & (dealer_channel != "") & (channel[rows] != dealer_channel)
    out[rows] = np.where(bad_region, REGION, 0) | np.where(bad_channel, CHANNEL, 0)
    return out


def _alert_id(*parts: object) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=12).hexdigest()


def _city(region: str) -> str:
    return region[:4] if len(region) >= 4 else region


class AlertWindows:
    """Counts evidence per key and window in the state store and builds the alerts that fire."""

    def __init__(self, settings: DiversionSettings, registry: Registry, state):
        self.settings = settings
        self.registry = registry
        self.state = state

    def diversion_alerts(self, rows: np.ndarray, cols: dict[str, np.ndarray], dealer: np.ndarray,
                         diversion: np.ndarray) -> outcomes.Columns:
        """Alerts fired by the diverted scans ``rows`` (not replays), in scan order."""
        s = self.settings
        if not len(rows):
            return outcomes.empty(outcomes.ALERT_COLUMNS)
        window_ms = s.window_minutes * MS_PER_MINUTE
        ts, tenant, role = cols["ts"][rows], cols["tenant"][rows], cols["role"][rows]
        region, d, kind = cols["region"][rows], dealer[rows], DIVERSION_LABELS[diversion[rows]]
        window = ts // window_ms
        dealer_ids = self.registry.dealers.dealer_id[d]
        cities = np.array([_city(r) for r in region.tolist()], dtype=object)
        base = [f"div|{t}|{di}|{k}|{c}|{w}" for t, di, k, c, w in
                zip(tenant.tolist(), dealer_ids.tolist(), kind.tolist(), cities.tolist(), window.tolist())]
        counter_keys = np.array([f"{b}|{r}" for b, r in zip(base, role.tolist())], dtype=object)
        totals = self.state.count(counter_keys, np.ones(len(rows), np.int64), (WINDOW_RETENTION + 1) * window_ms // 1000)
        threshold = np.array([s.thresholds[r] for r in role.tolist()], np.int64)
        crossing = np.nonzero(totals == threshold)[0]
        if not len(crossing):
            return outcomes.empty(outcomes.ALERT_COLUMNS)
        fire_keys = np.array([base[i] for i in crossing], dtype=object)
        fired = crossing[self.state.mark_once(fire_keys, (WINDOW_RETENTION + 1) * window_ms // 1000)]
        out = outcomes.empty(outcomes.ALERT_COLUMNS, len(fired))
        dl = self.registry.dealers
        for j, i in enumerate(fired.tolist()):
            di = int(d[i])
            out["alert_id"][j] = _alert_id(base[i])
            out["ts"][j] = ts[i]
            out["tenant"][j] = tenant[i]
            out["alert"][j] = "diversion"
            out["subtype"][j] = kind[i]
            out["dealer_id"][j] = dl.dealer_id[di]
            out["manager"][j] = dl.manager[di]
            out["city"][j] = cities[i]
            out["window_start"][j] = window[i] * window_ms
            out["window_end"][j] = (window[i] + 1) * window_ms
            out["count"][j] = threshold[i]
            out["detail"][j] = orjson.dumps({
                "role": role[i], "threshold": int(threshold[i]), "scan_region": region[i],
                "scan_channel": cols["channel"][rows][i], "dealer_regions": dl.regions[di],
                "dealer_channel": dl.channel[di], "scan_id": cols["scan_id"][rows][i],
                "store_id": cols["store_id"][rows][i],
            }).decode()
        return out

    def clone_alerts(self, rows: np.ndarray, cols: dict[str, np.ndarray], dealer: np.ndarray) -> outcomes.Columns:
        """Cloned-code alerts among the verified scans ``rows`` (ok or repeat, not replays)."""
        s = self.settings
        if not len(rows):
            return outcomes.empty(outcomes.ALERT_COLUMNS)
        window_ms = s.clone_window_minutes * MS_PER_MINUTE
        ttl = (WINDOW_RETENTION + 1) * window_ms // 1000
        ts, region = cols["ts"][rows], cols["region"][rows]
        window = ts // window_ms
        code_keys = [f"{t}|{k}|{b}|{sr}|{w}" for t, k, b, sr, w in zip(
            cols["tenant"][rows].tolist(), cols["kind"][rows].tolist(), cols["batch"][rows].tolist(),
            cols["serial"][rows].tolist(), window.tolist())]
        users = self.state.distinct(np.array([f"cu|{c}" for c in code_keys], dtype=object), cols["user_id"][rows], ttl)
        has_province = region != ""
        provinces = np.zeros(len(rows), np.int64)
        if has_province.any():
            sel = np.nonzero(has_province)[0]
            provinces[sel] = self.state.distinct(np.array([f"cp|{code_keys[i]}" for i in sel], dtype=object),
                                                 np.array([r[:2] for r in region[sel].tolist()], dtype=object), ttl)
        by_users = users == s.clone_max_users + 1
        by_provinces = provinces == 2
        crossing = np.nonzero(by_users | by_provinces)[0]
        if not len(crossing):
            return outcomes.empty(outcomes.ALERT_COLUMNS)
        fired = crossing[self.state.mark_once(np.array([f"clone|{code_keys[i]}" for i in crossing], dtype=object), ttl)]
        out = outcomes.empty(outcomes.ALERT_COLUMNS, len(fired))
        dl = self.registry.dealers
        for j, i in enumerate(fired.tolist()):
            di = int(dealer[rows][i])
            subtype = "users" if by_users[i] else "provinces"
            out["alert_id"][j] = _alert_id("clone", code_keys[i])
            out["ts"][j] = ts[i]
            out["tenant"][j] = cols["tenant"][rows][i]
            out["alert"][j] = "cloned_code"
            out["subtype"][j] = subtype
            out["dealer_id"][j] = dl.dealer_id[di] if di >= 0 else ""
            out["manager"][j] = dl.manager[di] if di >= 0 else ""
            out["city"][j] = _city(region[i])
            out["code"][j] = cols["code"][rows][i]
            out["window_start"][j] = window[i] * window_ms
            out["window_end"][j] = (window[i] + 1) * window_ms
            out["count"][j] = users[i] if subtype == "users" else provinces[i]
            out["detail"][j] = orjson.dumps({
                "distinct_users": int(users[i]), "provinces": int(provinces[i]),
                "max_users": s.clone_max_users, "scan_id": cols["scan_id"][rows][i],
            }).decode()
        return out
