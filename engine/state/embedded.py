"""The embedded state store on disk: the memory store's state, kept between runs in SQLite.

State lives in memory exactly as in ``MemoryStateStore`` (same code, same answers).  What makes
it durable is an operation log: every call that changes state is also recorded, with its
arguments and the time it ran, and ``checkpoint`` commits the calls recorded since the last
checkpoint together with the driver's marker (where in its input it is) in one SQLite
transaction.  Opening the store loads the latest snapshot and replays the logged calls after it
through the same methods, with the recorded clock, which rebuilds the same state bit for bit.

Why a log of calls and not a table per structure: a scan changes three or four entries (its
replay answer, a dedup bit, clone and window sets); a row per entry costs 1.6 to 2.1 us in
SQLite here (measured with executemany in WAL mode), about half of what the whole pipeline
spends on a scan.  One row per call, its arrays pickled (string columns as one UTF-8 blob and
their lengths), costs about 0.2 us per scan.  The log
is folded into a snapshot (the structures, pickled) whenever the calls logged since the last
snapshot take more room than the snapshot itself, so replay at start stays shorter than
loading one more snapshot.

Durability: SQLite in WAL mode with ``synchronous = NORMAL`` and 64 KiB pages.  A committed
checkpoint survives the process being killed at any line; a power loss may take back the last
checkpoints, never half of one.  That is enough because the state is the one record every
output is derived from: the driver makes its outputs durable (the results file fsynced,
ClickHouse) before each checkpoint, so after any loss the state is at or behind them, and a
rerun redoes the batches after the state's checkpoint to the same outcomes, cutting the results
file back and letting ClickHouse drop the repeated inserts (after a power loss, only as far as
ClickHouse itself kept what it acknowledged: its own fsync settings decide).  Between
checkpoints nothing is written.  Measured on 50 000 scans (``bench_pipeline.py``, section e): ``synchronous = FULL``
and 4 KiB pages cost 2.6 ms per checkpoint of 5 000 scans, NORMAL 2.1 ms, NORMAL with 64 KiB
pages 1.0 ms before the WAL is copied into the main file, 2.4 ms with that copy every 4 MiB
(each page is written twice, as WAL mode does); a rollback journal (``PERSIST``) measured no
better, 2.55 ms.  Only one process may open a
state file (an exclusive lock on ``PATH.lock``); a second gets ``StateInUse``.

The pickled blobs are this process's own trusted file, like its configuration: never open a
state file that someone else could have written.
"""
from __future__ import annotations

import fcntl
import pickle
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from scanstream.engine.errors import PermanentError
from scanstream.engine.state import (Bindings, CampaignLimits, Claims, Grants, GrantRequests, StateUnavailable)
from scanstream.engine.state.memory import DEFAULT_REPLAY_TTL_S, MemoryStateStore

#: Bumped when the pickled structures or the log's calls change shape; an older file is refused
#: (3: prizes kept with their guide's commission, and the units' guides).
FORMAT = 3
#: SQLite page size: the log's rows are blobs of tens to hundreds of KiB, written a page at a time.
PAGE_BYTES = 65536
#: Pages the WAL may hold before SQLite copies them into the main file (4 MiB).
WAL_PAGES = 64
#: Fold the log into a snapshot once it is larger than this and than ``LOG_PER_SNAPSHOT`` times the
#: last snapshot: a fold costs the whole state (0.47 us of pickling and 0.23 us of writing per
#: scan of a 200 000-scan run when folded at 1x), so folding at 4x spends a quarter of that, and
#: opening replays at most four snapshots' worth of calls (about a second for 64 MiB here).
MIN_LOG_BYTES_FOR_SNAPSHOT = 64 << 20
LOG_PER_SNAPSHOT = 4
#: The structures of ``MemoryStateStore`` that a snapshot holds (AUTOINCREMENT below: a folded log
#: must not hand its sequence numbers to the calls after the snapshot).
_STRUCTURES = ("_bits", "_answers", "_answer_expiry", "_campaigns", "_campaign_ids", "_awards", "_award_hashes",
               "_user_day",
               "_windows", "_window_expiry", "_blocks", "_bindings", "_bound_keys", "_guides")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, op TEXT NOT NULL, args BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""


class StateInUse(StateUnavailable):
    """Another process has the state file open (permanent for this process: stop and say so)."""

    transient = False


class StateFileError(PermanentError):
    """The state file cannot be used as it is (another format, unreadable); permanent."""


