"""The state store: everything the engine must remember between batches, behind one interface.

Two backends implement it: ``engine.state.memory`` (in-process, the embedded default) and the
Redis store (production).  Every method takes and returns whole batches, and each call is
atomic for its batch: a backend that talks to a server makes one round trip per call, not
one per scan.  The engine's promises rest on these methods being idempotent under
redelivery: a scan_id seen before gets its first answer back, and a code that won keeps its
prize however often it is scanned or replayed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum, unique
from typing import Any

import numpy as np

from scanstream.engine.errors import TransientError


class StateUnavailable(TransientError):
    """The state store's server cannot be reached or cannot take writes; nothing was decided (transient).

    The message names the server by its URL with the password redacted.  The batch may be
    retried as a whole (the worker rewinds to its last committed offsets): every method is
    safe under redelivery.
    """


class DrawStatus(IntEnum):
    """Why a lottery draw did or did not pay (the ``draw`` output column)."""

    NONE = 0  # not a lottery scan: no campaign applies
    WON = 1
    NO_PRIZE = 2  # the draw fell outside every tier
    OUT_OF_STOCK = 3
    BUDGET = 4
    CAP = 5  # the user reached the campaign's daily cap
    INELIGIBLE = 6  # a campaign applies but the scan may not win (not ok, not a consumer, sku, region)
    BLOCKED = 7  # the scanner is on the enumeration block list

    @property
    def label(self) -> str:
        return self.name.lower()


DRAW_LABELS = np.array([s.label for s in DrawStatus], dtype=object)

#: Key of the hash that turns logical state keys (``div|7|D-1|region|4401|...``, a user id)
#: into uint64 keys and members: fixed-size keys for every backend, equal on every worker.
#: Not a secret: it only spreads keys evenly.
STATE_HASH_KEY = b"scanstream-state"
_FOLD = np.uint64(0x100000001B3)


def state_keys(strings: list[str] | np.ndarray) -> np.ndarray:
    """uint64 state keys (or set members) of strings."""
    from scanstream.ext.codec import hash_strings
    return hash_strings(strings if isinstance(strings, list) else strings.tolist(), STATE_HASH_KEY)


def fold(keys: np.ndarray, *values: np.ndarray) -> np.ndarray:
    """Derive keys from uint64 ``keys`` and integer columns (e.g. a window number), vectorised.

    The inputs are already uniform hashes, so a multiply-xor fold keeps them uniform.
    """
    out = np.asarray(keys, np.uint64).copy()
    for v in values:
        out = (out ^ np.asarray(v).astype(np.uint64)) * _FOLD
    return out


@unique
class Namespace(IntEnum):
    """The kinds of windowed state, one number each, folded into every window key (``fold``), so
    that two stages can never count into the same key.  All of them are here, in one place."""
    DIVERSION = 1  # scans of a (dealer, place, role) in a window (engine/diversion.py)
    DIVERSION_FIRED = 2  # a diversion alert raised for that window
    # 3 and 4 were a code's users and provinces in two sets of their own: not to be reused
    CLONE_FIRED = 5  # a clone alert raised for that window
    CLONE = 6  # distinct users (set 0) and provinces (set 1) of a code in a window, one key
    ENUMERATION = 11  # forged or malformed scans of one identity in a window (engine/enumeration.py)
    ENUMERATION_FIRED = 12  # an enumeration alert raised for that window
    BLOCK = 13  # an identity on the block list


@dataclass(frozen=True)
class CampaignLimits:
    """What the state store enforces for one campaign."""

    id: str
    budget_cents: int
    stocks: tuple[int, ...]  # per tier
    daily_cap: int  # prizes per user per day


@dataclass
class Claims:
    """Result of ``claim``: per scan, its verdict (engine.verdicts codes) and whether it is a replay.

    A scan_id claimed before with the same fingerprint is a redelivery: ``replay`` is set and
    the verdict is the first answer.  With another fingerprint it is a CONFLICT (``replay``
    unset) and ``first_user`` names the user of the event that claimed the scan_id first.
    """

    verdict: np.ndarray  # uint8
    replay: np.ndarray  # bool
    first_user: np.ndarray  # object: '' except on CONFLICT rows
    #: ``OUTCOME_REF`` per row: where the store recorded the code step of a row whose identity this
    #: call made and whose code decided its verdict (token 0 elsewhere: a redelivered identity's
    #: reference is an earlier call's); None from a store that keeps no such record (memory, embedded)
    ref: np.ndarray | None = None


#: Where a store that claims in two steps (``redis_lua``) recorded a row's code outcome: the claim
#: call's token (never 0 for a record; 0: none), the row's rank among that call's rows in the
#: code's shard, and that shard.  The scan_id's identity holds the same reference, so the worker
#: files a new scan's first outcome line under it (``streams/replies.py``) and the scan API finds
#: it through the identity, instead of through a reply field of its own per scan.
OUTCOME_REF = np.dtype([("token", "<u8"), ("rank", "<u4"), ("shard", "u1")])


def pack_answer(verdict: int, fingerprint: int, user: str, ref: bytes = b"") -> bytes:
    """A scan_id's stored answer as the Redis store keeps it (a hash field's value, written by its
    claim script): verdict byte, 8-byte fingerprint (little-endian), for a claim whose verdict its
    code decides the 12-byte ``ref`` to its outcome record, the first user's id (UTF-8).
    The memory store keeps the verdict, fingerprint and user as a tuple."""
    return bytes((verdict,)) + int(fingerprint).to_bytes(8, "little") + ref + user.encode("utf-8", "surrogatepass")


@dataclass
class GrantRequests:
    """Lottery draws to settle, in scan order; all arrays of one length."""

    campaign: np.ndarray  # int: index into the campaigns given to ``define_campaigns``
    code: np.ndarray  # uint64: registry.batch_key(tenant, kind, batch)
    serial: np.ndarray  # uint32
    user: np.ndarray  # object: user_id
    day: np.ndarray  # int64: the scan's day number in the campaign's time zone
    tier: np.ndarray  # int16: drawn tier, -1 for no prize
    cents: np.ndarray  # int64: the drawn tier's amount
    # 导购 commissions (DESIGN.md "Campaign"): the unit's guide ('' for none) and what the guide
    # earns when this row's prize is paid (0 for none); None means none on every row
    guide: np.ndarray | None = None  # object: a guide's user_id
    commission: np.ndarray | None = None  # int64: cents

    def __post_init__(self) -> None:
        n = len(self.tier)
        if self.guide is None:
            self.guide = np.full(n, "", dtype=object)
        if self.commission is None:
            self.commission = np.zeros(n, np.int64)


@dataclass
class Grants:
    """Result of ``grant``: per request, the status, the prize actually paid and the commission
    paid with it to the unit's guide (a prize given back gives its commission back too)."""

    status: np.ndarray  # uint8 DrawStatus
    tier: np.ndarray  # int16, -1 when nothing was paid
    cents: np.ndarray  # int64
    commission: np.ndarray  # int64, 0 when no commission was paid


