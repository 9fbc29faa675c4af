"""One message per dealer and window: alerts collected until their window is over.

A diversion in three cities and a cloned code all within one window reach the dealer's manager
as one message listing each city, kind and count, not as a message per alert.  A window is
over when the stream's event time (the newest scan seen) has passed its end by ``grace_ms``;
at the end of a run every open digest is sent.  Alerts whose delivery is pending are sent
again as the digests ``digests_of`` makes of them.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from scanstream.engine import outcomes

#: Wait this long past a window's end (in event time) for its late alerts.
DEFAULT_GRACE_MS = 60_000


class AlertDigests:
    """Open digests keyed by (tenant, dealer, window start)."""

    def __init__(self, grace_ms: int = DEFAULT_GRACE_MS):
        self.grace_ms = grace_ms
        self._open: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
        self._watermark = 0

    def add(self, alerts: outcomes.Columns, watermark_ms: int | None = None) -> list[dict[str, Any]]:
        """Collect a batch's alerts; returns the digests whose windows are now over."""
        for alert in outcomes.rows(alerts, outcomes.ALERT_COLUMNS):
            key = (int(alert["tenant"]), alert["dealer_id"], int(alert["window_start"]))
            self._open.setdefault(key, []).append(alert)
        if watermark_ms is not None:
            self._watermark = max(self._watermark, int(watermark_ms))
        due = [k for k, items in self._open.items() if items[0]["window_end"] + self.grace_ms <= self._watermark]
        return [self._digest(self._open.pop(k)) for k in due]

    def drain(self) -> list[dict[str, Any]]:
        """Every open digest, windows over or not (end of a run, shutdown)."""
        out = [self._digest(items) for items in self._open.values()]
        self._open.clear()
        return out

    def __len__(self) -> int:
        return len(self._open)

    @staticmethod
    def _digest(items: list[dict[str, Any]]) -> dict[str, Any]:
        return digest_of(items)


def digests_of(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alert rows (``ALERT_COLUMNS`` dicts) as one digest per (tenant, dealer, window start):
    pending alerts sent again, in the grouping they were first sent in."""
    groups: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
    for alert in alerts:
        groups.setdefault((int(alert["tenant"]), str(alert["dealer_id"]), int(alert["window_start"])), []).append(alert)
    return [digest_of(items) for _, items in sorted(groups.items(), key=lambda kv: kv[0])]


def digest_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The digest as an alert-shaped dict (so every format and route applies) plus its items."""
    first = items[0]
    key = f"{first['tenant']}|{first['dealer_id']}|{first['window_start']}|" + ",".join(
        sorted(i["alert_id"] for i in items))
    return {
        "alert_id": hashlib.blake2b(key.encode(), digest_size=12).hexdigest(),
        "ts": max(int(i["ts"]) for i in items),
        "tenant": int(first["tenant"]),
        "alert": "digest",
        "subtype": ",".join(sorted({f"{i['alert']}/{i['subtype']}" for i in items})),
        "dealer_id": first["dealer_id"],
        "manager": first["manager"],
        "city": ",".join(sorted({i["city"] for i in items if i["city"]})),
        "code": "",
        "window_start": int(first["window_start"]),
        "window_end": max(int(i["window_end"]) for i in items),
        "count": int(np.sum([int(i["count"]) for i in items])),
        "detail": "",
        "items": items,
    }
