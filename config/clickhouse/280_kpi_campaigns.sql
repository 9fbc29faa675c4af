-- Red-packet spend against budget, prizes by tier and customer acquisition cost.
-- Spend = the awards table FINAL (one row per awarded code and beneficiary: a prize given back
-- to a replayed scan is not paid twice).  A campaign's budget pays prizes AND shopping guides'
-- commissions (DESIGN.md, guide_cents), so spend counts both; a commission is an award row with
-- beneficiary = 'guide' (prize_tier 'commission', user_id the guide, scan_id the consumer's
-- winning scan that earned it), and is never a prize: `prizes` and `winners` count the other
-- rows only (consumers' prizes, and the trade's 开箱有礼 prizes, beneficiary 'trade').
-- Budgets and periods come from `campaigns` (200_campaigns.sql), which the engine fills from
-- its configuration; a campaign with awards but no campaigns row still shows its spend, with
-- configured = 0 and no budget.

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

-- Per campaign: spend (prizes and commissions) vs budget, and customer acquisition cost
-- (CAC) = spend / new users, new users = consumers whose first valid scan ever falls in the
-- campaign's [start, end).  prizes / winners: prize rows and distinct prize winners (no
-- commission); commission_cents: the part of spent_cents paid to guides.
CREATE OR REPLACE VIEW kpi_campaign_spend AS
SELECT
    v_.tenant AS tenant, v_.campaign AS campaign, v_.configured AS configured,
    v_.start AS start, v_.end AS end, v_.budget_cents AS budget_cents,
    ifNull(a_.cents, 0) AS spent_cents,
    ifNull(a_.prizes, 0) AS prizes,
    ifNull(a_.winners, 0) AS winners,
    ifNull(a_.commission_cents, 0) AS commission_cents,
    toInt64(v_.budget_cents) - toInt64(spent_cents) AS remaining_cents,
    if(v_.budget_cents = 0, NULL, spent_cents / v_.budget_cents) AS spent_share,
    ifNull(n_.users, 0) AS new_users,
    if(new_users = 0, NULL, spent_cents / new_users) AS cac_cents
FROM v_campaigns AS v_
LEFT JOIN
(
    SELECT tenant, toString(campaign) AS campaign, sum(prize_cents) AS cents,
           countIf(beneficiary != 'guide') AS prizes, uniqExactIf(user_id, beneficiary != 'guide') AS winners,
           sumIf(prize_cents, beneficiary = 'guide') AS commission_cents
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

-- Burn-down: spend (prizes and commissions) per campaign and day, running total and budget
-- left after the day; prizes: prizes awarded that day (commissions not counted).  Each
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
               toUInt64(prize_cents) AS cents, toUInt64(beneficiary != 'guide') AS one
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
-- row per scan, so a prize given back to a redelivered scan counts once), each with the
-- commission its prize earned a guide (the award row with beneficiary = 'guide' and the same
-- tenant, campaign and scan_id; 0 when none): the commission falls on the winning scan's day,
-- batch, sku and place.  spent_cents = prizes + commissions, commission_cents the commissions'
-- part; prizes / winners count winning scans and their scanners (never a guide).  The 'all'
-- totals equal kpi_campaign_spend's spent_cents, prizes, winners and commission_cents (which read
-- the awards table) as long as every award's winning scan is stored in scan_events.
CREATE OR REPLACE VIEW kpi_spend AS
SELECT
    tenant, campaign, dim_.1 AS dimension, dim_.2 AS key,
    sum(prize_) + sum(commission_) AS spent_cents,
    count() AS prizes,
    uniqExact(user_id) AS winners,
    sum(commission_) AS commission_cents
FROM
(
    SELECT s_.tenant AS tenant, toString(s_.campaign) AS campaign, s_.user_id AS user_id,
           toUInt64(s_.prize_cents) AS prize_, toUInt64(ifNull(g_.cents, 0)) AS commission_,
           s_.day AS day, s_.batch AS batch, s_.sku AS sku, s_.province AS province, s_.city AS city
    FROM v_scans AS s_
    LEFT JOIN
    (
        SELECT tenant, scan_id, toString(campaign) AS campaign, sum(prize_cents) AS cents
        FROM awards FINAL
        WHERE beneficiary = 'guide'
        GROUP BY tenant, scan_id, campaign
    ) AS g_ ON g_.tenant = s_.tenant AND g_.scan_id = s_.scan_id AND g_.campaign = toString(s_.campaign)
    WHERE s_.draw = 'won'
)
ARRAY JOIN [('all', ''), ('day', toString(day)), ('batch', toString(batch)), ('sku', toString(sku)),
            ('province', toString(province)), ('city', toString(city))] AS dim_
GROUP BY tenant, campaign, dimension, key;

-- Prizes by tier: awarded count and cents per (campaign, tier), with the tier's configured
-- amount and stock when the campaigns row lists its tiers (stock_left NULL otherwise).
-- Guides' commissions (beneficiary = 'guide') are the pseudo-tier 'commission', whatever their
-- prize_tier says: prizes = commissions paid, winners = guides paid, no tier amount or stock.
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
    SELECT tenant, toString(campaign), if(beneficiary = 'guide', 'commission', toString(prize_tier)) FROM awards FINAL
) AS k_
LEFT JOIN
(
    SELECT tenant, toString(campaign) AS campaign, if(beneficiary = 'guide', 'commission', toString(prize_tier)) AS tier,
           count() AS prizes, sum(prize_cents) AS cents, uniqExact(user_id) AS winners
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

-- CAC per day: all prizes and commissions paid that day (every campaign of the tenant) /
-- consumers whose first valid scan ever was that day.
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
