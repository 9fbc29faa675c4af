"""The deployment configuration: one TOML file, read and validated once at start.

Every key is checked when the file is loaded, and an error names the key by its full path
(``tenants[0].keys[1].hex``), the value found and what was expected.  Relative paths in the
file are relative to the file itself, so a configuration works from any working directory.  Key
material and draw seeds are never part of a message: errors about them describe their shape, not
their value.

Every number goes through one check, ``_finite_number``: a TOML boolean is not a number (Python's
``bool`` is an ``int``), ``nan`` and ``inf`` are no setting's value (``nan`` compares false with
every bound, so a range check alone lets it through), and an integer must fit in 64 bits.

Why one file of this length: it is the one place that turns the file into objects, section by
section, and every section shares the checks above; split, the same key would be validated in
two places.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from scanstream.ext.scanparse import ROLES
from scanstream.engine.diversion import DiversionSettings
from scanstream.engine.enumeration import IDENTITIES, EnumerationSettings
from scanstream.engine.keys import KEY_BYTES, KEY_ID_MAX, TENANT_MAX, KeyTable
from scanstream.engine.lottery import PRIZE_ROLES, Campaign, Tier
from scanstream.engine.audiences import AUDIENCE_OF_ROLE
from scanstream.engine.registry import KIND_BY_NAME
from scanstream.engine.segments import SegmentSettings

#: Environment variable naming the configuration file when ``--config`` is not given.
CONFIG_ENV = "SCANSTREAM_CONFIG"
#: Configuration used when neither ``--config`` nor the environment names one.
DEFAULT_CONFIG = Path("config/local.toml")


#: Integer settings must fit in a signed 64-bit integer (numpy int64 arrays, ClickHouse Int64).
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: Money and counts kept in the Redis state are Lua numbers (doubles): exact up to 2**53 - 1.
LUA_EXACT_MAX = (1 << 53) - 1
#: A prize amount lands in ``prize_cents``, a UInt32 column of the outputs (engine/outcomes.py).
PRIZE_CENTS_MAX = (1 << 32) - 1
#: The UTC offsets in use on Earth: UTC-12:00 (Baker Island) to UTC+14:00 (Line Islands).
UTC_OFFSET_MIN, UTC_OFFSET_MAX = -12 * 60, 14 * 60
#: Tolerance of the check that a campaign's tier probabilities add up to at most 1.
PROBABILITY_SUM_SLACK = 1e-9
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Where a worker serves its metrics unless configured otherwise: loopback, so nothing is exposed by default.
DEFAULT_METRICS_HOST = "127.0.0.1"
#: Limits of a host name (RFC 1123): a label, and the whole name without its trailing dot.
HOST_LABEL_MAX, HOSTNAME_MAX = 63, 253
_HOST_LABEL = re.compile(rf"[A-Za-z0-9](?:[A-Za-z0-9-]{{0,{HOST_LABEL_MAX - 2}}}[A-Za-z0-9])?")


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


def host_value(text: str, key: str) -> str:
    """``text`` checked as the setting ``key``, a host to listen on: a literal IPv4 or IPv6 address
    (``0.0.0.0`` or ``::`` for every interface) or a host name (RFC 1123 labels); returned as given.

    A URL, a ``host:port`` or a name with spaces is refused here rather than by the socket later,
    where the error would not name the setting.
    """
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.removesuffix(".").split(".")
    # an all-digit last label is a mistyped address (256.1.1.1, 10.0.0.1.5), never a top-level domain
    if (0 < len(text) <= HOSTNAME_MAX and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit()):
        return text
    raise ConfigError(f"{key}: {text!r} is not a host; expected an IP address (127.0.0.1, 0.0.0.0, ::1) or a host "
                      f"name (letters, digits and '-' in dot-separated labels of at most {HOST_LABEL_MAX} characters, "
                      f"{HOSTNAME_MAX} in all)")


def _span(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    """The allowed range, for messages: ``1..60``, ``>= 0``, ``> 0 and <= 1``."""
    if lo is not None and hi is not None and not lo_open:
        return f"{lo}..{hi}"
    parts = ([f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []) + ([f"<= {hi}"] if hi is not None else [])
    return " and ".join(parts) or "any value"


def _finite_number(value: Any, key: str, *, lo: float | None = None, hi: float | None = None,
                   lo_open: bool = False, integer: bool = False) -> int | float:
    """``value`` checked as the number setting ``key``: the one place numbers are validated.

    Rejected, each with the key, the value and the allowed range: a non-number (a TOML ``true``
    included), with ``integer`` a float, ``nan`` and infinities, an integer beyond 64 bits, and a
    value outside ``lo..hi`` (above ``lo`` when ``lo_open``).
    """
    want = "an integer" if integer else "a number"
    allowed = _span(lo, hi, lo_open)
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected {want}, got the boolean {str(value).lower()}; allowed {allowed}")
    if not isinstance(value, int if integer else (int, float)):
        raise ConfigError(f"{key}: expected {want}, got {value!r}; allowed {allowed}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a finite number; expected {want} {allowed}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        # shown by size: printing a huge int can itself fail (Python's int-to-str digit limit)
        raise ConfigError(f"{key}: an integer of {value.bit_length()} bits does not fit in 64 bits; "
                          f"expected {want} {allowed}")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        raise ConfigError(f"{key}: {value} out of range; expected {want} {allowed}")
    return value


def _offset_text(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class Reader:
    """Typed access to one TOML table that remembers the path of every key it reads.

    ``done()`` rejects keys nobody read, so a misspelt key fails loudly instead of being
    silently ignored.
    """

    def __init__(self, table: Any, path: str, base_dir: Path):
        if not isinstance(table, dict):
            raise ConfigError(f"{path or 'configuration'}: expected a table, got {type(table).__name__}")
        self.table = table
        self.path = path
        self.base_dir = base_dir
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        """Full path of a key of this table, for messages."""
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.table

    def _get(self, name: str, default: Any, required: bool) -> Any:
        self._seen.add(name)
        if name not in self.table:
            if required:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        return self.table[name]

    def integer(self, name: str, default: int | None = None, *, lo: int | None = None, hi: int | None = None,
            required: bool = False) -> int:
        return int(_finite_number(self._get(name, default, required), self.key(name), lo=lo, hi=hi, integer=True))

    def number(self, name: str, default: float | None = None, *, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False, required: bool = False) -> float:
        """A finite int or float, as a float; ``lo_open`` makes ``lo`` itself not allowed."""
        return float(_finite_number(self._get(name, default, required), self.key(name), lo=lo, hi=hi,
                                    lo_open=lo_open))

    def utc_offset_minutes(self, name: str, default: int) -> int:
        """A UTC offset in minutes: one in use on Earth (-12:00..+14:00), whole quarter hours."""
        minutes = self.integer(name, default, lo=UTC_OFFSET_MIN, hi=UTC_OFFSET_MAX)
        if minutes % 15:
            raise ConfigError(f"{self.key(name)}: {minutes} (UTC{_offset_text(minutes)}) is no zone's offset; "
                              f"expected a multiple of 15 minutes in {UTC_OFFSET_MIN}..{UTC_OFFSET_MAX}")
        return minutes

    def text(self, name: str, default: str | None = None, *, choices: tuple[str, ...] | None = None,
             required: bool = False, secret: bool = False) -> str:
        """A string; with ``secret`` an error shows the value's type, never the value."""
        value = self._get(name, default, required)
        if not isinstance(value, str):
            shown = type(value).__name__ if secret else repr(value)
            raise ConfigError(f"{self.key(name)}: expected a string, got {shown}")
        if choices is not None and value not in choices:
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {list(choices)}")
        return value

    def flag(self, name: str, default: bool | None = None, *, required: bool = False) -> bool:
        value = self._get(name, default, required)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def filepath(self, name: str, default: str | None = None, *, required: bool = False) -> Path:
        """A path, resolved against the configuration file's folder."""
        value = self.text(name, default, required=required)
        return (self.base_dir / os.path.expanduser(value)).resolve()

    def epoch_ms(self, name: str, *, required: bool = False) -> int:
        """A TOML date-time with a zone offset in use on Earth (-12:00..+14:00), as epoch milliseconds."""
        value = self._get(name, None, required)
        offset = value.utcoffset() if isinstance(value, datetime) else None
        if offset is None:
            raise ConfigError(f"{self.key(name)}: expected a TOML date-time with a zone, e.g. "
                              f"2026-01-01T00:00:00+08:00; got {value!r}")
        minutes, rest = divmod(offset, timedelta(minutes=1))
        if rest or not UTC_OFFSET_MIN <= minutes <= UTC_OFFSET_MAX:
            shown = str(offset) if rest else _offset_text(minutes)
            raise ConfigError(f"{self.key(name)}: {value.isoformat()}: the UTC offset {shown} is in use nowhere; "
                              f"expected an offset {_offset_text(UTC_OFFSET_MIN)}..{_offset_text(UTC_OFFSET_MAX)}")
        return (value - _EPOCH) // timedelta(milliseconds=1)  # exact, unlike timestamp() * 1000

    def texts(self, name: str, default: list[str] | None = None, *, required: bool = False) -> list[str]:
        value = self._get(name, default, required)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings, got {value!r}")
        return list(value)

    def sub(self, name: str, *, required: bool = False) -> Reader:
        """The sub-table ``name`` (an empty one when absent and not required)."""
        return Reader(self._get(name, {}, required), self.key(name), self.base_dir)

    def subs(self, name: str, *, required: bool = False) -> list[Reader]:
        """An array of tables, one reader each."""
        value = self._get(name, [], required)
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: expected an array of tables, got {type(value).__name__}")
        return [Reader(v, f"{self.key(name)}[{i}]", self.base_dir) for i, v in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.table) - self._seen)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key; expected one of {sorted(self._seen)}")


