"""Reference data (DESIGN.md "Reference data"): batches, dealers, shipments, stores, activations
and packing.

Loaded from the CSV files (their columns: ``engine/registry_schema.py``; ``activations.csv`` and
``packing.csv`` may be absent) into sorted numpy arrays, so that the enrich stage looks up a whole batch of
scans with ``searchsorted`` instead of one dict lookup per scan.  Errors name the file, the line
and the column.

The files come from people and spreadsheets, so nothing in them is trusted: a number must be
ASCII digits within its field's range (``int()`` alone takes ``４２`` and ``٤٢``), a field is at
most ``MAX_FIELD`` characters, a quote left open is reported where it opened (not as a missing
dealer in the next file), a header names each column once, and a shipment's or store's dealer
belongs to the same tenant.  A UTF-8 byte order mark at the start of a file is fine.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from scanstream.engine import adcode
from scanstream.engine.codec import BATCH_MAX, KIND_CASE, KIND_UNIT, SERIAL_MAX
from scanstream.engine.registry_schema import FILES, LIST_SEPARATOR, SCHEMA
from scanstream.ext.scanparse import TS_MAX_MS, TS_MIN_MS

KIND_BY_NAME = {"unit": KIND_UNIT, "case": KIND_CASE, "": KIND_UNIT}
#: Lengths of an adcode prefix: province, city, district.
ADCODE_LEVELS = (2, 4, 6)
#: Largest tenant id (16 bits, as in the code).
TENANT_MAX = 0xFFFF
#: Longest field of a registry file, in characters (a dealer's regions: some 9 000 prefixes).
MAX_FIELD = 64 * 1024
#: Longest piece of a bad value quoted in an error message.
SHOWN_CHARS = 40
#: An RFC 3339 time with a zone, as a scan event's ``ts`` string is read (``ext/scanparse.pyx``):
#: date, 'T' (or 't' or a space), time, optional fraction, 'Z' or a +hh:mm / -hh:mm offset.
RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})",
                     re.ASCII)
#: An example of RFC3339 for error messages.
RFC3339_EXAMPLE = "2026-11-20T08:00:00+08:00"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Digits of a fraction of a second that count: the engine's times are milliseconds.
MS_DIGITS = 3


class RegistryError(ValueError):
    """A registry file is missing or holds a bad row; the message names file, line and column."""


def batch_key(tenant: np.ndarray | int, kind: np.ndarray | int, batch: np.ndarray | int) -> np.ndarray:
    """One uint64 per (tenant, kind, batch): 16 + 2 + 24 bits, ordered like the tuple."""
    return (np.asarray(tenant, np.uint64) << np.uint64(26)) | (np.asarray(kind, np.uint64) << np.uint64(24)) \
        | np.asarray(batch, np.uint64)


def region_keys(owner: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """Keys of (owner index, adcode prefix) pairs; '' or non-adcode prefixes give -1.

    The key holds the prefix length, so "44" and "440000" stay different authorisations.
    """
    out = np.full(len(prefixes), -1, dtype=np.int64)
    if not len(prefixes):
        return out
    uniq, inverse = np.unique(prefixes.astype(str), return_inverse=True)
    code = np.array([int(p) if _is_adcode(p) else -1 for p in uniq], np.int64)
    level = np.array([len(p) for p in uniq], np.int64)
    ok = code[inverse] >= 0
    out[ok] = (np.asarray(owner, np.int64)[ok] << 24) | (level[inverse][ok] << 20) | code[inverse][ok]
    return out


@dataclass
class Batches:
    key: np.ndarray  # uint64 batch_key, sorted
    sku: np.ndarray  # object
    product: np.ndarray  # object
    activated: np.ndarray  # bool
    size: np.ndarray  # int64 codes issued in the batch


@dataclass
class Dealers:
    dealer_id: np.ndarray  # object, row order = dealer index
    tenant: np.ndarray  # uint16
    name: np.ndarray
    channel: np.ndarray
    regions: list[list[str]]
    manager: np.ndarray
    webhook: np.ndarray
    secret_env: np.ndarray  # name of the variable holding the webhook's signing secret, or ''
    auth_keys: np.ndarray  # sorted int64 region_keys(dealer index, prefix)
    has_regions: np.ndarray  # bool: a dealer without regions is authorised everywhere
    robot: np.ndarray  # the webhook's message format (one of ROBOTS), '' = guessed from the URL's host
    manager_id: np.ndarray  # the manager's user id on the chat platform, '' when unknown

    # Class constants (no annotation: not dataclass fields).
    #: Values of the ``robot`` column: the message formats of ``sinks.alert_messages.FORMATS``
    #: (the engine may not import the sinks; a test holds the two equal).
    ROBOTS = ("generic", "wecom", "dingtalk", "feishu")
    #: Characters of a ``manager_id``: WeCom user ids take letters, digits and ``_-@.``; DingTalk
    #: and Feishu ids (``ou_...``) are within them.  Anything else could break the mention markup.
    MANAGER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-@.")
    #: Longest ``manager_id``: WeCom user ids are 1-64 bytes, the longest of the platforms.
    MANAGER_ID_MAX = 64


@dataclass
class Shipments:
    group_key: np.ndarray  # uint64 batch_key of each distinct shipped batch, sorted
    start: np.ndarray  # uint64 (group index << 32 | serial_from), sorted
    end: np.ndarray  # uint64 (group index << 32 | serial_to)
    dealer: np.ndarray  # int32 dealer index


@dataclass
class Activations:
    """空码赋值 ranges, indexed like ``Shipments``: one row per range, sorted by ``start``."""

    group_key: np.ndarray  # uint64 batch_key of each distinct batch with ranges, sorted
    start: np.ndarray  # uint64 (group index << 32 | serial_from), sorted
    end: np.ndarray  # uint64 (group index << 32 | serial_to)
    at_ms: np.ndarray  # int64 activated_at, epoch milliseconds: scans from then on are activated
    sku: np.ndarray  # object: the range's sku, in place of its batch's
    product: np.ndarray  # object


@dataclass
class Packing:
    """箱码关联: unit serial ranges packed in a case, indexed like ``Shipments`` by the units'
    batch, so that a unit finds its case with one searchsorted (a case of 24 units is one row)."""

    group_key: np.ndarray  # uint64 batch_key of each distinct unit batch, sorted
    start: np.ndarray  # uint64 (group index << 32 | unit_serial_from), sorted
    end: np.ndarray  # uint64 (group index << 32 | unit_serial_to)
    case_batch: np.ndarray  # uint32
    case_serial: np.ndarray  # uint32


@dataclass
class Stores:
    index: dict[tuple[int, str], int]  # (tenant, store_id) -> row
    dealer: np.ndarray  # int32 dealer index, -1 when unknown
    region: np.ndarray
    channel: np.ndarray


def _read(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a registry file as (line number, {column: stripped text}), the header checked.

    A row's line number is the line it starts on.  A CSV record the csv module refuses (a quote
    left open, text after a closing quote) or a field longer than ``MAX_FIELD`` is an error
    naming the line and the column; see ``_record_error``.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read registry file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte order mark (Excel's "CSV UTF-8") is dropped
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RegistryError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None
    raw: list[str] = []  # the physical lines of the record being read

    def lines():
        for physical in io.StringIO(text, newline=""):
            raw.append(physical)
            yield physical

    # strict: a quote left open is an error at the end of the file, not a field that swallows it
    reader = csv.reader(lines(), strict=True)
    limit = min(MAX_FIELD, csv.field_size_limit())  # csv's own limit is process-wide; it may be lower
    header: list[str] | None = None
    rows = []
    while True:
        first = reader.line_num + 1
        raw.clear()
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _record_error(path, "".join(raw), first, header, limit, str(exc)) from None
        if not values:  # a blank line
            continue
        if max(map(len, values)) > limit:
            raise _record_error(path, "".join(raw), first, header, limit, "field too long")
        if header is None:
            header = _header(path, first, values, required)
        else:
            rows.append((first, {name: (values[i].strip() if i < len(values) else "")
                                 for i, name in enumerate(header) if name}))
    if header is None:
        raise RegistryError(f"{path}: empty file; expected a header row with {list(required)}")
    return rows


def read_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The rows of one registry file as ``Registry.load`` reads them: (line number, {column: text}),
    the header holding ``required`` (a ``RegistryFile.required``).  For a command that checks a
    file it is about to put in place (``scanstream codes activate``)."""
    return _read(path, required)


