"""The outcome side of ``bench_worker.py``: a consumer of the results topic that counts scans.

Its count is the completion signal of every phase, so each phase's clock stops here.
Separate from the phases because it is the one thread of the run that reads Kafka
concurrently with them (``assign()``, no group, a short fetch wait), with its own locking
and failure reporting.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter

from worker_bench_costs import TopicTotals, record_size

#: A verdict in an outcome's JSON (the worker's orjson and the naive agent's json spell it differently).
VERDICT_RE = re.compile(rb'"verdict":\s*"(\w+)"')
#: A scan_id in an outcome's JSON (the publisher's scan_ids carry no quote or backslash).
SCAN_ID_RE = re.compile(rb'"scan_id":\s*"([^"\\]*)"')


class ResultCounter(threading.Thread):
    """Counts the scans carried by the messages of the results topic; notes when each count was reached.

    ``distinct``: count each scan_id once.  A worker killed with batches processed but not
    committed has them delivered again to the survivors, which answer those scans a second
    time; counting them again would end a phase before every scan was answered."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, distinct: bool = False):
        super().__init__(name="results-counter", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", fetch_max_wait_ms=10,
                                      max_partition_fetch_bytes=8 * 1024 * 1024, client_id="bench-results")
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.cond = threading.Condition()
        self.count = 0
        self.verdicts: Counter[str] = Counter()
        self.totals = TopicTotals()  # records and their bytes read (worker_bench_costs: bytes per scan)
        self.history: list[tuple[float, int]] = []  # (perf_counter, count) after each poll that brought scans
        self.distinct = distinct
        self.seen: set[bytes] = set()  # the scan_ids answered, when distinct
        self.answers = 0  # every answer read, repeated ones included
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from scanstream.streams import envelope
        try:
            while not self._halt.is_set():
                got = self.consumer.poll(timeout_ms=50, max_records=100_000)
                if not got:
                    continue
                t = time.perf_counter()
                n = size = records_read = answers = 0
                seen: Counter[str] = Counter()
                for records in got.values():
                    records_read += len(records)
                    for r in records:
                        if self.distinct:
                            ids = SCAN_ID_RE.findall(r.value)
                            answers += len(ids)
                            fresh = set(ids) - self.seen
                            self.seen |= fresh
                            n += len(fresh)
                        else:
                            n += len(envelope.decode(r.value, envelope.header(r.headers)))
                        seen.update(VERDICT_RE.findall(r.value))
                        size += record_size(r.key, r.value, r.headers)
                if not self.distinct:
                    answers = n
                with self.cond:
                    self.verdicts.update(seen)
                    self.totals = self.totals + TopicTotals(records_read, size)
                    self.count += n
                    self.answers += answers
                    self.history.append((t, self.count))
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported by wait_for
            with self.cond:
                self.error = exc
                self.cond.notify_all()
        finally:
            self.consumer.close()

    def wait_for(self, target: int, timeout_s: float, alive=lambda: True, stall_s: float = 30.0) -> float | None:
        """perf_counter time at which ``count`` reached ``target``.

        None after ``timeout_s``, when ``alive()`` turns false, or when the count has not moved
        for ``stall_s`` seconds (a worker retrying a batch for ever).
        """
        start = time.perf_counter()
        deadline = start + timeout_s
        with self.cond:
            while self.count < target:
                if self.error is not None:
                    raise RuntimeError(f"the results consumer failed: {self.error!r}") from self.error
                now = time.perf_counter()
                moved = max(start, self.history[-1][0]) if self.history else start
                if now >= deadline or now - moved > stall_s or not alive():
                    return None
                self.cond.wait(min(deadline - now, 0.5))
            return next(t for t, c in self.history if c >= target)

    def topic_totals(self) -> TopicTotals:
        """Records of the results topic read so far, and their bytes."""
        with self.cond:
            return self.totals

    def settle(self, quiet_s: float, bound_s: float) -> bool:
        """Wait until no scan arrived for ``quiet_s``; False when ``bound_s`` passed first (an agent
        that was stopped with scans in hand may still send a few outcomes)."""
        deadline = time.perf_counter() + bound_s
        while time.perf_counter() < deadline:
            with self.cond:
                last = self.history[-1][0] if self.history else 0.0
            quiet = time.perf_counter() - last
            if quiet >= quiet_s:
                return True
            time.sleep(quiet_s - quiet)
        return False

    def verdict_snapshot(self) -> Counter[str]:
        with self.cond:
            return Counter({k.decode(): v for k, v in self.verdicts.items()})

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