@dataclass(frozen=True)
class Tenant:
    """A brand: its id (the code's tenant field) and display name."""

    id: int
    name: str


@dataclass(frozen=True)
class EngineSettings:
    batch_size: int = 5000  # scans per pipeline batch
    replay_ttl_hours: int = 24  # how long a scan_id's answer is remembered (redeliveries come within hours)
    resolve_gps: bool = True  # GPS -> adcode when an event has no region

    @property
    def replay_ttl_s(self) -> int:
        """``replay_ttl_hours`` in seconds: what the state stores and the reply readers take."""
        return self.replay_ttl_hours * 3600


@dataclass(frozen=True)
class AlertSettings:
    webhooks: bool = True  # deliver to the dealers' webhooks (else log only)
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 0.5
    digest_grace_s: int = 60  # a dealer's digest for a window is sent this long after the window ends
    batch_deadline_s: float = 10.0  # a batch's deliveries stop trying this long after it; the rest are pending
    run_deadline_s: float = 60.0  # the end of a run (or a worker's shutdown) waits at most this long for delivery
    allow_loopback: bool = False  # webhooks may point at 127.0.0.0/8 and ::1 (local receivers, tests)


#: Bounds of ``[redis] wait_replicas`` and ``wait_timeout_ms``: more replicas than any deployment
#: runs, and a wait past which a batch would hold its partition longer than a rebalance takes.
MAX_WAIT_REPLICAS = 16
MAX_WAIT_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "scanstream:"  # every key starts with it, so deployments and tests can share a server
    result_ttl_s: int = 300  # how long a scan's outcome waits for the scan API's await_result
    replies: bool = True  # a worker pushes each outcome to Redis for await_result
    # the url is a node of a Redis Cluster: every key carries the hash tag of a state shard (or
    # of its campaign), and the store calls each script once per shard of a batch
    cluster: bool = False
    # replicas of each primary that must hold a batch's state writes before any of its outcomes
    # is told (WAIT): a failover to a replica then cannot lose a claim or a prize; 0 waits for none
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000  # how long a batch waits for them before it is retried (transient)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:9092"
    scans_topic: str = "scans"
    results_topic: str = "scan-results"
    awards_topic: str = "awards"
    alerts_topic: str = "alerts"
    dlq_topic: str = "scans-dlq"
    group: str = "scanstream"
    partitions: int = 8
    take: int = 1000  # messages per batch at most: under load batches grow, which amortises their fixed costs
    within_ms: int = 50  # ... or whatever arrived within this time
    # how long the broker may hold the worker's fetch while no scan arrives: Apache Kafka answers
    # as soon as data is there, so this only bounds idle polling (its own default, 500); a broker
    # that holds every fetch for the whole wait (Tansu) adds it to every scan's answer
    fetch_wait_ms: int = 500
    in_flight: int = 2  # batches whose outcomes are being stored and produced while the next runs
    session_timeout_s: float = 10.0
    # how long the worker waits for the first answer of a bootstrap broker before it stops with
    # one line naming the addresses it tried (exit 5): a typo or a broker not started yet
    connect_timeout_s: float = 15.0
    linger_ms: int = 5  # the publisher's wait to fill an envelope
    web_port: int = 6066  # the worker's web/metrics port
    # where `scanstream worker --metrics-port` listens: loopback unless an operator opens it on purpose
    metrics_host: str = DEFAULT_METRICS_HOST


