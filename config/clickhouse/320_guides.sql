-- Shopping guides (导购): what each guide sold, what became of it, and what they were paid.
--
-- A guide's sale is a scan with role = 'guide' (DESIGN.md: `guide` + `action: "sell"`).
-- scan_events has no `action` column, so every valid scan (verdict ok or repeat) of a guide
-- counts as a sale scanned, whatever action the event named.  The scans are read through
-- v_scans (scan_events FINAL): one row per scan_id, the first delivery's (a redelivered copy
-- or a conflicting event under a reused scan_id collapses into it, and a conflict is not a
-- valid verdict anyway); a scan whose first write was lost counts through its redelivered
-- copy, as in every KPI view (250_kpi_scans.sql).
-- Commissions are the award rows with beneficiary = 'guide' (awards FINAL: one per code and
-- campaign, whatever was written twice): user_id is the guide, scan_id the consumer's winning
-- scan that earned it.

-- Each unit code a guide scanned validly, once, with its guide: the FIRST guide to scan it
-- (smallest ts, then scan_id), and when (sold_ts).  A later guide's scan of the same unit is
-- still that later guide's sale, but the unit stays the first guide's.  Unit codes only
-- (kind 0, engine/codec.py KIND_UNIT): a guide sells bottles, not cases.
CREATE OR REPLACE VIEW v_guide_units AS
SELECT
    tenant, kind, batch, serial,
    argMin(user_id, (ts, scan_id)) AS guide_id,
    min(ts) AS sold_ts
FROM v_scans
WHERE valid AND role = 'guide' AND kind = 0
GROUP BY tenant, kind, batch, serial;

-- One row per (tenant, guide user_id) seen in a valid guide scan or a commission:
-- * sales: the guide's valid scans (ok or repeat);
-- * units: distinct unit codes the guide is the first guide of (v_guide_units);
-- * consumer_scans: consumers' first scans (verdict ok) of those units at or after the
--   guide's first scan of the unit: units sold and then opened; a consumer scan before the
--   sale is not the guide's doing and does not count;
-- * commissions / commission_cents: award rows with beneficiary = 'guide' paid to the guide,
--   and their sum (paid from the campaigns' budgets: kpi_campaign_spend counts them in
--   spent_cents).
-- All time (no time range): like the other "to date" views.
CREATE OR REPLACE VIEW guides AS
SELECT
    tenant,
    user_id,
    sum(sales_) AS sales,
    sum(units_) AS units,
    sum(opened_) AS consumer_scans,
    sum(commissions_) AS commissions,
    sum(cents_) AS commission_cents
FROM
(
    SELECT tenant, toString(user_id) AS user_id, count() AS sales_, toUInt64(0) AS units_,
           toUInt64(0) AS opened_, toUInt64(0) AS commissions_, toUInt64(0) AS cents_
    FROM v_scans
    WHERE valid AND role = 'guide'
    GROUP BY tenant, user_id
    UNION ALL
    SELECT u_.tenant, toString(u_.guide_id), toUInt64(0), count(),
           sum(toUInt64(arrayCount(t_ -> t_ >= u_.sold_ts, c_.opened_at))), toUInt64(0), toUInt64(0)
    FROM v_guide_units AS u_
    LEFT JOIN
    (
        SELECT tenant, kind, batch, serial, groupArray(ts) AS opened_at
        FROM v_consumer_scans
        WHERE verdict = 'ok'
        GROUP BY tenant, kind, batch, serial
    ) AS c_ ON c_.tenant = u_.tenant AND c_.kind = u_.kind AND c_.batch = u_.batch AND c_.serial = u_.serial
    GROUP BY u_.tenant, u_.guide_id
    UNION ALL
    SELECT tenant, toString(user_id), toUInt64(0), toUInt64(0), toUInt64(0), count(), sum(toUInt64(prize_cents))
    FROM awards FINAL
    WHERE beneficiary = 'guide'
    GROUP BY tenant, user_id
)
GROUP BY tenant, user_id;
