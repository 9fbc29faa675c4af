-- packing.csv (箱码关联): the units [unit_serial_from, unit_serial_to] of a unit batch packed in one
-- case (case_batch, case_serial).  A range is identified by where it starts; packing it again
-- replaces the row.
CREATE TABLE IF NOT EXISTS registry_packing
(
    tenant           UInt16,
    case_batch       UInt32,
    case_serial      UInt32,
    unit_batch       UInt32,
    unit_serial_from UInt32,
    unit_serial_to   UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, unit_batch, unit_serial_from);