#: The characters that delimit a Redis Cluster hash tag in a key name.
HASH_TAG_BRACES = "{}"
#: Bounds of the gateway's rate limits: past them a limit is no limit, and a bucket's arithmetic in
#: Redis (doubles) stays exact.
RATE_MAX_PER_S = 1_000_000.0
BURST_MAX = 1_000_000


@dataclass(frozen=True)
class ApiSettings:
    """``[api]``: the HTTP scan gateway (``scanstream api``)."""

    host: str = "127.0.0.1"  # loopback unless an operator opens it on purpose
    port: int = 8080
    # how long a POST waits for the scan's outcome before it answers 202 with a poll address;
    # counted from the request's arrival, so it is the scan API's budget for the whole answer
    deadline_ms: int = 250
    # how long publishing (the broker's acknowledgement included) may take before a 503
    publish_timeout_ms: int = 2_000
    max_body_bytes: int = 1_048_576  # a larger request body is refused with 413, unread
    max_batch: int = 500  # scans in one POST /v1/scans:batch
    # POSTs one gateway process handles at once; past it 429 with Retry-After (nothing published):
    # an overloaded gateway refuses at once instead of queueing answers past every deadline
    max_in_flight: int = 500
    # ... and while its event loop keeps running more than this late at 3 probes (requests then wait unseen in sockets
    # and the loop's queue, where max_in_flight cannot count them); 0: never
    max_lag_ms: int = 100
    # token buckets in Redis, shared by every gateway process (0: no limit): requests per second
    # and burst per client address, scans per second and burst per user_id; past them, 429
    ip_rate_per_s: float = 50.0
    ip_burst: int = 100
    user_rate_per_s: float = 1.0
    user_burst: int = 20


