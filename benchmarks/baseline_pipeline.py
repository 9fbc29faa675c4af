"""The baseline of ``bench_pipeline.py``: the pipeline's logic in plain Python, one event at a time.

What a straightforward implementation without numpy, Cython or batching would do, stage by
stage, for each event in turn:

1 parse      ``json.loads`` of the line and the field checks of ``ext.scanparse``
2 verify     ``engine.codec.verify``: the pure-Python reference codec (base32 + SipHash-2-4)
3 enrich     dicts for batches and stores, ``bisect`` over each batch's shipment, activation and
             packing ranges, and
             GPS -> adcode by the same grid of candidate centroids as ``engine.geo`` (its
             cell lists are read once at start; the per-event cell lookup and dot products
             are plain Python)
4 dedup      a ``set`` of (tenant, kind, batch, serial, audience) for valid, activated codes, and a
             ``dict`` scan_id -> first verdict for every scan (a redelivery gets its first outcome)
5 diversion  outbound scans' bindings in a dict of (ts, dealer) lists per case or unit, region
             prefixes / channel of the dealer, windowed alert counters in dicts and sets
6 lottery    guides' sale scans in a dict of unit -> first guide; SipHash-2-4 draw
             (``engine.codec.siphash24``) and dict / list counters for stock, budget, daily caps and
             awarded codes, with the guide's commission after the prize while the budget covers it
7 emit       one output dict per scan (the ``scan_events`` columns), per alert, per award

The rules are those of DESIGN.md as the engine implements them, so on the same input the
baseline gives the same verdicts, diversion flags, draws, awards and alert counts; the
benchmark checks that and warns when they differ.  Registry CSVs are read with ``csv``,
independently of ``engine.registry``.  Not reproduced: expiry of the windowed counters and
of remembered scan_ids (a benchmark run lasts seconds; the engine's time-to-live is minutes
to days), and the exact wording of ``reason`` for invalid events (``json`` and ``orjson``
word their errors differently; both make the event ``invalid_event``).

Use: ``BaselinePipeline(config).process(lines, positions)`` -> ``BaselineResult``; pass a
dict as ``stage_times`` to accumulate seconds per stage (costs a few clock reads per event).

Why one file of this length: the baseline is every stage written the plain way, in one place,
so that a reader can check it does the same work as the engine.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Sequence

from scanstream.engine import codec as ref
from scanstream.engine.config import Config
from scanstream.engine.state import DrawStatus
from scanstream.engine.verdicts import Verdict

# ------------------------------------------------------------------------ constants

INVALID_EVENT, MALFORMED, UNKNOWN_BATCH, NOT_ACTIVATED, REPEAT, OK = (
    int(Verdict.INVALID_EVENT), int(Verdict.MALFORMED), int(Verdict.UNKNOWN_BATCH), int(Verdict.NOT_ACTIVATED),
    int(Verdict.REPEAT), int(Verdict.OK))
VERDICT_LABELS = {int(v): v.label for v in Verdict}
DIVERSION_LABELS = ("none", "region", "channel", "region+channel")
REGION, CHANNEL = 1, 2
DRAW_NONE, DRAW_WON, DRAW_NO_PRIZE, DRAW_OUT_OF_STOCK, DRAW_BUDGET, DRAW_CAP, DRAW_INELIGIBLE = (
    int(DrawStatus.NONE), int(DrawStatus.WON), int(DrawStatus.NO_PRIZE), int(DrawStatus.OUT_OF_STOCK),
    int(DrawStatus.BUDGET), int(DrawStatus.CAP), int(DrawStatus.INELIGIBLE))
DRAW_LABELS = {int(s): s.label for s in DrawStatus}

# ext.scanparse's limits
MAX_EVENT_BYTES = 65536
MAX_ID_CHARS = 256
ROLES = ("consumer", "dealer", "guide", "store", "warehouse")
#: DESIGN.md "Audiences": a code's first scan is counted per audience.
AUDIENCE = {"consumer": "consumers", "dealer": "trade", "guide": "trade", "store": "trade", "warehouse": "logistics"}
TS_MIN_MS = 946684800000  # 2000-01-01
TS_MAX_MS = 4102444800000  # 2100-01-01
_RFC3339 = re.compile(rb"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
                      rb"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))")
OPTIONAL_IDS = ("store_id", "channel", "region", "ip", "device_id")
ACTIONS = {"ship": "warehouse", "sell": "guide"}  # the role that may take each action
BINDING_HISTORY = 8  # bindings kept per case or unit

MS_PER_MINUTE = 60_000
MS_PER_DAY = 86_400_000
DRAW_BITS = 53
DRAW_SCALE = float(1 << DRAW_BITS)
KIND_BY_NAME = {"unit": 0, "case": 1, "": 0}
DEG = math.pi / 180.0


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # orjson, which the engine uses, rejects NaN / Infinity too


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def rfc3339_ms(text: str) -> int | None:
    """Epoch ms of an RFC 3339 time with a zone, by ext.scanparse's rules; None if not one."""
    m = _RFC3339.fullmatch(text.encode("utf-8", "replace"))
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    frac = int((m.group(7) or b"0")[:3].ljust(3, b"0"))
    if m.group(8):
        offset = 0
    else:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        offset = (1 if m.group(9) == b"+" else -1) * (oh * 3600 + om * 60)
    if second == 60:  # a leap second is read as the last millisecond of its minute
        second, frac = 59, 999
    return (_days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset) * 1000 + frac


