-- One row per granted prize: engine/outcomes.py AWARD_COLUMNS.
-- The key is the code's identity within a campaign and who is paid, (tenant, campaign, kind,
-- batch, serial, beneficiary): a code pays each beneficiary (consumer, trade, guide) at most
-- once, so two rows under one key are the same award and collapse.  payout_key is derived from
-- the same fields (engine/outcomes.py payout_keys); a table made before it existed is carried
-- over by sinks/migrations.py.
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
    prize_cents UInt32,
    beneficiary LowCardinality(String),
    payout_key  String
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, campaign, kind, batch, serial, beneficiary)
SETTINGS non_replicated_deduplication_window = 1000;