class EmbeddedStateStore(MemoryStateStore):
    """``MemoryStateStore`` whose state survives the process, in one SQLite file at ``path``."""

    def __init__(self, path: Path | str, replay_ttl_s: int = DEFAULT_REPLAY_TTL_S):
        super().__init__(replay_ttl_s=replay_ttl_s, clock=self._now)
        self.path = Path(path)
        self._at: float | None = None  # the time of the call being made or replayed; None: now
        self._replaying = False
        self._oplock = threading.RLock()  # log order == the order the calls changed state
        self._pending: list[tuple[float, str, bytes]] = []
        self._log_bytes = 0  # bytes of calls logged since the last snapshot
        self._snapshot_bytes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(str(self.path) + ".lock", "a+")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise StateInUse(f"state file {str(self.path)!r} is in use by another scanstream process; "
                             f"wait for it to finish or give this run another [state] path") from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA page_size = {PAGE_BYTES}")  # takes effect on a new file only
            self._db.execute("PRAGMA journal_mode = WAL")
            # copy the log into the main file every WAL_PAGES pages, not SQLite's 1 000 (64 MiB here)
            self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            self._meta = {k: v for k, v in self._db.execute("SELECT key, value FROM meta")}
            if "state_id" not in self._meta:
                # a new file, or one whose creation was cut short (disk full, kill -9): nothing
                # but these entries was written yet, so completing them is starting it.  One
                # transaction, so that a second interruption leaves all of them or none.
                created = {"format": str(FORMAT), "state_id": uuid.uuid4().hex, "created": str(time.time())}
                missing = {k: v for k, v in created.items() if k not in self._meta}
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT INTO meta VALUES (?, ?)", missing.items())
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # a failed COMMIT may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
                self._meta.update(missing)
            if self._meta.get("format") != str(FORMAT):
                raise StateFileError(f"state file {str(self.path)!r} has format {self._meta.get('format')!r}; this "
                                     f"scanstream reads format {FORMAT}: start over with --fresh")
            self._load()
        except sqlite3.Error as exc:
            self.close()
            raise _storage_error(self.path, exc) from exc
        except BaseException:
            self.close()
            raise

    # -- identity and the driver's marker -------------------------------------------------

    @property
    def state_id(self) -> str:
        """A random id given to this state when it was created (a --fresh state gets another)."""
        return self._meta["state_id"]

    def meta(self, key: str) -> Any:
        """A value the driver stored with ``checkpoint``; None when never stored."""
        value = self._meta.get(key)
        return None if value is None else orjson.loads(value)

    def checkpoint(self, **meta: Any) -> None:
        """Make every change so far durable, with ``meta`` (JSON values), in one transaction.

        Raises ``StateUnavailable`` when the disk cannot take it (full, read-only, I/O error);
        then nothing of it was stored and the process must stop: its memory is ahead of its file.
        """
        with self._oplock:
            rows, self._pending = self._pending, []
            encoded = {k: orjson.dumps(v).decode() for k, v in meta.items()}
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("INSERT INTO ops (at, op, args) VALUES (?, ?, ?)", rows)
                    self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", encoded.items())
                    self._log_bytes += sum(len(r[2]) for r in rows)
                    if self._log_bytes > max(MIN_LOG_BYTES_FOR_SNAPSHOT, LOG_PER_SNAPSHOT * self._snapshot_bytes):
                        self._snapshot()
            except sqlite3.Error as exc:
                self._pending = rows + self._pending
                raise _storage_error(self.path, exc) from exc
            self._meta.update(encoded)

    def close(self) -> None:
        """Release the file; changes after the last checkpoint are dropped, as after a crash."""
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if not self._lockfile.closed:
            self._lockfile.close()

    @staticmethod
    def remove(path: Path | str) -> bool:
        """Delete the state file at ``path`` (``--fresh``); True when there was one."""
        path = Path(path)
        lock = open(str(path) + ".lock", "a+")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateInUse(f"state file {str(path)!r} is in use by another scanstream process") from None
            existed = path.exists()
            for p in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
                p.unlink(missing_ok=True)
            return existed
        finally:
            lock.close()

    # -- the log ------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.time() if self._at is None else self._at

    def _logged(self, op: str, *args: Any) -> Any:
        with self._oplock:
            self._at = time.time()
            try:
                result = getattr(MemoryStateStore, op)(self, *args)
                self._pending.append((self._at, op, pickle.dumps(_pack(args), protocol=5)))
            finally:
                self._at = None
            return result

    def claim(self, scan_id: np.ndarray, fingerprint: np.ndarray, user: np.ndarray, code: np.ndarray,
              serial: np.ndarray, verdict: np.ndarray) -> Claims:
        return self._logged("claim", scan_id, fingerprint, user, code, serial, verdict)

    def define_campaigns(self, campaigns: list[CampaignLimits]) -> None:
        self._logged("define_campaigns", list(campaigns))

    def grant(self, requests: GrantRequests) -> Grants:
        return self._logged("grant", requests)

    def bind(self, keys: np.ndarray, ts: np.ndarray, dealer: np.ndarray) -> Bindings:
        if not (dealer != "").any():  # reads change nothing: no log row
            return MemoryStateStore.bind(self, keys, ts, dealer)
        return self._logged("bind", keys, ts, dealer)

    def guides(self, code: np.ndarray, serial: np.ndarray, guide: np.ndarray) -> np.ndarray:
        if not (guide != "").any():  # reads change nothing: no log row
            return MemoryStateStore.guides(self, code, serial, guide)
        return self._logged("guides", code, serial, guide)

    def count(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        return self._logged("count", keys, ttl_s)

    def distinct(self, keys: np.ndarray, members: np.ndarray, ttl_s: int, new: np.ndarray | None = None,
                 present: np.ndarray | None = None, groups: np.ndarray | None = None) -> np.ndarray:
        return self._logged("distinct", keys, members, ttl_s, new, present)

    def mark_once(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        return self._logged("mark_once", keys, ttl_s)

    def block(self, keys: np.ndarray, ttl_s: int) -> None:
        self._logged("block", keys, ttl_s)

    def _snapshot(self) -> None:
        # inside checkpoint's transaction: the snapshot and the log it replaces change together
        seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0]
        data = pickle.dumps({name: getattr(self, name) for name in _STRUCTURES}, protocol=5)
        self._db.execute("DELETE FROM snapshot")
        self._db.execute("INSERT INTO snapshot VALUES (?, ?)", (seq, data))
        self._db.execute("DELETE FROM ops WHERE seq <= ?", (seq,))
        self._snapshot_bytes, self._log_bytes = len(data), 0

    def _load(self) -> None:
        row = self._db.execute("SELECT seq, data FROM snapshot ORDER BY seq DESC LIMIT 1").fetchone()
        after = 0
        if row is not None:
            after = row[0]
            for name, value in pickle.loads(row[1]).items():
                setattr(self, name, value)
            self._snapshot_bytes = len(row[1])
        for at, op, args in self._db.execute("SELECT at, op, args FROM ops WHERE seq > ? ORDER BY seq", (after,)):
            self._at = at
            getattr(MemoryStateStore, op)(self, *_unpack(pickle.loads(args)))
            self._log_bytes += len(args)
        self._at = None


class _Texts:
    """A column of strings as one UTF-8 blob and their lengths: half the cost of pickling the
    strings one by one, and the log's largest part (a claim's scan_ids and users)."""

    __slots__ = ("lengths", "blob")

    def __init__(self, column: np.ndarray):
        values = column.tolist()
        self.lengths = np.fromiter(map(len, values), np.int64, len(values))
        self.blob = "".join(values).encode("utf-8", "surrogatepass")

    def __getstate__(self):
        return self.lengths, self.blob

    def __setstate__(self, state):
        self.lengths, self.blob = state

    def column(self) -> np.ndarray:
        text = self.blob.decode("utf-8", "surrogatepass")
        ends = np.cumsum(self.lengths).tolist()
        out = np.empty(len(ends), dtype=object)
        out[:] = [text[a:b] for a, b in zip([0] + ends[:-1], ends)]
        return out


def _pack(args: tuple) -> tuple:
    """A call's arguments for the log: string columns (also inside ``GrantRequests``) as ``_Texts``."""
    def one(value):
        if isinstance(value, np.ndarray) and value.dtype == object:
            return _Texts(value)
        if isinstance(value, GrantRequests):
            return GrantRequests(**{f: one(getattr(value, f)) for f in value.__dataclass_fields__})
        return value
    return tuple(one(a) for a in args)


def _unpack(args: tuple) -> tuple:
    def one(value):
        if isinstance(value, _Texts):
            return value.column()
        if isinstance(value, GrantRequests):
            return GrantRequests(**{f: one(getattr(value, f)) for f in value.__dataclass_fields__})
        return value
    return tuple(one(a) for a in args)


def _storage_error(path: Path, exc: sqlite3.Error) -> StateUnavailable:
    return StateUnavailable(f"state file {str(path)!r}: cannot be written or read: {exc}; nothing after the last "
                            f"checkpoint was stored, and a rerun continues from it")
