-- Segment sizes per day: `scanstream segments snapshot [--as-of DATE]` writes one row per
-- (tenant, segment) for the as-of date, every RFM class and lifecycle stage (zeros too), so a
-- Grafana panel (config/grafana/dashboards/scanstream-segments.json) draws sizes over time.
-- segment is the qualified name, `rfm:<class>` or `lifecycle:<stage>` (engine/segments.py).
-- Taking a day's snapshot again replaces that day's rows: ReplacingMergeTree keyed by
-- (tenant, date, segment) keeps the row with the latest taken_at.  Read it with FINAL.
CREATE TABLE IF NOT EXISTS segment_snapshots
(
    date     Date,  -- the as-of day, in [segments] utc_offset_minutes
    tenant   UInt16,
    segment  LowCardinality(String),
    users    UInt64,
    taken_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(taken_at)
ORDER BY (tenant, date, segment);