def _header(path: Path, line: int, values: list[str], required: tuple[str, ...]) -> list[str]:
    header = [v.strip() for v in values]
    seen: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if name and name in seen:
            raise RegistryError(f"{path}:{line}: header: column {_show(name)} is named twice "
                                f"(columns {seen[name]} and {number})")
        seen[name] = number
    missing = [c for c in required if c not in seen]
    if missing:
        raise RegistryError(f"{path}:{line}: missing column(s) {missing}; header is {header}")
    return header


def _record_error(path: Path, record: str, line: int, header: list[str] | None, limit: int,
                  problem: str) -> RegistryError:
    """The error for a CSV ``record`` (its raw text, starting on ``line``) that the csv module
    refused with ``problem``, or that holds a field longer than ``limit``.

    Walks the record as the csv module does (default dialect) to find the culprit: the first
    field over ``limit``, or the quote still open at the end, by line and column.
    """
    def column(index: int) -> str:
        if header is None:
            return f"header field {index + 1}"
        if index < len(header) and header[index]:
            return f"column {header[index]}"
        return f"field {index + 1} (the header has {len(header)} columns)"

    index = size = 0
    first = field_line = quote_line = line
    state = "start"  # start of a field, unquoted, quoted, quote (a '"' inside a quoted field)
    previous = ""
    for ch in record:
        at = line
        if ch == "\r" or (ch == "\n" and previous != "\r"):
            line += 1
        previous = ch
        if state == "quote":
            if ch == '"':  # a doubled quote: one '"' in the value
                state, size = "quoted", size + 1
                continue
            if ch not in ",\r\n" and at > quote_line:  # a quote left open, "closed" by one on a later line
                return RegistryError(f"{path}:{quote_line}: {column(index)}: quote opened here is not closed on "
                                     f"its line (it runs on to line {at})")
            if ch not in ",\r\n":
                return RegistryError(f"{path}:{at}: {column(index)}: text after the closing quote of a quoted "
                                     "field; a '\"' inside a quoted field is written '\"\"'")
            state = "unquoted"  # then ends the field below
        if state == "quoted":
            if ch == '"':
                state = "quote"
            else:
                size += 1
        elif ch == ",":
            index, size, field_line, state = index + 1, 0, line, "start"
        elif ch in "\r\n":
            break
        elif state == "start" and ch == '"':
            state, quote_line = "quoted", at
        else:
            state, size = "unquoted", size + 1
        if size > limit:
            return RegistryError(f"{path}:{field_line}: {column(index)}: field longer than {limit} characters")
    if state == "quoted":
        return RegistryError(f"{path}:{quote_line}: {column(index)}: quote opened here is never closed "
                             "(it would swallow the rest of the file)")
    return RegistryError(f"{path}:{first}: not valid CSV: {problem}")


