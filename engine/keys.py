"""The signing keys of every tenant, as one lookup table shared by both codec builds.

A key never leaves this module in printable form: ``repr`` of a table shows only which
(tenant, key_id) pairs it holds, so a key cannot end up in a log line or a traceback.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

KEY_BYTES = 16
TENANT_MAX = 0xFFFF
KEY_ID_MAX = 3
#: Slots in the dense index: one per (tenant, key_id) pair, ``tenant << 2 | key_id``.
INDEX_SLOTS = (TENANT_MAX + 1) << 2


def slot_of(tenant: int, key_id: int) -> int:
    """Dense index slot of a (tenant, key_id) pair."""
    return (tenant << 2) | key_id


class KeyTable:
    """Keys per (tenant, key_id), with a dense index the Cython verifier reads without the GIL.

    ``index[slot_of(t, k)]`` is 0 when no key is configured, else 1 + the row of the key in
    ``k0``/``k1`` (the key's two little-endian 64-bit halves, as SipHash takes them).
    """

    __slots__ = ("_keys", "index", "k0", "k1")

    def __init__(self, keys: Mapping[tuple[int, int], bytes] | Iterable[tuple[tuple[int, int], bytes]] = ()):
        items = keys.items() if isinstance(keys, Mapping) else keys
        self._keys: dict[tuple[int, int], bytes] = {}
        for (tenant, key_id), key in items:
            self._check(tenant, key_id, key)
            self._keys[(int(tenant), int(key_id))] = bytes(key)
        self.index = np.zeros(INDEX_SLOTS, dtype=np.uint16)
        self.k0 = np.zeros(len(self._keys), dtype=np.uint64)
        self.k1 = np.zeros(len(self._keys), dtype=np.uint64)
        for row, ((tenant, key_id), key) in enumerate(sorted(self._keys.items())):
            self.index[slot_of(tenant, key_id)] = row + 1
            self.k0[row] = int.from_bytes(key[:8], "little")
            self.k1[row] = int.from_bytes(key[8:], "little")

    @staticmethod
    def _check(tenant: int, key_id: int, key: bytes) -> None:
        if not 0 <= int(tenant) <= TENANT_MAX:
            raise ValueError(f"tenant {tenant!r} out of range; expected 0..{TENANT_MAX}")
        if not 0 <= int(key_id) <= KEY_ID_MAX:
            raise ValueError(f"key_id {key_id!r} of tenant {tenant} out of range; expected 0..{KEY_ID_MAX}")
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            got = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else type(key).__name__
            raise ValueError(f"key of tenant {tenant} key_id {key_id} must be {KEY_BYTES} bytes; got {got}")

    def get(self, tenant: int, key_id: int) -> bytes | None:
        """The key of (tenant, key_id), or None when none is configured."""
        return self._keys.get((tenant, key_id))

    def pairs(self) -> list[tuple[int, int]]:
        """The configured (tenant, key_id) pairs, sorted."""
        return sorted(self._keys)

    def tenants(self) -> list[int]:
        """The tenants that have at least one key."""
        return sorted({t for t, _ in self._keys})

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, pair: object) -> bool:
        return pair in self._keys

    def __repr__(self) -> str:
        return f"KeyTable(pairs={self.pairs()!r})"
