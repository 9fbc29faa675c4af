"""``scanstream segments``: RFM classes and lifecycle stages of the scanners, as of a date.

``show`` prints the size of every segment, ``export`` writes the user ids of one segment (a
crowd list for a targeted campaign), ``snapshot`` stores the sizes of a day in
``segment_snapshots`` for the dashboard.  The definitions are in ``engine/segments.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path

from scanstream.cli import exits
from scanstream.engine import segments as seg
from scanstream.cli.common import config_option, load_config, require_clickhouse
from scanstream.cli.query import render
from scanstream.engine.keys import TENANT_MAX


def _as_of(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; expected YYYY-MM-DD") from None


def _tenant(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= TENANT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tenant id; expected an integer 0..{TENANT_MAX}")
    return value


def _common(p: argparse.ArgumentParser, tenant: bool = True) -> None:
    p.add_argument("--as-of", type=_as_of, metavar="YYYY-MM-DD",
                   help="the day the segments are computed for (default: today in [segments] utc_offset_minutes); "
                        "scans after it are ignored")
    if tenant:
        p.add_argument("--tenant", type=_tenant, metavar="T", help="one tenant (default: every tenant)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segments", help="RFM classes and lifecycle stages of the scanners: sizes, crowd lists, snapshots")
    actions = p.add_subparsers(dest="segments_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", parents=[config_option()], help="print the size of every segment")
    _common(show)
    show.set_defaults(handler=run_show)
    export = actions.add_parser("export", parents=[config_option()],
                                help="write the user ids of one segment, one per line")
    export.add_argument("--segment", required=True, metavar="NAME",
                        help="an RFM class or lifecycle stage: " + ", ".join(seg.segment_names())
                             + " (the prefix may be left out unless the name is 'new')")
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write ('-' for standard output)")
    _common(export)
    export.set_defaults(handler=run_export)
    snap = actions.add_parser("snapshot", parents=[config_option()],
                              help="store the day's segment sizes in segment_snapshots (for the dashboard)")
    _common(snap, tenant=False)
    snap.set_defaults(handler=run_snapshot)


def _sizes(sink, settings: seg.SegmentSettings, as_of: date, tenant: int | None) -> dict[int, dict[str, int]]:
    _, rows = sink.query(seg.sizes_sql(settings, as_of, tenant))
    return seg.sizes(rows, tenant)


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}" if total else "-"


def format_sizes(counts: dict[int, dict[str, int]], settings: seg.SegmentSettings, as_of: date) -> str:
    """The two tables of ``segments show``: RFM classes, then lifecycle stages."""
    lines = [f"Segments as of {as_of.isoformat()}: {seg.describe(settings)}."]
    if not counts:
        return "\n".join(lines + ["No scanner has a valid scan up to that day."])
    rfm_rows, stage_rows = [], []
    for tenant, per in counts.items():
        total = sum(per[seg.qualified(seg.RFM, c.name)] for c in seg.RFM_CLASSES)
        for c in seg.RFM_CLASSES:
            n = per[seg.qualified(seg.RFM, c.name)]
            rfm_rows.append((tenant, c.name, c.pattern, n, _share(n, total), c.label))
        for st in seg.LIFECYCLE_STAGES:
            n = per[seg.qualified(seg.LIFECYCLE, st.name)]
            stage_rows.append((tenant, st.name, seg.stage_rule(st.name, settings), n, _share(n, total), st.label))
    lines += ["", "RFM classes (rfm:NAME)",
              render(["tenant", "class", "rule", "users", "share %", "类别"], rfm_rows),
              "", "Lifecycle stages (lifecycle:NAME; rules checked in the order churned, dormant, new, mature, growing)",
              render(["tenant", "stage", "rule", "users", "share %", "阶段"], stage_rows)]
    # the Chinese names are last: render pads them by characters, not by display width
    return "\n".join(line.rstrip() for line in "\n".join(lines).splitlines())


def _open(args: argparse.Namespace):
    config = load_config(args)
    as_of = args.as_of or seg.default_as_of(config.segments)
    return config.segments, as_of, require_clickhouse(config)


def run_show(args: argparse.Namespace) -> int:
    settings, as_of, sink = _open(args)
    try:
        counts = _sizes(sink, settings, as_of, args.tenant)
    finally:
        sink.close()
    print(format_sizes(counts, settings, as_of))
    return exits.OK


def run_export(args: argparse.Namespace) -> int:
    try:
        kind, name = seg.resolve_segment(args.segment)
    except seg.SegmentError as exc:
        print(f"scanstream: --segment: {exc}", file=sys.stderr)
        return exits.USAGE
    settings, as_of, sink = _open(args)
    try:
        _, rows = sink.query(seg.export_sql(settings, as_of, seg.qualified(kind, name), args.tenant))
    finally:
        sink.close()
    text = "".join(f"{user}\n" for (user,) in rows)
    where = "every tenant" if args.tenant is None else f"tenant {args.tenant}"
    if args.out == "-":
        sys.stdout.write(text)
        print(f"{len(rows)} users of {kind}:{name} ({where}, as of {as_of.isoformat()})", file=sys.stderr)
        return exits.OK
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)  # a reader never sees half a list
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"scanstream: --out {args.out}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return exits.IO_ERROR
    print(f"wrote {len(rows)} users of {kind}:{name} ({where}, as of {as_of.isoformat()}) to {out}")
    return exits.OK


def run_snapshot(args: argparse.Namespace) -> int:
    settings, as_of, sink = _open(args)
    try:
        counts = _sizes(sink, settings, as_of, None)
        batch = seg.snapshot_batch(counts, as_of)
        written = sink.insert(seg.SNAPSHOT_TABLE, batch, seg.SNAPSHOT_COLUMNS)
    finally:
        sink.close()
    tenants = ", ".join(str(t) for t in counts) or "none"
    print(f"stored {written} segment sizes for {as_of.isoformat()} (tenants: {tenants}) in {seg.SNAPSHOT_TABLE}")
    return exits.OK
