-- activations.csv (空码赋值): serial ranges [serial_from, serial_to] of a registered batch bound to
-- a product and activated from activated_at on (an RFC 3339 time, as written in the CSV).
-- A range is identified by where it starts; activating the same range again replaces the row.
CREATE TABLE IF NOT EXISTS registry_activations
(
    tenant       UInt16,
    batch        UInt32,
    kind         LowCardinality(String) DEFAULT 'unit',
    serial_from  UInt32,
    serial_to    UInt32,
    sku          LowCardinality(String),
    product      String,
    activated_at String
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, batch, kind, serial_from);
