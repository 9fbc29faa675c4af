"""Copies the registry (batches, dealers, shipments, stores, activations, packing) into ClickHouse's registry tables.

Dashboards join scans to the registry there (scan conversion rate needs each batch's size).
The registry files are the source of truth, so each copy replaces the tables' contents.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scanstream.engine.registry import Registry
from scanstream.engine.registry_schema import INT_TYPES, KIND, LIST, LIST_SEPARATOR, SCHEMA, Column, RegistryFile
from scanstream.sinks.clickhouse import ClickHouseSink


def _value(row: dict[str, str], column: Column):
    text = row.get(column.name, "")
    if column.type == LIST:
        return [p.strip() for p in text.split(LIST_SEPARATOR) if p.strip()]
    if column.type == KIND:
        return text.lower() or "unit"
    if column.type in INT_TYPES:
        return int(text or 0)
    return text


def insert_spec(f: RegistryFile) -> tuple[tuple[str, str, str], ...]:
    """The insert spec of a registry file's table: (name, numpy dtype, ClickHouse type) per column."""
    return tuple((c.name, c.dtype, c.clickhouse) for c in f.columns)


def publish_registry(sink: ClickHouseSink, registry: Registry) -> dict[str, int]:
    """Replace the registry tables' contents with ``registry``; rows written per table."""
    written = {}
    for f in SCHEMA:
        rows = registry.rows.get(f.file, [])
        batch = {}
        for column in f.columns:
            values = [_value(r, column) for r in rows]
            if column.dtype == "O":
                arr = np.empty(len(values), dtype=object)
                for i, v in enumerate(values):  # element-wise: a list value must stay one element
                    arr[i] = v
            else:
                arr = np.array(values, dtype=column.dtype)
            batch[column.name] = arr
        sink.client.command(f"TRUNCATE TABLE IF EXISTS {f.table}")
        written[f.table] = sink.insert(f.table, batch, insert_spec(f))
    return written


def fingerprint(sink: ClickHouseSink) -> tuple:
    """A cheap value that changes whenever a registry table's contents change."""
    parts = " UNION ALL ".join(
        f"SELECT '{f.table}' AS t, count() AS n, sum(cityHash64(*)) AS h FROM {f.table} FINAL" for f in SCHEMA)
    _, rows = sink.query(f"SELECT t, n, h FROM ({parts}) ORDER BY t")
    return tuple(rows)


def read_registry(sink: ClickHouseSink) -> Registry:
    """The registry as the ClickHouse registry tables hold it (for workers without the CSV files)."""
    given = {}
    for f in SCHEMA:
        names = [c.name for c in f.columns]
        _, rows = sink.query(f"SELECT {', '.join(names)} FROM {f.table} FINAL")
        given[f.file] = [(i + 2, {name: LIST_SEPARATOR.join(v) if isinstance(v, list) else str(v)
                                  for name, v in zip(names, row)}) for i, row in enumerate(rows)]
    return Registry.from_rows(*(given[f.file] for f in SCHEMA), directory=Path(f"clickhouse:{sink.client.database}"))


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
