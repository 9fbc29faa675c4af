-- Per-minute diverted scans (diversion != 'none': ok/repeat scans outside their dealer's
-- regions or channel) by tenant / dealer / diversion kind / role / province / city of the
-- scan place.  Same replay safety and the same uniq states as scans_minute
-- (210_scans_minute.sql): distinct scan_ids, identical re-inserts dropped before the MV.
CREATE TABLE IF NOT EXISTS diversion_minute
(
    tenant    UInt16,
    dealer_id LowCardinality(String),
    minute    DateTime('UTC'),  -- event time
    diversion LowCardinality(String),  -- region | channel | region+channel
    role      LowCardinality(String),
    province  LowCardinality(String),
    city      LowCardinality(String),
    scans     AggregateFunction(uniq, String),  -- scan_id
    users     AggregateFunction(uniq, String),
    codes     AggregateFunction(uniq, UInt8, UInt32, UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, dealer_id, minute, diversion, role, province, city)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS diversion_minute_mv TO diversion_minute AS
SELECT
    tenant,
    dealer_id,
    toStartOfMinute(ts) AS minute,
    diversion,
    role,
    substring(region, 1, 2) AS province,
    substring(region, 1, 4) AS city,
    uniqState(scan_id) AS scans,
    uniqStateIf(user_id, user_id != '') AS users,
    uniqState(kind, batch, serial) AS codes
FROM scan_events
WHERE diversion NOT IN ('none', '')
GROUP BY tenant, dealer_id, minute, diversion, role, province, city;
