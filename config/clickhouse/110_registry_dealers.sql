-- dealers.csv; regions are the authorized adcode prefixes (the CSV's ';'-separated list).
CREATE TABLE IF NOT EXISTS registry_dealers
(
    dealer_id String,
    tenant    UInt16,
    name      String,
    channel   LowCardinality(String),
    regions   Array(String),
    manager   String,
    webhook   String
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, dealer_id);
