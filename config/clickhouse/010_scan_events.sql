-- One row per scan outcome: the columns of engine/outcomes.py SCAN_COLUMNS, in that order.
--
-- Replay safety has two layers:
-- * non_replicated_deduplication_window keeps the ids of the last inserted blocks (their
--   insert_deduplication_token, or a hash of their content when no token is given), so a
--   batch re-sent after a crash with the same token is dropped at INSERT time.  The id is
--   logged before the part is renamed into place, so a crash between the two leaves an id
--   without rows: sinks/clickhouse.py OutcomeTables checks a batch stored in doubt and
--   inserts the rows it lacks again, without deduplication;
-- * ReplacingMergeTree keyed on scan_id collapses whatever still got in twice (a replay cut
--   into different batches, a token older than the window) when parts merge, and at once for
--   queries that say FINAL.
-- A redelivered scan keeps its ts, so both copies fall into the same monthly partition: a
-- replacing merge only ever compares rows of one partition.
-- tenant leads the key because every dashboard filters on it; scan_id (unique per scan)
-- makes the key the dedup key.
CREATE TABLE IF NOT EXISTS scan_events
(
    scan_id     String,
    ts          DateTime64(3, 'UTC'),
    tenant      UInt16,
    kind        UInt8,
    batch       UInt32,
    serial      UInt32,
    code        String,
    user_id     String,
    role        LowCardinality(String),
    region      LowCardinality(String),
    channel     LowCardinality(String),
    sku         LowCardinality(String),
    dealer_id   LowCardinality(String),
    verdict     LowCardinality(String),
    diversion   LowCardinality(String),
    campaign    LowCardinality(String),
    prize_tier  LowCardinality(String),
    prize_cents UInt32,
    draw        LowCardinality(String),
    store_id    String,
    device_id   String,
    ip          String,
    replay      UInt8,
    reason      String,
    raw         String,
    -- the version of ReplacingMergeTree: the first delivery of a scan (replay = 0) is the row
    -- that stays, so neither a redelivered copy nor a conflicting event under the same scan_id
    -- (verdict conflict; it is kept in `alerts` as scan_id_conflict) hides the original outcome
    original    UInt8 MATERIALIZED replay = 0 AND verdict != 'conflict'
)
ENGINE = ReplacingMergeTree(original)
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, scan_id)
SETTINGS non_replicated_deduplication_window = 1000;
