"""``scanstream codes activate``: 空码赋值, a serial range of a printed batch bound to a product.

The activation is a registry change like any other: a row appended to the registry folder's
``activations.csv``, checked by the one loader (``engine/registry.py``) together with the rest of
the registry, then the registry published to the ClickHouse registry tables when a ClickHouse is
configured (as ``scanstream registry publish`` does).  Running workers pick it up with their
registry reload, from the folder or from the tables (``streams/worker.py``, ``RegistryReloader``).

The file is replaced whole (a new file renamed over it), so a reloading worker reads either the
old file or the new one, never half a row; a lock file keeps two activations at the same time
from both passing the overlap check.  Running the same activation again (after ClickHouse was
away, say) finds its row already there and only publishes.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import io
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config, open_clickhouse
from scanstream.engine.config import ConfigError
from scanstream.engine.registry import Registry, RegistryError, read_rows
from scanstream.engine.registry_schema import ACTIVATIONS, SCHEMA

#: Beside activations.csv; not a *.csv file, so the registry reload never looks at it.
LOCK_NAME = ".activations.lock"
#: The new file before it is renamed over activations.csv (not *.csv either).
NEW_NAME = ".activations.csv.new"
KINDS = ("unit", "case")
#: The number columns of an activation, compared as numbers ("007" is 7).
NUMBERS = ("tenant", "batch", "serial_from", "serial_to")


def add_parser(actions: argparse._SubParsersAction) -> None:
    """``codes activate`` under ``codes``' sub-commands."""
    p = actions.add_parser("activate", parents=[config_option()],
                           help="空码赋值: activate a serial range of a batch, bound to a product (activations.csv)")
    # numbers as text: the registry loader checks them, with the same words as in a CSV file
    p.add_argument("--tenant", required=True)
    p.add_argument("--batch", required=True, help="a batch of batches.csv")
    p.add_argument("--from", dest="serial_from", required=True, metavar="SERIAL", help="first serial of the range")
    p.add_argument("--to", dest="serial_to", required=True, metavar="SERIAL", help="last serial (inclusive)")
    p.add_argument("--sku", required=True, help="the sku the range is bound to (it replaces the batch's)")
    p.add_argument("--product", required=True, help="the product's name")
    p.add_argument("--at", metavar="TIME", default=None,
                   help="activated from this RFC 3339 time with a zone, e.g. 2026-11-20T08:00:00+08:00 (default: now)")
    p.add_argument("--kind", choices=KINDS, default="unit", help="unit codes (default) or case codes")
    p.add_argument("--dir", default=None, help="the registry folder (default: [registry] dir of the configuration)")
    p.add_argument("--no-publish", action="store_true",
                   help="only write activations.csv, not the ClickHouse registry tables (workers reading the "
                        "registry folder reload it; e.g. while a worker holds an embedded ClickHouse)")
    p.set_defaults(handler=run_activate)


def run_activate(args: argparse.Namespace) -> int:
    config = load_config(args)
    directory = Path(args.dir) if args.dir else config.registry_dir
    if directory is None:
        raise ConfigError("registry.dir: codes activate writes activations.csv in the registry folder; set it or "
                          "pass --dir")
    if not directory.is_dir():
        raise ConfigError(f"registry.dir: {str(directory)!r} is not a folder of registry files")
    if args.no_publish and config.registry_source == "clickhouse":
        print("scanstream: codes activate: --no-publish: the workers read the registry from ClickHouse "
              "(registry.source = \"clickhouse\"); they would never see the activation", file=sys.stderr)
        return exits.USAGE
    at = args.at or datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    row = {"tenant": args.tenant, "batch": args.batch, "kind": args.kind, "serial_from": args.serial_from,
           "serial_to": args.serial_to, "sku": args.sku, "product": args.product, "activated_at": at}
    row = {k: v.strip() for k, v in row.items()}  # as the loader reads a cell
    # opened before the file changes: a configuration error or a server away changes nothing
    sink = None if args.no_publish else open_clickhouse(config)
    try:
        try:
            registry, added = activate(directory, row, any_time=args.at is None)
        except _FolderError:  # the folder's files are at fault: a data error (exit 4), as in `registry check`
            raise
        except RegistryError as exc:
            print(f"scanstream: codes activate: refused: {exc}", file=sys.stderr)
            return exits.USAGE
        what = (f"tenant {row['tenant']} {row['kind']} batch {row['batch']} serials {row['serial_from']}.."
                f"{row['serial_to']} -> {row['sku']} ({row['product']})"
                + (f" from {at}" if added or args.at else ""))  # a repeat without --at: its own time stands
        print(f"{'activated' if added else 'already activated'}: {what}; in {directory / ACTIVATIONS.file}")
        if sink is None:
            print("not published to ClickHouse: workers reading the registry folder reload it")
            return exits.OK
        from scanstream.sinks.registry_tables import publish_registry
        written = publish_registry(sink, registry)
        print("published: " + ", ".join(f"{t} {n}" for t, n in written.items()))
    finally:
        if sink is not None:
            sink.close()
    return exits.OK


