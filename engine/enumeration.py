"""Enumeration defence: scanners who submit many forged or malformed codes.

People who guess codes produce ``bad_mac`` and ``malformed`` scans in bulk.  Each such scan
counts against its user_id, device_id and IP (each configurable) in a tumbling event-time
window; at the scan that reaches the threshold an ``enumeration`` alert fires (once per
identity and window) and, when the configuration says so, the identity goes on the block list
for ``block_hours``.  A blocked identity's later scans keep their verdicts (genuine scans still
count) but cannot win: their draw is ``blocked``, and a blocked guide's sale scans make them no
unit's guide (``engine.guides``).  A single typo never comes near a threshold.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import orjson

from scanstream.engine import outcomes
from scanstream.engine.outcomes import MS_PER_MINUTE
from scanstream.engine.state import Namespace, StateStore, fold, state_keys
from scanstream.engine.verdicts import Verdict
from scanstream.ext.scanparse import ACTION_SELL, ROLES

IDENTITIES = ("user_id", "device_id", "ip")
#: The number in ROLES of the consumer's role (the parser's ``role_no``).
CONSUMER_NO = ROLES.index("consumer")


@dataclass(frozen=True)
class EnumerationSettings:
    window_minutes: int = 10
    threshold: int = 20  # forged or malformed scans of one identity in a window
    block: bool = True
    block_hours: int = 24
    identities: tuple[str, ...] = field(default=IDENTITIES)


@dataclass
class EnumerationResult:
    alerts: outcomes.Columns
    blocked: np.ndarray  # bool per scan: its scanner was blocked before this scan


class EnumerationGuard:
    def __init__(self, settings: EnumerationSettings, state: StateStore):
        self.settings = settings
        self.state = state

    def run(self, cols: dict[str, np.ndarray], verdict: np.ndarray, replay: np.ndarray) -> EnumerationResult:
        """Count forged scans per identity, fire alerts, and say which scans' scanners are blocked.

        Only consumer scans with verdict ``ok`` can win, so only those are looked up on the
        block list.
        """
        s = self.settings
        n = len(verdict)
        window_ms = s.window_minutes * MS_PER_MINUTE
        window_ttl = 3 * window_ms // 1000
        blocked = np.zeros(n, bool)
        bad = ((verdict == Verdict.BAD_MAC) | (verdict == Verdict.MALFORMED)) & ~replay
        # scans that could earn money: a consumer's first scan (a prize), a guide's sale (commissions)
        could_win = (((verdict == Verdict.OK) & (cols["role_no"] == CONSUMER_NO))
                     | ((cols["action"] == ACTION_SELL) & ((verdict == Verdict.OK) | (verdict == Verdict.REPEAT))))
        alerts = []
        for number, kind in enumerate(s.identities):
            values = cols[kind]
            need = np.nonzero((bad | could_win) & (values != ""))[0]
            if not len(need):
                continue
            identity = np.zeros(n, np.uint64)
            identity[need] = fold(state_keys(values[need]), np.full(len(need), number))
            rows = need[bad[need]]
            crossed_at: dict[int, int] = {}  # identity -> row of the scan that reached the threshold
            if len(rows):
                window = cols["ts"][rows] // window_ms
                totals = self.state.count(fold(identity[rows], window, np.full(len(rows), Namespace.ENUMERATION)), window_ttl)
                crossing = rows[totals == s.threshold]
                if len(crossing):
                    w = cols["ts"][crossing] // window_ms
                    first = self.state.mark_once(fold(identity[crossing], w, np.full(len(crossing), Namespace.ENUMERATION_FIRED)),
                                                 window_ttl)
                    alerts.extend(self._alert(cols, kind, r, window_ms) for r in crossing[first].tolist())
                    for r in crossing.tolist():
                        crossed_at.setdefault(int(identity[r]), r)
            if not s.block:
                continue
            if crossed_at:
                keys = np.fromiter(crossed_at, np.uint64, len(crossed_at))
                self.state.block(fold(keys, np.full(len(keys), Namespace.BLOCK)), s.block_hours * 3600)
            candidates = need[could_win[need]]
            if len(candidates):
                ident = identity[candidates]
                # blocked before this scan: in an earlier batch, or at an earlier row of this one
                listed = self.state.blocked(fold(ident, np.full(len(candidates), Namespace.BLOCK)))
                if crossed_at:
                    crossed = np.fromiter(crossed_at, np.uint64, len(crossed_at))
                    at = np.array([crossed_at.get(k, n) for k in ident.tolist()], np.int64)
                    listed = (listed & ~np.isin(ident, crossed)) | (at < candidates)
                blocked[candidates] |= listed
        return EnumerationResult(self._batch(alerts), blocked)

    def _alert(self, cols, kind: str, r: int, window_ms: int) -> dict:
        window = int(cols["ts"][r]) // window_ms
        who = cols[kind][r]
        return {
            "alert_id": hashlib.blake2b(f"enumeration|{kind}|{who}|{window}".encode(), digest_size=12).hexdigest(),
            "ts": int(cols["ts"][r]), "tenant": int(cols["tenant"][r]), "alert": "enumeration", "subtype": kind,
            "dealer_id": "", "manager": "", "city": "", "code": "", "window_start": window * window_ms,
            "window_end": (window + 1) * window_ms, "count": self.settings.threshold,
            "detail": orjson.dumps({kind: who, "threshold": self.settings.threshold, "scan_id": cols["scan_id"][r],
                                    "blocked_hours": self.settings.block_hours if self.settings.block else 0}).decode(),
        }

    @staticmethod
    def _batch(alerts: list[dict]) -> outcomes.Columns:
        out = outcomes.empty(outcomes.ALERT_COLUMNS, len(alerts))
        for j, a in enumerate(alerts):
            for name, value in a.items():
                out[name][j] = value
        return out
