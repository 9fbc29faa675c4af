"""The load generator side of ``bench_worker.py``: the scan streams, and the messages sent to the worker.

``make_events`` draws each phase's scans from the synthetic stream; ``build_messages``,
``read_back`` and ``replay`` turn them into the exact messages a ``ScanPublisher`` sends and
push them to the worker's topic as fast as kafka-python goes.  Separate because this is the
publisher's half of the measurement: it must stay out of the worker's way and can be read
without the phases that time it.
"""
from __future__ import annotations

import time

import orjson


def make_events(world, n: int, seed: int, tag: str) -> list[dict]:
    """``n`` scans of the synthetic stream as dicts, minus the lines the publisher refuses, scan_ids tagged."""
    from scanstream.ext.scanparse import parse_events
    from scanstream.streams.synthetic import generate_scans

    lines = generate_scans(world, n, seed=seed)
    reasons = parse_events(lines)["reason"]
    events = []
    for line, reason in zip(lines, reasons.tolist()):
        if reason:
            continue
        ev = orjson.loads(line)
        ev["scan_id"] = f"{tag}-{ev['scan_id']}"
        events.append(ev)
    return events[:n]


def build_messages(events: list[dict], partitions: int, per_envelope: int | None) -> list[tuple]:
    """The messages a ScanPublisher sends for ``events``, as (partition, key, value, headers).

    The publisher's own functions do the work (``encode_events``, ``code_keys``,
    ``partition_for``); ``per_envelope`` None gives one keyed ``application/json`` message per
    scan (``publish_single``), else envelopes sealed every ``per_envelope`` scans of a
    partition, in stream order (the last ones shorter), as the publisher seals them when its
    linger ends after that many scans.
    """
    from scanstream.streams import envelope
    from scanstream.streams.publisher import ENVELOPE_HEADERS, SINGLE_HEADERS, code_keys, encode_events, partition_for

    lines = encode_events(events)
    keys = code_keys([e["code"] for e in events])
    parts = [partition_for(key, partitions) for key in keys]
    if per_envelope is None:
        return [(p, key, line, SINGLE_HEADERS) for p, key, line in zip(parts, keys, lines)]
    out: list[tuple] = []
    buffers: dict[int, list[bytes]] = {}
    for p, line in zip(parts, lines):
        buf = buffers.setdefault(p, [])
        buf.append(line)
        if len(buf) == per_envelope:
            out.append((p, None, envelope.encode(buf), ENVELOPE_HEADERS))
            buffers[p] = []
    out.extend((p, None, envelope.encode(buf), ENVELOPE_HEADERS) for p, buf in buffers.items() if buf)
    return out


def read_back(bootstrap: str, topic: str, partitions: int, scans: int, timeout_s: float = 60.0) -> list[tuple]:
    """Every message of a staging topic as (partition, key, value, headers), until ``scans`` scans were read."""
    from kafka import KafkaConsumer, TopicPartition

    from scanstream.streams import envelope

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50,
                             max_partition_fetch_bytes=16 * 1024 * 1024, client_id="bench-staging")
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out: list[tuple] = []
    n = 0
    deadline = time.monotonic() + timeout_s
    try:
        while n < scans:
            if time.monotonic() > deadline:
                raise RuntimeError(f"staging topic {topic}: read {n} of {scans} scans in {timeout_s} s")
            for records in consumer.poll(timeout_ms=200, max_records=100_000).values():
                for r in records:
                    out.append((r.partition, r.key, r.value, list(r.headers or [])))
                    n += len(envelope.decode(r.value, envelope.header(r.headers)))
    finally:
        consumer.close()
    if n != scans:
        raise RuntimeError(f"staging topic {topic}: {n} scans, expected {scans}")
    return out


def replay(bootstrap: str, topic: str, messages: list[tuple]) -> tuple[float, float]:
    """Send ``messages`` to ``topic`` (same partitions, keys, headers) as fast as possible.

    Returns the time of the first send and the seconds until the broker acknowledged all.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, batch_size=1024 * 1024,
                             max_request_size=8 * 1024 * 1024, allow_auto_create_topics=False,
                             client_id="bench-replay")
    try:
        producer.partitions_for(topic)  # metadata before the clock starts
        t0 = time.perf_counter()
        for partition, key, value, headers in messages:
            producer.send(topic, value=value, key=key, partition=partition, headers=headers)
        producer.flush()
        return t0, time.perf_counter() - t0
    finally:
        producer.close(10)
