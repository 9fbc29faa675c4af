-- dealers.csv; regions are the authorized adcode prefixes (the CSV's ';'-separated list).
CREATE TABLE IF NOT EXISTS registry_dealers
(
    dealer_id String,
    tenant    UInt16,
    name      String,
    channel   LowCardinality(String),
    regions   Array(String),
    manager   String,
    webhook   String,
    -- the name of the variable that holds the webhook's signing secret (never the secret):
    -- without it a worker reading this table would send every signed webhook unsigned
    secret_env String,
    -- the robot's message format (generic, wecom, dingtalk, feishu; '' = guessed from the
    -- webhook's host) and the manager's user id on that platform (what a mention needs)
    robot      LowCardinality(String),
    manager_id String
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, dealer_id);

ALTER TABLE registry_dealers ADD COLUMN IF NOT EXISTS secret_env String;
ALTER TABLE registry_dealers ADD COLUMN IF NOT EXISTS robot LowCardinality(String);
ALTER TABLE registry_dealers ADD COLUMN IF NOT EXISTS manager_id String;
