"""The in-process state store: the embedded default, with the same answers as the Redis store.

Dedup keeps one bit per code in a packed bitset per (tenant, kind, batch); scan_id answers
and windowed counters live in dicts that forget entries after their time to live.  One lock
makes each call atomic, as a Lua script does on Redis.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from engine.state import (CampaignLimits, CampaignState, Claims, DrawStatus, Grants, GrantRequests,
                          StateStore)
from engine.verdicts import Verdict

#: Remember a scan_id's answer this long; a redelivery after that is a new scan.
DEFAULT_REPLAY_TTL_S = 7 * 24 * 3600


class MemoryStateStore(StateStore):
    """All state in this process; lost when it exits (use Redis to keep it)."""

    def __init__(self, replay_ttl_s: int = DEFAULT_REPLAY_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.replay_ttl_s = replay_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._bits: dict[int, np.ndarray] = {}  # batch key -> packed bits, bit = serial
        self._answers: OrderedDict[str, tuple[int, float]] = OrderedDict()  # scan_id -> (verdict, expiry)
        self._campaigns: dict[str, dict] = {}
        self._campaign_ids: list[str] = []
        self._awards: dict[tuple[int, int, int], tuple[int, int]] = {}  # (campaign, code, serial) -> (tier, cents)
        self._user_day: dict[tuple[int, str, int], int] = {}
        self._expiring: dict[str, tuple[object, float]] = {}  # counters, sets and marks

    # -- dedup -----------------------------------------------------------------------------

    def claim(self, scan_id: np.ndarray, code: np.ndarray, serial: np.ndarray) -> Claims:
        n = len(scan_id)
        verdict = np.zeros(n, np.uint8)
        replay = np.zeros(n, bool)
        with self._lock:
            now = self._clock()
            self._expire_answers(now)
            known = [self._answers.get(s) for s in scan_id.tolist()]
            for i, k in enumerate(known):
                if k is not None:
                    verdict[i] = k[0]
                    replay[i] = True
            # a scan_id repeated inside the batch is a replay of its first occurrence
            _, first = np.unique(scan_id, return_index=True)
            fresh = np.zeros(n, bool)
            fresh[first] = True
            fresh &= ~replay
            rows = np.nonzero(fresh)[0]
            verdict[rows] = self._test_and_set(code[rows], serial[rows])
            expiry = now + self.replay_ttl_s
            for s, v in zip(scan_id[rows].tolist(), verdict[rows].tolist()):
                self._answers[s] = (v, expiry)
            dup = ~fresh & ~replay
            if dup.any():
                answer = dict(zip(scan_id[rows].tolist(), verdict[rows].tolist()))
                for i in np.nonzero(dup)[0]:
                    verdict[i] = answer[scan_id[i]]
                    replay[i] = True
        return Claims(verdict, replay)

    def _test_and_set(self, code: np.ndarray, serial: np.ndarray) -> np.ndarray:
        out = np.full(len(code), Verdict.REPEAT, np.uint8)
        if not len(code):
            return out
        serial = serial.astype(np.int64)
        # within the batch, only the first scan of a code can be its first scan ever
        pair = np.stack([code.astype(np.uint64), serial.astype(np.uint64)], axis=1)
        _, first = np.unique(pair, axis=0, return_index=True)
        for key in np.unique(code[first]):
            sel = first[code[first] == key]
            s = serial[sel]
            bits = self._bitset(int(key), int(s.max()))
            byte, mask = s >> 3, (1 << (s & 7)).astype(np.uint8)
            new = (bits[byte] & mask) == 0
            # several serials can share a byte: an unbuffered OR keeps every bit
            np.bitwise_or.at(bits, byte[new], mask[new])
            out[sel[new]] = Verdict.OK
        return out

    def _bitset(self, key: int, max_serial: int) -> np.ndarray:
        bits = self._bits.get(key)
        need = (max_serial >> 3) + 1
        if bits is None or len(bits) < need:
            grown = np.zeros(max(need, 2 * len(bits) if bits is not None else need), np.uint8)
            if bits is not None:
                grown[:len(bits)] = bits
            self._bits[key] = bits = grown
        return bits

    def _expire_answers(self, now: float) -> None:
        while self._answers:
            scan, (_, expiry) = next(iter(self._answers.items()))
            if expiry > now:
                break
            self._answers.popitem(last=False)

    def dedup_bytes(self) -> int:
        """Bytes held by the dedup bitsets (for memory reports)."""
        return sum(b.nbytes for b in self._bits.values())

    # -- lottery ---------------------------------------------------------------------------

    def define_campaigns(self, campaigns: list[CampaignLimits]) -> None:
        with self._lock:
            self._campaign_ids = [c.id for c in campaigns]
            for c in campaigns:
                state = self._campaigns.setdefault(c.id, {"budget": c.budget_cents, "stock": list(c.stocks),
                                                          "prizes": 0})
                state["cap"] = c.daily_cap
                if len(state["stock"]) < len(c.stocks):  # tiers added to a running campaign
                    state["stock"].extend(c.stocks[len(state["stock"]):])

    def grant(self, requests: GrantRequests) -> Grants:
        n = len(requests.tier)
        status = np.full(n, DrawStatus.NO_PRIZE, np.uint8)
        tier = np.full(n, -1, np.int16)
        cents = np.zeros(n, np.int64)
        with self._lock:
            for i in range(n):  # order matters: the earlier scan takes the last prize
                camp = int(requests.campaign[i])
                cid = self._campaign_ids[camp]
                state = self._campaigns[cid]
                award_key = (camp, int(requests.code[i]), int(requests.serial[i]))
                if award_key in self._awards:
                    status[i] = DrawStatus.WON
                    tier[i], cents[i] = self._awards[award_key]
                    continue
                t = int(requests.tier[i])
                if t < 0:
                    continue
                amount = int(requests.cents[i])
                user_key = (camp, requests.user[i], int(requests.day[i]))
                if state["stock"][t] <= 0:
                    status[i] = DrawStatus.OUT_OF_STOCK
                elif state["budget"] < amount:
                    status[i] = DrawStatus.BUDGET
                elif self._user_day.get(user_key, 0) >= state["cap"]:
                    status[i] = DrawStatus.CAP
                else:
                    state["stock"][t] -= 1
                    state["budget"] -= amount
                    state["prizes"] += 1
                    self._user_day[user_key] = self._user_day.get(user_key, 0) + 1
                    self._awards[award_key] = (t, amount)
                    status[i], tier[i], cents[i] = DrawStatus.WON, t, amount
        return Grants(status, tier, cents)

    def campaign_state(self, campaign: str) -> CampaignState:
        with self._lock:
            state = self._campaigns.get(campaign)
            if state is None:
                raise KeyError(f"campaign {campaign!r} is not defined; defined: {sorted(self._campaigns)}")
            return CampaignState(state["budget"], tuple(state["stock"]), state["prizes"])

    # -- windows ---------------------------------------------------------------------------

    def _live(self, key: str, now: float, fresh: Callable[[], object], ttl_s: int) -> object:
        entry = self._expiring.get(key)
        if entry is None or entry[1] <= now:
            entry = (fresh(), now + ttl_s)
            self._expiring[key] = entry
        return entry[0]

    def _sweep(self, now: float) -> None:
        # dropping expired windows keeps memory bounded by what is live
        dead = [k for k, (_, expiry) in self._expiring.items() if expiry <= now]
        for k in dead:
            del self._expiring[k]

    def count(self, keys: np.ndarray, amounts: np.ndarray, ttl_s: int) -> np.ndarray:
        totals = np.zeros(len(keys), np.int64)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            for i, (k, a) in enumerate(zip(keys.tolist(), amounts.tolist())):
                cell = self._live(k, now, lambda: [0], ttl_s)
                cell[0] += a
                totals[i] = cell[0]
        return totals

    def distinct(self, keys: np.ndarray, members: np.ndarray, ttl_s: int) -> np.ndarray:
        sizes = np.zeros(len(keys), np.int64)
        with self._lock:
            now = self._clock()
            for i, (k, m) in enumerate(zip(keys.tolist(), members.tolist())):
                members_set = self._live(k, now, set, ttl_s)
                members_set.add(m)
                sizes[i] = len(members_set)
        return sizes

    def mark_once(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        first = np.zeros(len(keys), bool)
        with self._lock:
            now = self._clock()
            for i, k in enumerate(keys.tolist()):
                entry = self._expiring.get(k)
                if entry is None or entry[1] <= now:
                    self._expiring[k] = (True, now + ttl_s)
                    first[i] = True
        return first
