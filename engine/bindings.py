"""箱码关联 and outbound scans (物流防窜): where the goods of each scan were really sent.

A warehouse's outbound scan (``role: warehouse``, ``action: ship``, ``dealer_id``) of a case or a
unit binds that code to the dealer from the scan's ts on, in the state store (``StateStore.bind``):
one entry per case, however many units it holds.  Every other scan of a valid code reads the
binding in force at its ts, of its own code and, for a unit packed in a case (``packing.csv``,
found by range), of its case; the later of the two wins, so a unit shipped on its own after its
case went elsewhere follows its own scan.  Without a binding the registry's shipments decide, as
before.  Diversion is then judged against that dealer (``engine.diversion.judge``).

Only scans that passed every check bind: a forged code, a redelivery (already bound the first
time) or a scan_id reused with other content (``conflict``) binds nothing, and an outbound scan
naming a dealer that ``dealers.csv`` does not hold for the code's tenant is an ``invalid_event``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanstream.engine.codec import KIND_CASE, KIND_UNIT
from scanstream.engine.outcomes import texts
from scanstream.engine.registry import Registry
from scanstream.engine.state import STATE_HASH_KEY, StateStore
from scanstream.engine.verdicts import Verdict
from scanstream.ext import codec
from scanstream.ext.scanparse import ACTION_SHIP


@dataclass
class Routing:
    """Per scan: the dealer its goods were sent to, and the case that decided it."""

    dealer: np.ndarray  # int32 dealer index, -1 when unknown
    dealer_id: np.ndarray  # object, '' when unknown
    case_batch: np.ndarray  # int64 the scan's case (its own code for a case scan), -1 when none
    case_serial: np.ndarray  # int64
    outbound: np.ndarray  # bool: the dealer comes from an outbound scan, not from shipments.csv


def refuse_unknown_dealers(registry: Registry, cols: dict[str, np.ndarray], verdict: np.ndarray) -> np.ndarray:
    """Rows (verified outbound scans) whose ``dealer_id`` is no dealer of their code's tenant; their
    ``reason`` is set.  Such a scan would bind goods to nobody, or to another brand's dealer."""
    rows = np.nonzero((cols["action"] == ACTION_SHIP) & (verdict == Verdict.OK))[0]
    bad = [i for i, d, t in zip(rows.tolist(), cols["dealer_id"][rows].tolist(), cols["tenant"][rows].tolist())
           if registry.dealer_index.get(d) is None or registry.dealers.tenant[registry.dealer_index[d]] != t]
    for i in bad:
        cols["reason"][i] = (f"dealer_id {str(cols['dealer_id'][i])[:40]!r} is not a dealer of tenant "
                             f"{int(cols['tenant'][i])} in dealers.csv; expected the dealer the goods are shipped to")
    return np.array(bad, np.int64)


def route(registry: Registry, state: StateStore, cols: dict[str, np.ndarray], verdict: np.ndarray,
          replay: np.ndarray, shipped: np.ndarray) -> Routing:
    """Apply the batch's outbound scans and find, for every scan of a valid code, where its goods
    went: the binding in force at its ts, else ``shipped`` (the registry's dealer index)."""
    n = len(verdict)
    tenant, kind, batch, serial = cols["tenant"], cols["kind"], cols["batch"], cols["serial"]
    dealer = shipped.astype(np.int32).copy()
    outbound = np.zeros(n, bool)
    case_batch, case_serial = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    verified = (verdict == Verdict.OK) | (verdict == Verdict.REPEAT)
    is_case = verified & (kind == KIND_CASE)
    case_batch[is_case], case_serial[is_case] = batch[is_case], serial[is_case]
    units = np.nonzero(verified & (kind == KIND_UNIT))[0]
    if len(units) and len(registry.packing.start):
        case_batch[units], case_serial[units] = registry.lookup_cases(tenant[units], kind[units], batch[units],
                                                                      serial[units])
    writes = verified & ~replay & (cols["action"] == ACTION_SHIP)
    rows = np.nonzero(verified)[0]
    packed = rows[(case_batch[rows] >= 0) & (kind[rows] == KIND_UNIT) & ~writes[rows]]
    if not len(rows):
        return _routing(registry, dealer, outbound, case_batch, case_serial)
    # one entry per scan for its own code, one more for a packed unit's case, in scan order (its
    # own code first): each row repeated once or twice, no sort
    count = np.ones(len(rows), np.int64)
    count[np.searchsorted(rows, packed)] = 2
    at = np.repeat(rows, count)
    own = np.zeros(len(at), bool)
    own[np.cumsum(count) - count] = True
    keys = np.empty(len(at), np.uint64)
    i, c = at[own], at[~own]
    keys[own] = codec.keyed_hash(STATE_HASH_KEY, tenant[i], kind[i], batch[i], serial[i])
    keys[~own] = codec.keyed_hash(STATE_HASH_KEY, tenant[c], np.full(len(c), KIND_CASE, kind.dtype),
                                  case_batch[c].astype(batch.dtype), case_serial[c].astype(serial.dtype))
    bound_to = texts(len(at))
    shipping = writes[at]
    bound_to[shipping] = cols["dealer_id"][at[shipping]]
    got = state.bind(keys, cols["ts"][at], bound_to)
    # the later binding of a unit and of its case decides; entries of one scan are adjacent
    best_ts = np.full(n, -1, np.int64)
    best_dealer = texts(n)
    for part in (own, ~own):
        i = at[part]
        later = got.ts[part] > best_ts[i]
        best_ts[i[later]], best_dealer[i[later]] = got.ts[part][later], got.dealer[part][later]
    hit = np.nonzero(best_ts >= 0)[0]
    index = np.array([registry.dealer_index.get(d, -1) for d in best_dealer[hit].tolist()], np.int32)
    known = index >= 0  # a dealer since removed from dealers.csv: the shipments decide
    dealer[hit[known]] = index[known]
    outbound[hit[known]] = True
    return _routing(registry, dealer, outbound, case_batch, case_serial)


def _routing(registry: Registry, dealer: np.ndarray, outbound: np.ndarray, case_batch: np.ndarray,
             case_serial: np.ndarray) -> Routing:
    dealer_id = texts(len(dealer))
    has = dealer >= 0
    dealer_id[has] = registry.dealers.dealer_id[dealer[has]]
    return Routing(dealer, dealer_id, case_batch, case_serial, outbound)
