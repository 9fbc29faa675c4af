-- One row per webhook delivery of an alert (sinks/notifiers.py records; sinks/clickhouse.py
-- DELIVERY_COLUMNS). url is stored with its credentials (robot key, access_token) redacted.
-- A plain MergeTree: every attempt series is a fact worth keeping, nothing to collapse; the
-- deduplication window still drops a record batch re-sent with the same token after a crash.
-- status: delivered | failed (given up: retries spent, 4xx, refused URL) | pending (a deadline,
-- alerts.batch_deadline_s or run_deadline_s, passed first; sent again later). An alert's state
-- is its latest row: argMax(status, ts) (sinks/alerting.py PENDING_ALERTS_SQL).
CREATE TABLE IF NOT EXISTS alert_deliveries
(
    alert_id       String,
    ts             DateTime64(3, 'UTC'),
    channel_format LowCardinality(String),
    url            String,
    status         LowCardinality(String),
    attempts       UInt8,
    http_status    UInt16,
    error          String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (alert_id, ts)
SETTINGS non_replicated_deduplication_window = 1000;
