"""Scanner segments: RFM classes and lifecycle stages as of a date, built as ClickHouse SQL.

Pure logic: the definitions (class and stage names, the rules), the settings of ``[segments]``
and the SQL that applies them to ``scan_events``.  ``scanstream/cli/segments.py`` runs the SQL.

Definitions (``d`` is the as-of date, a calendar day in ``utc_offset_minutes``):

* **Population**: every (tenant, user_id) with at least one *valid* scan (verdict ``ok`` or
  ``repeat``) in one of the ``roles`` (consumer by default) on or before ``d``.  Only the first
  delivery of a scan counts (``scan_events FINAL`` keeps one row per scan_id, and ``replay = 0``
  leaves out the redelivered copies).  Scans after ``d`` (local time) are ignored, so a past
  as-of date gives what the segments were on that day.
* **Days since** a scan = ``d`` minus the scan's local calendar date (0 for a scan on ``d``).
* **R** (recency) = days since the last valid scan; **F** (frequency) = valid first scans
  (verdict ``ok``: the user was the first to scan that code); **M** (monetary) = prize money
  received, in cents (``prize_cents`` of the scans whose ``draw`` is ``won``).  The registry's
  batches.csv carries no price or value column, so M is the prize money, not a SKU value.
* R is *high* (R↑, recent) when R <= ``recency_days``; F is high when F >= ``frequency``; M is
  high when M >= ``monetary_cents``.  Every threshold is inclusive on the "high" side.
* **Lifecycle**, the first rule that applies: ``churned`` when the last valid scan is more
  than ``churn_days`` days before ``d``; ``dormant`` when it is more than ``dormant_days``;
  ``new`` when the first valid scan is at most ``new_days`` days before ``d``; ``mature`` with
  at least ``mature_scans`` valid first scans; ``growing`` otherwise.  So "within N days" means
  ``days since <= N`` (a scan exactly N days ago is within), "older than N days" ``> N``.

Segment names: an RFM class and a lifecycle stage share the English name ``new``, so every
segment has a qualified name, ``rfm:<class>`` or ``lifecycle:<stage>``; an unqualified name is
accepted when only one segment has it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np

#: Scans that show a genuine product: ``ok`` (first scan of the code) and ``repeat``.
VALID_VERDICTS = ("ok", "repeat")
#: The ``draw`` of a scan that was paid a prize.
WON = "won"
RFM, LIFECYCLE = "rfm", "lifecycle"
KINDS = (RFM, LIFECYCLE)
SNAPSHOT_TABLE = "segment_snapshots"
#: Columns the snapshot command writes (``taken_at``, the version, has a default).
SNAPSHOT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("date", "O", "Date"),
    ("tenant", "uint16", "UInt16"),
    ("segment", "O", "LowCardinality(String)"),
    ("users", "uint64", "UInt64"),
)


@dataclass(frozen=True)
class RfmClass:
    name: str
    label: str  # the Chinese name used by marketing teams
    r_high: bool  # recent
    f_high: bool
    m_high: bool

    @property
    def pattern(self) -> str:
        return "".join(f"{letter}{'↑' if high else '↓'}" for letter, high in
                       (("R", self.r_high), ("F", self.f_high), ("M", self.m_high)))


#: The eight classic RFM classes, in the usual order (most valuable first).
RFM_CLASSES: tuple[RfmClass, ...] = (
    RfmClass("important_value", "重要价值", True, True, True),
    RfmClass("important_recall", "重要唤回", False, True, True),
    RfmClass("important_develop", "重要深耕", True, False, True),
    RfmClass("important_retain", "重要挽留", False, False, True),
    RfmClass("potential", "潜力", True, True, False),
    RfmClass("new", "新", True, False, False),
    RfmClass("general_maintain", "一般维持", False, True, False),
    RfmClass("lost", "流失", False, False, False),
)


@dataclass(frozen=True)
class Stage:
    name: str
    label: str


#: Lifecycle stages, in the order of a scanner's life.
LIFECYCLE_STAGES: tuple[Stage, ...] = (
    Stage("new", "引入"),
    Stage("growing", "成长"),
    Stage("mature", "成熟"),
    Stage("dormant", "休眠"),
    Stage("churned", "流失"),
)


class SegmentError(ValueError):
    """A segment name that names no segment, or more than one."""


@dataclass(frozen=True)
class SegmentSettings:
    """``[segments]`` of the configuration; the rules are in the module docstring."""

    utc_offset_minutes: int = 480  # days end at local midnight (China time)
    roles: tuple[str, ...] = ("consumer",)
    recency_days: int = 30  # R high: last valid scan at most this many days before the as-of date
    frequency: int = 3  # F high: at least this many valid first scans
    monetary_cents: int = 1000  # M high: at least this much prize money, in cents
    new_days: int = 30  # lifecycle new: first valid scan at most this many days before
    mature_scans: int = 5  # mature: at least this many valid first scans
    dormant_days: int = 60  # dormant: last valid scan more than this many days before
    churn_days: int = 180  # churned: more than this many days before


# --------------------------------------------------------------------------- names


def qualified(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def segment_names() -> list[str]:
    """Qualified names of every segment: the eight RFM classes, then the five stages."""
    return [qualified(RFM, c.name) for c in RFM_CLASSES] + [qualified(LIFECYCLE, st.name) for st in LIFECYCLE_STAGES]


def resolve_segment(name: str) -> tuple[str, str]:
    """(kind, name) of a segment given as ``rfm:X``, ``lifecycle:X`` or an unambiguous ``X``."""
    text = name.strip()
    candidates = []
    for kind, names in ((RFM, [c.name for c in RFM_CLASSES]), (LIFECYCLE, [st.name for st in LIFECYCLE_STAGES])):
        for n in names:
            if text in (n, qualified(kind, n)):
                candidates.append((kind, n))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise SegmentError(f"segment {name!r} is ambiguous: say {' or '.join(qualified(*c) for c in candidates)}")
    raise SegmentError(f"segment {name!r} is not one of {segment_names()} "
                       "(the prefix may be left out when only one segment has the name)")


# --------------------------------------------------------------------------- rules (reference)


def rfm_class(days_since_last: int, frequency: int, monetary_cents: int, s: SegmentSettings) -> str:
    """The RFM class of a scanner (the same rule as the SQL of ``members_sql``)."""
    key = (days_since_last <= s.recency_days, frequency >= s.frequency, monetary_cents >= s.monetary_cents)
    return next(c.name for c in RFM_CLASSES if (c.r_high, c.f_high, c.m_high) == key)


def lifecycle_stage(days_since_first: int, days_since_last: int, frequency: int, s: SegmentSettings) -> str:
    """The lifecycle stage of a scanner (the same rule as the SQL of ``members_sql``)."""
    if days_since_last > s.churn_days:
        return "churned"
    if days_since_last > s.dormant_days:
        return "dormant"
    if days_since_first <= s.new_days:
        return "new"
    if frequency >= s.mature_scans:
        return "mature"
    return "growing"


def stage_rule(stage: str, s: SegmentSettings) -> str:
    """One-line rule of a lifecycle stage for listings."""
    return {
        "new": f"first valid scan <= {s.new_days} d ago",
        "growing": f"active, < {s.mature_scans} first scans",
        "mature": f"active, >= {s.mature_scans} first scans",
        "dormant": f"last valid scan > {s.dormant_days} d ago",
        "churned": f"last valid scan > {s.churn_days} d ago",
    }[stage]


def _tz(s: SegmentSettings) -> timezone:
    return timezone(timedelta(minutes=s.utc_offset_minutes))


def default_as_of(s: SegmentSettings, now: datetime | None = None) -> date:
    """Today in the configured UTC offset."""
    return (now or datetime.now(UTC)).astimezone(_tz(s)).date()


def local_day(ts_ms: int, s: SegmentSettings) -> date:
    """The calendar day of an epoch-millisecond time in the configured offset."""
    return datetime.fromtimestamp(ts_ms / 1000, _tz(s)).date()


def day_end_utc(as_of: date, s: SegmentSettings) -> datetime:
    """The first instant after ``as_of`` (local midnight that ends it), in UTC."""
    end = datetime(as_of.year, as_of.month, as_of.day, tzinfo=_tz(s)) + timedelta(days=1)
    return end.astimezone(UTC)


def describe(s: SegmentSettings) -> str:
    """The thresholds in words, for the ``segments show`` header."""
    sign = "+" if s.utc_offset_minutes >= 0 else "-"
    h, m = divmod(abs(s.utc_offset_minutes), 60)
    return (f"valid (ok/repeat) scans of role {'/'.join(s.roles)}, days end at midnight UTC{sign}{h:02d}:{m:02d}; "
            f"R↑ = last valid scan <= {s.recency_days} days ago, F↑ = >= {s.frequency} valid first scans, "
            f"M↑ = >= {s.monetary_cents} prize cents received")


# --------------------------------------------------------------------------- SQL


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_list(values) -> str:
    return ", ".join(_sql_string(v) for v in values)


def _as_of(as_of: date) -> date:
    if not isinstance(as_of, date) or isinstance(as_of, datetime):
        raise TypeError(f"as_of must be a datetime.date, got {type(as_of).__name__}")
    return as_of


def _tenant_filter(tenant: int | None) -> str:
    if tenant is None:
        return ""
    if isinstance(tenant, bool) or not isinstance(tenant, int) or not 0 <= tenant <= 65535:
        raise ValueError(f"tenant {tenant!r}: expected an integer 0..65535")
    return f"\n      AND tenant = {tenant}"


def members_sql(s: SegmentSettings, as_of: date, tenant: int | None = None) -> str:
    """One row per scanner of the population as of ``as_of``: tenant, user_id, first_day,
    last_day, days_since_first, days_since_last, frequency, monetary_cents, r_high, f_high,
    m_high, rfm_class, lifecycle."""
    as_of = _as_of(as_of)
    cutoff = day_end_utc(as_of, s).strftime("%Y-%m-%d %H:%M:%S")
    local_date = f"toDate(ts + INTERVAL {int(s.utc_offset_minutes)} MINUTE)"
    rfm = ",\n        ".join(
        f"r_high = {int(c.r_high)} AND f_high = {int(c.f_high)} AND m_high = {int(c.m_high)}, {_sql_string(c.name)}"
        for c in RFM_CLASSES[:-1])
    return f"""SELECT
    tenant,
    user_id,
    first_day,
    last_day,
    dateDiff('day', first_day, toDate('{as_of.isoformat()}')) AS days_since_first,
    dateDiff('day', last_day, toDate('{as_of.isoformat()}')) AS days_since_last,
    frequency,
    monetary_cents,
    toUInt8(days_since_last <= {int(s.recency_days)}) AS r_high,
    toUInt8(frequency >= {int(s.frequency)}) AS f_high,
    toUInt8(monetary_cents >= {int(s.monetary_cents)}) AS m_high,
    multiIf(
        {rfm},
        {_sql_string(RFM_CLASSES[-1].name)}) AS rfm_class,
    multiIf(
        days_since_last > {int(s.churn_days)}, 'churned',
        days_since_last > {int(s.dormant_days)}, 'dormant',
        days_since_first <= {int(s.new_days)}, 'new',
        frequency >= {int(s.mature_scans)}, 'mature',
        'growing') AS lifecycle
