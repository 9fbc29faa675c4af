"""A synthetic one-item-one-code world and its scan stream, for ``scanstream demo`` and tests.

The world: one brand, batches of unit and case codes (one batch not yet activated, one printed
empty and activated in serial ranges later: 空码赋值), dealers across several provinces and
channels, shipments of serial ranges to them, stores.  The stream mixes genuine first scans
with everything the engine must catch: repeat scans, forgeries, malformed codes, codes of
unregistered and of not-yet-activated batches, codes of the empty-printed batch inside and
outside its activation ranges, before and after them, goods diverted to another province,
store scans in the wrong channel, a bot scanning many codes, a cloned code scanned by many
users across provinces, redelivered messages and junk lines.
Everything derives from one seed, so a world and its stream are reproducible.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from scanstream.engine.geo import AdcodeIndex
from scanstream.ext import codec

#: 2026-11-20T08:00:00+08:00: the demo day starts at 8 in the morning, China time.
DEMO_START_MS = 1795132800000
DEMO_SPAN_MS = 14 * 3600 * 1000

BATCHES = [  # tenant, batch, kind, sku, product, activated, size
    (7, 101, "unit", "BEER-500", "Lager 500 ml", 1, 200_000),
    (7, 102, "unit", "BEER-330", "Lager 330 ml", 1, 200_000),
    (7, 103, "unit", "CRAFT-IPA", "Craft IPA 330 ml", 1, 100_000),
    (7, 104, "unit", "BEER-500", "Lager 500 ml (spring run)", 0, 100_000),
    (7, 105, "unit", "BLANK", "Empty-printed labels", 0, 100_000),  # 空码: bound to products by ACTIVATIONS
    (7, 201, "case", "BEER-500-CASE", "Lager 500 ml, case of 12", 1, 20_000),
]
UNREGISTERED_BATCH = 999
DEALERS = [  # dealer_id, name, channel, regions, manager, home districts (prefixes to scan in)
    ("D-GD-KA", "Guangdong Key Accounts", "KA", "44", "wang.li", "4401"),
    ("D-GD-TR", "Guangdong Traditional Trade", "traditional", "44", "chen.jie", "4403"),
    ("D-BJ", "Beijing Distribution", "KA", "11", "zhao.min", "1101"),
    ("D-SH", "Shanghai Trading", "traditional", "31", "sun.hao", "3101"),
    ("D-SC", "Sichuan Beverage", "traditional", "51", "li.na", "5101"),
    ("D-ZJ", "Zhejiang E-commerce", "ecommerce", "33;3201", "zhou.yu", "3301"),
]
SHIPMENTS = [  # tenant, batch, kind, serial_from, serial_to, dealer_id
    (7, 101, "unit", 0, 49_999, "D-GD-KA"), (7, 101, "unit", 50_000, 99_999, "D-GD-TR"),
    (7, 101, "unit", 100_000, 149_999, "D-BJ"), (7, 101, "unit", 150_000, 199_999, "D-SH"),
    (7, 102, "unit", 0, 99_999, "D-SC"), (7, 102, "unit", 100_000, 199_999, "D-ZJ"),
    (7, 103, "unit", 0, 49_999, "D-BJ"), (7, 103, "unit", 50_000, 99_999, "D-GD-KA"),
    (7, 104, "unit", 0, 99_999, "D-GD-TR"),
    (7, 105, "unit", 0, 99_999, "D-SC"),
    (7, 201, "case", 0, 9_999, "D-GD-KA"), (7, 201, "case", 10_000, 19_999, "D-SH"),
]
#: 空码赋值 of batch 105: 0..29 999 bound to the IPA the day before the demo day, 30 000..59 999 to
#: the 330 ml lager at 15:00 of the demo day (scans before that are not_activated); the rest of
#: the batch stays empty (not_activated).
ACTIVATIONS = [  # tenant, batch, kind, serial_from, serial_to, sku, product, activated_at
    (7, 105, "unit", 0, 29_999, "CRAFT-IPA", "Craft IPA 330 ml (empty-printed labels)", "2026-11-19T08:00:00+08:00"),
    (7, 105, "unit", 30_000, 59_999, "BEER-330", "Lager 330 ml (empty-printed labels)", "2026-11-20T15:00:00+08:00"),
]
EMPTY_PRINTED_BATCH = 105
#: 箱码关联: case c (c < PACKED_CASES) of case batch 201 holds units c*UNITS_PER_CASE .. +11 of batch 101
UNITS_PER_CASE = 12
PACKED_CASES = 1_000
PACKING = [  # tenant, case_batch, case_serial, unit_batch, unit_serial_from, unit_serial_to
    (7, 201, c, 101, c * UNITS_PER_CASE, (c + 1) * UNITS_PER_CASE - 1) for c in range(PACKED_CASES)]
#: Outbound scans (物流出库): the Guangzhou warehouse ships packed cases to their dealer; once in the
#: stream it ships one to Zhejiang, whose bottles then turn up in Guangzhou (a diverted case).
WAREHOUSE_USER = "wh-gz-01"
DIVERTED_CASE_DEALER = "D-ZJ"
DIVERTED_CASE_SCANS = 4
STORES = [  # store_id, dealer_id, district prefix, channel
    ("S-GZ-001", "D-GD-KA", "4401", "KA"), ("S-GZ-002", "D-GD-KA", "4401", "KA"),
    ("S-GZ-BAR", "D-GD-KA", "4401", "horeca"),  # a bar: KA goods showing up on-trade
    ("S-SZ-001", "D-GD-TR", "4403", "traditional"), ("S-SH-001", "D-SH", "3101", "traditional"),
    ("S-SH-002", "D-SH", "3101", "traditional"), ("S-CS-001", "", "4301", "traditional"),  # Changsha
]
#: Where diverted goods turn up: Hunan (Changsha) and Guangxi (Nanning).
DIVERSION_CITIES = ("4301", "4501")
#: Share of each kind of scan in the stream (the rest are genuine first scans).
MIX = {
    "repeat": 0.05, "diverted": 0.01, "store": 0.02, "forged": 0.02, "malformed": 0.01,
    "unknown_batch": 0.01, "not_activated": 0.01, "invalid": 0.005, "bot": 0.01, "redelivered": 0.01,
    "empty_printed": 0.01, "outbound": 0.01,
}
CLONE_USERS = 6
BOT_USER = "bot-7781"
#: 超级导购码: the share of genuine bottles a shopping guide scans at sale (``action: sell``) before
#: the consumer's first scan, when a stream asks for guide sales (the demo and the fault suite do);
#: the guides are GUIDES accounts.
GUIDE_SALE_SHARE = 0.05
GUIDES = 20


@dataclass
class World:
    tenant: int
    key: bytes = field(repr=False)
    key_id: int
    districts: dict[str, list[tuple[str, float, float]]]  # prefix -> [(adcode, lat, lon)]

    def write_registry(self, directory: Path) -> None:
        """The registry CSV files of DESIGN.md, activations.csv and packing.csv included."""
        directory.mkdir(parents=True, exist_ok=True)
        _write(directory / "batches.csv", ["tenant", "batch", "kind", "sku", "product", "activated", "size"], BATCHES)
        _write(directory / "dealers.csv", ["dealer_id", "tenant", "name", "channel", "regions", "manager", "webhook"],
               [(d, self.tenant, name, ch, regions, manager, "") for d, name, ch, regions, manager, _ in DEALERS])
        _write(directory / "shipments.csv", ["tenant", "batch", "kind", "serial_from", "serial_to", "dealer_id",
                                             "shipped_at"],
               [(*s, "2026-11-01") for s in SHIPMENTS])
        _write(directory / "stores.csv", ["store_id", "tenant", "dealer_id", "region", "channel"],
               [(sid, self.tenant, d, self.districts[prefix][0][0], ch) for sid, d, prefix, ch in STORES])
        _write(directory / "activations.csv", ["tenant", "batch", "kind", "serial_from", "serial_to", "sku", "product",
                                               "activated_at"], ACTIVATIONS)
        _write(directory / "packing.csv", ["tenant", "case_batch", "case_serial", "unit_batch", "unit_serial_from",
                                           "unit_serial_to"], PACKING)


def _write(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def build_world(tenant: int, key: bytes, key_id: int) -> World:
    """The demo world for ``tenant``, its codes signed with ``key``."""
    index = AdcodeIndex.load()
    prefixes = {d[5] for d in DEALERS} | {s[2] for s in STORES} | set(DIVERSION_CITIES)
    districts = {}
    for p in sorted(prefixes):
        rows = [i for i, a in enumerate(index.adcodes) if a.startswith(p)][:6]
        districts[p] = [(index.adcodes[i], float(index.lat[i]), float(index.lon[i])) for i in rows]
    return World(tenant, key, key_id, districts)


class _Stream:
    def __init__(self, world: World, seed: int, guide_share: float = 0.0):
        self.world = world
        self.rng = np.random.default_rng(seed)
        # its own generator: a stream without guide sales is the same stream it always was
        self.guide_rng = np.random.default_rng([seed, 1]) if guide_share > 0 else None
        self.guide_share = guide_share
        self.events: list[dict] = []
        self.scanned: list[tuple[str, str, str]] = []  # (code, user, home) of genuine scans, for repeats
        self.used: set[tuple[int, int, int]] = set()
        self.n_scan = 0
        self.cases_shipped = 0

    def code(self, batch: int, serial: int, kind: int = 0) -> str:
        return codec.encode(self.world.key, self.world.tenant, batch, serial, kind=kind, key_id=self.world.key_id)

    def fresh_serial(self, batch: int, lo: int, hi: int, kind: int = 0) -> int:
        while True:
            s = int(self.rng.integers(lo, hi + 1))
            if (batch, kind, s) not in self.used:
                self.used.add((batch, kind, s))
                return s

    def place(self, prefix: str, event: dict) -> None:
        adcode, lat, lon = self.world.districts[prefix][int(self.rng.integers(len(self.world.districts[prefix])))]
        if self.rng.random() < 0.5:
            event["region"] = adcode
        else:  # GPS only: the engine resolves the district
            event["lat"] = round(lat + float(self.rng.normal(0, 0.01)), 5)
            event["lon"] = round(lon + float(self.rng.normal(0, 0.01)), 5)

    def emit(self, code: str, user: str, **extra) -> dict:
        self.n_scan += 1
        event = {"scan_id": f"scan-{self.n_scan:08d}", "ts": 0, "code": code, "user_id": user, **extra}
        self.events.append(event)
        return event

    def ship_case(self, dealer: str, scans: int) -> None:
        """An outbound scan of a packed case to ``dealer``, then ``scans`` consumers in Guangzhou
        scanning bottles of it; a genuine scan instead once every packed case was scanned."""
        if self.cases_shipped >= PACKED_CASES // 2:
            self.genuine()  # fresh_serial would search ever longer for an unused case
            return
        self.cases_shipped += 1
        case = self.fresh_serial(201, 0, PACKED_CASES - 1, kind=1)
        self.emit(self.code(201, case, kind=1), WAREHOUSE_USER, role="warehouse", action="ship", dealer_id=dealer)
        for unit in range(case * UNITS_PER_CASE, case * UNITS_PER_CASE + scans):
            self.used.add((101, 0, unit))
            event = self.emit(self.code(101, unit), f"wx-{int(self.rng.integers(1, 40_000)):06d}", role="consumer")
            self.place("4401", event)

    def genuine(self, user: str | None = None) -> None:
        shipment = SHIPMENTS[int(self.rng.integers(9))]  # unit shipments of activated batches
        _, batch, _, lo, hi, dealer = shipment
        if batch == 104:
            shipment = SHIPMENTS[0]
            _, batch, _, lo, hi, dealer = shipment
        code = self.code(batch, self.fresh_serial(batch, lo, hi))
        user = user or f"wx-{int(self.rng.integers(1, 40_000)):06d}"
        home = next(d[5] for d in DEALERS if d[0] == dealer)
        if self.guide_rng is not None and self.guide_rng.random() < self.guide_share:
            sale = self.emit(code, f"guide-{int(self.guide_rng.integers(GUIDES)):03d}", role="guide", action="sell")
            self.place(home, sale)
        event = self.emit(code, user, role="consumer", ip=f"10.{self.rng.integers(256)}.{self.rng.integers(256)}.7")
        self.place(home, event)
        self.scanned.append((code, user, home))


def generate_scans(world: World, n: int, seed: int = 7, guide_share: float = 0.0) -> list[bytes]:
    """``n`` scan events (JSON lines, roughly) with the MIX of DESIGN.md's cases, in time order;
    with ``guide_share``, that share of the genuine bottles is first scanned by a guide at sale."""
    st = _Stream(world, seed, guide_share)
    rng = st.rng
    kinds = list(MIX) + ["genuine"]
    weights = np.array(list(MIX.values()) + [1 - sum(MIX.values())])
    plan = rng.choice(len(kinds), size=n, p=weights)
    clone_at = n // 2
    diverted_case_at = n // 3
    junk: list[tuple[int, bytes]] = []
    redeliver: list[int] = []
    for i, k in enumerate(plan):
        kind = kinds[k]
        if i == clone_at:  # one code copied onto counterfeit labels, scanned across provinces
            code = st.code(101, st.fresh_serial(101, 0, 49_999))
            for u in range(CLONE_USERS):
                prefix = ("4401", "4301", "4501", "3101", "5101", "1101")[u]
                ev = st.emit(code, f"wx-clone-{u}", role="consumer")
                st.place(prefix, ev)
        if i == diverted_case_at:
            st.ship_case(DIVERTED_CASE_DEALER, scans=DIVERTED_CASE_SCANS)
        if kind == "genuine" or (kind == "repeat" and not st.scanned):
            st.genuine()
        elif kind == "repeat":
            # a bottle scanned again at home, or by a friend nearby
            code, first_user, home = st.scanned[int(rng.integers(len(st.scanned)))]
            user = first_user if rng.random() < 0.6 else f"wx-{int(rng.integers(1, 40_000)):06d}"
            ev = st.emit(code, user, role="consumer")
            st.place(home, ev)
        elif kind == "diverted":
            # D-GD-KA goods in Changsha or Nanning, several per city so that alerts fire
            code = st.code(101, st.fresh_serial(101, 0, 49_999))
            ev = st.emit(code, f"wx-{int(rng.integers(1, 40_000)):06d}", role="consumer", channel="KA")
            st.place(DIVERSION_CITIES[int(rng.integers(len(DIVERSION_CITIES)))], ev)
        elif kind == "store":
            store_id, dealer, _, _ = STORES[int(rng.integers(len(STORES)))]
            ship = [s for s in SHIPMENTS if s[2] == "case" and (s[5] == dealer or not dealer)]
            ship = ship[int(rng.integers(len(ship)))] if ship else SHIPMENTS[-1]
            code = st.code(201, st.fresh_serial(201, ship[3], ship[4], kind=1), kind=1)
            st.emit(code, f"store-{store_id}", role="store", store_id=store_id)
        elif kind == "forged":
            real = st.code(101, int(rng.integers(0, 200_000)))
            forged = real[:-1] + ("X" if real[-1] != "X" else "Y")
            st.emit(forged, f"wx-{int(rng.integers(1, 40_000)):06d}", role="consumer", region="440106")
        elif kind == "malformed":
            bad = ("HELLO", "2000E00058003RJ08V9QZJ", "https://q.example.cn/c/", "ABCDEFGHJKMNPQRSTVWXYZ01U",
                   "3000E00058003RJ08V9QZJM3")[int(rng.integers(5))]
            st.emit(bad, f"wx-{int(rng.integers(1, 40_000)):06d}", role="consumer", region="440304")
        elif kind == "unknown_batch":
            st.emit(st.code(UNREGISTERED_BATCH, int(rng.integers(0, 10_000))), f"wx-{int(rng.integers(1, 40_000)):06d}",
                    role="consumer", region="510104")
        elif kind == "not_activated":
            st.emit(st.code(104, st.fresh_serial(104, 0, 99_999)), f"wx-{int(rng.integers(1, 40_000)):06d}",
                    role="consumer", region="440304")
        elif kind == "empty_printed":  # a bottle of batch 105, inside or outside its activated ranges
            st.emit(st.code(EMPTY_PRINTED_BATCH, st.fresh_serial(EMPTY_PRINTED_BATCH, 0, 99_999)),
                    f"wx-{int(rng.integers(1, 40_000)):06d}", role="consumer", region="510104")
        elif kind == "outbound":  # a case shipped to its own dealer, a bottle of it opened at home
            st.ship_case("D-GD-KA", scans=1)
        elif kind == "bot":
            st.genuine(user=BOT_USER)
        elif kind == "invalid":
            bad_id = f"bad-{len(junk):06d}"  # the scan API's request ids are unique, bad events' too
            junk.append((len(st.events), (
                b"not json at all", b"[1, 2, 3]", orjson.dumps({"scan_id": bad_id}),
                orjson.dumps({"scan_id": bad_id, "ts": "yesterday", "code": "A", "user_id": "u"}),
                orjson.dumps({"scan_id": bad_id, "ts": DEMO_START_MS, "code": 42, "user_id": "u"}),
            )[int(rng.integers(5))]))
        elif kind == "redelivered":
            if st.events:
                redeliver.append(int(rng.integers(len(st.events))))
    times = np.sort(rng.integers(DEMO_START_MS, DEMO_START_MS + DEMO_SPAN_MS, size=len(st.events)))
    for ev, ts in zip(st.events, times.tolist()):
        ev["ts"] = ts
    lines = [orjson.dumps(ev) for ev in st.events]
    # a redelivered message is the same bytes again, a little later in the stream
    for at in sorted(redeliver, reverse=True):
        lines.insert(min(at + 1 + int(rng.integers(50)), len(lines)), lines[at])
    for at, line in sorted(junk, reverse=True):
        lines.insert(min(at, len(lines)), line)
    return lines
