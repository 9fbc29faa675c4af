"""Adcodes (Chinese administrative division codes) as integers, for vectorised prefix tests.

A place is an adcode of 2 (province), 4 (city) or 6 (district) digits.  Columns of adcode
strings are turned into (value, length) integer pairs once per batch through a cache (there
are only a few thousand distinct adcodes), and every "is this place under that prefix" test is
then integer arithmetic over whole columns.
"""
from __future__ import annotations

import numpy as np

LEVELS = (2, 4, 6)
_POW10 = np.array([10 ** i for i in range(7)], np.int64)
_cache: dict[str, tuple[int, int]] = {"": (-1, 0)}


def _parse(text: str) -> tuple[int, int]:
    if text.isascii() and text.isdigit() and len(text) in LEVELS:
        return int(text), len(text)
    return -1, 0


def encode(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, length) of each adcode string; (-1, 0) for '' or anything that is not an adcode."""
    items = regions.tolist()
    get = _cache.get
    pairs = [get(r) for r in items]
    if None in pairs:
        for i, (r, p) in enumerate(zip(items, pairs)):
            if p is None:
                pairs[i] = _cache.setdefault(r, _parse(r))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int8)
    arr = np.array(pairs, np.int64)
    return arr[:, 0], arr[:, 1].astype(np.int8)


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