def _show(text: str) -> str:
    """``text`` quoted for a message, cut to ``SHOWN_CHARS``: a bad value can be huge."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text)} characters)"


def _is_digits(text: str) -> bool:
    """Only ASCII digits: ``str.isdigit`` alone also takes ``²``, ``４`` and ``٤``."""
    return text.isascii() and text.isdigit()


def _is_adcode(prefix: str) -> bool:
    return _is_digits(prefix) and len(prefix) in ADCODE_LEVELS


def _int(path: Path, line: int, row: dict[str, str], column: str, hi: int) -> int:
    """Column ``column`` of ``row`` as an integer in 0..``hi``: the one check of a registry number."""
    text = row.get(column, "")
    if not _is_digits(text):
        raise RegistryError(f"{path}:{line}: column {column}: {_show(text)} is not a whole number "
                            f"in ASCII digits 0-9; expected 0..{hi}")
    # compared as text first: no int() of a thousand-digit value
    if len(text.lstrip("0")) > len(str(hi)) or int(text) > hi:
        raise RegistryError(f"{path}:{line}: column {column}: {_show(text)} is out of range 0..{hi}")
    return int(text)


def _kind(path: Path, line: int, row: dict[str, str]) -> int:
    text = row.get("kind", "").lower()
    if text not in KIND_BY_NAME:
        raise RegistryError(f"{path}:{line}: column kind: {_show(text)} is not unit or case")
    return KIND_BY_NAME[text]


def _objects(values: list[str]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


class Registry:
    """All reference data of a deployment, indexed for batch lookups."""

    def __init__(self, batches: Batches, dealers: Dealers, shipments: Shipments, stores: Stores,
                 rows: dict[str, list[dict[str, str]]] | None = None, activations: Activations | None = None,
                 packing: Packing | None = None):
        self.batches = batches
        self.activations = activations if activations is not None else Registry._activations(
            Path("activations.csv"), [], batches)
        self.packing = packing if packing is not None else Registry._packing(Path("packing.csv"), [], batches)
        #: the validated CSV rows per file name, for copying the registry to ClickHouse
        self.rows = rows or {name: [] for name in FILES}
        self.dealers = dealers
        self.shipments = shipments
        self.stores = stores
        self.dealer_index = {d: i for i, d in enumerate(dealers.dealer_id)}

    @classmethod
    def empty(cls) -> Registry:
        return cls.from_rows([], [], [], [])

    @classmethod
    def load(cls, directory: Path) -> Registry:
        """Read ``batches.csv``, ``dealers.csv``, ``shipments.csv``, ``stores.csv`` and, when they
        exist, ``activations.csv`` and ``packing.csv``."""
        directory = Path(directory)
        return cls.from_rows(
            *(_read(directory / f.file, f.required) if not f.optional or (directory / f.file).exists() else []
              for f in SCHEMA),
            directory=directory,
        )

    @classmethod
    def from_rows(cls, batch_rows, dealer_rows, shipment_rows, store_rows, activation_rows=(), packing_rows=(), *,
                  directory: Path = Path(".")) -> Registry:
        """Build from parsed CSV rows: lists of (line number, {column: text}), in ``SCHEMA``'s order."""
        dealers = cls._dealers(directory / "dealers.csv", dealer_rows)
        index = {d: i for i, d in enumerate(dealers.dealer_id)}
        rows = {name: [r for _, r in given] for name, given in
                zip(FILES, (batch_rows, dealer_rows, shipment_rows, store_rows, activation_rows, packing_rows))}
        batches = cls._batches(directory / "batches.csv", batch_rows)
        return cls(batches, dealers,
                   cls._shipments(directory / "shipments.csv", shipment_rows, index, dealers.tenant),
                   cls._stores(directory / "stores.csv", store_rows, index, dealers.tenant), rows,
                   cls._activations(directory / "activations.csv", activation_rows, batches),
                   cls._packing(directory / "packing.csv", packing_rows, batches))

    @staticmethod
    def _batches(path: Path, rows) -> Batches:
        seen: dict[int, int] = {}
        keys, sku, product, activated, size = [], [], [], [], []
        for line, row in rows:
            tenant = _int(path, line, row, "tenant", TENANT_MAX)
            batch = _int(path, line, row, "batch", BATCH_MAX)
            kind = _kind(path, line, row)
            key = int(batch_key(tenant, kind, batch))
            if key in seen:
                raise RegistryError(f"{path}:{line}: batch {batch} of tenant {tenant} already on line {seen[key]}")
            seen[key] = line
            act = row.get("activated", "")
            if act not in ("0", "1"):
                raise RegistryError(f"{path}:{line}: column activated: {_show(act)} is not 0 or 1")
            keys.append(key)
            sku.append(row.get("sku", ""))
            product.append(row.get("product", ""))
            activated.append(act == "1")
            size.append(_int(path, line, row, "size", SERIAL_MAX + 1) if row.get("size") else 0)
        order = np.argsort(np.array(keys, np.uint64), kind="stable")
        return Batches(np.array(keys, np.uint64)[order], _objects(sku)[order], _objects(product)[order],
                       np.array(activated, bool)[order], np.array(size, np.int64)[order])

    @staticmethod
    def _dealers(path: Path, rows) -> Dealers:
        ids, tenants, names, channels, regions, managers, hooks, secrets = [], [], [], [], [], [], [], []
        robots, manager_ids = [], []
        seen: dict[str, int] = {}
        for line, row in rows:
            dealer_id = row.get("dealer_id", "")
            if not dealer_id:
                raise RegistryError(f"{path}:{line}: column dealer_id is empty")
            if dealer_id in seen:
                raise RegistryError(f"{path}:{line}: dealer {_show(dealer_id)} already on line {seen[dealer_id]}")
            seen[dealer_id] = line
            prefixes = [p.strip() for p in row.get("regions", "").split(LIST_SEPARATOR) if p.strip()]
            for p in prefixes:
                if not _is_adcode(p):
                    raise RegistryError(f"{path}:{line}: column regions: {_show(p)} is not an adcode prefix of "
                                        f"{'/'.join(map(str, ADCODE_LEVELS))} ASCII digits")
            ids.append(dealer_id)
            tenants.append(_int(path, line, row, "tenant", TENANT_MAX))
            names.append(row.get("name", ""))
            channels.append(row.get("channel", ""))
            regions.append(prefixes)
            managers.append(row.get("manager", ""))
            hooks.append(row.get("webhook", ""))
            secrets.append(row.get("secret_env", ""))
            robot = row.get("robot", "").lower()
            if robot and robot not in Dealers.ROBOTS:
                raise RegistryError(f"{path}:{line}: column robot: {_show(row.get('robot', ''))} is not a robot "
                                    f"format; expected one of {', '.join(Dealers.ROBOTS)}, or empty to guess it "
                                    f"from the webhook's host")
            robots.append(robot)
            manager_id = row.get("manager_id", "")
            if len(manager_id) > Dealers.MANAGER_ID_MAX or not set(manager_id) <= Dealers.MANAGER_ID_CHARS:
                raise RegistryError(f"{path}:{line}: column manager_id: {_show(manager_id)} is not a chat user id; "
                                    f"expected at most {Dealers.MANAGER_ID_MAX} ASCII letters, digits and _-@., "
                                    f"or empty")
            manager_ids.append(manager_id)
        owner = np.array([i for i, ps in enumerate(regions) for _ in ps], np.int64)
        flat = _objects([p for ps in regions for p in ps])
        return Dealers(_objects(ids), np.array(tenants, np.uint16), _objects(names), _objects(channels), regions,
                       _objects(managers), _objects(hooks), _objects(secrets), np.unique(region_keys(owner, flat)),
                       np.array([bool(ps) for ps in regions], bool), _objects(robots), _objects(manager_ids))

    @staticmethod
    def _shipments(path: Path, rows, dealer_index: dict[str, int], dealer_tenant: np.ndarray) -> Shipments:
        bkeys, starts, ends, dealers, lines = [], [], [], [], []
        for line, row in rows:
            tenant = _int(path, line, row, "tenant", TENANT_MAX)
            batch = _int(path, line, row, "batch", BATCH_MAX)
            lo = _int(path, line, row, "serial_from", SERIAL_MAX)
            hi = _int(path, line, row, "serial_to", SERIAL_MAX)
            if hi < lo:
                raise RegistryError(f"{path}:{line}: column serial_to: {hi} is below serial_from {lo}")
            dealer_id = row.get("dealer_id", "")
            _same_tenant(path, line, tenant, dealer_id, dealer_index, dealer_tenant)
            bkeys.append(int(batch_key(tenant, _kind(path, line, row), batch)))
            starts.append(lo)
            ends.append(hi)
            dealers.append(dealer_index[dealer_id])
            lines.append(line)
        groups, start, end, order = _ranges(path, bkeys, starts, ends, lines)
        return Shipments(groups, start, end, np.array(dealers, np.int32)[order])

    @staticmethod
    def _activations(path: Path, rows, batches: Batches) -> Activations:
        """空码赋值 ranges: each of a batch of ``batches`` and within its size, none overlapping
        another of the same batch (a code has one product), activated_at a real time."""
        bkeys, starts, ends, at, sku, product, lines = [], [], [], [], [], [], []
        for line, row in rows:
            tenant = _int(path, line, row, "tenant", TENANT_MAX)
            batch = _int(path, line, row, "batch", BATCH_MAX)
            kind = _kind(path, line, row)
            lo = _int(path, line, row, "serial_from", SERIAL_MAX)
            hi = _int(path, line, row, "serial_to", SERIAL_MAX)
            if hi < lo:
                raise RegistryError(f"{path}:{line}: column serial_to: {hi} is below serial_from {lo}; "
                                    f"expected serial_from <= serial_to (the range is inclusive)")
            key = int(batch_key(tenant, kind, batch))
            found = int(_find(batches.key, np.array([key], np.uint64))[0])
            if found < 0:
                raise RegistryError(f"{path}:{line}: column batch: {'case' if kind == KIND_CASE else 'unit'} batch "
                                    f"{batch} of tenant {tenant} is not in batches.csv; expected a registered batch")
            size = int(batches.size[found])
            if size and hi >= size:  # size 0: not given, any serial goes
                raise RegistryError(f"{path}:{line}: column serial_to: {hi} is beyond batch {batch}'s size {size}; "
                                    f"expected a serial in 0..{size - 1}")
            if not row.get("sku", ""):
                raise RegistryError(f"{path}:{line}: column sku is empty; expected the sku the range is bound to")
            bkeys.append(key)
            starts.append(lo)
            ends.append(hi)
            at.append(_epoch_ms(path, line, row, "activated_at"))
            sku.append(row["sku"])
            product.append(row.get("product", ""))
            lines.append(line)
        groups, start, end, order = _ranges(path, bkeys, starts, ends, lines)
        return Activations(groups, start, end, np.array(at, np.int64)[order], _objects(sku)[order],
                           _objects(product)[order])

    @staticmethod
    def _packing(path: Path, rows, batches: Batches) -> Packing:
        """Units in cases: the case batch registered as kind case, the unit batch as kind unit,
        serials within each batch's size, and no unit in two cases (overlapping ranges)."""
        bkeys, starts, ends, case_batch, case_serial, lines = [], [], [], [], [], []
        for line, row in rows:
            tenant = _int(path, line, row, "tenant", TENANT_MAX)
            cases = _int(path, line, row, "case_batch", BATCH_MAX)
            case = _int(path, line, row, "case_serial", SERIAL_MAX)
            units = _int(path, line, row, "unit_batch", BATCH_MAX)
            lo = _int(path, line, row, "unit_serial_from", SERIAL_MAX)
            hi = _int(path, line, row, "unit_serial_to", SERIAL_MAX)
            if hi < lo:
                raise RegistryError(f"{path}:{line}: column unit_serial_to: {hi} is below unit_serial_from {lo}; "
                                    f"expected unit_serial_from <= unit_serial_to (the range is inclusive)")
            for column, kind, batch, serial in (("case_batch", KIND_CASE, cases, case),
                                                ("unit_batch", KIND_UNIT, units, hi)):
                name = "case" if kind == KIND_CASE else "unit"
                found = int(_find(batches.key, batch_key(np.array([tenant]), kind, np.array([batch])))[0])
                if found < 0:
                    raise RegistryError(f"{path}:{line}: column {column}: {name} batch {batch} of tenant {tenant} is "
                                        f"not in batches.csv; expected a registered {name} batch")
                size = int(batches.size[found])
                if size and serial >= size:  # size 0: not given, any serial goes
                    raise RegistryError(f"{path}:{line}: serial {serial} is beyond {name} batch {batch}'s size "
                                        f"{size}; expected a serial in 0..{size - 1}")
            bkeys.append(int(batch_key(tenant, KIND_UNIT, units)))
            starts.append(lo)
            ends.append(hi)
            case_batch.append(cases)
            case_serial.append(case)
            lines.append(line)
        groups, start, end, order = _ranges(path, bkeys, starts, ends, lines)
        return Packing(groups, start, end, np.array(case_batch, np.uint32)[order],
                       np.array(case_serial, np.uint32)[order])

    @staticmethod
    def _stores(path: Path, rows, dealer_index: dict[str, int], dealer_tenant: np.ndarray) -> Stores:
        index: dict[tuple[int, str], int] = {}
        dealer, region, channel = [], [], []
        for line, row in rows:
            store_id = row.get("store_id", "")
            tenant = _int(path, line, row, "tenant", TENANT_MAX)
            if not store_id:
                raise RegistryError(f"{path}:{line}: column store_id is empty")
            if (tenant, store_id) in index:
                raise RegistryError(f"{path}:{line}: store {_show(store_id)} of tenant {tenant} is listed twice")
            reg = row.get("region", "")
            if reg and not _is_adcode(reg):
                raise RegistryError(f"{path}:{line}: column region: {_show(reg)} is not an adcode")
            d = row.get("dealer_id", "")
            if d:
                _same_tenant(path, line, tenant, d, dealer_index, dealer_tenant)
            index[(tenant, store_id)] = len(dealer)
            dealer.append(dealer_index.get(d, -1))
            region.append(reg)
            channel.append(row.get("channel", ""))
        return Stores(index, np.array(dealer, np.int32), _objects(region), _objects(channel))

    # -- batch lookups ---------------------------------------------------------------------

    def lookup_batches(self, tenant: np.ndarray, kind: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """Row in ``self.batches`` of each scan's batch, -1 when not registered."""
        return _find(self.batches.key, batch_key(tenant, kind, batch))

    def lookup_dealers(self, tenant: np.ndarray, kind: np.ndarray, batch: np.ndarray,
                       serial: np.ndarray) -> np.ndarray:
        """Dealer index each code was shipped to, -1 when no shipment covers it.  A unit that no
        shipment names goes where the case it is packed in went (``packing.csv``)."""
        s = self.shipments
        row = _range_rows(s.group_key, s.start, s.end, tenant, kind, batch, serial)
        out = np.full(len(row), -1, np.int32)
        hit = row >= 0
        out[hit] = s.dealer[row[hit]]
        if len(self.packing.start) and not hit.all():
            miss = np.nonzero(~hit)[0]
            case_batch, case_serial = self.lookup_cases(tenant[miss], kind[miss], batch[miss], serial[miss])
            packed = case_batch >= 0
            if packed.any():
                rows = miss[packed]
                case_row = _range_rows(s.group_key, s.start, s.end, tenant[rows], np.full(len(rows), KIND_CASE),
                                       case_batch[packed], case_serial[packed])
                out[rows] = np.where(case_row >= 0, s.dealer[np.maximum(case_row, 0)] if len(s.dealer) else -1, -1)
        return out

    def lookup_cases(self, tenant: np.ndarray, kind: np.ndarray, batch: np.ndarray,
                     serial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The case each code is packed in: (case batch, case serial), -1 where none is (case
        codes, and units that ``packing.csv`` does not list)."""
        p = self.packing
        row = _range_rows(p.group_key, p.start, p.end, tenant, kind, batch, serial)
        hit = row >= 0
        case_batch = np.full(len(row), -1, np.int64)
        case_serial = np.full(len(row), -1, np.int64)
        case_batch[hit] = p.case_batch[row[hit]]
        case_serial[hit] = p.case_serial[row[hit]]
        return case_batch, case_serial

    def lookup_activations(self, tenant: np.ndarray, kind: np.ndarray, batch: np.ndarray,
                           serial: np.ndarray) -> np.ndarray:
        """Row in ``self.activations`` of the range covering each code, -1 when none does."""
        a = self.activations
        return _range_rows(a.group_key, a.start, a.end, tenant, kind, batch, serial)

    def lookup_stores(self, tenant: np.ndarray, store_id: np.ndarray) -> np.ndarray:
        """Row in ``self.stores`` of each scan's store, -1 when unknown or absent."""
        out = np.full(len(store_id), -1, np.int64)
        if not self.stores.index:
            return out
        present = store_id != ""
        # a batch names few tenants and few stores: look up each distinct pair once
        for t in np.unique(tenant[present]):
            sel = np.nonzero(present & (tenant == t))[0]
            uniq, inverse = np.unique(store_id[sel], return_inverse=True)
            rows = np.array([self.stores.index.get((int(t), s), -1) for s in uniq], np.int64)
            out[sel] = rows[inverse]
        return out

    def authorised(self, dealer: np.ndarray, value: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Whether each scan's place lies under one of its dealer's region prefixes.

        ``dealer`` holds dealer indexes (>= 0); ``value``/``length`` the places as
        ``engine.adcode.encode`` gives them.  A dealer without any region is authorised
        everywhere.
        """
        d = self.dealers
        if not len(dealer):
            return np.zeros(0, bool)
        result = ~d.has_regions[dealer]
        owner = np.asarray(dealer, np.int64) << 24
        for level in ADCODE_LEVELS:
            prefix = adcode.truncate(value, length, level)
            keys = owner | (level << 20) | np.maximum(prefix, 0)
            result |= (prefix >= 0) & (_find(d.auth_keys, keys) >= 0)
        return result


def _same_tenant(path: Path, line: int, tenant: int, dealer_id: str, dealer_index: dict[str, int],
                 dealer_tenant: np.ndarray) -> None:
    """A row naming ``dealer_id`` must name a dealer of dealers.csv of the row's own tenant."""
    if dealer_id not in dealer_index:
        raise RegistryError(f"{path}:{line}: column dealer_id: {_show(dealer_id)} is not in dealers.csv")
    theirs = int(dealer_tenant[dealer_index[dealer_id]])
    if theirs != tenant:
        raise RegistryError(f"{path}:{line}: column dealer_id: dealer {_show(dealer_id)} belongs to tenant {theirs} "
                            f"in dealers.csv, not to this row's tenant {tenant}")


def _epoch_ms(path: Path, line: int, row: dict[str, str], column: str) -> int:
    """Column ``column`` of ``row``, an RFC 3339 time with a zone, as epoch milliseconds within the
    times a scan may have (``ext.scanparse.TS_MIN_MS``..``TS_MAX_MS``): a scan is compared with it."""
    text = row.get(column, "")
    m = RFC3339.fullmatch(text)
    expected = f"expected an RFC 3339 time with a zone, e.g. {RFC3339_EXAMPLE}"
    if m is None:
        raise RegistryError(f"{path}:{line}: column {column}: {_show(text)} is not a time; {expected}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    zone = m.group(8)
    offset = timedelta(0) if zone in "Zz" else (1 if zone[0] == "+" else -1) * timedelta(
        hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        when = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError as exc:  # 2026-02-30, hour 24, an offset of 24 hours or more
        raise RegistryError(f"{path}:{line}: column {column}: {_show(text)} is not a time ({exc}); "
                            f"{expected}") from None
    fraction = (m.group(7) or "")[:MS_DIGITS].ljust(MS_DIGITS, "0")
    ms = (when - _EPOCH) // timedelta(milliseconds=1) + int(fraction)
    if not TS_MIN_MS <= ms < TS_MAX_MS:
        raise RegistryError(f"{path}:{line}: column {column}: {_show(text)} is outside the times of scans; "
                            f"expected a time in 2000-01-01..2100-01-01 UTC")
    return ms


def _ranges(path: Path, bkeys: list[int], starts: list[int], ends: list[int],
            lines: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Serial ranges of batches as searchsorted keys: (distinct batch keys, sorted starts, their
    ends, the order that sorts the rows).  Two ranges of one batch that share a serial are an
    error naming both lines: a code has one dealer, one product."""
    groups, group_of = np.unique(np.array(bkeys, np.uint64), return_inverse=True)
    g = group_of.astype(np.uint64) << np.uint64(32)
    start = g | np.array(starts, np.uint64)
    end = g | np.array(ends, np.uint64)
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    overlap = np.nonzero(start[1:] <= end[:-1])[0]
    if len(overlap):
        a, b = order[overlap[0]], order[overlap[0] + 1]
        raise RegistryError(f"{path}:{lines[b]}: serial range {starts[b]}..{ends[b]} overlaps the range "
                            f"{starts[a]}..{ends[a]} on line {lines[a]} of the same batch")
    return groups, start, end, order


def _range_rows(group_key: np.ndarray, start: np.ndarray, end: np.ndarray, tenant: np.ndarray, kind: np.ndarray,
                batch: np.ndarray, serial: np.ndarray) -> np.ndarray:
    """Row of the range (of ``_ranges``) covering each code, -1 when none does: one searchsorted."""
    out = np.full(len(serial), -1, np.int64)
    group = _find(group_key, batch_key(tenant, kind, batch))
    has = group >= 0
    if not has.any() or not len(start):
        return out
    probe = (group[has].astype(np.uint64) << np.uint64(32)) | np.asarray(serial, np.uint64)[has]
    row = np.searchsorted(start, probe, side="right") - 1
    hit = (row >= 0) & (probe <= end[np.maximum(row, 0)])
    out[has] = np.where(hit, row, -1)
    return out


def _find(sorted_keys: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """Index of each probe in ``sorted_keys``, -1 when absent."""
    if not len(sorted_keys):
        return np.full(len(probe), -1, np.int64)
    pos = np.searchsorted(sorted_keys, probe)
    pos_c = np.minimum(pos, len(sorted_keys) - 1)
    return np.where(sorted_keys[pos_c] == probe, pos_c, -1)