def activate(directory: Path, row: dict[str, str], any_time: bool = False) -> tuple[Registry, bool]:
    """Append ``row`` (the columns of activations.csv) to ``directory``'s activations.csv.

    Returns the registry with it, and whether it was added (False: the same activation was
    already there; with ``any_time``, the same range bound to the same product at any time, so
    that a command without ``--at`` can be run again after its publishing failed).

    A registry folder that does not load as it is raises ``_FolderError`` (the files are at
    fault: exit 4); a row that does not fit raises a ``RegistryError`` naming activations.csv
    and the line it would have had (``run_activate`` exits 2: the command line is at fault).
    Nothing is written then.
    """
    path = directory / ACTIVATIONS.file
    with open(directory / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            current = Registry.load(directory)
        except RegistryError as exc:
            raise _FolderError(exc) from None
        if _recorded(current, row, any_time):
            return current, False
        text = _read_text(path) if path.exists() else ""
        new = directory / NEW_NAME
        try:
            _write(new, text + _line(text, row))
            try:
                rows = read_rows(new, ACTIVATIONS.required)
            except RegistryError as exc:  # a value the file cannot hold: named as activations.csv's
                raise RegistryError(str(exc).replace(str(new), str(path))) from None
            # the other files loaded above: their rows again, for the checks across files
            registry = Registry.from_rows(*(rows if f is ACTIVATIONS else [(0, r) for r in current.rows[f.file]]
                                            for f in SCHEMA), directory=directory)
            if rows[-1][1] != {k: v for k, v in row.items() if k in rows[-1][1]}:
                raise RegistryError(f"{path}: the new row reads back as {rows[-1][1]}, not as {row}")
            os.replace(new, path)
        finally:
            new.unlink(missing_ok=True)
    return registry, True


class _FolderError(RegistryError):
    """The registry folder does not load as it is: the files are at fault, not the command."""


def _recorded(registry: Registry, row: dict[str, str], any_time: bool) -> bool:
    """Whether ``row`` is already one of ``registry``'s activations, value for value (numbers as
    numbers, an empty kind as unit, the time as written, or any time with ``any_time``)."""
    def norm(r: dict[str, str]) -> dict[str, object]:
        out: dict[str, object] = {k: r.get(k, "") for k in row if not (any_time and k == "activated_at")}
        out["kind"] = str(out["kind"]).lower() or "unit"
        for c in NUMBERS:
            text = str(out[c])
            if text.isascii() and text.isdigit():
                out[c] = int(text)
        return out
    mine = norm(row)
    return any(norm(r) == mine for r in registry.rows[ACTIVATIONS.file])


def _line(text: str, row: dict[str, str]) -> str:
    """``row`` as a CSV line in the column order of ``text``'s header (all columns when new)."""
    header = None
    for values in csv.reader(io.StringIO(text)):
        if values:
            header = [v.strip() for v in values]
            break
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if "\r\n" in text else "\n")  # the file's own line ends
    if header is None:
        header = [c.name for c in ACTIVATIONS.columns]
        writer.writerow(header)
    missing = [k for k, v in row.items() if k not in header and v and not (k == "kind" and v == "unit")]
    if missing:
        raise RegistryError(f"{ACTIVATIONS.file}: the header has no column {missing[0]}; expected it, to record "
                            f"{missing[0]} {row[missing[0]]!r}")
    writer.writerow([row.get(name, "") for name in header])
    return ("" if not text or text.endswith(("\n", "\r")) else "\n") + out.getvalue()


def _read_text(path: Path) -> str:
    """The file's text as it is (line ends untranslated; a UTF-8 byte order mark dropped)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return fh.read()


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
