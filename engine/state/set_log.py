"""``distinct``'s sets for the Redis store: kept in the process, per code group, logged to Redis.

Why not in Redis itself: a clone check adds a code's user and province to the code's sets on
every verified scan, and almost every scan is its code's first in the window, so sets in Redis
cost a new hash field per scan and the Lua work of building it, about a fifth of Redis's CPU per
scan (``benchmarks/bench_state_calls.py``).  Redis is the part that does not scale out; the
workers do.  A code's scans all reach one worker (the publisher keys the scans topic by the code,
``streams.publisher.code_key``), so its sets can live there, with a log to rebuild them from: the
worker keeps the sets of each *code group* (``ext.codec.code_partitions``:
the code's partition of the scans topic) in a ``MemoryStateStore`` of their own, and appends each
call's arguments to the group's log, one Redis list element per group and call:

    P cl:{t}:<group>:<ttl>:<epoch>   list   the packed ``distinct`` calls of the group made in
                                            epoch ``now // ttl``, oldest first; expires at the end
                                            of the next epoch (every set lives at least one TTL)

The log is the state: a group's sets here are always the replay of its log, in order, from
empty, with each call's own clock.  So before a call uses a group it reads what the log holds
past what it applied (nothing, while this process is the group's only writer; everything, the
first time, which restores a group after a restart or a rebalance), and after its local answer it
appends; if the append does not land right after what it had read (another writer came between:
a worker that lost the partition and has not noticed yet), or does not land at all (Redis away),
the group is dropped and rebuilt from the log at its next use.  A call whose append failed raises
``StateUnavailable``; its batch is redelivered and answered from the log, which holds no call
that failed before it reached Redis (one that timed out after Redis took it is in the log, and
its redelivery finds its own members there, as it would have found them in Redis after a state
script that timed out once it had run).  A stream split over any runs or workers therefore gets
the answers of one run, as with sets in Redis, whichever partition a scan arrives on: a code group
read by two workers is only slower (each reads the other's calls), not wrong.

Cost: one round trip to read (an ``LRANGE`` per group and epoch, empty in the steady state) and
one to append (an ``RPUSH`` and an ``EXPIREAT`` per group) per call, and about 27 bytes of log
per scan, against a hash field of about 78 bytes and its Lua work per scan.  A restore reads up
to two TTLs of a group's calls (the clone window's retention, 30 minutes by default), the older
epoch's log first, ``LOG_PAGE`` elements per read.  Groups not
used for two TTLs are dropped from the process (their partitions moved to another worker).
"""
from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from scanstream.engine.errors import PermanentError
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.engine.state.redis_lua import SHARDS, shard_key

#: A logged call's header: format, rows, sets per key (0: one set, members as a flat column),
#: flags (1: ``new`` given, 2: ``present`` given), TTL (s), the call's time (Unix s).
_HEADER = struct.Struct("<BIIBId")
_FORMAT = 1
_NEW, _PRESENT = 1, 2
#: Log elements per read when a group catches up: an element is a batch's calls of one group (a
#: few KiB), so a page is a few MiB, and a restore of a busy group does not hold Redis for the
#: whole of a reply of hundreds of MiB.
LOG_PAGE = 1000


def pack_call(keys: np.ndarray, members: np.ndarray, ttl_s: int, new: np.ndarray | None,
              present: np.ndarray | None, at: float) -> bytes:
    """One ``distinct`` call as a log element: the header, then the keys, the members, the
    ``new`` flags and the ``present`` marks, each a packed little-endian column."""
    n = len(keys)
    members = np.asarray(members, np.uint64)
    k = 0 if members.ndim == 1 else members.shape[1]
    flags = (_NEW if new is not None else 0) | (_PRESENT if present is not None else 0)
    parts = [_HEADER.pack(_FORMAT, n, k, flags, int(ttl_s), at), np.asarray(keys, "<u8").tobytes(),
             np.ascontiguousarray(members, "<u8").tobytes()]
    if new is not None:
        parts.append(np.asarray(new, bool).astype(np.uint8).tobytes())
    if present is not None:
        parts.append(np.ascontiguousarray(present, bool).astype(np.uint8).tobytes())
    return b"".join(parts)


