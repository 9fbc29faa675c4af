"""Changes of an outcome table's contract that the DDL files cannot make in place.

The DDL files (``config/clickhouse``) are ``CREATE ... IF NOT EXISTS``: they make a new database
right and leave an existing table as it is, and ``ClickHouseSink.check_schema`` then refuses a
table whose columns differ from the contract.  When a contract change cannot be an ``ALTER``
(a column enters a ReplacingMergeTree's key), the table made under the old contract is set aside
before the DDL runs and its rows are carried into the new table after it.  Each step is safe to
repeat: a process that dies anywhere in between finishes the migration on its next start.

The one migration so far: ``awards`` gained ``beneficiary`` (in its key: a code pays at most once
per beneficiary) and ``payout_key`` (DESIGN.md "Outputs").  Every award made before was a
consumer's prize.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from scanstream.engine.outcomes import AWARD_COLUMNS, BENEFICIARY_CONSUMER, names, payout_keys

#: The table awards made before payout keys are renamed to while they are carried over.
AWARDS_SET_ASIDE = "awards_before_payout_keys"
#: ... and its name once every row is in ``awards``: kept for the operator, never read again.
AWARDS_CARRIED = "awards_before_payout_keys_carried"
#: The columns of ``awards`` before this migration.
OLD_AWARD_COLUMNS = tuple(c for c in AWARD_COLUMNS if c[0] not in ("beneficiary", "payout_key"))
#: Rows read and inserted at a time: a year of awards never sits in memory at once.
CARRY_PAGE_ROWS = 100_000


class _Tables(Protocol):
    def query(self, sql: str, parameters=None) -> tuple[list[str], list[tuple]]: ...
    def command(self, statement: str) -> None: ...
    def insert(self, table: str, batch, column_spec, *, dedup_token=None, deduplicate=True) -> int: ...


def _columns(tables: _Tables, table: str) -> set[str]:
    _, rows = tables.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                           "AND table = {table:String}", {"table": table})
    return {name for (name,) in rows}


def before_ddl(tables: _Tables) -> None:
    """Set an ``awards`` table of the old contract aside, so that the DDL creates the new one."""
    found = _columns(tables, "awards")
    if found and "payout_key" not in found:
        tables.command(f"RENAME TABLE awards TO {AWARDS_SET_ASIDE}")


def after_ddl(tables: _Tables) -> int:
    """Carry the awards set aside into the new ``awards``, each with its beneficiary (consumer)
    and payout key; returns the rows carried.  A page inserted twice (a crash before the final
    rename) is deduplicated by its token, and would collapse by the table's key anyway."""
    if not _columns(tables, AWARDS_SET_ASIDE):
        return 0
    old = names(OLD_AWARD_COLUMNS)
    select = ", ".join("toUnixTimestamp64Milli(ts) AS ts" if name == "ts" else name for name in old)
    carried = 0
    while True:
        _, rows = tables.query(f"SELECT {select} FROM {AWARDS_SET_ASIDE} ORDER BY tenant, campaign, kind, batch, "
                               f"serial, scan_id LIMIT {CARRY_PAGE_ROWS} OFFSET {carried}")
        if not rows:
            break
        batch = {name: np.array([row[i] for row in rows], dtype=dtype)
                 for i, (name, dtype, _) in enumerate(OLD_AWARD_COLUMNS)}
        batch["beneficiary"] = np.full(len(rows), BENEFICIARY_CONSUMER, dtype=object)
        batch["payout_key"] = payout_keys(batch["tenant"], batch["campaign"], batch["kind"], batch["batch"],
                                          batch["serial"], batch["beneficiary"])
        tables.insert("awards", batch, AWARD_COLUMNS, dedup_token=f"{AWARDS_SET_ASIDE}:{carried}")
        carried += len(rows)
    tables.command(f"RENAME TABLE {AWARDS_SET_ASIDE} TO {AWARDS_CARRIED}")
    return carried
