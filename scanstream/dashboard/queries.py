"""The SQL of the built-in dashboard's panels (``panels.py`` draws them): one module constant
``*_SQL`` per query, over the base tables with ``FINAL``, bound parameters only
(``{tenant:Int32}``, ``{tz:String}``, ...), plus the filters and the name lookups they share
(regions from the view ``geo_regions``, dealers from ``registry_dealers``: see "Names" below).  Kept apart from the
figure code so that the queries can be read, reviewed and replaced (by a ``SELECT`` from a KPI
view with the same columns) on their own.  The trade's two tables (shopping guides, outbound
shipments) read their views, ``guides`` and ``outbound`` (config/clickhouse/320-330), which
Grafana reads too: their definitions (first guide of a unit, units packed in a shipped case) are
long enough to be kept in one place.
"""
from __future__ import annotations

#: Tenant filter of every query; tenant -1 means all tenants.
TENANT = "({tenant:Int32} < 0 OR tenant = {tenant:Int32})"
#: Valid scans: the code verified and its batch is registered and activated.
VALID = "verdict IN ('ok', 'repeat')"
#: Scans by consumers who can be counted as people.
CONSUMER = "role = 'consumer' AND user_id != ''"
#: Events that carry a time (an invalid event is stored with ts = 0).
TIMED = "ts > 0"

# Names.  Every name a panel shows is joined in its query, from ClickHouse: provinces and
# prefecture-level cities from the view ``geo_regions`` (config/clickhouse/240_geo_regions.sql),
# dealers from ``registry_dealers``.  Why in the query and not in Python after it: Grafana's
# panels and the KPI views take their names from the same view and table, so a code has one
# name on every dashboard, and a dashboard that only reads ClickHouse (a reader beside running
# workers) needs nothing else.  ``geo_regions`` holds the names of cpca's adcodes.csv, the table
# engine/geo.py reads; tests/test_dashboard_names.py holds the view to ``engine.geo.division_names``
# (the one reader of that table).  A name the tables lack comes back '' and the panel shows the code.

#: Province names by 2-digit adcode prefix; city names by 4-digit prefix.
PROVINCE_NAMES = "(SELECT code, name FROM geo_regions WHERE level = 'province')"
CITY_NAMES = "(SELECT code, name FROM geo_regions WHERE level = 'city')"
#: Dealer names of the tenants in view (a dealer id is one tenant's).
DEALER_NAMES = f"(SELECT tenant, dealer_id, name FROM registry_dealers FINAL WHERE {TENANT})"
#: Rows of the latest-alerts list: a bound, so the page stays small however many alerts there are.
LATEST_ALERTS_LIMIT = 50

OVERVIEW_SQL = f"""
SELECT count() AS scans,
       countIf({VALID}) AS valid_scans,
       uniqExactIf(user_id, {CONSUMER} AND {VALID}) AS scanners,
       uniqExactIf((tenant, kind, batch, serial), {VALID}) AS codes,
       countIf(verdict = 'bad_mac') AS counterfeit_scans,
       countIf(diversion != 'none') AS diverted_scans,
       toUnixTimestamp64Milli(maxIf(ts, {TIMED})) AS latest_ms
FROM scan_events FINAL
WHERE {TENANT}
"""
#: Prizes (consumers' and the trade's) and everything paid from the budgets: prizes and shopping guides'
#: commissions (award rows with beneficiary 'guide', never a prize).
OVERVIEW_AWARDS_SQL = f"""
SELECT countIf(beneficiary != 'guide') AS prizes, sum(prize_cents) AS cents,
       countIf(beneficiary = 'guide') AS commissions, sumIf(prize_cents, beneficiary = 'guide') AS commission_cents
FROM awards FINAL
WHERE {TENANT}
"""
OVERVIEW_ALERTS_SQL = f"SELECT alert, count() AS alerts FROM alerts FINAL WHERE {TENANT} GROUP BY alert ORDER BY alert"

