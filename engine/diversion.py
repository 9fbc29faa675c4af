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

from scanstream.ext.scanparse import ROLES
from scanstream.engine import adcode, outcomes
from scanstream.engine.bindings import Routing
from scanstream.engine.registry import Registry
from scanstream.engine.state import STATE_HASH_KEY, Namespace, StateStore, fold, state_keys
from scanstream.engine.outcomes import MS_PER_MINUTE
from scanstream.engine.verdicts import Verdict
from scanstream.ext import codec

DIVERSION_LABELS = np.array(["none", "region", "channel", "region+channel"], dtype=object)
REGION, CHANNEL = 1, 2
#: Window state lives this many windows past its end, so late scans still count.
WINDOW_RETENTION = 2


@dataclass(frozen=True)
class DiversionSettings:
    window_minutes: int = 10
    # a guide's scans are a store's: one out of territory is evidence; warehouse scans set where
    # goods are meant to be and are never judged, so their threshold is never reached
    thresholds: dict[str, int] = field(default_factory=lambda: {"consumer": 3, "dealer": 1, "guide": 1, "store": 1,
                                                                 "warehouse": 1})
    clone_window_minutes: int = 10
    clone_max_users: int = 3  # more distinct users than this in a window is a clone


#: The number in ROLES of the warehouse's role (the parser's ``role_no``).
WAREHOUSE_NO = ROLES.index("warehouse")


