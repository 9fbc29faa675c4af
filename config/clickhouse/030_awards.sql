-- One row per granted prize: engine/outcomes.py AWARD_COLUMNS.
-- The key is the code's identity within a campaign, (tenant, campaign, kind, batch, serial):
-- a code is paid at most once, so two rows for one code are the same award and collapse.
-- Deliberately not partitioned: a replacing merge only compares rows of one partition, and a
-- monthly split would let the same code's award sit in two months uncollapsed. Awards are
-- only the winning scans, a small table.
CREATE TABLE IF NOT EXISTS awards
(
    scan_id     String,
    ts          DateTime64(3, 'UTC'),
    tenant      UInt16,
    campaign    LowCardinality(String),
    kind        UInt8,
    batch       UInt32,
    serial      UInt32,
    user_id     String,
    prize_tier  LowCardinality(String),
    prize_cents UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, campaign, kind, batch, serial)
SETTINGS non_replicated_deduplication_window = 1000;