#: First and last event time (no FINAL: a duplicate row does not move min or max).
SPAN_SQL = f"""
SELECT toUnixTimestamp64Milli(min(ts)) AS first_ms, toUnixTimestamp64Milli(max(ts)) AS last_ms
FROM scan_events WHERE {TENANT} AND {TIMED}
"""

SCANS_PER_MINUTE_SQL = f"""
SELECT toString(toStartOfInterval(toDateTime(ts, {{tz:String}}), INTERVAL {{bucket_min:UInt32}} MINUTE)) AS minute,
       verdict,
       count() AS scans
FROM scan_events FINAL
WHERE {TENANT} AND ts >= fromUnixTimestamp64Milli({{since_ms:Int64}}) AND ts <= fromUnixTimestamp64Milli({{until_ms:Int64}})
GROUP BY minute, verdict
ORDER BY minute, verdict
"""

VERDICT_MIX_SQL = f"""
SELECT verdict, count() AS scans
FROM scan_events FINAL
WHERE {TENANT}
GROUP BY verdict
ORDER BY scans DESC, verdict
"""

#: Codes scanned (distinct valid codes) and issued (registry_batches.size) per batch and kind.
CONVERSION_BATCH_SQL = f"""
SELECT b.tenant AS tenant, b.batch AS batch, b.kind AS kind, b.sku AS sku, b.product AS product,
       b.activated AS activated, b.size AS issued, s.codes AS scanned
FROM (SELECT tenant, batch, kind, sku, product, activated, size FROM registry_batches FINAL WHERE {TENANT}) AS b
LEFT JOIN (
    SELECT tenant, batch, if(kind = 1, 'case', 'unit') AS kind_name, uniqExact(serial) AS codes
    FROM scan_events FINAL
    WHERE {TENANT} AND {VALID}
    GROUP BY tenant, batch, kind_name
) AS s ON s.tenant = b.tenant AND s.batch = b.batch AND s.kind_name = b.kind
ORDER BY tenant, batch, kind
"""

CONVERSION_SKU_SQL = f"""
SELECT sku, sum(issued) AS issued, sum(scanned) AS scanned
FROM ({CONVERSION_BATCH_SQL})
GROUP BY sku
ORDER BY sku
"""

#: Codes shipped to the dealers of a province (a dealer's province: its first authorized
#: region) and how many of those codes were scanned.
CONVERSION_PROVINCE_SQL = f"""
SELECT d.province AS province, ifNull(any(g.name), '') AS province_name,
       sum(sh.shipped) AS issued, sum(sc.codes) AS scanned
FROM (SELECT tenant, dealer_id, substring(regions[1], 1, 2) AS province
      FROM registry_dealers FINAL WHERE {TENANT}) AS d
LEFT JOIN (SELECT tenant, dealer_id, sum(toUInt64(serial_to) - serial_from + 1) AS shipped
           FROM registry_shipments FINAL WHERE {TENANT} GROUP BY tenant, dealer_id) AS sh
       ON sh.tenant = d.tenant AND sh.dealer_id = d.dealer_id
LEFT JOIN (SELECT tenant, dealer_id, uniqExact((kind, batch, serial)) AS codes
           FROM scan_events FINAL WHERE {TENANT} AND {VALID} AND dealer_id != '' GROUP BY tenant, dealer_id) AS sc
       ON sc.tenant = d.tenant AND sc.dealer_id = d.dealer_id
LEFT JOIN {PROVINCE_NAMES} AS g ON g.code = d.province
GROUP BY province
ORDER BY province
"""