def unpack_call(blob: bytes) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None, np.ndarray | None, float]:
    """``pack_call``'s arguments back: keys, members, ttl_s, new, present, at.  A blob of another
    format or length raises ``ValueError`` (a log written by another version is not guessed at)."""
    if len(blob) < _HEADER.size:
        raise ValueError(f"set log element of {len(blob)} bytes: expected at least {_HEADER.size}")
    fmt, n, k, flags, ttl_s, at = _HEADER.unpack_from(blob)
    width = max(k, 1)
    want = _HEADER.size + 8 * n + 8 * n * width + (n if flags & _NEW else 0) + (n * width if flags & _PRESENT else 0)
    if fmt != _FORMAT or len(blob) != want:
        raise ValueError(f"set log element: format {fmt}, {len(blob)} bytes; expected format {_FORMAT}, {want} bytes")
    pos = _HEADER.size
    keys = np.frombuffer(blob, "<u8", n, pos).astype(np.uint64)
    pos += 8 * n
    members = np.frombuffer(blob, "<u8", n * width, pos).astype(np.uint64)
    members = members if k == 0 else members.reshape(n, k)
    pos += 8 * n * width
    new = present = None
    if flags & _NEW:
        new = np.frombuffer(blob, np.uint8, n, pos).astype(bool)
        pos += n
    if flags & _PRESENT:
        present = np.frombuffer(blob, np.uint8, n * width, pos).astype(bool).reshape(members.shape)
    return keys, members, ttl_s, new, present, at


class SetLogError(PermanentError):
    """A log element this version cannot read (written by another version, or damaged)."""


class _Group:
    """One code group's sets and how much of its log they hold."""

    def __init__(self) -> None:
        self.at: float | None = None  # the time of the call being replayed; None: now
        self.sets = MemoryStateStore(clock=lambda: time.time() if self.at is None else self.at)
        self.applied: dict[bytes, int] = {}  # log key -> elements applied from its start
        self.used = 0.0

    def apply(self, blob: bytes) -> None:
        keys, members, ttl_s, new, present, at = unpack_call(blob)
        self.at = at
        try:
            self.sets.distinct(keys, members, ttl_s, new, present)
        finally:
            self.at = None


