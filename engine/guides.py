"""超级导购码: the guide of each unit, whom a consumer's prize on it earns a commission.

A shopping guide's sale scan (``role: guide``, ``action: sell``) of a valid unit code makes that
guide the unit's guide, unless another guide sold it first (``StateStore.guides``: the first keeps
it, for ever, one entry per unit).  When a consumer's first scan of the unit wins a prize in a
campaign with ``guide_cents``, the lottery's grant pays the guide that commission from the same
budget, after the prize and only while the budget covers it (``engine.lottery``, the state
store's ``grant``); the award is a row of its own, beneficiary ``guide``.

Only a sale scan that passed every check sets a guide: a forged or unknown code, a scan_id reused
with other content (``conflict``), a redelivery (its first delivery set the guide already), a
scanner on the enumeration block list, or a case code (guides sell units) sets nothing.
"""
from __future__ import annotations

import numpy as np

from scanstream.engine.codec import KIND_UNIT
from scanstream.engine.outcomes import texts
from scanstream.engine.registry import batch_key
from scanstream.engine.state import StateStore
from scanstream.engine.verdicts import Verdict
from scanstream.ext.scanparse import ACTION_SELL


def unit_guides(state: StateStore, cols: dict[str, np.ndarray], verdict: np.ndarray, replay: np.ndarray,
                blocked: np.ndarray, asks: np.ndarray) -> np.ndarray:
    """Per scan, its unit's guide as of the scan ('' for none), after the batch's sale scans set
    theirs in order; asked for the scans flagged in ``asks`` (``lottery.Draws.asks_guide``: those
    whose draw would pay a commission) and the sales.  A sale is recorded whether or not a
    campaign pays commissions now, so that one started later finds the guides of units sold before."""
    n = len(verdict)
    out = texts(n)
    sale = ((cols["action"] == ACTION_SELL) & (cols["kind"] == KIND_UNIT)
            & ((verdict == Verdict.OK) | (verdict == Verdict.REPEAT)) & ~replay & ~blocked)
    rows = np.nonzero(sale | asks)[0]
    if len(rows):
        code = batch_key(cols["tenant"][rows], cols["kind"][rows], cols["batch"][rows])
        guide = texts(len(rows))
        sold = sale[rows]
        guide[sold] = cols["user_id"][rows[sold]]
        out[rows] = state.guides(code, cols["serial"][rows], guide)
    return out
