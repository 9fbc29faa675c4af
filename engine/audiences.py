"""Audiences: whose first scan of a code a scan can be (DESIGN.md "Verdicts", "Audiences").

A code's first scan is counted per audience: consumers; the trade (dealer, store, guide);
logistics (warehouse).  A store owner or a guide scanning a unit never uses up the consumer's
first scan (and with it the consumer's prize), an outbound scan of a case never uses up the
store owner's first scan of it, and a consumer's scan uses up neither.

The dedup stage claims one bit per (code, audience): the audience goes into the two bits above
``registry.batch_key``'s 42, so that each audience has bitmaps of its own in every state store
with no change to their contract.  Consumers are audience 0, so the keys of consumer scans are
the batch keys themselves, as they were before audiences existed: a state written then keeps
its meaning.
"""
from __future__ import annotations

import numpy as np

from scanstream.ext.scanparse import ROLES

#: The audiences, numbered as they enter the claim key.
CONSUMERS, TRADE, LOGISTICS = 0, 1, 2
#: The audience of each role the event schema allows.
AUDIENCE_OF_ROLE: dict[str, int] = {"consumer": CONSUMERS, "dealer": TRADE, "guide": TRADE, "store": TRADE,
                                    "warehouse": LOGISTICS}
#: Bit position of the audience in a claim key: above the batch key's 16 + 2 + 24 bits.  The Redis
#: store packs a claim key with a 20-bit chunk number into 64 bits, so a claim key may use 44.
AUDIENCE_SHIFT = 42
CLAIM_KEY_BITS = 44

if tuple(sorted(ROLES)) != tuple(ROLES) or set(ROLES) != set(AUDIENCE_OF_ROLE):
    raise ImportError(f"scanparse.ROLES {ROLES} must be sorted and each have an audience ({AUDIENCE_OF_ROLE})")
if max(AUDIENCE_OF_ROLE.values()).bit_length() + AUDIENCE_SHIFT > CLAIM_KEY_BITS:
    raise ImportError("the audiences do not fit above the batch key in a claim key")



#: The audience of each role by its number in ``ROLES`` (the parser's ``role_no`` column).
AUDIENCE_BY_ROLE_NO = np.array([AUDIENCE_OF_ROLE[r] for r in ROLES], np.uint64)


def audiences(role: np.ndarray) -> np.ndarray:
    """The audience of each scan (uint64), from its role: one of ``ROLES`` as the parser checked, or
    the role's number in ``ROLES`` (integers: the parser's ``role_no`` column, read by indexing
    where the names are compared object by object).

    Consumers are most scans: with names, one vectorised comparison finds the others, which are
    looked up one by one (a searchsorted over the object array compared every role in Python,
    about 1 ms per 5 000 scans, 4 % of the pipeline)."""
    role = np.asarray(role)
    if np.issubdtype(role.dtype, np.integer):
        return AUDIENCE_BY_ROLE_NO[role]
    out = np.full(len(role), CONSUMERS, np.uint64)
    others = np.nonzero(role != "consumer")[0]
    if len(others):
        out[others] = [AUDIENCE_OF_ROLE[r] for r in role[others].tolist()]
    return out


def claim_keys(batch_keys: np.ndarray, role: np.ndarray) -> np.ndarray:
    """The key under which a scan claims its code's first scan: its batch key and its audience
    (``role``: names or numbers, as ``audiences`` takes them)."""
    return np.asarray(batch_keys, np.uint64) | (audiences(role) << np.uint64(AUDIENCE_SHIFT))