def _ident(event: dict, name: str, required: bool, problems: list[str]) -> str:
    value = event.get(name)
    if value is None:
        if required:
            problems.append(f"missing required field {name!r}")
        return ""
    if type(value) is str:
        if required and not value:
            problems.append(f"{name} is empty")
        elif len(value) > MAX_ID_CHARS:
            problems.append(f"{name} has {len(value)} characters; at most {MAX_ID_CHARS} allowed")
            return ""
        return value
    if type(value) is int:
        return str(value)
    problems.append(f"{name} must be a string, got {type(value).__name__}")
    return ""


def _number(event: dict, name: str, problems: list[str]) -> float:
    value = event.get(name)
    if value is None:
        return math.nan
    if (type(value) is float or type(value) is int) and math.isfinite(value):
        return float(value)
    problems.append(f"{name} must be a number, got {str(value)[:40]!r}")
    return math.nan


# ------------------------------------------------------------------------ GPS

class GridResolver:
    """GPS -> adcode per point, in Python, over the candidate grid of an ``engine.geo.AdcodeIndex``.

    The same algorithm as ``ext.nearest.nearest_rows`` (cell of the point, best dot product
    among the cell's candidates, lowest row on ties, rejected beyond the index's maximum
    distance), so it returns the same adcodes.  The grid is read from the index's private
    fields; ``available`` is False when those are gone (then use ``PointResolver``).
    """

    FIELDS = ("_xyz", "_offsets", "_members", "_lat_lo", "_lon_lo", "_lat_step", "_lon_step", "_nrows",
              "_ncols", "_min_dot", "adcodes")

    def __init__(self, index: Any):
        self.available = all(hasattr(index, f) for f in self.FIELDS)
        if not self.available:
            return
        self.codes = [str(c) for c in index.adcodes.tolist()]
        self.xyz = [tuple(row) for row in index._xyz.tolist()]
        self.offsets = index._offsets.tolist()
        self.members = index._members.tolist()
        self.lat_lo, self.lon_lo = float(index._lat_lo), float(index._lon_lo)
        self.lat_step, self.lon_step = float(index._lat_step), float(index._lon_step)
        self.nrows, self.ncols = int(index._nrows), int(index._ncols)
        self.min_dot = float(index._min_dot)
        self.cells: dict[int, list[tuple[float, float, float, int]]] = {}  # filled as points arrive

    def __call__(self, lat: float, lon: float) -> str:
        if not (abs(lat) <= 90.0 and abs(lon) <= 180.0):  # also rejects NaN
            return ""
        ti = (lat - self.lat_lo) / self.lat_step
        tj = (lon - self.lon_lo) / self.lon_step
        if not (0.0 <= ti <= self.nrows and 0.0 <= tj <= self.ncols):
            return ""
        c = min(int(ti), self.nrows - 1) * self.ncols + min(int(tj), self.ncols - 1)
        candidates = self.cells.get(c)
        if candidates is None:
            xyz = self.xyz
            candidates = self.cells[c] = [(*xyz[r], r) for r in self.members[self.offsets[c]:self.offsets[c + 1]]]
        if not candidates:
            return ""
        cl = math.cos(lat * DEG)
        x, y, z = cl * math.cos(lon * DEG), cl * math.sin(lon * DEG), math.sin(lat * DEG)
        best, best_dot = -1, -2.0
        for cx, cy, cz, row in candidates:
            dot = x * cx + y * cy + z * cz
            if dot > best_dot:
                best_dot, best = dot, row
        return self.codes[best] if best_dot >= self.min_dot else ""


class PointResolver:
    """Fallback: the engine's resolver called once per point (not pure Python)."""

    def __init__(self, resolve: Callable):
        import numpy as np
        self._np = np
        self.resolve = resolve

    def __call__(self, lat: float, lon: float) -> str:
        return str(self.resolve(self._np.array([lat]), self._np.array([lon]))[0])