FROM
(
    SELECT
        tenant,
        user_id,
        min({local_date}) AS first_day,
        max({local_date}) AS last_day,
        countIf(verdict = 'ok') AS frequency,
        sumIf(toUInt64(prize_cents), draw = {_sql_string(WON)}) AS monetary_cents
    FROM scan_events FINAL
    WHERE replay = 0
      AND user_id != ''
      AND verdict IN ({_sql_list(VALID_VERDICTS)})
      AND role IN ({_sql_list(s.roles)})
      AND ts < toDateTime64('{cutoff}', 3, 'UTC'){_tenant_filter(tenant)}
    GROUP BY tenant, user_id
)"""


def sizes_sql(s: SegmentSettings, as_of: date, tenant: int | None = None) -> str:
    """Scanners per (tenant, rfm_class, lifecycle); ``sizes`` folds the rows per segment."""
    return (f"SELECT tenant, rfm_class, lifecycle, count() AS users\nFROM\n(\n{members_sql(s, as_of, tenant)}\n)\n"
            "GROUP BY tenant, rfm_class, lifecycle\nORDER BY tenant, rfm_class, lifecycle")


def export_sql(s: SegmentSettings, as_of: date, segment: str, tenant: int | None = None) -> str:
    """The user ids of one segment (any name ``resolve_segment`` accepts), sorted, each once."""
    kind, name = resolve_segment(segment)
    column = "rfm_class" if kind == RFM else "lifecycle"
    return (f"SELECT DISTINCT user_id\nFROM\n(\n{members_sql(s, as_of, tenant)}\n)\n"
            f"WHERE {column} = {_sql_string(name)}\nORDER BY user_id")


def sizes(rows, tenant: int | None = None) -> dict[int, dict[str, int]]:
    """tenant -> qualified segment name -> scanners, every segment present (zeros included),
    from the rows of ``sizes_sql``.  ``tenant`` is listed even when it has no scanners."""
    out: dict[int, dict[str, int]] = {}
    if tenant is not None:
        out[tenant] = dict.fromkeys(segment_names(), 0)
    for t, rfm, stage, users in rows:
        counts = out.setdefault(int(t), dict.fromkeys(segment_names(), 0))
        counts[qualified(RFM, rfm)] += int(users)
        counts[qualified(LIFECYCLE, stage)] += int(users)
    return dict(sorted(out.items()))


def snapshot_batch(counts: dict[int, dict[str, int]], as_of: date) -> dict[str, list]:
    """Rows for ``segment_snapshots`` (``SNAPSHOT_COLUMNS``): one per tenant and segment."""
    rows = [(t, seg, n) for t, per in counts.items() for seg, n in per.items()]
    dates = np.empty(len(rows), dtype=object)
    dates[:] = [as_of] * len(rows)
    segs = np.empty(len(rows), dtype=object)
    segs[:] = [seg for _, seg, _ in rows]
    return {"date": dates, "tenant": np.array([t for t, _, _ in rows], dtype=np.uint16),
            "segment": segs, "users": np.array([n for _, _, n in rows], dtype=np.uint64)}