class SetLog:
    """``distinct`` over the code groups of this process, each logged to Redis (see the module)."""

    def __init__(self, client: Any, prefix: bytes, call: Callable[[Callable[[], Any]], Any],
                 clock: Callable[[], float] = time.time):
        """``call(fn)`` runs one Redis exchange and maps its failures to ``StateUnavailable``;
        ``clock`` gives the time of each call (Unix seconds), which names its log's epoch."""
        self.client = client
        self.clock = clock
        self._pre = prefix + b"cl:"
        self._call = call
        self._groups: dict[int, _Group] = {}
        self._lock = threading.Lock()  # a call reads, answers and appends as one step

    def log_key(self, group: int, ttl_s: int, epoch: int) -> bytes:
        return shard_key(self._pre, group % SHARDS) + b":%d:%d:%d" % (group, ttl_s, epoch)

    def distinct(self, keys: np.ndarray, members: np.ndarray, ttl_s: int, new: np.ndarray | None,
                 present: np.ndarray | None, groups: np.ndarray | None) -> np.ndarray:
        n = len(keys)
        members = np.asarray(members, np.uint64)
        ttl_s = max(int(ttl_s), 1)
        if not n:
            return np.zeros(members.shape, np.int64)
        groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)
        new = None if new is None else np.asarray(new, bool)
        present = None if present is None else np.asarray(present, bool)
        # each group's rows, in row order
        order = np.argsort(groups, kind="stable")
        names, starts = np.unique(groups[order], return_index=True)
        names = names.tolist()
        with self._lock:
            now = self.clock()
            epoch = int(now // ttl_s)
            self._catch_up(names, ttl_s, epoch)
            out = np.zeros(members.shape, np.int64)
            try:
                blobs = []
                for g, rows in zip(names, np.split(order, starts[1:])):
                    sub = (keys[rows], members[rows], ttl_s, None if new is None else new[rows],
                           None if present is None else present[rows])
                    group = self._groups[g]
                    group.at = now  # the answer and the log's replay see one clock
                    try:
                        out[rows] = group.sets.distinct(*sub)
                    finally:
                        group.at = None
                    group.used = now
                    blobs.append((g, pack_call(*sub, at=now)))
                self._append(blobs, ttl_s, epoch)
            except BaseException:  # sets changed but not logged: rebuilt from the log at their next use
                for g in names:
                    self._groups.pop(g, None)
                raise
            self._forget(now, ttl_s)
        return out

    def _catch_up(self, names: list[int], ttl_s: int, epoch: int) -> None:
        """Apply what the logs of ``names`` hold past what each group applied (all of it for a
        group new here): the previous epoch's log, then this one's, ``LOG_PAGE`` elements per read
        (one round trip in the steady state, when both are read to their end at once)."""
        for g in names:
            if g not in self._groups:
                self._groups[g] = _Group()
        keys = {g: (self.log_key(g, ttl_s, epoch - 1), self.log_key(g, ttl_s, epoch)) for g in names}
        for g in names:  # an older epoch's log is expired: forget how far it was read
            group = self._groups[g]
            group.applied = {k: group.applied.get(k, 0) for k in keys[g]}
        pending = list(names)
        while pending:
            asks = [(g, key) for g in pending for key in keys[g]]

            def read() -> list:
                pipe = self.client.pipeline(transaction=False)
                for g, key in asks:
                    start = self._groups[g].applied[key]
                    pipe.lrange(key, start, start + LOG_PAGE - 1)
                return pipe.execute()

            pages = dict(zip(asks, self._call(read)))
            more = []
            for g in pending:
                older, newer = keys[g]
                done_older = self._apply(g, older, pages[(g, older)])
                # the newer log's page only once the older one is read to its end: calls in order
                if not done_older or not self._apply(g, newer, pages[(g, newer)]):
                    more.append(g)
            pending = more

    def _apply(self, g: int, key: bytes, blobs: list[bytes]) -> bool:
        """Apply a page of group ``g``'s log ``key``; True when it was the log's last."""
        group = self._groups[g]
        try:
            for blob in blobs:
                group.apply(blob)
        except ValueError as exc:  # half applied: rebuilt from the log once it is readable
            del self._groups[g]
            raise SetLogError(f"set log {key!r}: {exc}; it was written by another version of scanstream "
                              f"or damaged: stop the workers, delete the key, start them again") from exc
        group.applied[key] += len(blobs)
        return len(blobs) < LOG_PAGE

    def _append(self, blobs: list[tuple[int, bytes]], ttl_s: int, epoch: int) -> None:
        """Log each group's call; a group whose call did not land right after what it applied is
        dropped (rebuilt from its log at its next use)."""
        key_of = {g: self.log_key(g, ttl_s, epoch) for g, _ in blobs}

        def write() -> list:
            pipe = self.client.pipeline(transaction=False)
            for g, blob in blobs:
                pipe.rpush(key_of[g], blob)
                pipe.expireat(key_of[g], (epoch + 2) * ttl_s)
            return pipe.execute()

        for (g, _), length in zip(blobs, self._call(write)[0::2]):
            group, key = self._groups[g], key_of[g]
            if length == group.applied.get(key, 0) + 1:
                group.applied[key] = length
            else:  # another writer's calls came between: the log's order is not this process's
                del self._groups[g]

    def _forget(self, now: float, ttl_s: int) -> None:
        """Drop the groups not used for two TTLs: their partitions went to another worker."""
        stale = [g for g, group in self._groups.items() if now - group.used > 2 * ttl_s]
        for g in stale:
            del self._groups[g]

    def groups_held(self) -> list[int]:
        """The code groups whose sets this process holds (for tests and operators)."""
        with self._lock:
            return sorted(self._groups)
