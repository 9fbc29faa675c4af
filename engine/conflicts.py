"""``scan_id_conflict`` alerts: a scan_id that came back with another event.

The dedup stage's state store decides the ``conflict`` verdict (the stored fingerprint of the
scan_id's first event differs from this one's); this module only describes what happened, as
an alert row per conflicting scan.  A conflict is a fraud signal (a client replaying another
scan's request id to take its answer or its prize, or a broken scan API), never a payout.
"""
from __future__ import annotations

import hashlib

import numpy as np
import orjson

from scanstream.engine import outcomes

#: The ``alert`` column of these alerts.
ALERT = "scan_id_conflict"


def conflict_alerts(rows: np.ndarray, cols: dict[str, np.ndarray], first_user: np.ndarray) -> outcomes.Columns:
    """One alert per row of ``rows`` (conflicting scans), naming the first user and this one.

    ``subtype`` says whether the event came back under the same user (``same_user``: a changed
    code, place or time) or another (``other_user``: someone else's request id).  The alert id
    is derived from the scan_id and this event's fingerprint, so the same conflicting event
    delivered twice raises one alert.
    """
    out = outcomes.empty(outcomes.ALERT_COLUMNS, len(rows))
    if not len(rows):
        return out
    user, first = cols["user_id"][rows], first_user[rows]
    out["alert_id"][:] = [hashlib.blake2b(f"{ALERT}|{s}|{fp}".encode(), digest_size=12).hexdigest()
                          for s, fp in zip(cols["scan_id"][rows].tolist(), cols["fingerprint"][rows].tolist())]
    out["ts"][:] = cols["ts"][rows]
    out["window_start"][:] = cols["ts"][rows]
    out["window_end"][:] = cols["ts"][rows]
    out["tenant"][:] = cols["tenant"][rows]
    out["alert"][:] = ALERT
    out["subtype"][:] = np.where(user == first, "same_user", "other_user")
    out["code"][:] = cols["code"][rows]
    out["count"][:] = 1
    out["detail"][:] = [orjson.dumps({"scan_id": s, "first_user": f, "user": u, "device_id": d, "ip": ip}).decode()
                        for s, f, u, d, ip in zip(cols["scan_id"][rows].tolist(), first.tolist(), user.tolist(),
                                                  cols["device_id"][rows].tolist(), cols["ip"][rows].tolist())]
    return out
