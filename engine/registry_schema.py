"""The registry's one schema: its files, their columns, and how each column is typed.

Every shape of the registry derives from this table: the CSV loader reads the required columns
from it (``engine/registry.py``), the ClickHouse copy takes its table and column types from it
(``sinks/registry_tables.py``), and a test holds the DDL in ``config/clickhouse`` to it. A new
column is added here once; a column the DDL lacks then fails that test instead of vanishing on
the way through ClickHouse (as ``secret_env`` once did).
"""
from __future__ import annotations

from dataclasses import dataclass

#: column types: how the text of a CSV cell is held in a ClickHouse table and read back
INT_TYPES = {"uint8": "UInt8", "uint16": "UInt16", "uint32": "UInt32", "uint64": "UInt64"}
TEXT = "text"  # a string, as written
KIND = "kind"  # "unit" or "case"; an empty cell means "unit"
LIST = "list"  # ';'-separated values (a dealer's region prefixes); Array(String) in ClickHouse
LIST_SEPARATOR = ";"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a key of INT_TYPES, or TEXT, KIND or LIST
    required: bool = False  # a CSV file without this column in its header is refused

    @property
    def clickhouse(self) -> str:
        """The column's ClickHouse type (before LowCardinality, which the DDL may add)."""
        return INT_TYPES.get(self.type) or ("Array(String)" if self.type == LIST else "String")

    @property
    def dtype(self) -> str:
        """The numpy dtype of a column of this type in an insert batch."""
        return self.type if self.type in INT_TYPES else "O"


@dataclass(frozen=True)
class RegistryFile:
    file: str  # the CSV file name in the registry folder
    table: str  # its ClickHouse table
    columns: tuple[Column, ...]
    optional: bool = False  # a registry folder without this file loads as if it held no rows

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)


def _c(name: str, type_: str, required: bool = False) -> Column:
    return Column(name, type_, required)


BATCHES = RegistryFile("batches.csv", "registry_batches", (
    _c("tenant", "uint16", True), _c("batch", "uint32", True), _c("kind", KIND), _c("sku", TEXT, True),
    _c("product", TEXT), _c("activated", "uint8", True), _c("size", "uint64")))
DEALERS = RegistryFile("dealers.csv", "registry_dealers", (
    _c("dealer_id", TEXT, True), _c("tenant", "uint16", True), _c("name", TEXT), _c("channel", TEXT, True),
    _c("regions", LIST, True), _c("manager", TEXT), _c("webhook", TEXT), _c("secret_env", TEXT),
    # the webhook's message format (empty: guessed from its host) and the manager's chat user id
    _c("robot", TEXT), _c("manager_id", TEXT)))
SHIPMENTS = RegistryFile("shipments.csv", "registry_shipments", (
    _c("tenant", "uint16", True), _c("batch", "uint32", True), _c("kind", KIND), _c("serial_from", "uint32", True),
    _c("serial_to", "uint32", True), _c("dealer_id", TEXT, True), _c("shipped_at", TEXT)))
STORES = RegistryFile("stores.csv", "registry_stores", (
    _c("store_id", TEXT, True), _c("tenant", "uint16", True), _c("dealer_id", TEXT), _c("region", TEXT, True),
    _c("channel", TEXT, True)))
#: 空码赋值: serial ranges of a registered batch bound to a product, and activated, later than
#: printing; activated_at is an RFC 3339 time with a zone, kept as written (like shipped_at)
ACTIVATIONS = RegistryFile("activations.csv", "registry_activations", (
    _c("tenant", "uint16", True), _c("batch", "uint32", True), _c("kind", KIND), _c("serial_from", "uint32", True),
    _c("serial_to", "uint32", True), _c("sku", TEXT, True), _c("product", TEXT, True),
    _c("activated_at", TEXT, True)), optional=True)

#: 箱码关联: the units of a unit batch, by serial range, packed in one case (a case batch's serial)
PACKING = RegistryFile("packing.csv", "registry_packing", (
    _c("tenant", "uint16", True), _c("case_batch", "uint32", True), _c("case_serial", "uint32", True),
    _c("unit_batch", "uint32", True), _c("unit_serial_from", "uint32", True), _c("unit_serial_to", "uint32", True)),
    optional=True)

#: in the order the loader builds them (dealers before the files that name a dealer; batches
#: before activations and packing, which must name registered batches)
SCHEMA = (BATCHES, DEALERS, SHIPMENTS, STORES, ACTIVATIONS, PACKING)
FILES = tuple(f.file for f in SCHEMA)
