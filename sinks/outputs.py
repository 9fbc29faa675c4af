"""Fan-out of a pipeline batch to every configured output, in one place.

Order within a batch: ClickHouse (awards, alerts, scans), then the results file, then (after
the driver's checkpoint) alert delivery, logged at once and sent to webhooks as one digest per
dealer and window.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import orjson

from scanstream.engine import outcomes
from scanstream.engine.pipeline import BatchResult
from scanstream.sinks.alerting import AlertDelivery

#: Fields of a results-file line: DESIGN.md "Outputs", then why a draw paid or not, whether the
#: scan_id was a redelivery, and why an event was invalid.
RESULT_FIELDS = ("scan_id", "ts", "tenant", "kind", "batch", "serial", "code", "user_id", "role", "region",
                 "channel", "sku", "dealer_id", "verdict", "diversion", "campaign", "prize_tier", "prize_cents",
                 "draw", "replay", "reason")


#: Suffix of the file a results file is written to until its run has stored everything.
PARTIAL_SUFFIX = ".partial"


class ResultsFile:
    """``--results FILE``: one JSON object per input event, in input order.

    Lines go to ``FILE.partial`` beside it; ``finish`` moves that into place in one rename, so
    an existing ``FILE`` is never destroyed before a run has stored everything, and a crashed
    run leaves no half file under the real name.  ``sync`` makes what was written durable and
    returns its length: the local driver keeps that length in its checkpoint, and a resumed
    run cuts the partial file back to it (``resume_at``), so the file always holds exactly the
    outcomes that the state has stored.
    """

    def __init__(self, path: Path | str, resume_at: int | None = None):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        if resume_at is None:
            self._fh: IO[bytes] = self.partial.open("wb")
        else:
            self._fh = self.partial.open("r+b")
            self._fh.truncate(resume_at)
            self._fh.seek(resume_at)

    def write(self, scans: outcomes.Columns) -> None:
        cols = [(f, scans[f].tolist()) for f in RESULT_FIELDS]
        n = len(cols[0][1])
        self._fh.write(b"".join(orjson.dumps({f: v[i] for f, v in cols}) + b"\n" for i in range(n)))

    def sync(self) -> int:
        """Flush and fsync what was written; its length in bytes."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._fh.tell()

    def finish(self) -> None:
        """Close and move the partial file into place (the run stored everything)."""
        self.sync()
        self._fh.close()
        os.replace(self.partial, self.path)

    def close(self) -> None:
        """Close without moving the file into place (a run that stopped early)."""
        if not self._fh.closed:
            self._fh.close()


class Outputs:
    """Every output of a run: ClickHouse sink, results file, alert delivery.

    ``store`` writes what must be durable before a batch counts as done, in the order that
    keeps every visible outcome backed by what it implies: awards and alerts before the scans
    that name them, ClickHouse before the results file.  ``notify`` hands alerts to delivery,
    which never fails a batch; the driver calls it after its checkpoint.
    """

    def __init__(self, results: ResultsFile | None = None, clickhouse=None, alerting: AlertDelivery | None = None):
        self.results = results
        self.clickhouse = clickhouse
        self.alerting = alerting
        self._watermark = 0

    def store(self, result: BatchResult, token: str | None = None) -> int:
        """Store one batch; ``token`` identifies it for insert deduplication.  Returns the
        results file's durable length (0 without one)."""
        if self.clickhouse is not None:
            self.clickhouse.write_awards(result.awards, dedup_token=f"{token}:awards" if token else None)
            self.clickhouse.write_alerts(result.alerts, dedup_token=f"{token}:alerts" if token else None)
            self.clickhouse.write_scans(result.scans, dedup_token=f"{token}:scans" if token else None)
        if self.results is not None:
            self.results.write(result.scans)
            return self.results.sync()
        return 0

    def notify(self, result: BatchResult) -> None:
        """Alerts of a stored batch to delivery (logged at once, digests sent per dealer and window)."""
        if self.alerting is not None:
            valid = result.scans["reason"] == ""
            if valid.any():
                self._watermark = max(self._watermark, int(result.scans["ts"][valid].max()))
            self.alerting.add(result.alerts, self._watermark)

    def write(self, result: BatchResult, token: str | None = None) -> None:
        """``store`` then ``notify``: for callers without a checkpoint of their own."""
        self.store(result, token)
        self.notify(result)

    def finish(self) -> None:
        """The run stored everything: deliver what is left and move the results file into place."""
        if self.alerting is not None:
            self.alerting.close()
        if self.results is not None:
            self.results.finish()

    def close(self) -> None:
        if self.alerting is not None:
            self.alerting.close()
        if self.results is not None:
            self.results.close()
