"""Copies the registry (batches, dealers, shipments, stores) into ClickHouse's registry tables.

Dashboards join scans to the registry there (scan conversion rate needs each batch's size).
The registry files are the source of truth, so each copy replaces the tables' contents.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scanstream.engine.registry import Registry
from scanstream.sinks.clickhouse import ClickHouseSink

#: (table, registry file, columns as (name, numpy dtype, ClickHouse type))
TABLES = (
    ("registry_batches", "batches.csv", (
        ("tenant", "uint16", "UInt16"), ("batch", "uint32", "UInt32"), ("kind", "O", "String"),
        ("sku", "O", "String"), ("product", "O", "String"), ("activated", "uint8", "UInt8"),
        ("size", "uint64", "UInt64"))),
    ("registry_dealers", "dealers.csv", (
        ("dealer_id", "O", "String"), ("tenant", "uint16", "UInt16"), ("name", "O", "String"),
        ("channel", "O", "String"), ("regions", "O", "Array(String)"), ("manager", "O", "String"),
        ("webhook", "O", "String"), ("secret_env", "O", "String"))),
    ("registry_shipments", "shipments.csv", (
        ("tenant", "uint16", "UInt16"), ("batch", "uint32", "UInt32"), ("kind", "O", "String"),
        ("serial_from", "uint32", "UInt32"), ("serial_to", "uint32", "UInt32"), ("dealer_id", "O", "String"),
        ("shipped_at", "O", "String"))),
    ("registry_stores", "stores.csv", (
        ("store_id", "O", "String"), ("tenant", "uint16", "UInt16"), ("dealer_id", "O", "String"),
        ("region", "O", "String"), ("channel", "O", "String"))),
)


def _value(row: dict[str, str], name: str, dtype: str):
    text = row.get(name, "")
    if name == "regions":
        return [p.strip() for p in text.split(";") if p.strip()]
    if name == "kind":
        return text.lower() or "unit"
    if dtype != "O":
        return int(text or 0)
    return text


def publish_registry(sink: ClickHouseSink, registry: Registry) -> dict[str, int]:
    """Replace the registry tables' contents with ``registry``; rows written per table."""
    written = {}
    for table, file, spec in TABLES:
        rows = registry.rows.get(file, [])
        batch = {}
        for name, dtype, _ in spec:
            values = [_value(r, name, dtype) for r in rows]
            if dtype == "O":
                arr = np.empty(len(values), dtype=object)
                for i, v in enumerate(values):  # element-wise: a list value must stay one element
                    arr[i] = v
            else:
                arr = np.array(values, dtype=dtype)
            batch[name] = arr
        sink.client.command(f"TRUNCATE TABLE IF EXISTS {table}")
        written[table] = sink.insert(table, batch, spec)
    return written


def fingerprint(sink: ClickHouseSink) -> tuple:
    """A cheap value that changes whenever a registry table's contents change."""
    parts = " UNION ALL ".join(
        f"SELECT '{table}' AS t, count() AS n, sum(cityHash64(*)) AS h FROM {table} FINAL" for table, _, _ in TABLES)
    _, rows = sink.query(f"SELECT t, n, h FROM ({parts}) ORDER BY t")
    return tuple(rows)


def read_registry(sink: ClickHouseSink) -> Registry:
    """The registry as the ClickHouse registry tables hold it (for workers without the CSV files)."""
    given = {}
    for table, file, spec in TABLES:
        names = [name for name, _, _ in spec]
        _, rows = sink.query(f"SELECT {', '.join(names)} FROM {table} FINAL")
        given[file] = [(i + 2, {name: ";".join(v) if isinstance(v, list) else str(v) for name, v in zip(names, row)})
                       for i, row in enumerate(rows)]
    return Registry.from_rows(given["batches.csv"], given["dealers.csv"], given["shipments.csv"],
                              given["stores.csv"], Path(f"clickhouse:{sink.client.database}"))


#: The configured campaigns, for the spend-against-budget views (the budget lives in the config).
CAMPAIGN_SPEC = (
    ("id", "O", "String"), ("tenant", "uint16", "UInt16"), ("budget_cents", "uint64", "UInt64"),
    ("start", "int64", "DateTime64(3, 'UTC')"), ("end", "int64", "DateTime64(3, 'UTC')"),
    ("tiers", "O", "Array(String)"), ("tier_cents", "O", "Array(UInt32)"), ("tier_stock", "O", "Array(UInt64)"),
)


def publish_campaigns(sink: ClickHouseSink, campaigns) -> int:
    """Write each configured campaign to the ``campaigns`` table (the newest row per id wins)."""
    campaigns = list(campaigns)
    batch = {name: np.empty(len(campaigns), dtype=object) if dtype == "O" else np.zeros(len(campaigns), dtype)
             for name, dtype, _ in CAMPAIGN_SPEC}
    for i, c in enumerate(campaigns):  # element by element: list values must stay one element each
        batch["id"][i] = c.id
        batch["tenant"][i] = c.tenant
        batch["budget_cents"][i] = c.budget_cents
        batch["start"][i] = c.start_ms
        batch["end"][i] = c.end_ms
        batch["tiers"][i] = [t.name for t in c.tiers]
        batch["tier_cents"][i] = [t.cents for t in c.tiers]
        batch["tier_stock"][i] = [t.stock for t in c.tiers]
    return sink.insert("campaigns", batch, CAMPAIGN_SPEC)
