-- Outbound scans (物流出库) and what became of the goods, per dealer they were shipped to.
--
-- An outbound scan is a valid scan (verdict ok or repeat) with role = 'warehouse'; its
-- dealer_id is the dealer the goods were shipped to (DESIGN.md: `warehouse` + `action: "ship"`
-- + `dealer_id`; scan_events has no `action` column, so every valid warehouse scan counts).
-- kind 0 is a unit code, kind 1 a case code (engine/codec.py KIND_UNIT, KIND_CASE).  Scans
-- are read through v_scans (scan_events FINAL: one row per scan_id, the first delivery's; a
-- redelivered copy or a conflicting event under a reused scan_id does not count twice), alerts
-- FINAL (one row per alert_id).

-- Every unit shipped by an outbound scan, once per (dealer, unit): unit codes shipped on their
-- own, and the units packed in each shipped case (registry_packing, 150_registry_packing.sql,
-- ranges expanded).  A case shipped twice to one dealer ships its units to it once; a unit
-- shipped to two dealers (a case re-routed, or a unit shipped on its own after its case) counts
-- for both.
CREATE OR REPLACE VIEW v_outbound_units AS
SELECT DISTINCT tenant, dealer_id, unit_batch, unit_serial
FROM
(
    SELECT tenant, toString(dealer_id) AS dealer_id, batch AS unit_batch, serial AS unit_serial
    FROM v_scans
    WHERE valid AND role = 'warehouse' AND kind = 0
    UNION ALL
    SELECT s_.tenant, s_.dealer_id, p_.unit_batch, arrayJoin(range(p_.unit_serial_from, p_.unit_serial_to + 1))
    FROM
    (
        SELECT DISTINCT tenant, toString(dealer_id) AS dealer_id, batch, serial
        FROM v_scans
        WHERE valid AND role = 'warehouse' AND kind = 1
    ) AS s_
    INNER JOIN
    (
        SELECT tenant, case_batch, case_serial, unit_batch, unit_serial_from, unit_serial_to
        FROM registry_packing FINAL
        WHERE unit_serial_to >= unit_serial_from
    ) AS p_ ON p_.tenant = s_.tenant AND p_.case_batch = s_.batch AND p_.case_serial = s_.serial
);

-- One row per (tenant, dealer_id) with an outbound scan, a diverted scan or a diversion alert,
-- with the dealer's name from the registry ('' when it lacks one):
-- * outbound_scans: valid warehouse scans naming the dealer (a case shipped twice: 2);
-- * cases: distinct case codes shipped to it;
-- * units: distinct units shipped to it (v_outbound_units: unit codes plus packed units);
-- * diverted_scans: scans judged against this dealer (scan_events.dealer_id) and found out of
--   its territory or channel (diversion not 'none'), whatever sent the goods there;
-- * case_alerts: diversion alerts about this dealer whose dealer came from an outbound scan
--   binding (detail 'sent_by' = 'outbound_scan', engine/diversion.py), not from shipments.csv.
-- All time (no time range): like the other "to date" views.
CREATE OR REPLACE VIEW outbound AS
SELECT
    u_.tenant AS tenant,
    u_.dealer_id AS dealer_id,
    ifNull(d_.name, '') AS dealer_name,
    sum(u_.scans) AS outbound_scans,
    sum(u_.cases) AS cases,
    sum(u_.units) AS units,
    sum(u_.diverted) AS diverted_scans,
    sum(u_.alerts) AS case_alerts
FROM
(
    SELECT tenant, toString(dealer_id) AS dealer_id, count() AS scans, uniqExactIf((batch, serial), kind = 1) AS cases,
           toUInt64(0) AS units, toUInt64(0) AS diverted, toUInt64(0) AS alerts
    FROM v_scans
    WHERE valid AND role = 'warehouse'
    GROUP BY tenant, dealer_id
    UNION ALL
    SELECT tenant, dealer_id, toUInt64(0), toUInt64(0), count(), toUInt64(0), toUInt64(0)
    FROM v_outbound_units
    GROUP BY tenant, dealer_id
    UNION ALL
    SELECT tenant, toString(dealer_id), toUInt64(0), toUInt64(0), toUInt64(0), count(), toUInt64(0)
    FROM v_scans
    WHERE diversion NOT IN ('none', '') AND dealer_id != ''
    GROUP BY tenant, dealer_id
    UNION ALL
    SELECT tenant, toString(dealer_id), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), count()
    FROM alerts FINAL
    WHERE alert = 'diversion' AND JSONExtractString(detail, 'sent_by') = 'outbound_scan'
    GROUP BY tenant, dealer_id
) AS u_
LEFT JOIN (SELECT tenant, dealer_id, name FROM registry_dealers FINAL) AS d_
    ON d_.tenant = u_.tenant AND d_.dealer_id = u_.dealer_id
GROUP BY tenant, dealer_id, dealer_name;