#: Bindings kept per key: a case re-shipped more often than this forgets its oldest bindings (a
#: scan older than every binding kept falls back to the registry's shipments).
BINDING_HISTORY = 8


@dataclass
class Bindings:
    """Result of ``bind``: per row, the dealer its key is bound to as of the row's time."""

    dealer: np.ndarray  # object: dealer_id, '' when no binding is in force
    ts: np.ndarray  # int64: when that binding was made (its outbound scan's ts), -1 when none


#: A key's bindings: (ts, dealer_id) pairs sorted by ts, one per ts, at most ``BINDING_HISTORY``.
History = tuple[tuple[int, str], ...]


def resolve_bindings(keys: np.ndarray, before: dict[int, History], ts: np.ndarray, dealer: np.ndarray,
                     walk: np.ndarray | None = None) -> tuple[Bindings, dict[int, History]]:
    """The answers of ``bind`` for rows of ``keys``, given ``before``: the history of each of those
    keys that had one before the batch (a key without one is absent).  Also returns each written
    key's history after the batch.  ``walk`` may flag the rows whose key is in ``before`` or is
    written in the batch, when the caller found them already.

    One function for every backend: the memory store passes its dict's entries, the Redis store
    the entries its script read in the same atomic step in which it applied the writes (the same
    merge, ``merge_binding``), so both answer alike.  Rows are walked in order only where their
    key has or gets a binding; the rest answer "none" without a Python step.
    """
    n = len(keys)
    out = Bindings(np.full(n, "", dtype=object), np.full(n, -1, np.int64))
    if walk is None:
        involved = np.concatenate([np.fromiter(before, np.uint64, len(before)), keys[dealer != ""]])
        walk = sorted_contains(np.unique(involved), keys)
    rows = np.nonzero(walk)[0]
    current: dict[int, History] = {}  # keys met so far in this batch
    changed: dict[int, History] = {}
    for i, k, t, d in zip(rows.tolist(), keys[rows].tolist(), ts[rows].tolist(), dealer[rows].tolist()):
        history = current.get(k)
        if history is None:
            history = before.get(k, ())
        if d:
            current[k] = changed[k] = merge_binding(history, t, d)
            out.dealer[i], out.ts[i] = d, t
        else:
            current[k] = history
            for bound_ts, bound_dealer in reversed(history):
                if bound_ts <= t:  # the latest binding made at or before the scan
                    out.dealer[i], out.ts[i] = bound_dealer, bound_ts
                    break
    return out, changed


def sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """True for each of ``keys`` found in ``sorted_keys`` (sorted): a binary search per key, where
    ``np.isin`` would sort both arrays on every call."""
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


def sorted_insert(sorted_keys: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``sorted_keys`` with ``new`` keys added, still sorted: one copy, no sort of the whole."""
    new = np.unique(new)
    return np.insert(sorted_keys, np.searchsorted(sorted_keys, new), new)


def merge_binding(history: History, ts: int, dealer: str) -> History:
    """``history`` with ``dealer`` bound from ``ts`` on: a binding at the same ts is replaced (the
    later outbound scan wins), the oldest go beyond ``BINDING_HISTORY``."""
    kept = [h for h in history if h[0] != ts] + [(ts, dealer)]
    kept.sort(key=lambda h: h[0])
    return tuple(kept[-BINDING_HISTORY:])


def unit_identities(code: np.ndarray, serial: np.ndarray) -> np.ndarray:
    """Each row's exact code identity, (batch key, serial), as 12 packed little-endian bytes: the
    field under which the Redis store keeps a code's prize and its guide, never a hash that two
    codes could share."""
    out = np.empty(len(code), np.dtype([("code", "<u8"), ("serial", "<u4")]))
    out["code"] = code
    out["serial"] = serial
    return out


def resolve_guides(index: np.ndarray, before: list[str], guide: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """The answers of ``guides``: ``index`` gives each row's unit among the batch's distinct units,
    ``before`` each distinct unit's guide before the batch ('' for none).  Returns each row's guide
    after the row, and the units that got their first guide in this batch (unit index -> guide).

    One function for every backend, as ``resolve_bindings`` is.  Only rows that name a guide are
    walked (a sale); the reads are answered vectorised.
    """
    n = len(index)
    current = np.asarray(before, dtype=object)
    set_at = np.full(len(before), n, np.int64)  # the row at which a unit got its guide in this batch
    changed: dict[int, str] = {}
    for i in np.nonzero(guide != "")[0].tolist():
        u = int(index[i])
        if not current[u]:  # the first guide to sell the unit keeps it
            current[u] = changed[u] = guide[i]
            set_at[u] = i
    out = current[index] if n else np.zeros(0, dtype=object)
    if changed:
        before_set = np.arange(n) < set_at[index]
        out[before_set] = np.asarray(before, dtype=object)[index[before_set]]
    return out, changed


@dataclass(frozen=True)
class CampaignState:
    """What is left of a campaign, for summaries and dashboards."""

    budget_left: int  # after prizes and commissions
    stock_left: tuple[int, ...]
    prizes: int
    commissions: int = 0  # guides' commissions paid


class StateStore(ABC):
    """Batch-atomic state primitives used by the dedup, diversion and lottery stages."""

    @abstractmethod
    def claim(self, scan_id: np.ndarray, fingerprint: np.ndarray, user: np.ndarray, code: np.ndarray,
              serial: np.ndarray, verdict: np.ndarray) -> Claims:
        """Test-and-set one bit per code, in order, and remember each scan_id's answer.

        ``verdict`` is each scan's verdict so far: rows at OK are valid, activated codes, whose
        first scan stays OK and every later one becomes REPEAT; other rows keep their verdict
        and only have it remembered, with the event's ``fingerprint`` (uint64) and ``user``.
        A scan_id claimed before (in an earlier call or earlier in this batch) touches no bit:
        with the same fingerprint it gets its first answer again, with ``replay`` set; with
        another it is CONFLICT, and the stored answer stays as it was.
        """

    @abstractmethod
    def define_campaigns(self, campaigns: list[CampaignLimits]) -> None:
        """Make the campaigns' budgets and stocks known; existing counters are kept as they are."""

    @abstractmethod
    def grant(self, requests: GrantRequests) -> Grants:
        """Pay each drawn prize if the code never won in this campaign and stock, budget and the
        user's daily cap allow, in request order, atomically for the batch.  A code that won
        before gets its prize back (WON, same tier) without paying again.

        A prize paid now on a row with a guide and a commission also pays the commission, from
        the same budget, after the prize and only if what is left covers it; it is kept with the
        prize, so a code pays at most one commission per campaign, given back as the prize is."""

    @abstractmethod
    def campaign_state(self, campaign: str) -> CampaignState:
        """Budget and stock left, prizes and commissions paid so far."""

    # 超级导购码: the guide of a unit, the first guide whose sale scan of it was valid.  Kept for
    # ever, one entry per unit sold by a guide, read for the consumer scans that could win.

    @abstractmethod
    def guides(self, code: np.ndarray, serial: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """In row order: a row with a ``guide`` (user_id) makes it the guide of its unit (``code``
        the batch key, ``serial``) unless the unit has one; every row gets its unit's guide after
        the row, '' when none.  Atomic for the batch; ``resolve_guides`` gives the answers."""

    # Outbound bindings (物流防窜): where a warehouse shipped a case or a unit.  Kept for ever, one
    # entry per key however many units a case holds, read for nearly every scan.

    @abstractmethod
    def bind(self, keys: np.ndarray, ts: np.ndarray, dealer: np.ndarray) -> Bindings:
        """In row order: a row with a ``dealer`` binds its uint64 key to that dealer from ``ts``
        on; a row with ``dealer == ''`` reads the binding in force at its ``ts`` (the latest made
        at or before it).  Atomic for the batch; ``resolve_bindings`` gives the answers."""

    # Windowed state.  Keys are uint64 (``state_keys``/``fold``) and carry their window, so a
    # key is never reused for another window: the time to live only bounds memory.  An entry
    # lives at least ``ttl_s`` after it was created; a backend may keep it up to twice as long.

    @abstractmethod
    def count(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        """Add one to the counter of each key, in order (keys may repeat); totals after each add."""

    @abstractmethod
    def distinct(self, keys: np.ndarray, members: np.ndarray, ttl_s: int, new: np.ndarray | None = None,
                 present: np.ndarray | None = None, groups: np.ndarray | None = None) -> np.ndarray:
        """Add each uint64 member to the set ``keys[i]``, in order; the set's size after each add.

        ``members`` may be a matrix of k columns: a key then holds k independent sets, column j's
        members going to its set j, and the answer is a matrix of the sizes (a clone check's
        users and provinces of one code: one entry, one look-up).  ``present`` (the members'
        shape, bool) leaves the members it marks False out: their row adds nothing to that set
        and gets its size as it is (0 for none).

        ``new`` may flag rows whose key the caller knows has no set yet and appears on no
        earlier row of the batch (a code's first scan ever): such a row starts its sets afresh
        with its members, without the store looking first.

        ``groups`` names each row's code group (``ext.codec.code_partitions``: its code's
        partition of the scans topic; every row of a key in one group).  A store shared by many
        workers keeps each group's sets in the worker that uses it (``set_log``); the others
        ignore it.  The answers never depend on it.
        """

    @abstractmethod
    def mark_once(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        """True for each key not marked before (the first time it appears, in order)."""

    # The block list: few entries (identities caught enumerating codes), asked about for every
    # scan that could win, so a backend answers a whole batch without a look-up per key while
    # the list is empty.

    @abstractmethod
    def block(self, keys: np.ndarray, ttl_s: int) -> None:
        """Put each uint64 key on the block list for ``ttl_s``; a key already on it keeps its expiry."""

    @abstractmethod
    def blocked(self, keys: np.ndarray) -> np.ndarray:
        """True for each key on the block list and not expired."""

    def durable(self) -> None:
        """Return once every call so far would survive the loss of the server that took it; raise
        ``StateUnavailable`` when that cannot be known in time (transient: nothing may be told
        of the batch, which is taken again).  The pipeline calls it after a batch's last state
        call, before any outcome leaves.  The Redis store waits for replicas (``WAIT``) when
        asked to; the in-process stores have nothing to wait for."""

    # The driver's checkpoint: where in its input the state is, kept with the state itself so
    # that the two can never disagree.

    def checkpoint(self, **meta: Any) -> None:
        """Make every change so far durable, together with the driver's ``meta`` (JSON values).

        A server backend stores each call as it is made, so for it this stores ``meta`` only;
        the embedded store commits its calls and ``meta`` in one transaction.  This default
        keeps ``meta`` in the process (the memory store, which keeps nothing past it).
        """
        self._driver_meta = {**getattr(self, "_driver_meta", {}), **meta}

    def meta(self, key: str) -> Any:
        """A value given to ``checkpoint``; None when never given."""
        return getattr(self, "_driver_meta", {}).get(key)

    def close(self) -> None:
        """Release connections; the memory store keeps nothing to release."""