#: Per time bucket: scanners whose first valid code falls in it, and scanners whose second
#: distinct code does (from then on they count as repeat scanners).
REPEAT_RATE_SQL = f"""
WITH per_user AS (
    SELECT user_id, groupArraySorted(2)(first_ts) AS firsts
    FROM (SELECT user_id, tenant, kind, batch, serial, min(ts) AS first_ts
          FROM scan_events FINAL
          WHERE {TENANT} AND {VALID} AND {CONSUMER} AND {TIMED}
          GROUP BY user_id, tenant, kind, batch, serial)
    GROUP BY user_id
)
SELECT bucket, sum(first) AS scanners, sum(second) AS repeaters
FROM (
    SELECT toString(toStartOfInterval(toDateTime(firsts[1], {{tz:String}}), __BUCKET__)) AS bucket, 1 AS first, 0 AS second
    FROM per_user
    UNION ALL
    SELECT toString(toStartOfInterval(toDateTime(firsts[2], {{tz:String}}), __BUCKET__)) AS bucket, 0 AS first, 1 AS second
    FROM per_user WHERE length(firsts) > 1
)
GROUP BY bucket
ORDER BY bucket
"""

NEW_RETURNING_SQL = f"""
WITH scans AS (
    SELECT user_id, toStartOfInterval(toDateTime(ts, {{tz:String}}), __BUCKET__) AS bucket
    FROM scan_events FINAL
    WHERE {TENANT} AND {VALID} AND {CONSUMER} AND {TIMED}
),
firsts AS (SELECT user_id, min(bucket) AS first_bucket FROM scans GROUP BY user_id)
SELECT toString(s.bucket) AS bucket,
       uniqExactIf(s.user_id, s.bucket = f.first_bucket) AS new_scanners,
       uniqExactIf(s.user_id, s.bucket > f.first_bucket) AS returning_scanners
FROM scans AS s
INNER JOIN firsts AS f ON f.user_id = s.user_id
GROUP BY s.bucket
ORDER BY s.bucket
"""

#: Paid per campaign and time bucket: prizes (a count), and cents of prizes AND guides' commissions
#: (both paid from the budget), with the commissions' part.
SPEND_SQL = f"""
SELECT campaign, toString(toStartOfInterval(toDateTime(ts, {{tz:String}}), __BUCKET__)) AS bucket,
       toString(toStartOfInterval(toDateTime(ts, {{tz:String}}), __BUCKET__) + __BUCKET__) AS bucket_end,
       countIf(beneficiary != 'guide') AS prizes, sum(prize_cents) AS cents,
       sumIf(prize_cents, beneficiary = 'guide') AS commission_cents
FROM awards FINAL
WHERE {TENANT}
GROUP BY campaign, bucket, bucket_end
ORDER BY campaign, bucket
"""

#: Prizes only: a guide's commission has no tier or stock (the guides panel shows commissions).
PRIZES_SQL = f"""
SELECT campaign, prize_tier, count() AS prizes, sum(prize_cents) AS cents
FROM awards FINAL
WHERE {TENANT} AND beneficiary != 'guide'
GROUP BY campaign, prize_tier
ORDER BY campaign, prize_tier
"""

#: Codes of cloned-code alerts, by the identity of the scan that raised each alert.
_CLONED_CODES = f"""
SELECT tenant, kind, batch, serial FROM scan_events FINAL
WHERE scan_id IN (SELECT JSONExtractString(detail, 'scan_id') FROM alerts FINAL
                  WHERE {TENANT} AND alert = 'cloned_code')
"""

FRAUD_SQL = f"""
SELECT s.province AS province, ifNull(g.name, '') AS province_name, s.counterfeit_scans AS counterfeit_scans,
       s.cloned_code_scans AS cloned_code_scans
FROM (
    SELECT substring(region, 1, 2) AS province,
           countIf(verdict = 'bad_mac') AS counterfeit_scans,
           countIf({VALID} AND (tenant, kind, batch, serial) IN ({_CLONED_CODES})) AS cloned_code_scans
    FROM scan_events FINAL
    WHERE {TENANT} AND region != '' AND verdict IN ('bad_mac', 'ok', 'repeat')
    GROUP BY province
    HAVING counterfeit_scans > 0 OR cloned_code_scans > 0
) AS s
LEFT JOIN {PROVINCE_NAMES} AS g ON g.code = s.province
ORDER BY province
"""

