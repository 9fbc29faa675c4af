"""Adcodes (Chinese administrative division codes) as integers, for vectorised prefix tests.

A place is an adcode of 2 (province), 4 (city) or 6 (district) digits.  Columns of adcode
strings are turned into (value, length) integer pairs once per batch through a cache (there
are only a few thousand distinct adcodes), and every "is this place under that prefix" test is
then integer arithmetic over whole columns.
"""
from __future__ import annotations

from itertools import repeat

import numpy as np

LEVELS = (2, 4, 6)
_POW10 = np.array([10 ** i for i in range(7)], np.int64)
#: A place (value, length) packed in one integer, value * PACK + length (a length is at most 6), so
#: that a batch's places are read from the cache as one column of integers: building a column of
#: (value, length) pairs made numpy inspect every pair, six times the cost of the whole look-up.
PACK = 8
#: The packed form of (-1, 0), '' or anything that is not an adcode.
_NOT_A_PLACE = -1 * PACK + 0
#: What a look-up of a text not in the cache yet gives: no packed place is -1.
_NOT_CACHED = -1
_cache: dict[str, int] = {"": _NOT_A_PLACE}


def _parse(text: str) -> tuple[int, int]:
    if text.isascii() and text.isdigit() and len(text) in LEVELS:
        return int(text), len(text)
    return -1, 0


def _packed(text: str) -> int:
    value, length = _parse(text)
    return value * PACK + length


def encode(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, length) of each adcode string; (-1, 0) for '' or anything that is not an adcode."""
    items = regions.tolist()
    if not items:
        return np.zeros(0, np.int64), np.zeros(0, np.int8)
    packed = np.fromiter(map(_cache.get, items, repeat(_NOT_CACHED, len(items))), np.int64, len(items))
    new = np.flatnonzero(packed == _NOT_CACHED)
    if len(new):  # a few thousand distinct adcodes: after the first batches, none
        packed[new] = [_cache.setdefault(text, _packed(text)) for text in map(items.__getitem__, new.tolist())]
    value, length = np.divmod(packed, PACK)
    return value, length.astype(np.int8)


def truncate(value: np.ndarray, length: np.ndarray, level: int) -> np.ndarray:
    """The first ``level`` digits of each place as an integer, -1 where the place is coarser."""
    long_enough = length >= level
    out = np.full(len(value), -1, np.int64)
    out[long_enough] = value[long_enough] // _POW10[length[long_enough].astype(np.int64) - level]
    return out


def under_any(value: np.ndarray, length: np.ndarray, prefixes: tuple[str, ...] | list[str]) -> np.ndarray:
    """Whether each place lies under at least one of the adcode prefixes."""
    hit = np.zeros(len(value), bool)
    for p in prefixes:
        pv, pl = _parse(p)
        if pl:
            hit |= truncate(value, length, pl) == pv
    return hit