@dataclass(frozen=True)
class Config:
    """A validated deployment configuration."""

    source: Path
    tenants: dict[int, Tenant]
    keys: KeyTable = field(repr=False)
    engine: EngineSettings = EngineSettings()
    registry_dir: Path | None = None
    registry_source: str = "files"  # files: registry.dir; clickhouse: the registry_* tables
    registry_reload_s: int = 30  # a worker looks for registry changes this often
    state_backend: str = "memory"
    # where the embedded (memory) backend keeps its state between runs; None: in this process only
    state_path: Path | None = None
    clickhouse: str = ""  # 'chdb:PATH' or an http(s) URL; '' for no ClickHouse sink
    database: str = "scanstream"
    diversion: DiversionSettings = DiversionSettings()
    campaigns: tuple[Campaign, ...] = ()
    alerts: AlertSettings = AlertSettings()
    redis: RedisSettings = RedisSettings()
    kafka: KafkaSettings = KafkaSettings()
    api: ApiSettings = ApiSettings()
    enumeration: EnumerationSettings = EnumerationSettings()
    segments: SegmentSettings = SegmentSettings()


def _read_key(r: Reader, tenant: int) -> tuple[int, bytes]:
    key_id = r.integer("key_id", required=True, lo=0, hi=KEY_ID_MAX)
    given = [name for name in ("hex", "env", "file") if r.has(name)]
    if len(given) != 1:
        raise ConfigError(f"{r.path}: give the key exactly one way, as one of hex, env or file; got {given or 'none'}")
    source = given[0]
    if source == "hex":
        text, where = r.text("hex", secret=True), r.key("hex")
    elif source == "env":
        name = r.text("env")
        if name not in os.environ:
            raise ConfigError(f"{r.key('env')}: environment variable {name!r} is not set")
        text, where = os.environ[name], f"{r.key('env')} (variable {name})"
    else:
        path = r.filepath("file")
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{r.key('file')}: cannot read key file {str(path)!r}: {type(exc).__name__}") from None
        where = f"{r.key('file')} ({path})"
    r.done()
    text = text.strip()
    if any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ConfigError(f"{where}: expected {2 * KEY_BYTES} hex digits; the value holds other characters")
    if len(text) != 2 * KEY_BYTES:
        raise ConfigError(f"{where}: expected {2 * KEY_BYTES} hex digits ({KEY_BYTES} bytes), got {len(text)} characters")
    key = bytes.fromhex(text)
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where}: expected {2 * KEY_BYTES} hex digits ({KEY_BYTES} bytes), got {len(text)} characters")
    return key_id, key


def _read_tenants(root: Reader) -> tuple[dict[int, Tenant], KeyTable]:
    tenants: dict[int, Tenant] = {}
    keys: dict[tuple[int, int], bytes] = {}
    readers = root.subs("tenants", required=True)
    if not readers:
        raise ConfigError("tenants: at least one tenant is required")
    for r in readers:
        tid = r.integer("id", required=True, lo=0, hi=TENANT_MAX)
        if tid in tenants:
            raise ConfigError(f"{r.key('id')}: tenant {tid} is configured twice")
        tenants[tid] = Tenant(tid, r.text("name", f"tenant {tid}"))
        key_readers = r.subs("keys", required=True)
        if not key_readers:
            raise ConfigError(f"{r.key('keys')}: tenant {tid} needs at least one key")
        for kr in key_readers:
            key_id, key = _read_key(kr, tid)
            if (tid, key_id) in keys:
                raise ConfigError(f"{kr.key('key_id')}: key_id {key_id} of tenant {tid} is configured twice")
            keys[(tid, key_id)] = key
        r.done()
    return tenants, KeyTable(keys)


