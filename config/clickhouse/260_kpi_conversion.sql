-- Scan conversion rate (扫码转化率) = distinct codes scanned (verdict ok or repeat) / codes
-- issued.  Issued = registry_batches.size; per sku, province and day only activated batches
-- count as issued (a batch not yet activated is not on the market); per batch every batch is
-- listed with its `activated` flag.

-- Each code ever scanned validly, once, with its sku, dealer and first valid scan.
CREATE OR REPLACE VIEW v_scanned_codes AS
SELECT
    tenant, kind, batch, serial,
    argMin(sku, ts) AS sku,
    argMin(dealer_id, ts) AS dealer_id,
    min(ts) AS first_ts
FROM scan_events FINAL
WHERE verdict IN ('ok', 'repeat')
GROUP BY tenant, kind, batch, serial;

CREATE OR REPLACE VIEW kpi_conversion_batch AS
SELECT
    b_.tenant AS tenant, b_.batch AS batch, b_.kind AS kind, b_.sku AS sku, b_.product AS product,
    b_.activated AS activated,
    b_.size AS issued,
    ifNull(s_.codes, 0) AS scanned_codes,
    if(b_.size = 0, NULL, scanned_codes / b_.size) AS conversion_rate
FROM
(
    SELECT tenant, batch, toString(kind) AS kind, toString(sku) AS sku, product, activated, size
    FROM registry_batches FINAL
) AS b_
LEFT JOIN
(
    SELECT tenant, batch, if(kind = 1, 'case', 'unit') AS kind_name, count() AS codes
    FROM v_scanned_codes
    GROUP BY tenant, batch, kind_name
) AS s_ ON s_.tenant = b_.tenant AND s_.batch = b_.batch AND s_.kind_name = b_.kind;

CREATE OR REPLACE VIEW kpi_conversion_sku AS
SELECT
    tenant, sku,
    sum(b_.issued) AS issued,
    sum(b_.scanned_codes) AS scanned_codes,
    if(issued = 0, NULL, scanned_codes / issued) AS conversion_rate
FROM kpi_conversion_batch AS b_
WHERE b_.activated
GROUP BY tenant, sku;

-- Per dealer: codes of activated batches shipped to the dealer (registry_shipments ranges)
-- against those of its codes scanned anywhere.  A dealer's province is the one of the first
-- region it is authorised for (registry_dealers.regions[1]), so every shipped code is issued
-- to exactly one province; a dealer authorised in several provinces counts in its first.
CREATE OR REPLACE VIEW kpi_conversion_dealer AS
SELECT
    d_.tenant AS tenant, d_.dealer_id AS dealer_id, d_.name AS dealer_name, d_.province AS province,
    ifNull(sh_.codes, 0) AS issued,
    ifNull(sc_.codes, 0) AS scanned_codes,
    if(issued = 0, NULL, scanned_codes / issued) AS conversion_rate
FROM
(
    SELECT tenant, dealer_id, name, substring(regions[1], 1, 2) AS province
    FROM registry_dealers FINAL
) AS d_
LEFT JOIN
(
    SELECT s_.tenant AS tenant, s_.dealer_id AS dealer_id, sum(toUInt64(s_.serial_to - s_.serial_from + 1)) AS codes
    FROM registry_shipments AS s_ FINAL
    INNER JOIN (SELECT tenant, batch, toString(kind) AS kind FROM registry_batches FINAL WHERE activated) AS b_
        ON b_.tenant = s_.tenant AND b_.batch = s_.batch AND b_.kind = toString(s_.kind)
    WHERE s_.serial_to >= s_.serial_from
    GROUP BY s_.tenant, s_.dealer_id
) AS sh_ ON sh_.tenant = d_.tenant AND sh_.dealer_id = d_.dealer_id
LEFT JOIN
(
    SELECT tenant, toString(dealer_id) AS dealer, count() AS codes
    FROM v_scanned_codes
    WHERE dealer_id != ''
    GROUP BY tenant, dealer
) AS sc_ ON sc_.tenant = d_.tenant AND sc_.dealer = d_.dealer_id;

-- Per province of the dealers the codes were shipped to (see kpi_conversion_dealer).
CREATE OR REPLACE VIEW kpi_conversion_province AS
SELECT
    p_.tenant AS tenant, p_.province AS province, ifNull(g_.name, '') AS province_name,
    p_.issued_codes AS issued, p_.scanned AS scanned_codes,
    if(p_.issued_codes = 0, NULL, p_.scanned / p_.issued_codes) AS conversion_rate
FROM
(
    SELECT tenant, province, sum(issued) AS issued_codes, sum(scanned_codes) AS scanned
    FROM kpi_conversion_dealer
    GROUP BY tenant, province
) AS p_
LEFT JOIN (SELECT code, name FROM geo_regions WHERE level = 'province') AS g_ ON g_.code = p_.province;

-- Per day: codes scanned for the first time that day, cumulative, against all codes issued
-- (activated batches) of the tenant.  The running sum is computed before any filter on day,
-- so a dashboard's time range does not restart it.
CREATE OR REPLACE VIEW kpi_conversion_day AS
SELECT
    c_.tenant AS tenant, c_.day AS day, c_.new_codes AS new_codes,
    sum(c_.new_codes) OVER (PARTITION BY c_.tenant ORDER BY c_.day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        AS scanned_codes,
    ifNull(i_.codes, 0) AS issued,
    if(issued = 0, NULL, scanned_codes / issued) AS conversion_rate
FROM
(
    SELECT tenant, toDate(first_ts, 'Asia/Shanghai') AS day, count() AS new_codes
    FROM v_scanned_codes
    GROUP BY tenant, day
) AS c_
LEFT JOIN
(
    SELECT tenant, sum(size) AS codes FROM registry_batches FINAL WHERE activated GROUP BY tenant
) AS i_ ON i_.tenant = c_.tenant;