def judge(registry: Registry, dealer: np.ndarray, place: tuple[np.ndarray, np.ndarray], channel: np.ndarray,
          verdict: np.ndarray, role_no: np.ndarray) -> np.ndarray:
    """Diversion bits per scan (REGION | CHANNEL), for ok/repeat scans with a known dealer; never
    for a warehouse's scans, which set where the goods are meant to be (DESIGN.md).  ``role_no``:
    each scan's role as its number in ROLES (the parser's column of that name)."""
    out = np.zeros(len(dealer), np.uint8)
    rows = np.nonzero(((verdict == Verdict.OK) | (verdict == Verdict.REPEAT)) & (dealer >= 0)
                      & (role_no != WAREHOUSE_NO))[0]
    if not len(rows):
        return out
    d = dealer[rows]
    value, length = place[0][rows], place[1][rows]
    known_region = length > 0
    bad_region = np.zeros(len(rows), bool)
    if known_region.any():
        bad_region[known_region] = ~registry.authorised(d[known_region], value[known_region], length[known_region])
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

    def __init__(self, settings: DiversionSettings, registry: Registry, state: StateStore, code_groups: int = 1):
        """``code_groups``: the partitions of the scans topic, so that a code's clone sets are kept
        with the worker that reads the code's partition (``StateStore.distinct``'s groups)."""
        if code_groups < 1:
            raise ValueError(f"code_groups: expected at least 1, got {code_groups}")
        self.settings = settings
        self.registry = registry
        self.state = state
        self.code_groups = int(code_groups)

    def diversion_alerts(self, rows: np.ndarray, cols: dict[str, np.ndarray], routing: Routing,
                         diversion: np.ndarray) -> outcomes.Columns:
        """Alerts fired by the diverted scans ``rows`` (not replays), in scan order; an alert names
        the case of the scan that fired it and whether an outbound scan or shipments.csv sent it."""
        dealer = routing.dealer
        s = self.settings
        if not len(rows):
            return outcomes.empty(outcomes.ALERT_COLUMNS)
        window_ms = s.window_minutes * MS_PER_MINUTE
        ttl = (WINDOW_RETENTION + 1) * window_ms // 1000
        ts, tenant, role = cols["ts"][rows], cols["tenant"][rows], cols["role"][rows]
        region, d, kind = cols["region"][rows], dealer[rows], DIVERSION_LABELS[diversion[rows]]
        window = ts // window_ms
        dealer_ids = self.registry.dealers.dealer_id[d]
        cities = np.array([_city(r) for r in region.tolist()], dtype=object)
        # diverted scans are few: readable string keys, hashed to the store's uint64 keys
        base = [f"{t}|{di}|{k}|{c}|{w}" for t, di, k, c, w in
                zip(tenant.tolist(), dealer_ids.tolist(), kind.tolist(), cities.tolist(), window.tolist())]
        alert_key = state_keys(base)
        role_no = cols["role_no"][rows]  # each role's number in ROLES
        totals = self.state.count(fold(alert_key, role_no, np.full(len(rows), Namespace.DIVERSION)), ttl)
        threshold = np.array([s.thresholds[r] for r in role.tolist()], np.int64)
        crossing = np.nonzero(totals == threshold)[0]
        if not len(crossing):
            return outcomes.empty(outcomes.ALERT_COLUMNS)
        fired = crossing[self.state.mark_once(fold(alert_key[crossing], np.full(len(crossing), Namespace.DIVERSION_FIRED)),
                                              ttl)]
        out = outcomes.empty(outcomes.ALERT_COLUMNS, len(fired))
        dl = self.registry.dealers
        for j, i in enumerate(fired.tolist()):
            di = int(d[i])
            out["alert_id"][j] = _alert_id("diversion", base[i])
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
                "case_batch": int(routing.case_batch[rows[i]]), "case_serial": int(routing.case_serial[rows[i]]),
                "sent_by": "outbound_scan" if routing.outbound[rows[i]] else "shipments",
            }).decode()
        return out

    def clone_alerts(self, rows: np.ndarray, cols: dict[str, np.ndarray], dealer: np.ndarray,
                     place: tuple[np.ndarray, np.ndarray], first_scan: np.ndarray | None = None) -> outcomes.Columns:
        """Cloned-code alerts among the verified scans ``rows`` (ok or repeat, not replays).

        ``first_scan`` flags the rows that are their code's first scan ever (verdict ok): no
        set exists for them yet, which spares the state store a look-up per scan.
        """
        s = self.settings
        if not len(rows):
            return outcomes.empty(outcomes.ALERT_COLUMNS)
        window_ms = s.clone_window_minutes * MS_PER_MINUTE
        ttl = (WINDOW_RETENTION + 1) * window_ms // 1000
        ts, region = cols["ts"][rows], cols["region"][rows]
        window = ts // window_ms
        ident = codec.keyed_hash(STATE_HASH_KEY, cols["tenant"][rows], cols["kind"][rows], cols["batch"][rows],
                                 cols["serial"][rows])
        code_window = fold(ident, window)
        ones = np.ones(len(rows), np.int64)
        new = first_scan[rows] if first_scan is not None else None
        # the users and the provinces (where the scan has a place) of a code in one entry
        province_of = adcode.truncate(place[0][rows], place[1][rows], 2)
        members = np.stack([state_keys(cols["user_id"][rows]), np.maximum(province_of, 0).astype(np.uint64)], axis=1)
        present = np.stack([np.ones(len(rows), bool), province_of >= 0], axis=1)
        groups = codec.code_partitions(cols["tenant"][rows], cols["batch"][rows], cols["serial"][rows],
                                       self.code_groups)
        sizes = self.state.distinct(fold(code_window, ones * Namespace.CLONE), members, ttl, new, present, groups)
        users, provinces = sizes[:, 0], sizes[:, 1]
        by_users = users == s.clone_max_users + 1
        by_provinces = provinces == 2
        crossing = np.nonzero(by_users | by_provinces)[0]
        if not len(crossing):
            return outcomes.empty(outcomes.ALERT_COLUMNS)
        fired = crossing[self.state.mark_once(fold(code_window[crossing], ones[crossing] * Namespace.CLONE_FIRED), ttl)]
        out = outcomes.empty(outcomes.ALERT_COLUMNS, len(fired))
        dl = self.registry.dealers
        for j, i in enumerate(fired.tolist()):
            r = rows[i]
            di = int(dealer[r])
            subtype = "users" if by_users[i] else "provinces"
            out["alert_id"][j] = _alert_id("clone", cols["tenant"][r], cols["kind"][r], cols["batch"][r],
                                           cols["serial"][r], window[i])
            out["ts"][j] = ts[i]
            out["tenant"][j] = cols["tenant"][r]
            out["alert"][j] = "cloned_code"
            out["subtype"][j] = subtype
            out["dealer_id"][j] = dl.dealer_id[di] if di >= 0 else ""
            out["manager"][j] = dl.manager[di] if di >= 0 else ""
            out["city"][j] = _city(region[i])
            out["code"][j] = cols["code"][r]
            out["window_start"][j] = window[i] * window_ms
            out["window_end"][j] = (window[i] + 1) * window_ms
            out["count"][j] = users[i] if subtype == "users" else provinces[i]
            out["detail"][j] = orjson.dumps({
                "distinct_users": int(users[i]), "provinces": int(provinces[i]),
                "max_users": s.clone_max_users, "scan_id": cols["scan_id"][r],
            }).decode()
        return out
