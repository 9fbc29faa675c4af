-- Fraud hot spots: counterfeits (verdict bad_mac: a code whose MAC does not verify, forged or
-- mistyped), cloned codes (alerts of alert = 'cloned_code') and diversion (窜货: alerts of
-- alert = 'diversion' and the diverted scans themselves), by province / city of the scan, with
-- names and map positions from geo_regions; reused scan ids (alerts of alert = 'scan_id_conflict')
-- per tenant.  All time: the dashboards read the same sources under their time range.

CREATE OR REPLACE VIEW kpi_counterfeit_province AS
SELECT
    s_.tenant AS tenant, s_.province AS province, ifNull(g_.name, '') AS province_name,
    g_.lat AS lat, g_.lon AS lon,
    s_.bad_scans AS bad_mac_scans, s_.bad_users AS users, s_.first_seen AS first_seen, s_.last_seen AS last_seen
FROM
(
    SELECT tenant, province, uniqMerge(scans) AS bad_scans, uniqMerge(users) AS bad_users,
           min(minute) AS first_seen, max(minute) AS last_seen
    FROM scans_minute
    WHERE verdict = 'bad_mac'
    GROUP BY tenant, province
) AS s_
LEFT JOIN (SELECT code, name, lat, lon FROM geo_regions WHERE level = 'province') AS g_ ON g_.code = s_.province;

CREATE OR REPLACE VIEW kpi_counterfeit_city AS
SELECT
    s_.tenant AS tenant, s_.province AS province, s_.city AS city, ifNull(g_.name, '') AS city_name,
    g_.lat AS lat, g_.lon AS lon,
    s_.bad_scans AS bad_mac_scans, s_.bad_users AS users, s_.first_seen AS first_seen, s_.last_seen AS last_seen
FROM
(
    SELECT tenant, province, city, uniqMerge(scans) AS bad_scans, uniqMerge(users) AS bad_users,
           min(minute) AS first_seen, max(minute) AS last_seen
    FROM scans_minute
    WHERE verdict = 'bad_mac'
    GROUP BY tenant, province, city
) AS s_
LEFT JOIN (SELECT code, name, lat, lon FROM geo_regions WHERE level = 'city') AS g_ ON g_.code = s_.city;

-- Cloned codes: alerts per city of the scan that fired them (one alert per code and window).
CREATE OR REPLACE VIEW kpi_cloned_hotspots AS
SELECT
    a_.tenant AS tenant, a_.province AS province, ifNull(p_.name, '') AS province_name,
    a_.city AS city, ifNull(c_.name, '') AS city_name, c_.lat AS lat, c_.lon AS lon,
    a_.alerts AS alerts, a_.codes AS codes, a_.first_ts AS first_ts, a_.last_ts AS last_ts
FROM
(
    SELECT tenant, substring(city, 1, 2) AS province, toString(city) AS city, count() AS alerts,
           uniqExact(code) AS codes, min(ts) AS first_ts, max(ts) AS last_ts
    FROM alerts FINAL
    WHERE alert = 'cloned_code'
    GROUP BY tenant, province, city
) AS a_
LEFT JOIN (SELECT code, name FROM geo_regions WHERE level = 'province') AS p_ ON p_.code = a_.province
LEFT JOIN (SELECT code, name, lat, lon FROM geo_regions WHERE level = 'city') AS c_ ON c_.code = a_.city;

-- Diversion by dealer and region: alerts (one per dealer, kind, city and window) and the
-- diverted scans, codes and users behind them, per dealer / kind / province / city.
CREATE OR REPLACE VIEW kpi_diversion AS
SELECT
    u_.tenant AS tenant, u_.dealer_id AS dealer_id, ifNull(d_.name, '') AS dealer_name,
    ifNull(d_.manager, '') AS manager, u_.diversion AS diversion,
    u_.province AS province, u_.city AS city, ifNull(g_.name, '') AS city_name,
    sum(u_.alerts) AS alerts, sum(u_.scans) AS diverted_scans, sum(u_.codes) AS diverted_codes
FROM
(
    SELECT tenant, toString(dealer_id) AS dealer_id, toString(subtype) AS diversion,
           substring(city, 1, 2) AS province, toString(city) AS city,
           count() AS alerts, toUInt64(0) AS scans, toUInt64(0) AS codes
    FROM alerts FINAL
    WHERE alert = 'diversion'
    GROUP BY tenant, dealer_id, diversion, province, city
    UNION ALL
    SELECT tenant, toString(dealer_id), toString(diversion), toString(province), toString(city),
           toUInt64(0), uniqMerge(scans), uniqMerge(codes)
    FROM diversion_minute
    GROUP BY tenant, dealer_id, diversion, province, city
) AS u_
LEFT JOIN (SELECT tenant, dealer_id, name, manager FROM registry_dealers FINAL) AS d_
    ON d_.tenant = u_.tenant AND d_.dealer_id = u_.dealer_id
LEFT JOIN (SELECT code, name FROM geo_regions WHERE level = 'city') AS g_ ON g_.code = u_.city
GROUP BY tenant, dealer_id, dealer_name, manager, diversion, province, city, city_name;

-- Reused scan ids: a scan_id that came back with another event (verdict conflict: nothing claimed
-- or paid), per tenant and subtype (same_user: the first user again with a changed event;
-- other_user: someone else's request id).  Read from `alerts`, one row per conflicting event
-- (engine/conflicts.py), because the conflicting scan's row in scan_events shares
-- (tenant, scan_id) with the original and is collapsed by the replacing merge.  users: distinct
-- non-empty first_user and user of the alerts' detail.  tenant 0: the code did not decode.
CREATE OR REPLACE VIEW kpi_scan_id_conflicts AS
SELECT
    tenant, toString(subtype) AS subtype, count() AS alerts,
    uniqExact(JSONExtractString(detail, 'scan_id')) AS scan_ids,
    uniqExactArray(arrayFilter(u_ -> u_ != '', [JSONExtractString(detail, 'first_user'),
                                                 JSONExtractString(detail, 'user')])) AS users,
    min(ts) AS first_ts, max(ts) AS last_ts
FROM alerts FINAL
WHERE alert = 'scan_id_conflict'
GROUP BY tenant, subtype;
