-- Red-packet spend against budget, prizes by tier and customer acquisition cost.
-- Spend = the awards table FINAL (one row per awarded code: a prize given back to a replayed
-- scan is not paid twice).  Budgets and periods come from `campaigns` (200_campaigns.sql),
-- which the engine fills from its configuration; a campaign with awards but no campaigns row
-- still shows its spend, with configured = 0 and no budget.

CREATE OR REPLACE VIEW v_campaigns AS
SELECT
    k_.tenant AS tenant,
    k_.campaign AS campaign,
    c_.id != '' AS configured,
    c_.budget_cents AS budget_cents,
    c_.start AS start,
    c_.end AS end
FROM
(
    SELECT tenant, id AS campaign FROM campaigns FINAL
    UNION DISTINCT
    SELECT tenant, toString(campaign) AS campaign FROM awards FINAL
) AS k_
LEFT JOIN (SELECT id, tenant, budget_cents, start, end FROM campaigns FINAL) AS c_
    ON c_.tenant = k_.tenant AND c_.id = k_.campaign;

-- Per campaign: spend vs budget, and customer acquisition cost (CAC) = spend / new users,
-- new users = consumers whose first valid scan ever falls in the campaign's [start, end).
CREATE OR REPLACE VIEW kpi_campaign_spend AS
SELECT
    v_.tenant AS tenant, v_.campaign AS campaign, v_.configured AS configured,
    v_.start AS start, v_.end AS end, v_.budget_cents AS budget_cents,
    ifNull(a_.cents, 0) AS spent_cents,
    ifNull(a_.prizes, 0) AS prizes,
    ifNull(a_.winners, 0) AS winners,
    toInt64(v_.budget_cents) - toInt64(spent_cents) AS remaining_cents,
    if(v_.budget_cents = 0, NULL, spent_cents / v_.budget_cents) AS spent_share,
    ifNull(n_.users, 0) AS new_users,
    if(new_users = 0, NULL, spent_cents / new_users) AS cac_cents
FROM v_campaigns AS v_
LEFT JOIN
(
    SELECT tenant, toString(campaign) AS campaign, sum(prize_cents) AS cents, count() AS prizes,
           uniqExact(user_id) AS winners
    FROM awards FINAL
    GROUP BY tenant, campaign
) AS a_ ON a_.tenant = v_.tenant AND a_.campaign = v_.campaign
LEFT JOIN
(
    SELECT c_.tenant AS tenant, c_.id AS campaign, countIf(u_.first_ts >= c_.start AND u_.first_ts < c_.end) AS users
    FROM v_consumers AS u_
    INNER JOIN (SELECT tenant, id, start, end FROM campaigns FINAL) AS c_ ON c_.tenant = u_.tenant
    GROUP BY c_.tenant, c_.id
) AS n_ ON n_.tenant = v_.tenant AND n_.campaign = v_.campaign;