STATE_BACKENDS = ("memory", "redis")
REGISTRY_SOURCES = ("files", "clickhouse")


def _read_engine(r: Reader) -> EngineSettings:
    d = EngineSettings()
    out = EngineSettings(
        batch_size=r.integer("batch_size", d.batch_size, lo=1, hi=1_000_000),
        replay_ttl_hours=r.integer("replay_ttl_hours", d.replay_ttl_hours, lo=1, hi=24 * 365),
        resolve_gps=r.flag("resolve_gps", d.resolve_gps),
    )
    r.done()
    return out


def _read_diversion(r: Reader, clones: Reader) -> DiversionSettings:
    d = DiversionSettings()
    t = r.sub("thresholds")
    thresholds = {role: t.integer(role, d.thresholds[role], lo=1) for role in ROLES}
    t.done()
    out = DiversionSettings(
        window_minutes=r.integer("window_minutes", d.window_minutes, lo=1, hi=7 * 24 * 60),
        thresholds=thresholds,
        clone_window_minutes=clones.integer("window_minutes", d.clone_window_minutes, lo=1, hi=7 * 24 * 60),
        clone_max_users=clones.integer("max_users", d.clone_max_users, lo=1),
    )
    r.done()
    clones.done()
    return out




def _read_campaign(r: Reader, tenants: dict[int, Tenant]) -> Campaign:
    cid = r.text("id", required=True)
    if not cid:
        raise ConfigError(f"{r.key('id')}: must not be empty")
    if set(cid) & set(HASH_TAG_BRACES):
        # the id is the hash tag of the campaign's Redis keys: a brace in it would split them over slots
        raise ConfigError(f"{r.key('id')}: {cid!r} must not contain {HASH_TAG_BRACES[0]} or {HASH_TAG_BRACES[1]}")
    tenant = r.integer("tenant", required=True, lo=0, hi=TENANT_MAX)
    if tenant not in tenants:
        raise ConfigError(f"{r.key('tenant')}: tenant {tenant} is not configured under [[tenants]]")
    start, end = r.epoch_ms("start", required=True), r.epoch_ms("end", required=True)
    if end <= start:
        raise ConfigError(f"{r.key('end')}: {r.table['end'].isoformat()} is not after start "
                          f"{r.table['start'].isoformat()}; expected end > start (end is exclusive)")
    if r.has("seed") == r.has("seed_env"):
        raise ConfigError(f"{r.path}: give the draw seed exactly one way, as seed or seed_env")
    if r.has("seed"):
        seed = r.text("seed", secret=True)
    else:
        var = r.text("seed_env")
        if var not in os.environ:
            raise ConfigError(f"{r.key('seed_env')}: environment variable {var!r} is not set")
        seed = os.environ[var]
    if not seed:
        raise ConfigError(f"{r.path}: the draw seed must not be empty")
    tiers = []
    for tr in r.subs("tiers", required=True):
        tier = Tier(name=tr.text("name", required=True),
                    cents=tr.integer("cents", required=True, lo=1, hi=PRIZE_CENTS_MAX),
                    probability=tr.number("probability", required=True, lo=0, lo_open=True, hi=1),
                    stock=tr.integer("stock", required=True, lo=0, hi=LUA_EXACT_MAX))
        if any(t.name == tier.name for t in tiers):
            raise ConfigError(f"{tr.key('name')}: tier {tier.name!r} is listed twice")
        tr.done()
        tiers.append(tier)
    if not tiers:
        raise ConfigError(f"{r.key('tiers')}: a campaign needs at least one tier")
    total = math.fsum(t.probability for t in tiers)
    if total > 1 + PROBABILITY_SUM_SLACK:
        raise ConfigError(f"{r.key('tiers')}: the probabilities add up to {total:.6g}; expected a sum <= 1 "
                          f"(the rest is the chance of no prize)")
    regions = r.texts("regions", [])
    for p in regions:
        if not (p.isdigit() and len(p) in (2, 4, 6)):
            raise ConfigError(f"{r.key('regions')}: {p!r} is not an adcode prefix of 2, 4 or 6 digits")
    # A budget of 0 is allowed: the campaign runs and draws, and pays nothing (a campaign put on
    # hold); below 0 or past what the Redis state holds exactly is rejected.
    roles = tuple(r.texts("roles", ["consumer"]))
    if not roles or any(role not in PRIZE_ROLES for role in roles):
        raise ConfigError(f"{r.key('roles')}: expected one or more of {list(PRIZE_ROLES)}, got {list(roles)}")
    if len({AUDIENCE_OF_ROLE[role] for role in roles}) > 1:
        # the state grants one prize per (campaign, code): consumers and the trade in one campaign
        # would have the second audience's first scan handed the first one's prize
        raise ConfigError(f"{r.key('roles')}: {list(roles)} mixes consumers and the trade; expected the roles "
                          f"of one audience (a campaign for each)")
    kinds = tuple(r.texts("kinds", ["unit"]))
    if not kinds or any(k not in ("unit", "case") for k in kinds):
        raise ConfigError(f"{r.key('kinds')}: expected one or more of ['unit', 'case'], got {list(kinds)}")
    guide_cents = r.integer("guide_cents", 0, lo=0, hi=PRIZE_CENTS_MAX)
    if guide_cents and (roles != ("consumer",) or "unit" not in kinds):
        # a guide sells units to consumers: a commission on a store's or a case's prize has no guide
        raise ConfigError(f"{r.key('guide_cents')}: a commission is paid on consumers' prizes for units; this "
                          f"campaign rewards roles {list(roles)} and kinds {list(kinds)}: expected roles = "
                          f"['consumer'] with kinds including 'unit', or no guide_cents")
    c = Campaign(id=cid, tenant=tenant, start_ms=start, end_ms=end,
                 budget_cents=r.integer("budget_cents", required=True, lo=0, hi=LUA_EXACT_MAX),
                 daily_cap=r.integer("daily_cap", required=True, lo=1, hi=LUA_EXACT_MAX),
                 tiers=tuple(tiers), seed=seed, skus=tuple(r.texts("skus", [])), regions=tuple(regions),
                 utc_offset_minutes=r.utc_offset_minutes("utc_offset_minutes", 480),
                 roles=roles, kinds=tuple(KIND_BY_NAME[k] for k in kinds), guide_cents=guide_cents)
    r.done()
    return c


