-- shipments.csv: serial ranges [serial_from, serial_to] of a batch shipped to a dealer.
-- A range is identified by where it starts; re-shipping the same range to another dealer
-- replaces the row.
CREATE TABLE IF NOT EXISTS registry_shipments
(
    tenant      UInt16,
    batch       UInt32,
    kind        LowCardinality(String) DEFAULT 'unit',
    serial_from UInt32,
    serial_to   UInt32,
    dealer_id   String,
    shipped_at  String
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, batch, kind, serial_from);