FRAUD_ALERTS_SQL = f"""
SELECT a.province AS province, ifNull(g.name, '') AS province_name, a.cloned_code_alerts AS cloned_code_alerts
FROM (SELECT substring(city, 1, 2) AS province, count() AS cloned_code_alerts
      FROM alerts FINAL
      WHERE {TENANT} AND alert = 'cloned_code'
      GROUP BY province) AS a
LEFT JOIN {PROVINCE_NAMES} AS g ON g.code = a.province
ORDER BY province
"""

#: Reused scan ids (scan_id_conflict alerts, one per conflicting event) by subtype: same_user or
#: other_user.  Read from alerts: the conflicting scan's row in scan_events shares (tenant,
#: scan_id) with the original and is collapsed into it by FINAL.
FRAUD_CONFLICTS_SQL = f"""
SELECT subtype, count() AS conflict_alerts
FROM alerts FINAL
WHERE {TENANT} AND alert = 'scan_id_conflict'
GROUP BY subtype
ORDER BY subtype
"""

DIVERSION_DEALER_SQL = f"""
SELECT s.dealer_id AS dealer_id, ifNull(d.name, '') AS dealer_name, s.diversion AS diversion, s.scans AS scans
FROM (SELECT tenant, dealer_id, diversion, count() AS scans
      FROM scan_events FINAL
      WHERE {TENANT} AND diversion != 'none'
      GROUP BY tenant, dealer_id, diversion) AS s
LEFT JOIN {DEALER_NAMES} AS d ON d.tenant = s.tenant AND d.dealer_id = s.dealer_id
ORDER BY dealer_id, diversion
"""

DIVERSION_ALERTS_SQL = f"""
SELECT dealer_id, count() AS alerts
FROM alerts FINAL
WHERE {TENANT} AND alert = 'diversion'
GROUP BY dealer_id
ORDER BY dealer_id
"""

#: Out-of-territory scans (region diversion) by dealer and the province they were scanned in.
DIVERSION_REGION_SQL = f"""
SELECT s.dealer_id AS dealer_id, ifNull(d.name, '') AS dealer_name, s.province AS province,
       ifNull(g.name, '') AS province_name, s.scans AS scans
FROM (SELECT tenant, dealer_id, substring(region, 1, 2) AS province, count() AS scans
      FROM scan_events FINAL
      WHERE {TENANT} AND diversion IN ('region', 'region+channel')
      GROUP BY tenant, dealer_id, province) AS s
LEFT JOIN {DEALER_NAMES} AS d ON d.tenant = s.tenant AND d.dealer_id = s.dealer_id
LEFT JOIN {PROVINCE_NAMES} AS g ON g.code = s.province
ORDER BY dealer_id, province
"""

#: An alert's delivery state is its latest delivery row, a final answer (delivered, failed)
#: winning a tie with pending: the ordering sinks/alerting.py (PENDING_ALERTS_SQL) decides by.
_DELIVERY_ORDER = "(ts, status != 'pending')"

