-- Registry mirrors (DESIGN.md "Reference data"), for dashboards to join against. Reloading a
-- CSV re-inserts every row; ReplacingMergeTree without a version keeps the last loaded row
-- per key. Rows deleted from a CSV are not removed by a reload.

-- batches.csv; kind says which codes the row is about (DESIGN.md: unit unless it says case).
CREATE TABLE IF NOT EXISTS registry_batches
(
    tenant    UInt16,
    batch     UInt32,
    kind      LowCardinality(String) DEFAULT 'unit',
    sku       LowCardinality(String),
    product   String,
    activated UInt8,
    size      UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, batch, kind);