def _read_alerts(r: Reader) -> AlertSettings:
    d = AlertSettings()
    out = AlertSettings(webhooks=r.flag("webhooks", d.webhooks),
                        timeout_s=r.number("timeout_s", d.timeout_s, lo=0.1, hi=120),
                        retries=r.integer("retries", d.retries, lo=0, hi=20),
                        backoff_s=r.number("backoff_s", d.backoff_s, lo=0, hi=60),
                        digest_grace_s=r.integer("digest_grace_s", d.digest_grace_s, lo=0, hi=86_400),
                        batch_deadline_s=r.number("batch_deadline_s", d.batch_deadline_s, lo=0, lo_open=True,
                                                  hi=86_400),
                        run_deadline_s=r.number("run_deadline_s", d.run_deadline_s, lo=0, lo_open=True, hi=86_400),
                        allow_loopback=r.flag("allow_loopback", d.allow_loopback))
    r.done()
    return out


def _read_enumeration(r: Reader) -> EnumerationSettings:
    d = EnumerationSettings()
    identities = tuple(r.texts("identities", list(d.identities)))
    for i in identities:
        if i not in IDENTITIES:
            raise ConfigError(f"{r.key('identities')}: {i!r} is not one of {list(IDENTITIES)}")
    out = EnumerationSettings(window_minutes=r.integer("window_minutes", d.window_minutes, lo=1, hi=7 * 24 * 60),
                              threshold=r.integer("threshold", d.threshold, lo=2),
                              block=r.flag("block", d.block),
                              block_hours=r.integer("block_hours", d.block_hours, lo=1, hi=24 * 365),
                              identities=identities)
    r.done()
    return out


def _read_segments(r: Reader) -> SegmentSettings:
    """``[segments]``: the RFM thresholds and lifecycle day counts (engine/segments.py)."""
    d = SegmentSettings()
    roles = tuple(r.texts("roles", list(d.roles)))
    if not roles:
        raise ConfigError(f"{r.key('roles')}: expected at least one of {list(ROLES)}")
    for role in roles:
        if role not in ROLES:
            raise ConfigError(f"{r.key('roles')}: {role!r} is not one of {list(ROLES)}")
    days = 100 * 366  # longer than any program
    out = SegmentSettings(
        utc_offset_minutes=r.utc_offset_minutes("utc_offset_minutes", d.utc_offset_minutes),
        roles=roles,
        recency_days=r.integer("recency_days", d.recency_days, lo=0, hi=days),
        frequency=r.integer("frequency", d.frequency, lo=1, hi=1_000_000),
        monetary_cents=r.integer("monetary_cents", d.monetary_cents, lo=1, hi=10**12),
        new_days=r.integer("new_days", d.new_days, lo=0, hi=days),
        mature_scans=r.integer("mature_scans", d.mature_scans, lo=1, hi=1_000_000),
        dormant_days=r.integer("dormant_days", d.dormant_days, lo=0, hi=days),
        churn_days=r.integer("churn_days", d.churn_days, lo=0, hi=days),
    )
    if out.churn_days <= out.dormant_days:
        raise ConfigError(f"{r.key('churn_days')}: {out.churn_days} must be more than dormant_days "
                          f"({out.dormant_days}): a scanner is dormant before churned")
    r.done()
    return out