#: The newest alerts (event time of the scan that fired each), at most ``limit`` of them, with
#: names and their webhook delivery: latest status (see _DELIVERY_ORDER; '' = never sent:
#: webhooks off, or no webhook for the dealer), delivery rows, attempts in all, the latest
#: HTTP status and error, when the latest delivery ended.
LATEST_ALERTS_SQL = f"""
WITH latest AS (
    SELECT alert_id, ts, tenant, alert, subtype, dealer_id, manager, city, code, count
    FROM alerts FINAL
    WHERE {TENANT}
    ORDER BY ts DESC, alert_id DESC
    LIMIT {{limit:UInt32}}
)
SELECT toUnixTimestamp64Milli(a.ts) AS ts_ms, toString(toDateTime(a.ts, {{tz:String}})) AS time,
       a.alert_id AS alert_id, a.tenant AS tenant, toString(a.alert) AS alert, toString(a.subtype) AS subtype,
       toString(a.dealer_id) AS dealer_id, ifNull(d.name, '') AS dealer_name, a.manager AS manager,
       toString(a.city) AS city, ifNull(c.name, '') AS city_name,
       substring(toString(a.city), 1, 2) AS province, ifNull(p.name, '') AS province_name,
       a.code AS code, a.count AS count,
       ifNull(v.last_status, '') AS delivery, ifNull(v.records, 0) AS deliveries,
       ifNull(v.all_attempts, 0) AS attempts, ifNull(v.last_http_status, 0) AS http_status,
       ifNull(v.last_error, '') AS error, ifNull(v.last_ms, 0) AS delivery_ms
FROM latest AS a
LEFT JOIN {DEALER_NAMES} AS d ON d.tenant = a.tenant AND d.dealer_id = toString(a.dealer_id)
LEFT JOIN {CITY_NAMES} AS c ON c.code = toString(a.city)
LEFT JOIN {PROVINCE_NAMES} AS p ON p.code = substring(toString(a.city), 1, 2)
LEFT JOIN (
    SELECT alert_id, toString(argMax(status, {_DELIVERY_ORDER})) AS last_status, count() AS records,
           sum(attempts) AS all_attempts, argMax(http_status, {_DELIVERY_ORDER}) AS last_http_status,
           argMax(error, {_DELIVERY_ORDER}) AS last_error, toUnixTimestamp64Milli(max(ts)) AS last_ms
    FROM alert_deliveries
    WHERE alert_id IN (SELECT alert_id FROM latest)
    GROUP BY alert_id
) AS v ON v.alert_id = a.alert_id
ORDER BY a.ts DESC, a.alert_id DESC
"""

#: Rows of the guides and outbound tables: the top guides by commission, the top dealers by outbound scans.
GUIDES_LIMIT = 20
OUTBOUND_LIMIT = 20

#: Shopping guides (the view ``guides``, config/clickhouse/320_guides.sql): sales (valid guide scans),
#: units they were the first guide of, consumers' first scans of those units after the sale, commissions.
GUIDES_SQL = f"""
SELECT tenant, user_id, sales, units, consumer_scans, commissions, commission_cents
FROM guides
WHERE {TENANT}
ORDER BY commission_cents DESC, sales DESC, tenant, user_id
LIMIT {{limit:UInt32}}
"""
GUIDES_TOTALS_SQL = f"""
SELECT count() AS guides, sum(sales) AS sales, sum(units) AS units, sum(consumer_scans) AS consumer_scans,
       sum(commissions) AS commissions, sum(commission_cents) AS commission_cents
FROM guides
WHERE {TENANT}
"""

#: Outbound shipments per dealer the goods were sent to (the view ``outbound``,
#: config/clickhouse/330_outbound.sql), named by the registry.
OUTBOUND_SQL = f"""
SELECT tenant, toString(dealer_id) AS dealer_id, dealer_name, outbound_scans, cases, units, diverted_scans,
       case_alerts
FROM outbound
WHERE {TENANT}
ORDER BY outbound_scans DESC, tenant, dealer_id
LIMIT {{limit:UInt32}}
"""
OUTBOUND_TOTALS_SQL = f"""
SELECT count() AS listed, countIf(o.outbound_scans > 0) AS dealers, sum(o.outbound_scans) AS outbound_scans,
       sum(o.cases) AS cases, sum(o.units) AS units, sum(o.case_alerts) AS case_alerts
FROM outbound AS o
WHERE {TENANT}
"""

#: Rows written so far, sampled by the dashboard for the throughput panel (no FINAL: every
#: written row counts, and count() of a MergeTree is read from part metadata).
ROWS_WRITTEN_SQL = "SELECT count() FROM scan_events"