-- Burn-down: spend per campaign and day, running total and budget left after the day.  Each
-- campaign also has a row on its start day (spend 0 when nothing was paid that day), so the
-- curve starts at the full budget.
CREATE OR REPLACE VIEW kpi_campaign_spend_day AS
SELECT
    d_.tenant AS tenant, d_.campaign AS campaign, d_.day AS day,
    d_.cents AS spent_cents,
    d_.awarded AS prizes,
    sum(d_.cents) OVER (PARTITION BY d_.tenant, d_.campaign ORDER BY d_.day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        AS cumulative_cents,
    v_.budget_cents AS budget_cents,
    toInt64(v_.budget_cents) - toInt64(cumulative_cents) AS remaining_cents
FROM
(
    SELECT tenant, campaign, day, sum(cents) AS cents, sum(one) AS awarded
    FROM
    (
        SELECT tenant, toString(campaign) AS campaign, toDate(ts, 'Asia/Shanghai') AS day,
               toUInt64(prize_cents) AS cents, toUInt64(1) AS one
        FROM awards FINAL
        UNION ALL
        SELECT tenant, id, toDate(start, 'Asia/Shanghai'), toUInt64(0), toUInt64(0)
        FROM campaigns FINAL
    )
    GROUP BY tenant, campaign, day
) AS d_
LEFT JOIN v_campaigns AS v_ ON v_.tenant = d_.tenant AND v_.campaign = d_.campaign;

-- Spend per campaign and dimension ('all', 'day', 'batch', 'sku', 'province', 'city' as in
-- 270_kpi_users.sql), from the winning scans themselves (scan_events FINAL, draw = 'won': one
-- row per scan, so a prize given back to a redelivered scan counts once).  Its totals equal
-- kpi_campaign_spend's, which reads the awards table.
CREATE OR REPLACE VIEW kpi_spend AS
SELECT
    tenant, toString(campaign) AS campaign, dim_.1 AS dimension, dim_.2 AS key,
    sum(prize_cents) AS spent_cents,
    count() AS prizes,
    uniqExact(user_id) AS winners
FROM v_scans
ARRAY JOIN [('all', ''), ('day', toString(day)), ('batch', toString(batch)), ('sku', toString(sku)),
            ('province', toString(province)), ('city', toString(city))] AS dim_
WHERE draw = 'won'
GROUP BY tenant, campaign, dimension, key;

-- Prizes by tier: awarded count and cents per (campaign, tier), with the tier's configured
-- amount and stock when the campaigns row lists its tiers (stock_left NULL otherwise).
CREATE OR REPLACE VIEW kpi_prizes_tier AS
SELECT
    k_.tenant AS tenant, k_.campaign AS campaign, k_.prize_tier AS prize_tier,
    ifNull(a_.prizes, 0) AS prizes,
    ifNull(a_.cents, 0) AS spent_cents,
    ifNull(a_.winners, 0) AS winners,
    ifNull(t_.cents, 0) AS tier_cents,
    ifNull(t_.stock, 0) AS stock,
    if(t_.listed, toInt64(stock) - toInt64(prizes), NULL) AS stock_left
FROM
(
    SELECT tenant, id AS campaign, tiers[i_] AS prize_tier
    FROM campaigns FINAL
    ARRAY JOIN arrayEnumerate(tiers) AS i_
    UNION DISTINCT
    SELECT tenant, toString(campaign), toString(prize_tier) FROM awards FINAL
) AS k_
LEFT JOIN
(
    SELECT tenant, toString(campaign) AS campaign, toString(prize_tier) AS tier, count() AS prizes,
           sum(prize_cents) AS cents, uniqExact(user_id) AS winners
    FROM awards FINAL
    GROUP BY tenant, campaign, tier
) AS a_ ON a_.tenant = k_.tenant AND a_.campaign = k_.campaign AND a_.tier = k_.prize_tier
LEFT JOIN
(
    SELECT tenant, id AS campaign, tiers[i_] AS tier, tier_cents[i_] AS cents, tier_stock[i_] AS stock,
           true AS listed
    FROM campaigns FINAL
    ARRAY JOIN arrayEnumerate(tiers) AS i_
) AS t_ ON t_.tenant = k_.tenant AND t_.campaign = k_.campaign AND t_.tier = k_.prize_tier;

-- CAC per day: all prizes paid that day (every campaign of the tenant) / consumers whose
-- first valid scan ever was that day.
CREATE OR REPLACE VIEW kpi_cac_day AS
SELECT
    tenant, day,
    sum(cents) AS spent_cents,
    sum(users) AS new_users,
    if(new_users = 0, NULL, spent_cents / new_users) AS cac_cents
FROM
(
    SELECT tenant, toDate(ts, 'Asia/Shanghai') AS day, toUInt64(prize_cents) AS cents, toUInt64(0) AS users
    FROM awards FINAL
    UNION ALL
    SELECT tenant, first_day, toUInt64(0), toUInt64(1)
    FROM v_consumers
)
GROUP BY tenant, day;
