"""The enrich stage: registry facts per scan (sku, activation, dealer, store, place, channel).

Verdicts decided here: ``unknown_batch`` and ``not_activated`` (per code: its batch's flag, or
the 空码赋值 range of ``activations.csv`` that covers it, from the range's activated_at on).
A scan's place is its event's ``region``, else its store's registered region, else the district
nearest to its GPS fix; its channel is its store's channel, else the event's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanstream.engine import adcode
from scanstream.engine.registry import Registry
from scanstream.engine.verdicts import Verdict


@dataclass
class Enriched:
    verdict: np.ndarray  # uint8, after the registry checks
    sku: np.ndarray  # object
    dealer: np.ndarray  # int32 dealer index, -1 when unknown
    dealer_id: np.ndarray  # object
    region: np.ndarray  # object adcode, '' when unknown
    place: tuple[np.ndarray, np.ndarray]  # the region as engine.adcode (value, length)
    channel: np.ndarray  # object


def enrich(registry: Registry, cols: dict[str, np.ndarray], verdict: np.ndarray, resolve_gps=None) -> Enriched:
    """Registry lookups for a verified batch; ``resolve_gps(lat, lon) -> adcodes`` when GPS is used."""
    n = len(verdict)
    tenant, kind, batch, serial = cols["tenant"], cols["kind"], cols["batch"], cols["serial"]
    decoded = verdict == Verdict.OK  # only codes that passed the MAC check name a real batch
    b = np.full(n, -1, np.int64)
    b[decoded] = registry.lookup_batches(tenant[decoded], kind[decoded], batch[decoded])
    verdict = verdict.copy()
    verdict[decoded & (b < 0)] = Verdict.UNKNOWN_BATCH
    known = b >= 0
    activated = np.zeros(n, bool)
    activated[known] = registry.batches.activated[b[known]]
    sku = np.empty(n, dtype=object)
    sku[:] = ""
    sku[known] = registry.batches.sku[b[known]]
    # 空码赋值: a range decides for its codes, whatever its batch says: activated from its
    # activated_at on, and then bound to the range's sku (the campaigns' sku match sees it too)
    act = np.full(n, -1, np.int64)
    act[known] = registry.lookup_activations(tenant[known], kind[known], batch[known], serial[known])
    in_range = act >= 0
    activated[in_range] = cols["ts"][in_range] >= registry.activations.at_ms[act[in_range]]
    bound = in_range & activated
    sku[bound] = registry.activations.sku[act[bound]]
    verdict[known & ~activated] = Verdict.NOT_ACTIVATED

    dealer = np.full(n, -1, np.int32)
    dealer[known] = registry.lookup_dealers(tenant[known], kind[known], batch[known], serial[known])

    store = registry.lookup_stores(tenant, cols["store_id"])
    # the texts of only the rows that could use them are compared (a comparison of texts costs an
    # object comparison per row): store scans, and scans with a GPS fix
    at_store = np.nonzero(store >= 0)[0]
    region = cols["region"].copy()
    fill = at_store[region[at_store] == ""]
    region[fill] = registry.stores.region[store[fill]]
    if resolve_gps is not None:
        located = np.nonzero(~np.isnan(cols["lat"]) & ~np.isnan(cols["lon"]))[0]
        gps = located[region[located] == ""]
        if len(gps):
            region[gps] = resolve_gps(cols["lat"][gps], cols["lon"][gps])
    channel = cols["channel"].copy()
    store_channel = registry.stores.channel[store[at_store]]
    use_store = store_channel != ""
    channel[at_store[use_store]] = store_channel[use_store]

    dealer_id = np.empty(n, dtype=object)
    dealer_id[:] = ""
    has_dealer = dealer >= 0
    dealer_id[has_dealer] = registry.dealers.dealer_id[dealer[has_dealer]]
    return Enriched(verdict, sku, dealer, dealer_id, region, adcode.encode(region), channel)
