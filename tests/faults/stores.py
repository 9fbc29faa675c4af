"""What the workers stored: SQL on chdb folders, and several folders merged into one.

``probe`` runs queries (and Native exports and imports) on a chdb folder in a Python process of
its own; ``merge_stores`` copies the outcome tables of several workers' folders into one, as one
ClickHouse server would hold them.

Separate because chdb opens one folder per process: a store can only be read from a child
process, and only after the worker that wrote it stopped.  The promise checks and the hostile
tests read stores through it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .processes import REPO

_PROBE = r"""
import json, sys
from scanstream.sinks.clickhouse import ClickHouseSink, connect
req = json.loads(sys.stdin.read())
sink = ClickHouseSink(connect("chdb:" + req["path"], database=req["database"]))
out = {}
try:
    if req.get("ensure"):
        sink.ensure_schema()
    for table, blob in req.get("import", []):
        with open(blob, "rb") as fh:
            data = fh.read()
        if data:
            sink.client.raw_insert(table, insert_block=data, fmt="Native")
    for table, blob in req.get("export", []):
        with open(blob, "wb") as fh:
            fh.write(sink.client.raw_query(f"SELECT * FROM {table}", fmt="Native"))
    for name, sql in req.get("queries", {}).items():
        out[name] = [list(r) for r in sink.query(sql)[1]]
finally:
    sink.close()
sys.stdout.write(json.dumps(out, default=str))
"""

OUTCOME_TABLES = ("scan_events", "alerts", "awards")


def probe(chdb: Path, queries: dict[str, str] | None = None, *, ensure: bool = False,
          export: list[tuple[str, str]] | None = None, imports: list[tuple[str, str]] | None = None,
          database: str = "scanstream", timeout_s: float = 300) -> dict[str, list[list]]:
    """Run SQL on a chdb folder in a process of its own (chdb: one folder per process)."""
    req = {"path": str(chdb), "database": database, "queries": queries or {}, "ensure": ensure,
           "export": export or [], "import": imports or []}
    out = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(req), capture_output=True, text=True,
                         cwd=REPO, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"chdb probe of {chdb} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def merge_stores(stores: list[Path], into: Path) -> Path:
    """One chdb folder holding the outcome tables of several (as one ClickHouse server would)."""
    if len(stores) == 1:
        return stores[0]
    blobs = []
    for i, s in enumerate(stores):
        export = [(t, str(into.parent / f"{into.name}-{i}-{t}.native")) for t in OUTCOME_TABLES]
        probe(s, export=export)
        blobs += export
    probe(into, ensure=True, imports=blobs)
    for _, blob in blobs:
        os.unlink(blob)
    return into
