-- What the engine wrote, per minute of WRITE time (now() when the insert reached ClickHouse)
-- and verdict: engine throughput as rows actually stored (redeliveries and re-processed
-- batches included, because they were work done; identical re-inserts dropped by the dedup
-- window are not), and the write delay (insert time - scan ts), whose p99 approximates the
-- end-to-end lag of a live stream.  Replays of old data (a backfill, `scanstream run` on an
-- old file) show large delays by nature.  Consumer lag in messages comes from the worker's
-- metrics (Prometheus), not from here.
-- sum(rows) over all minutes equals count() of scan_events before any replacing merge.
CREATE TABLE IF NOT EXISTS ingest_minute
(
    tenant   UInt16,
    minute   DateTime('UTC'),  -- write time, start of its minute
    verdict  LowCardinality(String),
    rows     SimpleAggregateFunction(sum, UInt64),
    replays  SimpleAggregateFunction(sum, UInt64),  -- rows with replay = 1
    delay_ms AggregateFunction(quantilesTDigest(0.5, 0.99), Int64),
    max_delay_ms SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, minute, verdict)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ingest_minute_mv TO ingest_minute AS
SELECT
    tenant,
    toStartOfMinute(now()) AS minute,
    verdict,
    toUInt64(count()) AS rows,
    toUInt64(sum(replay)) AS replays,
    quantilesTDigestState(0.5, 0.99)(dateDiff('millisecond', ts, now64(3))) AS delay_ms,
    max(dateDiff('millisecond', ts, now64(3))) AS max_delay_ms
FROM scan_events
GROUP BY tenant, minute, verdict;