def _read_redis(r: Reader) -> RedisSettings:
    d = RedisSettings()
    url = r.text("url", d.url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{r.key('url')}: expected a redis://, rediss:// or unix:// URL, got {url.split('@')[-1]!r}")
    out = RedisSettings(url=url, prefix=r.text("prefix", d.prefix),
                        result_ttl_s=r.integer("result_ttl_s", d.result_ttl_s, lo=1, hi=86_400),
                        replies=r.flag("replies", d.replies), cluster=r.flag("cluster", d.cluster),
                        wait_replicas=r.integer("wait_replicas", d.wait_replicas, lo=0, hi=MAX_WAIT_REPLICAS),
                        wait_timeout_ms=r.integer("wait_timeout_ms", d.wait_timeout_ms, lo=1, hi=MAX_WAIT_TIMEOUT_MS))
    if out.cluster and set(out.prefix) & set(HASH_TAG_BRACES):
        # a tag in the prefix would come before every key's own shard tag: one slot for all
        raise ConfigError(f"{r.key('prefix')}: {out.prefix!r} must not contain {HASH_TAG_BRACES[0]} or "
                          f"{HASH_TAG_BRACES[1]} on a Redis Cluster (cluster = true)")
    r.done()
    return out


def _read_kafka(r: Reader) -> KafkaSettings:
    d = KafkaSettings()
    out = KafkaSettings(
        bootstrap=r.text("bootstrap", d.bootstrap),
        scans_topic=r.text("scans_topic", d.scans_topic), results_topic=r.text("results_topic", d.results_topic),
        awards_topic=r.text("awards_topic", d.awards_topic), alerts_topic=r.text("alerts_topic", d.alerts_topic),
        dlq_topic=r.text("dlq_topic", d.dlq_topic), group=r.text("group", d.group),
        partitions=r.integer("partitions", d.partitions, lo=1, hi=10_000),
        take=r.integer("take", d.take, lo=1, hi=100_000),
        within_ms=r.integer("within_ms", d.within_ms, lo=1, hi=60_000),
        fetch_wait_ms=r.integer("fetch_wait_ms", d.fetch_wait_ms, lo=1, hi=60_000),
        in_flight=r.integer("in_flight", d.in_flight, lo=1, hi=16),
        session_timeout_s=r.number("session_timeout_s", d.session_timeout_s, lo=1, hi=300),
        connect_timeout_s=r.number("connect_timeout_s", d.connect_timeout_s, lo=0.5, hi=600),
        linger_ms=r.integer("linger_ms", d.linger_ms, lo=0, hi=10_000),
        web_port=r.integer("web_port", d.web_port, lo=1, hi=65535),
        metrics_host=host_value(r.text("metrics_host", d.metrics_host), r.key("metrics_host")),
    )
    if not out.bootstrap or any(not h.rpartition(":")[2].isdigit() for h in out.bootstrap.split(",")):
        raise ConfigError(f"{r.key('bootstrap')}: expected host:port[,host:port...], got {out.bootstrap!r}")
    r.done()
    return out


def _read_api(r: Reader) -> ApiSettings:
    d = ApiSettings()
    out = ApiSettings(
        host=host_value(r.text("host", d.host), r.key("host")),
        port=r.integer("port", d.port, lo=1, hi=65535),
        deadline_ms=r.integer("deadline_ms", d.deadline_ms, lo=1, hi=60_000),
        publish_timeout_ms=r.integer("publish_timeout_ms", d.publish_timeout_ms, lo=100, hi=60_000),
        # at least one event of the largest size the worker parses (ext.scanparse.MAX_EVENT_BYTES)
        max_body_bytes=r.integer("max_body_bytes", d.max_body_bytes, lo=65_536, hi=64 * 1_048_576),
        max_batch=r.integer("max_batch", d.max_batch, lo=1, hi=10_000),
        max_in_flight=r.integer("max_in_flight", d.max_in_flight, lo=1, hi=1_000_000),
        max_lag_ms=r.integer("max_lag_ms", d.max_lag_ms, lo=0, hi=60_000),
        ip_rate_per_s=r.number("ip_rate_per_s", d.ip_rate_per_s, lo=0, hi=RATE_MAX_PER_S),
        ip_burst=r.integer("ip_burst", d.ip_burst, lo=1, hi=BURST_MAX),
        user_rate_per_s=r.number("user_rate_per_s", d.user_rate_per_s, lo=0, hi=RATE_MAX_PER_S),
        user_burst=r.integer("user_burst", d.user_burst, lo=1, hi=BURST_MAX),
    )
    r.done()
    return out


def parse(data: dict[str, Any], source: Path) -> Config:
    """Validate an already-parsed TOML document; ``source`` locates relative paths."""
    root = Reader(data, "", source.parent)
    tenants, keys = _read_tenants(root)
    engine = _read_engine(root.sub("engine"))
    reg = root.sub("registry")
    registry_dir = reg.filepath("dir") if reg.has("dir") else None
    registry_source = reg.text("source", "files", choices=REGISTRY_SOURCES)
    registry_reload_s = reg.integer("reload_seconds", 30, lo=1, hi=86_400)
    reg.done()
    state = root.sub("state")
    state_backend = state.text("backend", "memory", choices=STATE_BACKENDS)
    state_path = state.filepath("path") if state.has("path") else None
    state.done()
    sink = root.sub("sink")
    clickhouse = sink.text("clickhouse", "")
    if clickhouse.startswith("chdb:"):
        # an embedded data path is relative to the configuration file, like every other path
        clickhouse = "chdb:" + str((source.parent / clickhouse[len("chdb:"):]).resolve())
    elif clickhouse and not clickhouse.startswith(("http://", "https://")):
        raise ConfigError(f"sink.clickhouse: expected 'chdb:PATH' or an http(s):// URL, got {clickhouse.split('@')[-1]!r}")
    database = sink.text("database", "scanstream")
    sink.done()
    diversion = _read_diversion(root.sub("diversion"), root.sub("clones"))
    campaigns = []
    for cr in root.subs("campaigns"):
        c = _read_campaign(cr, tenants)
        if any(o.id == c.id for o in campaigns):
            raise ConfigError(f"{cr.key('id')}: campaign {c.id!r} is configured twice")
        campaigns.append(c)
    alerts = _read_alerts(root.sub("alerts"))
    redis = _read_redis(root.sub("redis"))
    kafka = _read_kafka(root.sub("kafka"))
    api = _read_api(root.sub("api"))
    enumeration = _read_enumeration(root.sub("enumeration"))
    segments = _read_segments(root.sub("segments"))
    root.done()
    if redis.result_ttl_s * 2 > engine.replay_ttl_s:
        # the scan API finds a scan's first outcome through its scan_id's identity (streams/replies.py),
        # which lives at least replay_ttl_hours from the claim; half of it is left for the claim to reply
        raise ConfigError(f"redis.result_ttl_s: {redis.result_ttl_s} s would outlive the identities that lead to "
                          f"the outcomes; expected at most half of engine.replay_ttl_hours "
                          f"({engine.replay_ttl_s // 2} s), or a longer replay_ttl_hours")
    if registry_source == "clickhouse" and not clickhouse:
        raise ConfigError("registry.source: 'clickhouse' needs sink.clickhouse to name a ClickHouse")
    return Config(source=source, tenants=tenants, keys=keys, engine=engine, registry_dir=registry_dir,
                  registry_source=registry_source, registry_reload_s=registry_reload_s,
                  state_backend=state_backend, state_path=state_path, clickhouse=clickhouse, database=database, diversion=diversion,
                  campaigns=tuple(campaigns), alerts=alerts, redis=redis, kafka=kafka, api=api,
                  enumeration=enumeration, segments=segments)


def load(path: str | os.PathLike[str] | None = None,
         overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Read and validate a configuration file.

    Without ``path``, the file named by ``$SCANSTREAM_CONFIG`` is used, else
    ``config/local.toml`` under the working directory.  ``overrides`` ({table: {key: value}})
    replace keys of the file's tables before validation, with the same checks (``scanstream dev``
    points a local configuration at the services it started).
    """
    chosen = Path(path) if path is not None else Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
    try:
        raw = chosen.read_bytes()
    except OSError as exc:
        hint = "" if path is not None else (f" (pass --config FILE, set {CONFIG_ENV}, or write one here with "
                                            f"`scanstream init`)")
        raise ConfigError(f"cannot read configuration {str(chosen)!r}: {exc.strerror}{hint}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:  # ValueError: an int of > 4300 digits
        raise ConfigError(f"{chosen}: not valid TOML: {exc}") from None
    for table, values in (overrides or {}).items():
        section = data.setdefault(table, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{table}: expected a table to override, got {type(section).__name__}")
        section.update(values)
    return parse(data, chosen.resolve())
