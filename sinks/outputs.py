"""Fan-out of a pipeline batch to every configured output, in one place.

Order within a batch: results file, then ClickHouse (scans, alerts, awards), then alert
delivery (logged at once, sent to webhooks as one digest per dealer and window).  A driver calls ``write`` and, only when it returns, treats the batch as done
(the local driver moves on; the Faust worker commits offsets).
"""
from __future__ import annotations

from pathlib import Path
from typing import IO

import orjson

from engine import outcomes
from engine.pipeline import BatchResult
from sinks.alerting import AlertDelivery

#: Fields of a results-file line: DESIGN.md "Outputs", then why a draw paid or not, whether the
#: scan_id was a redelivery, and why an event was invalid.
RESULT_FIELDS = ("scan_id", "ts", "tenant", "kind", "batch", "serial", "code", "user_id", "role", "region",
                 "channel", "sku", "dealer_id", "verdict", "diversion", "campaign", "prize_tier", "prize_cents",
                 "draw", "replay", "reason")


class ResultsFile:
    """``--results FILE``: one JSON object per input event, in input order."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fh: IO[bytes] = self.path.open("wb")

    def write(self, scans: outcomes.Columns) -> None:
        cols = [(f, scans[f].tolist()) for f in RESULT_FIELDS]
        n = len(cols[0][1])
        self._fh.write(b"".join(orjson.dumps({f: v[i] for f, v in cols}) + b"\n" for i in range(n)))

    def close(self) -> None:
        self._fh.close()


class Outputs:
    """Every output of a run: results file, ClickHouse sink, alert delivery."""

    def __init__(self, results: ResultsFile | None = None, clickhouse=None, alerting: AlertDelivery | None = None):
        self.results = results
        self.clickhouse = clickhouse
        self.alerting = alerting
        self._watermark = 0

    def write(self, result: BatchResult, token: str | None = None) -> None:
        """Store one batch everywhere; ``token`` identifies the batch for insert deduplication."""
        if self.results is not None:
            self.results.write(result.scans)
        if self.clickhouse is not None:
            self.clickhouse.write_scans(result.scans, dedup_token=f"{token}:scans" if token else None)
            self.clickhouse.write_alerts(result.alerts, dedup_token=f"{token}:alerts" if token else None)
            self.clickhouse.write_awards(result.awards, dedup_token=f"{token}:awards" if token else None)
        if self.alerting is not None:
            valid = result.scans["reason"] == ""
            if valid.any():
                self._watermark = max(self._watermark, int(result.scans["ts"][valid].max()))
            self.alerting.add(result.alerts, self._watermark)

    def close(self) -> None:
        if self.alerting is not None:
            self.alerting.close()
        if self.results is not None:
            self.results.close()