# ------------------------------------------------------------------------ registry

def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in csv.DictReader(fh)]


@dataclass
class PyRegistry:
    batches: dict[tuple[int, int, int], tuple[str, bool]] = field(default_factory=dict)  # -> (sku, activated)
    dealer_ids: list[str] = field(default_factory=list)  # dealer index -> id
    dealer_channel: list[str] = field(default_factory=list)
    dealer_regions: list[tuple[str, ...]] = field(default_factory=list)
    dealer_manager: list[str] = field(default_factory=list)
    # (tenant, kind, batch) -> (sorted serial_from, serial_to, dealer index)
    shipments: dict[tuple[int, int, int], tuple[list[int], list[int], list[int]]] = field(default_factory=dict)
    stores: dict[tuple[int, str], tuple[str, str]] = field(default_factory=dict)  # -> (region, channel)
    dealer_index: dict[str, int] = field(default_factory=dict)
    dealer_tenant: list[int] = field(default_factory=list)
    # (tenant, kind, batch) -> (sorted serial_from, serial_to, (at_ms, sku))
    activations: dict[tuple[int, int, int], tuple[list[int], list[int], list[tuple[int, str]]]] = field(
        default_factory=dict)
    # (tenant, unit batch) -> (sorted unit_serial_from, unit_serial_to, (case batch, case serial))
    packing: dict[tuple[int, int], tuple[list[int], list[int], list[tuple[int, int]]]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> PyRegistry:
        reg = cls()
        for row in _rows(directory / "batches.csv"):
            key = (int(row["tenant"]), KIND_BY_NAME[row.get("kind", "").lower()], int(row["batch"]))
            reg.batches[key] = (row.get("sku", ""), row.get("activated", "") == "1")
        index: dict[str, int] = {}
        for row in _rows(directory / "dealers.csv"):
            index[row["dealer_id"]] = len(reg.dealer_ids)
            reg.dealer_ids.append(row["dealer_id"])
            reg.dealer_channel.append(row.get("channel", ""))
            reg.dealer_regions.append(tuple(p.strip() for p in row.get("regions", "").split(";") if p.strip()))
            reg.dealer_manager.append(row.get("manager", ""))
            reg.dealer_tenant.append(int(row["tenant"]))
        reg.dealer_index = index
        ranges: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
        for row in _rows(directory / "shipments.csv"):
            key = (int(row["tenant"]), KIND_BY_NAME[row.get("kind", "").lower()], int(row["batch"]))
            ranges.setdefault(key, []).append((int(row["serial_from"]), int(row["serial_to"]), index[row["dealer_id"]]))
        for key, rs in ranges.items():
            rs.sort()
            reg.shipments[key] = ([r[0] for r in rs], [r[1] for r in rs], [r[2] for r in rs])
        for row in _rows(directory / "stores.csv"):
            reg.stores[(int(row["tenant"]), row["store_id"])] = (row.get("region", ""), row.get("channel", ""))
        acts: dict[tuple[int, int, int], list] = {}
        if (directory / "activations.csv").exists():
            for row in _rows(directory / "activations.csv"):
                key = (int(row["tenant"]), KIND_BY_NAME[row.get("kind", "").lower()], int(row["batch"]))
                acts.setdefault(key, []).append((int(row["serial_from"]), int(row["serial_to"]),
                                                 (rfc3339_ms(row["activated_at"]), row["sku"])))
        for key, rs in acts.items():
            rs.sort()
            reg.activations[key] = ([r[0] for r in rs], [r[1] for r in rs], [r[2] for r in rs])
        packs: dict[tuple[int, int], list] = {}
        if (directory / "packing.csv").exists():
            for row in _rows(directory / "packing.csv"):
                packs.setdefault((int(row["tenant"]), int(row["unit_batch"])), []).append(
                    (int(row["unit_serial_from"]), int(row["unit_serial_to"]),
                     (int(row["case_batch"]), int(row["case_serial"]))))
        for key, rs in packs.items():
            rs.sort()
            reg.packing[key] = ([r[0] for r in rs], [r[1] for r in rs], [r[2] for r in rs])
        return reg

    @staticmethod
    def _in(ranges, serial: int):
        """The value of the range covering ``serial`` in (starts, ends, values), else None."""
        if ranges is None:
            return None
        starts, ends, values = ranges
        i = bisect_right(starts, serial) - 1
        return values[i] if i >= 0 and serial <= ends[i] else None

    def case_of(self, tenant: int, kind: int, batch: int, serial: int) -> tuple[int, int] | None:
        """(case batch, case serial) a unit is packed in, else None."""
        return self._in(self.packing.get((tenant, batch)), serial) if kind == 0 else None

    def dealer_of(self, tenant: int, kind: int, batch: int, serial: int) -> int:
        ship = self.shipments.get((tenant, kind, batch), ([], [], []))
        starts, ends, dealers = ship
        i = bisect_right(starts, serial) - 1
        if i >= 0 and serial <= ends[i]:
            return dealers[i]
        case = self.case_of(tenant, kind, batch, serial)  # a unit goes where its case was shipped
        return self.dealer_of(tenant, 1, case[0], case[1]) if case is not None else -1

    def authorised(self, dealer: int, region: str) -> bool:
        prefixes = self.dealer_regions[dealer]
        return not prefixes or any(region.startswith(p) for p in prefixes)


# ------------------------------------------------------------------------ pipeline

@dataclass
class BaselineResult:
    scans: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    awards: list[dict[str, Any]]


@dataclass
class _Campaign:
    id: str
    tenant: int
    start_ms: int
    end_ms: int
    skus: frozenset[str]
    regions: tuple[str, ...]
    key: bytes
    cumulative: list[float]
    names: list[str]
    cents: list[int]
    offset_ms: int
    cap: int
    roles: frozenset[str]  # who may win (DESIGN.md "Campaign")
    kinds: frozenset[int]
    guide_cents: int  # a guide's commission per prize on a unit they sold


STAGES = ("parse", "verify", "enrich", "dedup", "diversion", "lottery", "emit")


class BaselinePipeline:
    """Per-event pure-Python pipeline; all state in plain dicts and sets of this object."""

    def __init__(self, config: Config, registry_dir: Path | None = None, resolve_gps: Callable | None = None,
                 gps: bool | None = None):
        self.keys = config.keys
        self.registry = PyRegistry.load(Path(registry_dir or config.registry_dir))
        d = config.diversion
        self.window_ms = d.window_minutes * MS_PER_MINUTE
        self.thresholds = dict(d.thresholds)
        self.clone_window_ms = d.clone_window_minutes * MS_PER_MINUTE
        self.clone_max_users = d.clone_max_users
        self.campaigns = [_Campaign(c.id, c.tenant, c.start_ms, c.end_ms, frozenset(c.skus), tuple(c.regions), c.key,
                                    list(accumulate(t.probability for t in c.tiers)), [t.name for t in c.tiers],
                                    [t.cents for t in c.tiers], c.utc_offset_minutes * MS_PER_MINUTE, c.daily_cap,
                                    frozenset(c.roles), frozenset(c.kinds), c.guide_cents)
                          for c in config.campaigns]
        self.resolver_kind = "none"
        self.resolve: Callable[[float, float], str] | None = resolve_gps
        if resolve_gps is not None:
            self.resolver_kind = "given"
        elif config.engine.resolve_gps if gps is None else gps:
            from scanstream.engine.geo import AdcodeIndex
            index = AdcodeIndex.load()
            grid = GridResolver(index)
            if grid.available:
                self.resolve, self.resolver_kind = grid, "pure-Python grid"
            else:
                self.resolve, self.resolver_kind = PointResolver(index.resolve), "engine resolver per point"
        # state
        self.seen: set[tuple[int, int, int, int]] = set()  # codes scanned
        self.answers: dict[str, int] = {}  # scan_id -> first verdict
        self.bindings: dict[tuple[int, int, int, int], list[tuple[int, str]]] = {}  # code -> [(ts, dealer_id)]
        self.counters: dict[str, int] = {}  # diversion evidence per window and role
        self.sets: dict[str, set] = {}  # distinct users / provinces per code and window
        self.fired: set[str] = set()  # alerts raised, once per key and window
        self.stock = [list(t.stock for t in c.tiers) for c in config.campaigns]
        self.budget = [c.budget_cents for c in config.campaigns]
        self.prizes = [0 for _ in config.campaigns]
        self.user_day: dict[tuple[int, str, int], int] = {}
        # (campaign, code) -> (tier, cents, the guide paid a commission or '', its cents)
        self.awarded: dict[tuple[int, int, int, int, int], tuple[int, int, str, int]] = {}
        self.guides: dict[tuple[int, int, int], str] = {}  # (tenant, batch, serial) of a unit -> its first guide

    # -- stages, each on one event (a dict) ------------------------------------------------

    def parse(self, line: bytes | str, position: object) -> dict[str, Any]:
        problems: list[str] = []
        ev: dict[str, Any] = {"scan_id": "", "ts": 0, "code": "", "user_id": "", "role": "consumer", "store_id": "",
                              "channel": "", "region": "", "ip": "", "device_id": "", "lat": math.nan,
                              "lon": math.nan, "reason": "", "raw": "", "action": "", "ship_to": ""}
        event = None
        if type(line) is not bytes and type(line) is not str:
            problems.append(f"event must be bytes or str, got {type(line).__name__}")
        elif len(line) > MAX_EVENT_BYTES:
            problems.append(f"event of {len(line)} bytes exceeds the limit of {MAX_EVENT_BYTES}")
        else:
            try:
                value = json.loads(line, parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:
                problems.append(f"not JSON: {exc}")
            else:
                if type(value) is dict:
                    event = value
                else:
                    problems.append(f"not a JSON object but {type(value).__name__}")
        if event is not None:
            ev["scan_id"] = _ident(event, "scan_id", True, problems)
            ev["user_id"] = _ident(event, "user_id", True, problems)
            code = event.get("code")
            if code is None:
                problems.append("missing required field 'code'")
            elif type(code) is str:
                ev["code"] = code
            else:
                problems.append(f"code must be a string, got {type(code).__name__}")
            ts = event.get("ts")
            if ts is None:
                problems.append("missing required field 'ts'")
            elif type(ts) is int:
                if TS_MIN_MS <= ts < TS_MAX_MS:
                    ev["ts"] = ts
                else:
                    problems.append(f"ts {ts} is not epoch milliseconds in 2000..2100")
            elif type(ts) is str:
                ms = rfc3339_ms(ts)
                if ms is None:
                    problems.append(f"ts {ts[:40]!r} is not an RFC 3339 time with a zone")
                elif not TS_MIN_MS <= ms < TS_MAX_MS:
                    problems.append(f"ts {ts[:40]!r} is not in 2000..2100")
                else:
                    ev["ts"] = ms
            else:
                problems.append(f"ts must be an RFC 3339 string or epoch milliseconds, got {type(ts).__name__}")
            role = event.get("role")
            if role is not None:
                if role in ROLES:
                    ev["role"] = role
                else:
                    problems.append(f"role {str(role)[:40]!r} is not one of {list(ROLES)}")
            for name in OPTIONAL_IDS:
                if name in event:
                    ev[name] = _ident(event, name, False, problems)
            if "dealer_id" in event:  # an outbound scan's dealer (the output's dealer_id is the judged one)
                ev["ship_to"] = _ident(event, "dealer_id", False, problems)
            action = event.get("action")
            if action is not None:
                if type(action) is not str or action not in ACTIONS:
                    problems.append(f"action {str(action)[:40]!r} is not one of {sorted(ACTIONS)}")
                elif ACTIONS[action] != ev["role"]:
                    problems.append(f"action {action!r} is taken by role {ACTIONS[action]!r}, not {ev['role']!r}")
                elif action == "ship" and not ev["ship_to"]:
                    problems.append("action 'ship' needs the dealer_id the goods are shipped to")
                else:
                    ev["action"] = action
            region = ev["region"]
            if region and not (len(region) in (2, 4, 6) and region.isdigit() and region.isascii()):
                problems.append(f"region {region[:40]!r} is not an adcode of 2, 4 or 6 digits")
            ev["lat"] = _number(event, "lat", problems)
            ev["lon"] = _number(event, "lon", problems)
        if problems:
            ev["reason"] = "; ".join(problems)
            ev["raw"] = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
        if not ev["scan_id"]:  # the engine's naming of events without a usable scan_id
            if position is not None:
                ev["scan_id"] = f"pos:{position}"
            else:
                data = line if isinstance(line, bytes) else str(line).encode("utf-8", "replace")
                ev["scan_id"] = "raw:" + hashlib.blake2b(data, digest_size=12).hexdigest()
        return ev

    def verify(self, ev: dict[str, Any]) -> None:
        if ev["reason"]:
            ev["verdict"], ev["kind"], ev["tenant"], ev["batch"], ev["serial"] = INVALID_EVENT, 0, 0, 0, 0
            return
        d = ref.verify(ev["code"], self.keys)
        ev["verdict"], ev["kind"], ev["tenant"], ev["batch"], ev["serial"] = (
            int(d.verdict), d.kind, d.tenant, d.batch, d.serial)

    def enrich(self, ev: dict[str, Any]) -> None:
        reg = self.registry
        sku, dealer = "", -1
        if ev["verdict"] == OK:
            tenant, kind, batch = ev["tenant"], ev["kind"], ev["batch"]
            info = reg.batches.get((tenant, kind, batch))
            if info is None:
                ev["verdict"] = UNKNOWN_BATCH
            else:
                sku, activated = info
                act = reg._in(reg.activations.get((tenant, kind, batch)), ev["serial"])
                if act is not None:  # 空码赋值: the range decides, from its activated_at on
                    activated = ev["ts"] >= act[0]
                    if activated:
                        sku = act[1]
                if not activated:
                    ev["verdict"] = NOT_ACTIVATED
                dealer = reg.dealer_of(tenant, kind, batch, ev["serial"])
                d = reg.dealer_index.get(ev["ship_to"]) if ev["action"] == "ship" else None
                if ev["action"] == "ship" and ev["verdict"] == OK and (d is None or reg.dealer_tenant[d] != tenant):
                    ev["verdict"] = INVALID_EVENT
                    ev["reason"] = f"dealer_id {ev['ship_to'][:40]!r} is not a dealer of tenant {tenant}"
        store = reg.stores.get((ev["tenant"], ev["store_id"])) if ev["store_id"] else None
        if not ev["region"]:
            if store is not None:
                ev["region"] = store[0]
            if not ev["region"] and self.resolve is not None and ev["lat"] == ev["lat"] and ev["lon"] == ev["lon"]:
                ev["region"] = self.resolve(ev["lat"], ev["lon"])
        if store is not None and store[1]:
            ev["channel"] = store[1]
        ev["sku"], ev["dealer"] = sku, dealer
        ev["dealer_id"] = reg.dealer_ids[dealer] if dealer >= 0 else ""

    def dedup(self, ev: dict[str, Any]) -> None:
        first = self.answers.get(ev["scan_id"])
        if first is not None:  # redelivered: the first answer again, whatever it was
            ev["verdict"], ev["replay"] = first, 1
            return
        ev["replay"] = 0
        if ev["verdict"] == OK:  # only valid, activated codes have a bit, one per audience
            code = (ev["tenant"], ev["kind"], ev["batch"], ev["serial"], AUDIENCE[ev["role"]])
            if code in self.seen:
                ev["verdict"] = REPEAT
            else:
                self.seen.add(code)
        self.answers[ev["scan_id"]] = ev["verdict"]

    def bind(self, ev: dict[str, Any]) -> None:
        """Outbound scans bind a case or unit to a dealer from their ts on; every other scan of a
        valid code takes the latest binding at or before its ts of its code or its case."""
        if ev["verdict"] not in (OK, REPEAT):
            return
        reg, ts = self.registry, ev["ts"]
        own = (ev["tenant"], ev["kind"], ev["batch"], ev["serial"])
        if ev["action"] == "ship":
            if not ev["replay"]:
                kept = [b for b in self.bindings.get(own, []) if b[0] != ts] + [(ts, ev["ship_to"])]
                self.bindings[own] = sorted(kept, key=lambda b: b[0])[-BINDING_HISTORY:]
            found = [(ts, ev["ship_to"])]
        else:
            case = reg.case_of(*own)
            keys = [own] + ([(ev["tenant"], 1, case[0], case[1])] if case is not None else [])
            found = [max((b for b in self.bindings.get(k, []) if b[0] <= ts), key=lambda b: b[0], default=(-1, ""))
                     for k in keys]
        best = max(found, key=lambda b: b[0])  # the own code's binding on a tie (max keeps the first)
        d = reg.dealer_index.get(best[1]) if best[0] >= 0 else None
        if d is not None:
            ev["dealer"], ev["dealer_id"] = d, best[1]

    def diversion(self, ev: dict[str, Any], alerts: list[dict[str, Any]]) -> None:
        self.bind(ev)
        div = 0
        verdict, dealer = ev["verdict"], ev["dealer"]
        if (verdict == OK or verdict == REPEAT) and dealer >= 0 and ev["role"] != "warehouse":
            reg = self.registry
            region, channel = ev["region"], ev["channel"]
            if region and not reg.authorised(dealer, region):
                div |= REGION
            dealer_channel = reg.dealer_channel[dealer]
            if channel and dealer_channel and channel != dealer_channel:
                div |= CHANNEL
        ev["diversion"] = div
        if (verdict != OK and verdict != REPEAT) or ev["replay"]:
            return
        if div:
            self._diversion_alert(ev, div, alerts)
        self._clone_alert(ev, alerts)

    def _diversion_alert(self, ev: dict[str, Any], div: int, alerts: list[dict[str, Any]]) -> None:
        window = ev["ts"] // self.window_ms
        region, role = ev["region"], ev["role"]
        city = region[:4] if len(region) >= 4 else region
        base = f"div|{ev['tenant']}|{ev['dealer_id']}|{DIVERSION_LABELS[div]}|{city}|{window}"
        counter = f"{base}|{role}"
        total = self.counters.get(counter, 0) + 1
        self.counters[counter] = total
        threshold = self.thresholds[role]
        if total != threshold or base in self.fired:
            return
        self.fired.add(base)
        reg, dealer = self.registry, ev["dealer"]
        alerts.append({
            "alert_id": hashlib.blake2b(base.encode(), digest_size=12).hexdigest(), "ts": ev["ts"],
            "tenant": ev["tenant"], "alert": "diversion", "subtype": DIVERSION_LABELS[div],
            "dealer_id": ev["dealer_id"], "manager": reg.dealer_manager[dealer], "city": city, "code": "",
            "window_start": window * self.window_ms, "window_end": (window + 1) * self.window_ms, "count": threshold,
            "detail": json.dumps({"role": role, "threshold": threshold, "scan_region": region,
                                  "scan_channel": ev["channel"], "dealer_regions": list(reg.dealer_regions[dealer]),
                                  "dealer_channel": reg.dealer_channel[dealer], "scan_id": ev["scan_id"],
                                  "store_id": ev["store_id"]}),
        })

    def _clone_alert(self, ev: dict[str, Any], alerts: list[dict[str, Any]]) -> None:
        window = ev["ts"] // self.clone_window_ms
        code_key = f"{ev['tenant']}|{ev['kind']}|{ev['batch']}|{ev['serial']}|{window}"
        users = self.sets.setdefault("cu|" + code_key, set())
        users.add(ev["user_id"])
        n_users, n_provinces = len(users), 0
        region = ev["region"]
        if region:
            provinces = self.sets.setdefault("cp|" + code_key, set())
            provinces.add(region[:2])
            n_provinces = len(provinces)
        by_users = n_users == self.clone_max_users + 1
        if not (by_users or n_provinces == 2):
            return
        mark = "clone|" + code_key
        if mark in self.fired:
            return
        self.fired.add(mark)
        dealer = ev["dealer"]
        subtype = "users" if by_users else "provinces"
        alerts.append({
            "alert_id": hashlib.blake2b(mark.encode(), digest_size=12).hexdigest(), "ts": ev["ts"],
            "tenant": ev["tenant"], "alert": "cloned_code", "subtype": subtype, "dealer_id": ev["dealer_id"],
            "manager": self.registry.dealer_manager[dealer] if dealer >= 0 else "",
            "city": region[:4] if len(region) >= 4 else region, "code": ev["code"],
            "window_start": window * self.clone_window_ms, "window_end": (window + 1) * self.clone_window_ms,
            "count": n_users if by_users else n_provinces,
            "detail": json.dumps({"distinct_users": n_users, "provinces": n_provinces,
                                  "max_users": self.clone_max_users, "scan_id": ev["scan_id"]}),
        })

    def lottery(self, ev: dict[str, Any], awards: list[dict[str, Any]]) -> None:
        ev["campaign"], ev["draw"], ev["prize_tier"], ev["prize_cents"] = "", DRAW_NONE, "", 0
        tenant, ts = ev["tenant"], ev["ts"]
        unit = (tenant, ev["batch"], ev["serial"])
        if (ev["action"] == "sell" and ev["kind"] == 0 and ev["verdict"] in (OK, REPEAT) and not ev["replay"]):
            self.guides.setdefault(unit, ev["user_id"])  # the first guide to sell the unit keeps it
        may_win = ev["verdict"] == OK
        applies = eligible = -1
        for ci, c in enumerate(self.campaigns):
            if tenant != c.tenant or not c.start_ms <= ts < c.end_ms:
                continue
            if applies < 0:
                applies = ci
            if may_win and ev["role"] in c.roles and ev["kind"] in c.kinds and (not c.skus or ev["sku"] in c.skus) and (
                    not c.regions or (ev["region"] != "" and any(ev["region"].startswith(p) for p in c.regions))):
                eligible = ci
                break
        if eligible < 0:
            if applies >= 0:
                ev["campaign"], ev["draw"] = self.campaigns[applies].id, DRAW_INELIGIBLE
            return
        c = self.campaigns[eligible]
        ev["campaign"] = c.id
        kind, batch, serial = ev["kind"], ev["batch"], ev["serial"]
        award_key = (eligible, tenant, kind, batch, serial)
        won = self.awarded.get(award_key)
        if won is not None:  # a code that won keeps its prize, paid once
            tier, cents, guide, commission = won
        else:
            payload = ref.payload_bytes(kind & 3, 0, tenant, batch & 0xFFFFFF, serial)
            number = (int.from_bytes(ref.siphash24(c.key, payload), "little") >> (64 - DRAW_BITS)) / DRAW_SCALE
            tier = bisect_right(c.cumulative, number)
            if tier >= len(c.names):
                ev["draw"] = DRAW_NO_PRIZE
                return
            cents = c.cents[tier]
            user_key = (eligible, ev["user_id"], (ts + c.offset_ms) // MS_PER_DAY)
            if self.stock[eligible][tier] <= 0:
                ev["draw"] = DRAW_OUT_OF_STOCK
                return
            if self.budget[eligible] < cents:
                ev["draw"] = DRAW_BUDGET
                return
            if self.user_day.get(user_key, 0) >= c.cap:
                ev["draw"] = DRAW_CAP
                return
            self.stock[eligible][tier] -= 1
            self.budget[eligible] -= cents
            self.prizes[eligible] += 1
            self.user_day[user_key] = self.user_day.get(user_key, 0) + 1
            guide, commission = "", 0
            if c.guide_cents and ev["role"] == "consumer" and kind == 0 and unit in self.guides \
                    and self.budget[eligible] >= c.guide_cents:
                guide, commission = self.guides[unit], c.guide_cents
                self.budget[eligible] -= commission
            self.awarded[award_key] = (tier, cents, guide, commission)
        ev["draw"], ev["prize_tier"], ev["prize_cents"] = DRAW_WON, c.names[tier], cents
        awards.append({"scan_id": ev["scan_id"], "ts": ts, "tenant": tenant, "campaign": c.id, "kind": kind,
                       "batch": batch, "serial": serial, "user_id": ev["user_id"], "prize_tier": c.names[tier],
                       "prize_cents": cents})
        if commission:
            awards.append({"scan_id": ev["scan_id"], "ts": ts, "tenant": tenant, "campaign": c.id, "kind": kind,
                           "batch": batch, "serial": serial, "user_id": guide, "prize_tier": "commission",
                           "prize_cents": commission})

    @staticmethod
    def emit(ev: dict[str, Any]) -> dict[str, Any]:
        return {
            "scan_id": ev["scan_id"], "ts": ev["ts"], "tenant": ev["tenant"], "kind": ev["kind"], "batch": ev["batch"],
            "serial": ev["serial"], "code": ev["code"], "user_id": ev["user_id"], "role": ev["role"],
            "region": ev["region"], "channel": ev["channel"], "sku": ev["sku"], "dealer_id": ev["dealer_id"],
            "verdict": VERDICT_LABELS[ev["verdict"]], "diversion": DIVERSION_LABELS[ev["diversion"]],
            "campaign": ev["campaign"], "prize_tier": ev["prize_tier"], "prize_cents": ev["prize_cents"],
            "draw": DRAW_LABELS[ev["draw"]], "store_id": ev["store_id"], "device_id": ev["device_id"], "ip": ev["ip"],
            "replay": ev["replay"], "reason": ev["reason"], "raw": ev["raw"],
        }

    # -- driver ----------------------------------------------------------------------------

    def process(self, lines: Sequence[bytes | str], positions: Sequence[object] | None = None,
                stage_times: dict[str, float] | None = None) -> BaselineResult:
        """Outcomes of ``lines``, one event after the other through all seven stages."""
        if stage_times is not None:
            return self._process_timed(lines, positions, stage_times)
        scans: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        awards: list[dict[str, Any]] = []
        parse, verify, enrich, dedup = self.parse, self.verify, self.enrich, self.dedup
        diversion, lottery, emit = self.diversion, self.lottery, self.emit
        for i, line in enumerate(lines):
            ev = parse(line, positions[i] if positions is not None else None)
            verify(ev)
            enrich(ev)
            dedup(ev)
            diversion(ev, alerts)
            lottery(ev, awards)
            scans.append(emit(ev))
        return BaselineResult(scans, alerts, awards)

    def _process_timed(self, lines, positions, stage_times: dict[str, float]) -> BaselineResult:
        scans: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        awards: list[dict[str, Any]] = []
        clock = time.perf_counter
        acc = [0.0] * len(STAGES)
        for i, line in enumerate(lines):
            t0 = clock()
            ev = self.parse(line, positions[i] if positions is not None else None)
            t1 = clock()
            self.verify(ev)
            t2 = clock()
            self.enrich(ev)
            t3 = clock()
            self.dedup(ev)
            t4 = clock()
            self.diversion(ev, alerts)
            t5 = clock()
            self.lottery(ev, awards)
            t6 = clock()
            scans.append(self.emit(ev))
            t7 = clock()
            acc[0] += t1 - t0
            acc[1] += t2 - t1
            acc[2] += t3 - t2
            acc[3] += t4 - t3
            acc[4] += t5 - t4
            acc[5] += t6 - t5
            acc[6] += t7 - t6
        for name, seconds in zip(STAGES, acc):
            stage_times[name] = stage_times.get(name, 0.0) + seconds
        return BaselineResult(scans, alerts, awards)
