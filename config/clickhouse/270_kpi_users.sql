-- User KPIs over valid consumer scans (v_consumer_scans), each per dimension: one view row per
-- (tenant, dimension, key) where dimension is
--   'all' (key ''), 'day' (key 'YYYY-MM-DD', China time), 'batch' (key the batch number),
--   'sku', 'province' / 'city' (key the adcode prefix of the scan place, '' = unknown) or
--   'campaign' (key the campaign id; scans outside every campaign are left out).
-- A user or code counts once per key, so the rows of one dimension do not add up to 'all'.

-- Activity participation: distinct consumers who scanned a genuine code; their scans and
-- codes; lottery_players = those among them who took part in a draw (draw is won, no_prize,
-- out_of_stock, budget or cap: an eligible scan, whatever it paid).
CREATE OR REPLACE VIEW kpi_participation AS
SELECT
    tenant,
    dim_.1 AS dimension,
    dim_.2 AS key,
    uniqExact(user_id) AS participants,
    count() AS scans,
    uniqExact(kind, batch, serial) AS codes,
    uniqExactIf(user_id, draw IN ('won', 'no_prize', 'out_of_stock', 'budget', 'cap')) AS lottery_players
FROM v_consumer_scans
ARRAY JOIN [('all', ''), ('day', toString(day)), ('batch', toString(batch)), ('sku', toString(sku)),
            ('province', toString(province)), ('city', toString(city)), ('campaign', toString(campaign))] AS dim_
WHERE NOT (dim_.1 = 'campaign' AND dim_.2 = '')
GROUP BY tenant, dimension, key;

-- Repeat-scan rate (重复扫码率) = consumers who scanned more than one distinct code / consumers
-- who scanned, within the key (a user with two codes on one day counts for that day; two
-- codes on two days count for neither day but for 'all').
CREATE OR REPLACE VIEW kpi_repeat_scan_rate AS
SELECT
    tenant, dimension, key,
    count() AS users,
    countIf(codes > 1) AS repeat_users,
    repeat_users / users AS repeat_scan_rate
FROM
(
    SELECT tenant, dim_.1 AS dimension, dim_.2 AS key, user_id, uniqExact(kind, batch, serial) AS codes
    FROM v_consumer_scans
    ARRAY JOIN [('all', ''), ('day', toString(day)), ('batch', toString(batch)), ('sku', toString(sku)),
                ('province', toString(province)), ('city', toString(city)), ('campaign', toString(campaign))] AS dim_
    WHERE NOT (dim_.1 = 'campaign' AND dim_.2 = '')
    GROUP BY tenant, dimension, key, user_id
)
GROUP BY tenant, dimension, key;

-- New vs returning consumers per day: new = their first valid scan ever was that day;
-- returning = scanned that day and before.
CREATE OR REPLACE VIEW kpi_new_returning_day AS
SELECT
    s_.tenant AS tenant,
    s_.day AS day,
    count() AS users,
    countIf(u_.first_day = s_.day) AS new_users,
    users - new_users AS returning_users,
    new_users / users AS new_share
FROM (SELECT DISTINCT tenant, day, user_id FROM v_consumer_scans) AS s_
INNER JOIN v_consumers AS u_ ON u_.tenant = s_.tenant AND u_.user_id = s_.user_id
GROUP BY s_.tenant, s_.day;
