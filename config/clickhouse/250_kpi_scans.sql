-- Base views and live (per-minute) KPI views.
--
-- Conventions of every kpi_* view (config/clickhouse/2*.sql):
-- * no double counting: views over the outcome tables read them FINAL (one row per scan_id,
--   alert_id and awarded code, whatever was redelivered) and are exact; views over the
--   *_minute aggregates merge uniq states of scan_id (exact up to 65 536 distinct values per
--   merged state, about 1 % error beyond: see 210_scans_minute.sql).  Neither a redelivered
--   scan nor a batch written twice changes a KPI.
-- * a "valid" scan has verdict ok or repeat (a genuine, activated code); user KPIs count
--   consumers only (role = 'consumer', user_id not empty), store and dealer scans are trade.
-- * province / city are the first 2 / 4 digits of the scan place's adcode ('' = unknown).
-- * a "day" is a calendar day in China time (Asia/Shanghai), like the campaigns' default
--   utc_offset_minutes = 480.
-- * ratios are Float64 in [0, 1]; NULL where the denominator is unknown or zero.
-- * table aliases end in '_': ClickHouse stores a view's query with its tables qualified by
--   the database name, and an alias equal to that name (say `s` in a database `s`) would
--   capture `s.table`.

-- Every stored scan once (FINAL keeps the first delivery of a redelivered scan_id).
CREATE OR REPLACE VIEW v_scans AS
SELECT
    scan_id, ts, tenant, kind, batch, serial, code, user_id, role, region, channel, sku, dealer_id,
    verdict, diversion, campaign, prize_tier, prize_cents, draw, store_id, replay,
    substring(region, 1, 2) AS province,
    substring(region, 1, 4) AS city,
    toDate(ts, 'Asia/Shanghai') AS day,
    verdict IN ('ok', 'repeat') AS valid
FROM scan_events FINAL;

-- Valid scans by consumers: the population of the user KPIs.
CREATE OR REPLACE VIEW v_consumer_scans AS
SELECT *
FROM v_scans
WHERE valid AND role = 'consumer' AND user_id != '';

-- One row per consumer: when they first scanned a genuine code (ever, in this database).
CREATE OR REPLACE VIEW v_consumers AS
SELECT
    tenant,
    user_id,
    min(ts) AS first_ts,
    toDate(first_ts, 'Asia/Shanghai') AS first_day,
    max(ts) AS last_ts,
    count() AS scans,
    uniqExact(kind, batch, serial) AS codes
FROM v_consumer_scans
GROUP BY tenant, user_id;

-- scans_minute finalized: distinct scans, users and codes per minute and group.
-- (Re-aggregating `users` or `codes` over several groups by sum() over-counts; merge the
-- states of scans_minute instead, as the dashboards do.)
CREATE OR REPLACE VIEW kpi_scans_minute AS
SELECT
    tenant, minute, verdict, role, sku, province, city,
    uniqMerge(scans) AS scans,
    uniqMerge(users) AS users,
    uniqMerge(codes) AS codes
FROM scans_minute
GROUP BY tenant, minute, verdict, role, sku, province, city;

-- Engine throughput by event time: scans per minute and verdict.
CREATE OR REPLACE VIEW kpi_throughput_minute AS
SELECT tenant, minute, verdict, uniqMerge(scans) AS scans
FROM scans_minute
GROUP BY tenant, minute, verdict;

-- Engine throughput by write time, and write delay (230_ingest_minute.sql).
CREATE OR REPLACE VIEW kpi_ingest_minute AS
SELECT
    tenant, minute, verdict,
    sum(rows) AS rows,
    sum(replays) AS replays,
    quantilesTDigestMerge(0.5, 0.99)(delay_ms) AS delay_quantiles_ms,
    delay_quantiles_ms[1] / 1000 AS delay_p50_s,
    delay_quantiles_ms[2] / 1000 AS delay_p99_s,
    max(max_delay_ms) / 1000 AS delay_max_s
FROM ingest_minute
GROUP BY tenant, minute, verdict;

-- Real-time sales: a consumer's first scan of a genuine code (verdict ok) is a unit sold and
-- opened; per minute and per hour, by province / city / sku of the scan.
CREATE OR REPLACE VIEW kpi_sales_minute AS
SELECT tenant, minute, province, city, sku, uniqMerge(scans) AS sales
FROM scans_minute
WHERE verdict = 'ok' AND role = 'consumer'
GROUP BY tenant, minute, province, city, sku;

CREATE OR REPLACE VIEW kpi_sales_hour AS
SELECT tenant, toStartOfHour(minute) AS hour, province, city, sku, uniqMerge(scans) AS sales
FROM scans_minute
WHERE verdict = 'ok' AND role = 'consumer'
GROUP BY tenant, hour, province, city, sku;
