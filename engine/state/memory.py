"""The in-process state store: the embedded default, with the same answers as the Redis store.

Dedup keeps one bit per code in a packed bitset per (tenant, kind, batch); scan_id answers
and windowed counters live in dicts that forget entries after their time to live.  One lock
makes each call atomic, as a Lua script does on Redis.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from scanstream.engine.state import (Bindings, CampaignLimits, CampaignState, Claims, DrawStatus, Grants,
                                     GrantRequests, History, StateStore, fold, resolve_bindings, resolve_guides,
                                     sorted_contains, sorted_insert)
from scanstream.engine.outcomes import texts
from scanstream.engine.verdicts import Verdict
from scanstream.ext import memstate

#: Remember a scan_id's answer this long; a redelivery after that is a new scan.
DEFAULT_REPLAY_TTL_S = 24 * 3600
#: Dedup bitsets grow in steps of this many bytes (65 536 serials).
BITSET_STEP_BYTES = 8192
#: Bits of a code's serial (DESIGN.md "Code format v1").
SERIAL_BITS = 32


class MemoryStateStore(StateStore):
    """All state in this process; lost when it exits (use Redis to keep it)."""

    def __init__(self, replay_ttl_s: int = DEFAULT_REPLAY_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.replay_ttl_s = replay_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._bits: dict[int, np.ndarray] = {}  # batch key -> packed bits, bit = serial
        # scan_id -> its first answer: (verdict, event fingerprint, first user)
        self._answers: dict[str, tuple[int, int, str]] = {}
        self._answer_expiry: deque[tuple[float, list[str]]] = deque()  # (expiry, scan_ids), oldest first
        self._campaigns: dict[str, dict] = {}
        self._campaign_ids: list[str] = []
        # campaign -> code -> (tier, cents, commission paid with the prize)
        self._awards: dict[str, dict[int, tuple[int, int, int]]] = {}
        self._award_hashes: dict[str, np.ndarray] = {}  # campaign -> sorted ``fold`` of its won codes
        self._user_day: dict[tuple[str, str, int], int] = {}  # (campaign, user, day) -> prizes
        # counters (int), sets (a lone member as int, else a set) and marks (True), by uint64 key;
        # one dict because the three kinds never share a key
        self._windows: dict[int, object] = {}
        self._window_expiry: deque[tuple[float, list[int]]] = deque()
        self._blocks: dict[int, float] = {}  # block list: uint64 key -> expiry
        self._bindings: dict[int, History] = {}  # outbound bindings: uint64 key -> history
        self._bound_keys = np.zeros(0, np.uint64)  # the keys of ``_bindings``, sorted
        self._guides: dict[int, str] = {}  # a unit's exact identity (as in grant) -> its guide

    # -- dedup -----------------------------------------------------------------------------

    def claim(self, scan_id: np.ndarray, fingerprint: np.ndarray, user: np.ndarray, code: np.ndarray,
              serial: np.ndarray, verdict: np.ndarray) -> Claims:
        n = len(scan_id)
        scan_id = np.ascontiguousarray(scan_id, dtype=object)
        fingerprint = np.ascontiguousarray(fingerprint, np.uint64)
        out = np.asarray(verdict, np.uint8).copy()
        replay = np.zeros(n, bool)
        first_user = texts(n)
        with self._lock:
            now = self._clock()
            self._expire_answers(now)
            answers = self._answers
            # each scan_id's answer, and the first row of each new one, in one compiled loop
            # (ext/memstate.pyx): a scan_id repeated inside the batch is judged against its first row
            fresh, stored, known = memstate.look_up(answers, scan_id)
            rows = np.nonzero(fresh)[0]
            valid = rows[out[rows] == Verdict.OK]
            out[valid] = self._test_and_set(code[valid], serial[valid])
            # an answer: (verdict, fingerprint, first user), under each new scan_id
            memstate.remember(answers, scan_id, rows, out, fingerprint, np.ascontiguousarray(user, dtype=object))
            self._answer_expiry.append((now + self.replay_ttl_s, scan_id[rows].tolist()))
            again = np.nonzero(~fresh)[0]
            before = iter(known)
            for i, fp, was_stored in zip(again.tolist(), fingerprint[again].tolist(), stored[again].tolist()):
                # answered before the batch, or earlier in it
                verdict_of, fp_of, user_of = next(before) if was_stored else answers[scan_id[i]]
                if fp_of == fp:
                    out[i], replay[i] = verdict_of, True
                else:
                    out[i] = Verdict.CONFLICT
                    first_user[i] = user_of
        return Claims(out, replay, first_user)

    def _test_and_set(self, code: np.ndarray, serial: np.ndarray) -> np.ndarray:
        out = np.full(len(code), Verdict.REPEAT, np.uint8)
        if not len(code):
            return out
        # within the batch, only the first scan of a code can be its first scan ever: the first row of
        # each (code, serial), found by one stable sort of the two packed in 64 bits (the batch's few
        # codes numbered densely above the 32-bit serial) rather than a sort by three keys
        keys, key_of = np.unique(code, return_inverse=True)
        if serial.min() >= 0 and int(serial.max()) >> SERIAL_BITS == 0:
            packed = (key_of.astype(np.uint64) << np.uint64(SERIAL_BITS)) | serial.astype(np.uint64)
            first = np.unique(packed, return_index=True)[1]
        else:  # not serials of the code format: sorted by the three keys
            order = np.lexsort((np.arange(len(code)), serial, key_of))
            same = (key_of[order][1:] == key_of[order][:-1]) & (serial[order][1:] == serial[order][:-1])
            first = order[np.concatenate([[True], ~same])]
        key_of, s = key_of[first], serial[first].astype(np.int64)
        for k, key in enumerate(keys.tolist()):
            at = np.nonzero(key_of == k)[0]
            sel, ks = first[at], s[at]
            bits = self._bitset(int(key), int(ks.max()))
            byte, mask = ks >> 3, (1 << (ks & 7)).astype(np.uint8)
            new = (bits[byte] & mask) == 0
            # several serials can share a byte: an unbuffered OR keeps every bit
            np.bitwise_or.at(bits, byte[new], mask[new])
            out[sel[new]] = Verdict.OK
        return out

    def _bitset(self, key: int, max_serial: int) -> np.ndarray:
        bits = self._bits.get(key)
        need = (max_serial >> 3) + 1
        if bits is None or len(bits) < need:
            # grow in steps, not by doubling: a bitset stays within one step of its highest serial
            grown = np.zeros(-(-need // BITSET_STEP_BYTES) * BITSET_STEP_BYTES, np.uint8)
            if bits is not None:
                grown[:len(bits)] = bits
            self._bits[key] = bits = grown
        return bits

    def _expire_answers(self, now: float) -> None:
        while self._answer_expiry and self._answer_expiry[0][0] <= now:
            for scan in self._answer_expiry.popleft()[1]:
                self._answers.pop(scan, None)

    def dedup_bytes(self) -> int:
        """Bytes held by the dedup bitsets (for memory reports)."""
        return sum(b.nbytes for b in self._bits.values())

    # -- lottery ---------------------------------------------------------------------------

    def define_campaigns(self, campaigns: list[CampaignLimits]) -> None:
        with self._lock:
            self._campaign_ids = [c.id for c in campaigns]
            for c in campaigns:
                state = self._campaigns.setdefault(c.id, {"budget": c.budget_cents, "stock": list(c.stocks),
                                                          "prizes": 0, "commissions": 0})
                state["cap"] = c.daily_cap
                if len(state["stock"]) < len(c.stocks):  # tiers added to a running campaign
                    state["stock"].extend(c.stocks[len(state["stock"]):])

    def grant(self, requests: GrantRequests) -> Grants:
        n = len(requests.tier)
        status = np.full(n, DrawStatus.NO_PRIZE, np.uint8)
        tier = np.full(n, -1, np.int16)
        cents = np.zeros(n, np.int64)
        commission = np.zeros(n, np.int64)
        # a code that won keeps its prize: found by a search of its campaign's sorted hashes of won
        # codes first (most scans are of codes that never won), then exactly, by identity (a hash
        # shared by another code costs one more look-up, never a wrong answer)
        hashed = fold(requests.code, requests.serial)
        with self._lock:
            ids = self._campaign_ids
            awards = [self._awards.setdefault(cid, {}) for cid in ids]
            maybe = np.zeros(n, bool)
            # the campaigns of the batch (indexes >= 0): counted, not sorted or hashed
            for c in (np.flatnonzero(np.bincount(np.asarray(requests.campaign, np.int64))).tolist() if n else []):
                won_hashes = self._award_hashes.get(ids[c])
                if won_hashes is not None:
                    sel = np.nonzero(requests.campaign == c)[0]
                    maybe[sel[sorted_contains(won_hashes, hashed[sel])]] = True
            drawn = requests.tier >= 0
            look = np.nonzero(maybe | drawn)[0]
            rows, campaigns = look.tolist(), requests.campaign[look].tolist()
            codes = dict(zip(rows, _identities(requests.code[look], requests.serial[look])))
            given = [(i, p) for i, c in zip(rows, campaigns) if (p := awards[c].get(codes[i])) is not None]
            if given:  # codes that won before: the same prize back, nothing paid
                at = [i for i, _ in given]
                status[at] = int(DrawStatus.WON)
                tier[at], cents[at], commission[at] = zip(*(p for _, p in given))
                drawn[at] = False
            # only drawn prizes need the sequential check: the earlier scan takes the last one;
            # their columns as lists, each row's outcome collected and written back at once
            drawn_rows = np.nonzero(drawn)[0]
            WON, OUT_OF_STOCK, BUDGET, CAP = (int(DrawStatus.WON), int(DrawStatus.OUT_OF_STOCK), int(DrawStatus.BUDGET),
                                              int(DrawStatus.CAP))
            out_status, out_tier, out_cents, out_commission = [], [], [], []
            new_wins: dict[str, list[int]] = {}
            for i, camp, t, amount, user, day, guide, offered in zip(
                    drawn_rows.tolist(), requests.campaign[drawn_rows].tolist(), requests.tier[drawn_rows].tolist(),
                    requests.cents[drawn_rows].tolist(), requests.user[drawn_rows].tolist(),
                    requests.day[drawn_rows].tolist(), requests.guide[drawn_rows].tolist(),
                    requests.commission[drawn_rows].tolist()):
                won = awards[camp]
                # by campaign id, not position: the configuration may list campaigns in another order
                cid = ids[camp]
                state = self._campaigns[cid]
                user_key = (cid, user, day)
                prize = won.get(codes[i])
                if prize is not None:  # drawn twice in this batch: the first scan won it
                    out_status.append(WON)
                    t, amount, paid = prize
                elif state["stock"][t] <= 0:
                    out_status.append(OUT_OF_STOCK)
                    t, amount, paid = -1, 0, 0
                elif state["budget"] < amount:
                    out_status.append(BUDGET)
                    t, amount, paid = -1, 0, 0
                elif self._user_day.get(user_key, 0) >= state["cap"]:
                    out_status.append(CAP)
                    t, amount, paid = -1, 0, 0
                else:
                    state["stock"][t] -= 1
                    state["budget"] -= amount
                    state["prizes"] += 1
                    self._user_day[user_key] = self._user_day.get(user_key, 0) + 1
                    # the guide's commission: after the prize, only while the budget covers it
                    paid = offered if guide and 0 < offered <= state["budget"] else 0
                    if paid:
                        state["budget"] -= paid
                        state["commissions"] += 1
                    won[codes[i]] = (t, amount, paid)
                    new_wins.setdefault(cid, []).append(i)
                    out_status.append(WON)
                out_tier.append(t)
                out_cents.append(amount)
                out_commission.append(paid)
            if len(drawn_rows):
                status[drawn_rows], tier[drawn_rows] = out_status, out_tier
                cents[drawn_rows], commission[drawn_rows] = out_cents, out_commission
            for cid, won_rows in new_wins.items():
                self._award_hashes[cid] = sorted_insert(self._award_hashes.get(cid, hashed[:0]), hashed[won_rows])
        return Grants(status, tier, cents, commission)

    def campaign_state(self, campaign: str) -> CampaignState:
        with self._lock:
            state = self._campaigns.get(campaign)
            if state is None:
                raise KeyError(f"campaign {campaign!r} is not defined; defined: {sorted(self._campaigns)}")
            return CampaignState(state["budget"], tuple(state["stock"]), state["prizes"], state["commissions"])

    # -- guides ----------------------------------------------------------------------------

    def guides(self, code: np.ndarray, serial: np.ndarray, guide: np.ndarray) -> np.ndarray:
        n = len(code)
        guide = np.asarray(guide, dtype=object)
        with self._lock:
            if not self._guides and not (guide != "").any():  # no unit sold by a guide yet
                return texts(n)
            units: dict[int, int] = {}  # identity -> its index among the batch's distinct units
            index = np.fromiter((units.setdefault(k, len(units)) for k in _identities(code, serial)), np.int64, n)
            known = self._guides
            out, changed = resolve_guides(index, [known.get(k, "") for k in units], guide)
            if changed:
                ids = list(units)
                known.update((ids[u], g) for u, g in changed.items())
        return out

    # -- bindings --------------------------------------------------------------------------

    def bind(self, keys: np.ndarray, ts: np.ndarray, dealer: np.ndarray) -> Bindings:
        n = len(keys)
        writes = dealer != ""
        with self._lock:
            if not self._bindings and not writes.any():  # nothing shipped yet: nothing to read
                return Bindings(texts(n), np.full(n, -1, np.int64))
            keys = np.asarray(keys, np.uint64)
            # the rows whose key has a binding or gets one now, found by one search of the sorted
            # bound keys rather than a dict look-up per row: most scans are of goods no outbound
            # scan has touched
            walk = sorted_contains(sorted_insert(self._bound_keys, keys[writes]), keys)
            before = {k: h for k in keys[walk].tolist() if (h := self._bindings.get(k)) is not None}
            out, changed = resolve_bindings(keys, before, np.asarray(ts, np.int64), np.asarray(dealer, dtype=object),
                                            walk)
            new = [k for k in changed if k not in self._bindings]
            self._bindings.update(changed)
            if new:
                self._bound_keys = sorted_insert(self._bound_keys, np.array(new, np.uint64))
        return out

    # -- windows ---------------------------------------------------------------------------

    def _track(self, new_keys: list[int], ttl_s: int, now: float) -> None:
        if new_keys:
            self._window_expiry.append((now + ttl_s, new_keys))

    def _sweep(self, now: float) -> None:
        # before each call, as Redis expires keys: an expired key counts from zero again
        while self._window_expiry and self._window_expiry[0][0] <= now:
            for key in self._window_expiry.popleft()[1]:
                self._windows.pop(key, None)

    def count(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        totals = np.zeros(len(keys), np.int64)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            store, new = self._windows, []
            for i, k in enumerate(keys.tolist()):
                total = store.get(k, 0) + 1
                if total == 1:
                    new.append(k)
                store[k] = total
                totals[i] = total
            self._track(new, ttl_s, now)
        return totals

    def distinct(self, keys: np.ndarray, members: np.ndarray, ttl_s: int, new: np.ndarray | None = None,
                 present: np.ndarray | None = None, groups: np.ndarray | None = None) -> np.ndarray:
        if np.ndim(members) == 2 or present is not None:
            return self._distinct_columns(keys, members, ttl_s, new, present)
        sizes = np.ones(len(keys), np.int64)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            store = self._windows
            fresh = np.zeros(len(keys), bool) if new is None else np.asarray(new, bool)
            # keys known to be new take one bulk insert; the rest are walked in order
            added = keys[fresh].tolist()
            store.update(zip(added, members[fresh].tolist()))
            rest = np.nonzero(~fresh)[0]
            for i, k, m in zip(rest.tolist(), keys[rest].tolist(), members[rest].tolist()):
                cur = store.get(k)
                if cur is None:  # a set with one member is kept as the member
                    store[k] = m
                    added.append(k)
                elif type(cur) is int:
                    if cur != m:
                        store[k] = {cur, m}
                        sizes[i] = 2
                elif type(cur) is tuple:  # sets kept by a call of several: this is column 0
                    first = cur[0]
                    if first is None or first == m:
                        first = m
                    elif type(first) is int:
                        first = {first, m}
                    else:
                        first.add(m)
                    store[k] = (first,) + cur[1:]
                    sizes[i] = 1 if type(first) is int else len(first)
                else:
                    cur.add(m)
                    sizes[i] = len(cur)
            self._track(added, ttl_s, now)
        return sizes

    def _distinct_columns(self, keys: np.ndarray, members: np.ndarray, ttl_s: int, new: np.ndarray | None,
                          present: np.ndarray | None) -> np.ndarray:
        """``distinct`` with k sets per key.  A key's value is then a tuple of k columns, each None
        (empty), a member or a set; a value of one column (a member or a set, as the one-set calls
        keep it) is its column 0.  Flagged rows, most of a batch, start their sets afresh."""
        n = len(keys)
        members = np.asarray(members, np.uint64)
        flat = members.ndim == 1
        k = 1 if flat else members.shape[1]
        members = members.reshape(n, k)
        has = np.ones((n, k), bool) if present is None else np.asarray(present, bool).reshape(n, k)
        fresh = np.zeros(n, bool) if new is None else np.asarray(new, bool)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            # one compiled loop (ext/memstate.pyx): a tuple per row and an insert, or an update
            sizes, added = memstate.distinct_columns(self._windows, np.ascontiguousarray(keys, np.uint64),
                                                     np.ascontiguousarray(members), np.ascontiguousarray(has).view(np.uint8),
                                                     np.ascontiguousarray(fresh).view(np.uint8))
            self._track(added, ttl_s, now)
        return sizes[:, 0] if flat else sizes

    def mark_once(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        first = np.zeros(len(keys), bool)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            store, new = self._windows, []
            for i, k in enumerate(keys.tolist()):
                if k not in store:
                    store[k] = True
                    new.append(k)
                    first[i] = True
            self._track(new, ttl_s, now)
        return first

    def block(self, keys: np.ndarray, ttl_s: int) -> None:
        with self._lock:
            now = self._clock()
            blocks = self._blocks
            for k in keys.tolist():
                if blocks.get(k, now) <= now:
                    blocks[k] = now + ttl_s
            for k in [k for k, until in blocks.items() if until <= now]:  # few entries: a full sweep
                del blocks[k]

    def blocked(self, keys: np.ndarray) -> np.ndarray:
        with self._lock:
            now, blocks = self._clock(), self._blocks
            if not blocks:
                return np.zeros(len(keys), bool)
            return np.fromiter((blocks.get(k, now) > now for k in keys.tolist()), bool, len(keys))


def _identities(code: np.ndarray, serial: np.ndarray) -> list[int]:
    """Each code's identity as one exact integer: tenant|kind|batch (42 bits) and serial (32)."""
    return [(c << 32) | s for c, s in zip(np.asarray(code).tolist(), np.asarray(serial).tolist())]
