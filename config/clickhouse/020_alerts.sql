-- One row per fired alert: engine/outcomes.py ALERT_COLUMNS.
-- alert_id is deterministic (the same evidence gives the same id and the same ts), so a
-- replayed alert lands in the same partition and the replacing merge keeps one row per id.
-- An alert is about one tenant's codes and dealers, so tenant is fixed by alert_id: leading
-- with it keeps the dedup key "one row per alert_id" and lets per-tenant queries use the index.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id     String,
    ts           DateTime64(3, 'UTC'),
    tenant       UInt16,
    alert        LowCardinality(String),
    subtype      LowCardinality(String),
    dealer_id    LowCardinality(String),
    manager      String,
    city         LowCardinality(String),
    code         String,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    count        UInt32,
    detail       String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, alert_id)
SETTINGS non_replicated_deduplication_window = 1000;
