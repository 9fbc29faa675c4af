-- stores.csv: a store's dealer, region (adcode) and channel.
CREATE TABLE IF NOT EXISTS registry_stores
(
    store_id  String,
    tenant    UInt16,
    dealer_id String,
    region    LowCardinality(String),
    channel   LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, store_id);
