-- Campaigns of the configuration ([[campaigns]] in config/*.toml): budgets and periods live in
-- the configuration, not in the outcome tables, so the spend-vs-budget and acquisition-cost
-- views (280_kpi_campaigns.sql) join against this table.  The engine writes one row per
-- configured campaign when it starts (never the seed); ReplacingMergeTree keyed by
-- (tenant, id) with `updated` as version keeps the latest row of each campaign, so writing
-- the same configuration at every start is harmless.  Read it with FINAL.
-- The tier arrays are parallel (tiers[i] pays tier_cents[i], at most tier_stock[i] times);
-- they may be left empty, the views then show no stock.
CREATE TABLE IF NOT EXISTS campaigns
(
    id           String,
    tenant       UInt16,
    budget_cents UInt64,
    start        DateTime64(3, 'UTC'),  -- inclusive
    end          DateTime64(3, 'UTC'),  -- exclusive
    tiers        Array(String) DEFAULT [],
    tier_cents   Array(UInt32) DEFAULT [],
    tier_stock   Array(UInt64) DEFAULT [],
    updated      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated)
ORDER BY (tenant, id);
