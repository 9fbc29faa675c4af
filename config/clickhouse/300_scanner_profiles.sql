-- Scanner profiles: one row per (tenant, user_id), kept up to date by a materialized view
-- at insert time, read through the view `scanner_profiles` (the ...Merge functions finalise
-- the states).  Who scans (user, roles), what they do (scans, first scans, forged and
-- malformed scans), what they buy (codes, SKUs, prizes) and where (home province and city).
--
-- Which rows count: scans with a user_id, first deliveries only (replay = 0: a redelivered
-- scan's copy says replay = 1 and is left out).  An identical re-insert (same dedup token, or
-- same content without one) never reaches the view (see 210_scans_minute.sql).  Caveat: a
-- batch re-processed after a crash and cut differently carries a new token; in embedded mode,
-- where the state store died with the process, its copies say replay = 0 again and add to the
-- plain counts (scans, valid_scans, first_scans, forged/malformed/invalid).  The distinct
-- counts (codes, SKUs) and the prizes (a set of won codes, each paid once ever) are exact
-- whatever is re-inserted.  For exact counts at any moment use scan_events FINAL, as the
-- segments do (engine/segments.py).
--
-- tenant is the code's tenant; a malformed code or an invalid event names none and is stored
-- with tenant 0, so a user's malformed scans are in their tenant-0 profile.
--
-- No partitions: a user's states must merge into one row whatever month they scanned in.
CREATE TABLE IF NOT EXISTS scanner_profiles_agg
(
    tenant           UInt16,
    user_id          String,
    first_scan       AggregateFunction(min, DateTime64(3, 'UTC')),  -- any verdict
    last_scan        AggregateFunction(max, DateTime64(3, 'UTC')),
    first_valid_scan AggregateFunction(min, DateTime64(3, 'UTC')),  -- verdict ok or repeat
    last_valid_scan  AggregateFunction(max, DateTime64(3, 'UTC')),
    scans            SimpleAggregateFunction(sum, UInt64),
    valid_scans      SimpleAggregateFunction(sum, UInt64),  -- ok + repeat
    first_scans      SimpleAggregateFunction(sum, UInt64),  -- ok: the user scanned the code first
    forged_scans     SimpleAggregateFunction(sum, UInt64),  -- bad_mac
    malformed_scans  SimpleAggregateFunction(sum, UInt64),
    invalid_scans    SimpleAggregateFunction(sum, UInt64),  -- every verdict but ok and repeat
    codes            AggregateFunction(uniqExact, UInt8, UInt32, UInt32),  -- valid: (kind, batch, serial)
    skus             AggregateFunction(uniqExact, String),  -- of valid scans, '' left out
    -- valid scans per city (first 4 adcode digits of the scan place; a 2-digit place stays 2)
    places           SimpleAggregateFunction(sumMap, Tuple(Array(String), Array(UInt64))),
    won              AggregateFunction(groupUniqArray, Tuple(UInt8, UInt32, UInt32, UInt32)),  -- (kind, batch, serial, prize_cents)
    roles            SimpleAggregateFunction(groupUniqArrayArray, Array(String))
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, user_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- No POPULATE: scans stored before this view existed are not profiled.  Backfill once with
-- this SELECT as `INSERT INTO scanner_profiles_agg SELECT ...` over the earlier time range
-- only (the plain counts would add up twice over a range the view already holds).
CREATE MATERIALIZED VIEW IF NOT EXISTS scanner_profiles_mv TO scanner_profiles_agg AS
SELECT
    tenant,
    user_id,
    minState(ts) AS first_scan,
    maxState(ts) AS last_scan,
    minStateIf(ts, verdict IN ('ok', 'repeat')) AS first_valid_scan,
    maxStateIf(ts, verdict IN ('ok', 'repeat')) AS last_valid_scan,
    count() AS scans,
    countIf(verdict IN ('ok', 'repeat')) AS valid_scans,
    countIf(verdict = 'ok') AS first_scans,
    countIf(verdict = 'bad_mac') AS forged_scans,
    countIf(verdict = 'malformed') AS malformed_scans,
    countIf(verdict NOT IN ('ok', 'repeat')) AS invalid_scans,
    uniqExactStateIf(kind, batch, serial, verdict IN ('ok', 'repeat')) AS codes,
    uniqExactStateIf(toString(sku), verdict IN ('ok', 'repeat') AND sku != '') AS skus,
    sumMapIf([toString(substring(region, 1, 4))], [toUInt64(1)], verdict IN ('ok', 'repeat') AND region != '') AS places,
    groupUniqArrayStateIf((kind, batch, serial, prize_cents), draw = 'won') AS won,
    groupUniqArray(toString(role)) AS roles
FROM scan_events
WHERE replay = 0 AND user_id != ''
GROUP BY tenant, user_id;

-- The profile, finalised.  Times are NULL for a user without valid scans.
-- home_province: the province (2 adcode digits) of most valid scans with a known place, ties
-- to the smaller code; home_city: the city (4 digits) of most of those scans within the home
-- province (so the two always agree), ties likewise.  cities: every city seen (sorted),
-- regions_seen: how many.  prizes / prize_cents: prizes won and money received.  The shares
-- are of all the user's scans.
CREATE OR REPLACE VIEW scanner_profiles AS
SELECT
    tenant,
    user_id,
    first_scan,
    last_scan,
    if(valid_scans > 0, first_valid_scan_, NULL) AS first_valid_scan,
    if(valid_scans > 0, last_valid_scan_, NULL) AS last_valid_scan,
    scans,
    valid_scans,
    first_scans,
    codes,
    skus,
    home_province,
    home_city,
    cities,
    length(cities) AS regions_seen,
    length(won_) AS prizes,
    arraySum(x -> toUInt64(x.4), won_) AS prize_cents,
    roles,
    forged_scans,
    malformed_scans,
    invalid_scans,
    forged_scans / scans AS forged_share,
    malformed_scans / scans AS malformed_share,
    invalid_scans / scans AS invalid_share
FROM
(
    SELECT
        tenant,
        user_id,
        minMerge(first_scan) AS first_scan,
        maxMerge(last_scan) AS last_scan,
        minMerge(first_valid_scan) AS first_valid_scan_,
        maxMerge(last_valid_scan) AS last_valid_scan_,
        sum(scans) AS scans,
        sum(valid_scans) AS valid_scans,
        sum(first_scans) AS first_scans,
        sum(forged_scans) AS forged_scans,
        sum(malformed_scans) AS malformed_scans,
        sum(invalid_scans) AS invalid_scans,
        uniqExactMerge(codes) AS codes,
        uniqExactMerge(skus) AS skus,
        sumMap(places) AS places_,
        groupUniqArrayMerge(won) AS won_,
        arraySort(groupUniqArrayArray(roles)) AS roles,
        arrayMap(k -> substring(k, 1, 2), places_.1) AS province_of_,
        arraySort(x -> (-toInt64(x.2), x.1),
                  arrayMap(p -> (p, arraySum(arrayFilter((n, q) -> q = p, places_.2, province_of_))),
                           arrayDistinct(province_of_)))[1].1 AS home_province,
        arraySort(x -> (-toInt64(x.2), x.1),
                  arrayFilter(x -> length(x.1) = 4 AND startsWith(x.1, home_province),
                              arrayZip(places_.1, places_.2)))[1].1 AS home_city,
        arraySort(arrayFilter(k -> length(k) = 4, places_.1)) AS cities
    FROM scanner_profiles_agg
    GROUP BY tenant, user_id
);
