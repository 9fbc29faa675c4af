"""Code format v1 (DESIGN.md), in plain Python: the readable reference.

The engine runs the Cython build in ``ext.codec``; this module states the same rules one
step at a time so that a reader can check them against DESIGN.md, and the tests hold the two
builds to identical outputs.  Layout of the 120 bits, most significant first::

    version:4  kind:2  key_id:2  tenant:16  batch:24  serial:32  mac:40

The MAC is the first five bytes of SipHash-2-4(key, payload), read big-endian, where the
payload is the first 80 bits as ten big-endian bytes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from scanstream.engine.keys import KeyTable
from scanstream.engine.verdicts import VERDICT_DTYPE, Verdict

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_CHARS = 24
VERSION = 1
#: Longer inputs are rejected before any parsing; a QR URL is far shorter.
MAX_INPUT_BYTES = 512
KIND_UNIT = 0
KIND_CASE = 1
KIND_NAMES = {KIND_UNIT: "unit", KIND_CASE: "case"}
BATCH_MAX = 0xFFFFFF
SERIAL_MAX = 0xFFFFFFFF
MAC_BITS = 40
PAYLOAD_BYTES = 10
#: Characters stripped from both ends of an input before it is read.
WHITESPACE = " \t\r\n"

_DECODE = {c: i for i, c in enumerate(ALPHABET)}
_DECODE.update({c.lower(): i for c, i in list(_DECODE.items())})
_DECODE.update({"O": 0, "o": 0, "I": 1, "i": 1, "L": 1, "l": 1})

_MASK64 = (1 << 64) - 1


class Decoded(NamedTuple):
    """The fields of one verified code; fields are 0 when the verdict is ``malformed``."""

    verdict: Verdict
    kind: int = 0
    key_id: int = 0
    tenant: int = 0
    batch: int = 0
    serial: int = 0


class VerifiedBatch(NamedTuple):
    """Columns of a verified batch, one row per input code (both builds return this)."""

    verdict: np.ndarray  # uint8, engine.verdicts codes
    kind: np.ndarray  # uint8
    key_id: np.ndarray  # uint8
    tenant: np.ndarray  # uint16
    batch: np.ndarray  # uint32
    serial: np.ndarray  # uint32


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, message: bytes) -> bytes:
    """SipHash-2-4 of ``message`` under a 16-byte ``key``: 8 output bytes, reference order."""
    if len(key) != 16:
        raise ValueError(f"SipHash key must be 16 bytes; got {len(key)}")
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    full = len(message) - len(message) % 8
    tail = message[full:] + bytes(7 - len(message) % 8) + bytes([len(message) & 0xFF])
    for off in [*range(0, full, 8), None]:
        m = int.from_bytes(message[off:off + 8] if off is not None else tail, "little")
        v3 ^= m
        for _ in range(2):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return ((v0 ^ v1 ^ v2 ^ v3) & _MASK64).to_bytes(8, "little")


def payload_bytes(kind: int, key_id: int, tenant: int, batch: int, serial: int) -> bytes:
    """The 80-bit payload (version .. serial) as ten big-endian bytes."""
    value = (((((VERSION << 2 | kind) << 2 | key_id) << 16 | tenant) << 24 | batch) << 32) | serial
    return value.to_bytes(PAYLOAD_BYTES, "big")


def mac40(key: bytes, payload: bytes) -> int:
    """First five SipHash-2-4 bytes of the payload, as a big-endian integer."""
    return int.from_bytes(siphash24(key, payload)[:5], "big")


def _check_fields(kind: int, key_id: int, tenant: int, batch: int, serial: int) -> None:
    for name, value, top in (("kind", kind, 1), ("key_id", key_id, 3), ("tenant", tenant, 0xFFFF),
                             ("batch", batch, BATCH_MAX), ("serial", serial, SERIAL_MAX)):
        if not isinstance(value, (int, np.integer)) or not 0 <= value <= top:
            raise ValueError(f"{name} {value!r} out of range; expected an integer in 0..{top}")


def encode(key: bytes, tenant: int, batch: int, serial: int, kind: int = KIND_UNIT, key_id: int = 0) -> str:
    """The 24-character code of the given fields, signed with ``key``."""
    _check_fields(kind, key_id, tenant, batch, serial)
    payload = payload_bytes(int(kind), int(key_id), int(tenant), int(batch), int(serial))
    value = int.from_bytes(payload, "big") << MAC_BITS | mac40(key, payload)
    return "".join(ALPHABET[(value >> (5 * (CODE_CHARS - 1 - i))) & 31] for i in range(CODE_CHARS))


def extract(text: object) -> str | None:
    """The 24 code characters inside ``text`` (a code or a QR URL), or None when there are none.

    Steps, in order: the input must be ``str`` or ``bytes``, ASCII only, at most
    ``MAX_INPUT_BYTES`` long; surrounding whitespace goes; anything from the first ``?`` or
    ``#`` goes (URL query and fragment); trailing ``/`` go; only the part after the last ``/``
    stays (URL path); ``-`` are ignored; what is left must be exactly 24 characters.
    """
    if isinstance(text, bytes):
        if not text.isascii():
            return None
        text = text.decode("ascii")
    if not isinstance(text, str) or not text.isascii() or len(text) > MAX_INPUT_BYTES:
        return None
    text = text.strip(WHITESPACE)
    for stop in "?#":
        text = text.split(stop, 1)[0]
    text = text.rstrip("/").rsplit("/", 1)[-1].replace("-", "")
    return text if len(text) == CODE_CHARS else None


def verify(text: object, keys: KeyTable) -> Decoded:
    """Verdict and fields of one code (``malformed``, ``unknown_tenant``, ``bad_mac`` or ``ok``)."""
    chars = extract(text)
    if chars is None:
        return Decoded(Verdict.MALFORMED)
    value = 0
    for c in chars:
        digit = _DECODE.get(c)
        if digit is None:
            return Decoded(Verdict.MALFORMED)
        value = value << 5 | digit
    if value >> 116 != VERSION or (value >> 114) & 3 > KIND_CASE:  # v1 knows kinds 0 and 1 only
        return Decoded(Verdict.MALFORMED)
    mac = value & ((1 << MAC_BITS) - 1)
    payload = value >> MAC_BITS
    kind = payload >> 74 & 3
    key_id = payload >> 72 & 3
    tenant = payload >> 56 & 0xFFFF
    batch = payload >> 32 & BATCH_MAX
    serial = payload & SERIAL_MAX
    fields = (kind, key_id, tenant, batch, serial)
    key = keys.get(tenant, key_id)
    if key is None:
        return Decoded(Verdict.UNKNOWN_TENANT, *fields)
    if mac40(key, payload.to_bytes(PAYLOAD_BYTES, "big")) != mac:
        return Decoded(Verdict.BAD_MAC, *fields)
    return Decoded(Verdict.OK, *fields)


def verify_batch(codes: Sequence[object], keys: KeyTable) -> VerifiedBatch:
    """``verify`` over a sequence, as columns; the reference for ``ext.codec.verify_batch``."""
    rows = [verify(c, keys) for c in codes]
    n = len(rows)
    cols = list(zip(*rows)) if n else [()] * 6
    return VerifiedBatch(
        np.fromiter(cols[0], dtype=VERDICT_DTYPE, count=n),
        np.fromiter(cols[1], dtype=np.uint8, count=n),
        np.fromiter(cols[2], dtype=np.uint8, count=n),
        np.fromiter(cols[3], dtype=np.uint16, count=n),
        np.fromiter(cols[4], dtype=np.uint32, count=n),
        np.fromiter(cols[5], dtype=np.uint32, count=n),
    )
