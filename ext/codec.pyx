# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Code format v1 in Cython: batch verification without the GIL, and fast minting.

The rules are those of ``engine.codec`` (the readable reference); the tests hold both to
identical outputs.  ``verify_batch`` looks at each Python object once, with the GIL, to
take a pointer to its characters; everything else (URL stripping, base32, SipHash-2-4,
the key lookup) runs in one ``nogil`` loop over the whole batch.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from ext.siphash cimport _sipround, _siphash_bytes

import numpy as np

from scanstream.engine.codec import VerifiedBatch, MAX_INPUT_BYTES, CODE_CHARS, VERSION, _check_fields

assert CODE_CHARS == 24 and VERSION == 1, "scanstream.ext.codec is compiled for format v1"
from scanstream.engine.keys import KeyTable, KEY_BYTES
from scanstream.engine.verdicts import Verdict

cdef extern from *:
    uint64_t _bswap64 "__builtin_bswap64"(uint64_t x) noexcept nogil

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    int PyUnicode_READY(object o) except -1
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_Check(object o)
    bint PyBytes_Check(object o)

cdef const char* ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
cdef uint8_t V_MALFORMED = Verdict.MALFORMED
cdef uint8_t V_UNKNOWN_TENANT = Verdict.UNKNOWN_TENANT
cdef uint8_t V_BAD_MAC = Verdict.BAD_MAC
cdef uint8_t V_OK = Verdict.OK
cdef Py_ssize_t MAX_INPUT = MAX_INPUT_BYTES
cdef enum:
    N_CHARS = 24
    V1 = 1
cdef uint64_t MASK40 = (<uint64_t>1 << 40) - 1

# base32 value of each byte, -1 when not a code character (case-insensitive, O->0, I/L->1)
cdef int8_t DECODE[256]


cdef void _init_decode():
    cdef int i
    for i in range(256):
        DECODE[i] = -1
    for i in range(32):
        DECODE[<uint8_t>ALPHABET[i]] = i
        if ALPHABET[i] >= 65:
            DECODE[<uint8_t>ALPHABET[i] + 32] = i
    DECODE[<uint8_t>b'O'] = 0
    DECODE[<uint8_t>b'o'] = 0
    DECODE[<uint8_t>b'I'] = 1
    DECODE[<uint8_t>b'i'] = 1
    DECODE[<uint8_t>b'L'] = 1
    DECODE[<uint8_t>b'l'] = 1

_init_decode()


cdef inline uint64_t _siphash_payload(uint64_t k0, uint64_t k1, uint64_t head, uint64_t tail16) noexcept nogil:
    """SipHash-2-4 of a 10-byte payload, as the integer of its little-endian output bytes.

    ``head`` is the payload's first 8 bytes as a big-endian integer, ``tail16`` its last 2.
    """
    cdef uint64_t v0 = k0 ^ 0x736F6D6570736575ULL
    cdef uint64_t v1 = k1 ^ 0x646F72616E646F6DULL
    cdef uint64_t v2 = k0 ^ 0x6C7967656E657261ULL
    cdef uint64_t v3 = k1 ^ 0x7465646279746573ULL
    # SipHash reads the message as little-endian words
    cdef uint64_t m = _bswap64(head)
    # final block: the two remaining bytes, then the message length (10) in the top byte
    cdef uint64_t last = (<uint64_t>10 << 56) | ((tail16 & 0xFF) << 8) | (tail16 >> 8)
    v3 ^= m
    _sipround(&v0, &v1, &v2, &v3); _sipround(&v0, &v1, &v2, &v3)
    v0 ^= m
    v3 ^= last
    _sipround(&v0, &v1, &v2, &v3); _sipround(&v0, &v1, &v2, &v3)
    v0 ^= last
    v2 ^= 0xFF
    _sipround(&v0, &v1, &v2, &v3); _sipround(&v0, &v1, &v2, &v3)
    _sipround(&v0, &v1, &v2, &v3); _sipround(&v0, &v1, &v2, &v3)
    return v0 ^ v1 ^ v2 ^ v3


cdef inline uint64_t _mac40(uint64_t k0, uint64_t k1, uint64_t head, uint64_t tail16) noexcept nogil:
    """The MAC: the first five SipHash-2-4 output bytes (little-endian order), read big-endian."""
    return _bswap64(_siphash_payload(k0, k1, head, tail16)) >> 24


cdef inline bint _is_space(uint8_t c) noexcept nogil:
    return c == 32 or c == 9 or c == 13 or c == 10


cdef int _extract(const uint8_t* p, Py_ssize_t n, uint8_t* out) noexcept nogil:
    """Copy the 24 code digits of a code or URL into ``out``; 0 on success, -1 if malformed."""
    cdef Py_ssize_t i, start = 0, end = n, k = 0
    cdef int8_t d
    if n > MAX_INPUT:
        return -1
    for i in range(n):
        if p[i] >= 0x80:
            return -1
    if n == N_CHARS:  # the common case: a bare code
        for i in range(N_CHARS):
            d = DECODE[p[i]]
            if d < 0:
                return -1
            out[i] = <uint8_t>d
        return 0
    while start < end and _is_space(p[start]):
        start += 1
    while end > start and _is_space(p[end - 1]):
        end -= 1
    for i in range(start, end):
        if p[i] == 63 or p[i] == 35:  # '?' or '#': URL query or fragment
            end = i
            break
    while end > start and p[end - 1] == 47:  # trailing '/'
        end -= 1
    for i in range(end - 1, start - 1, -1):
        if p[i] == 47:
            start = i + 1
            break
    for i in range(start, end):
        if p[i] == 45:  # '-' separates groups for readability
            continue
        if k == N_CHARS:
            return -1
        d = DECODE[p[i]]
        if d < 0:
            return -1
        out[k] = <uint8_t>d
        k += 1
    return 0 if k == N_CHARS else -1


cdef inline void _verify_one(const uint8_t* p, Py_ssize_t n,
                             const uint16_t* kindex, const uint64_t* k0, const uint64_t* k1,
                             uint8_t* verdict, uint8_t* kind, uint8_t* key_id, uint16_t* tenant,
                             uint32_t* batch, uint32_t* serial) noexcept nogil:
    cdef uint8_t digits[24]
    cdef uint64_t a = 0, b = 0, head
    cdef int i
    cdef uint16_t slot
    verdict[0] = V_MALFORMED
    kind[0] = 0; key_id[0] = 0; tenant[0] = 0; batch[0] = 0; serial[0] = 0
    if p == NULL or _extract(p, n, digits) != 0:
        return
    for i in range(12):
        a = (a << 5) | digits[i]
    for i in range(12, 24):
        b = (b << 5) | digits[i]
    # a: bits 0..59 (version .. first 12 serial bits); b: bits 60..119 (serial rest, mac)
    # v1 defines kinds 0 (unit) and 1 (case); the other two values are not a v1 code
    if (a >> 56) != V1 or ((a >> 54) & 3) > 1:
        return
    kind[0] = (a >> 54) & 3
    key_id[0] = (a >> 52) & 3
    tenant[0] = (a >> 36) & 0xFFFF
    batch[0] = (a >> 12) & 0xFFFFFF
    serial[0] = <uint32_t>(((a & 0xFFF) << 20) | (b >> 40))
    slot = kindex[(<uint32_t>tenant[0] << 2) | key_id[0]]
    if slot == 0:
        verdict[0] = V_UNKNOWN_TENANT
        return
    head = (a << 4) | (b >> 56)  # payload bytes 0..7
    if _mac40(k0[slot - 1], k1[slot - 1], head, (b >> 40) & 0xFFFF) != (b & MASK40):
        verdict[0] = V_BAD_MAC
    else:
        verdict[0] = V_OK


def _key_arrays(keys):
    if not isinstance(keys, KeyTable):
        raise TypeError(f"keys must be an engine.keys.KeyTable; got {type(keys).__name__}")
    # an empty table still needs one row so that the memoryviews have a buffer
    k0 = keys.k0 if len(keys) else np.zeros(1, np.uint64)
    k1 = keys.k1 if len(keys) else np.zeros(1, np.uint64)
    return keys.index, k0, k1


def verify_batch(codes, keys):
    """Verdict and fields of every code in ``codes`` (str or bytes; anything else is malformed).

    Returns an ``engine.codec.VerifiedBatch`` of numpy columns, one row per input.  Never
    raises for a bad element; raises ``TypeError`` only when ``keys`` is not a KeyTable.
    """
    index, k0a, k1a = _key_arrays(keys)
    cdef const uint16_t[::1] kindex = index
    cdef const uint64_t[::1] k0 = k0a
    cdef const uint64_t[::1] k1 = k1a
    seq = codes if isinstance(codes, (list, tuple)) else list(codes)
    cdef Py_ssize_t n = len(seq), i
    verdict = np.empty(n, np.uint8)
    kind = np.empty(n, np.uint8)
    key_id = np.empty(n, np.uint8)
    tenant = np.empty(n, np.uint16)
    batch = np.empty(n, np.uint32)
    serial = np.empty(n, np.uint32)
    cdef uint8_t[::1] v_verdict = verdict, v_kind = kind, v_key_id = key_id
    cdef uint16_t[::1] v_tenant = tenant
    cdef uint32_t[::1] v_batch = batch, v_serial = serial
    cdef const uint8_t** ptrs = <const uint8_t**>malloc(max(n, 1) * sizeof(uint8_t*))
    cdef Py_ssize_t* lens = <Py_ssize_t*>malloc(max(n, 1) * sizeof(Py_ssize_t))
    if ptrs == NULL or lens == NULL:
        free(ptrs); free(lens)
        raise MemoryError(f"cannot allocate pointers for a batch of {n} codes")
    try:
        for i in range(n):
            item = seq[i]
            ptrs[i] = NULL
            lens[i] = 0
            if PyUnicode_Check(item):
                PyUnicode_READY(item)
                if PyUnicode_IS_ASCII(item):
                    ptrs[i] = <const uint8_t*>PyUnicode_DATA(item)
                    lens[i] = PyUnicode_GET_LENGTH(item)
            elif PyBytes_Check(item):
                ptrs[i] = <const uint8_t*>PyBytes_AS_STRING(item)
                lens[i] = PyBytes_GET_SIZE(item)
        # ``seq`` holds a reference to every item, so the pointers stay valid without the GIL
        with nogil:
            for i in range(n):
                _verify_one(ptrs[i], lens[i], &kindex[0], &k0[0], &k1[0],
                            &v_verdict[i], &v_kind[i], &v_key_id[i], &v_tenant[i],
                            &v_batch[i], &v_serial[i])
    finally:
        free(ptrs)
        free(lens)
    return VerifiedBatch(verdict, kind, key_id, tenant, batch, serial)


def verify(code, keys):
    """One code: an ``engine.codec.Decoded`` (the per-code call; prefer ``verify_batch``)."""
    from scanstream.engine.codec import Decoded
    index, k0a, k1a = _key_arrays(keys)
    cdef const uint16_t[::1] kindex = index
    cdef const uint64_t[::1] k0 = k0a
    cdef const uint64_t[::1] k1 = k1a
    cdef uint8_t verdict, kind, key_id
    cdef uint16_t tenant
    cdef uint32_t batch, serial
    cdef const uint8_t* p = NULL
    cdef Py_ssize_t n = 0
    if isinstance(code, str):
        PyUnicode_READY(code)
        if PyUnicode_IS_ASCII(code):
            p = <const uint8_t*>PyUnicode_DATA(code)
            n = PyUnicode_GET_LENGTH(code)
    elif isinstance(code, bytes):
        p = <const uint8_t*>PyBytes_AS_STRING(code)
        n = PyBytes_GET_SIZE(code)
    _verify_one(p, n, &kindex[0], &k0[0], &k1[0], &verdict, &kind, &key_id, &tenant, &batch, &serial)
    return Decoded(Verdict(verdict), kind, key_id, tenant, batch, serial)


cdef inline void _write_code(uint64_t k0, uint64_t k1, uint64_t head, uint32_t serial, char* out) noexcept nogil:
    cdef uint64_t mac = _mac40(k0, k1, head, serial & 0xFFFF)
    # 120 bits = head (64) + low 16 serial bits + mac (40): split into two 60-bit halves
    cdef uint64_t a = head >> 4
    cdef uint64_t b = ((head & 0xF) << 56) | (<uint64_t>(serial & 0xFFFF) << 40) | mac
    cdef int i
    for i in range(12):
        out[11 - i] = ALPHABET[a & 31]
        a >>= 5
        out[23 - i] = ALPHABET[b & 31]
        b >>= 5


def _key_halves(key):
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes")
    return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")


cdef uint64_t _head(int kind, int key_id, uint32_t tenant, uint32_t batch, uint32_t serial) noexcept nogil:
    return ((<uint64_t>V1 << 60) | (<uint64_t>kind << 58) | (<uint64_t>key_id << 56)
            | (<uint64_t>tenant << 40) | (<uint64_t>batch << 16) | (serial >> 16))


def encode(key, tenant, batch, serial, kind=0, key_id=0):
    """The 24-character code of the given fields (same contract as ``engine.codec.encode``)."""
    _check_fields(kind, key_id, tenant, batch, serial)  # before any conversion to a C integer
    k0, k1 = _key_halves(key)
    cdef char out[24]
    _write_code(k0, k1, _head(kind, key_id, tenant, batch, <uint32_t>serial), <uint32_t>serial, out)
    return out[:24].decode("ascii")


def mint(key, tenant, batch, start, count, kind=0, key_id=0, bytes prefix=b"", bytes suffix=b"\n"):
    """``count`` consecutive codes from serial ``start``, as one bytes block.

    Each code is written as ``prefix + code + suffix``: with the defaults, one code per line;
    with a URL prefix, one QR URL per line.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count {count!r} must be a non-negative integer")
    _check_fields(kind, key_id, tenant, batch, start)  # before any conversion to a C integer
    if count and start + count - 1 > 0xFFFFFFFF:
        raise ValueError(f"serials {start}..{start + count - 1} exceed the maximum serial {0xFFFFFFFF}")
    k0, k1 = _key_halves(key)
    cdef uint64_t ck0 = k0, ck1 = k1
    cdef Py_ssize_t plen = len(prefix), slen = len(suffix), width = plen + N_CHARS + slen, i, n = count
    cdef int c_kind = kind, c_key_id = key_id
    cdef uint32_t c_tenant = tenant, c_batch = batch
    out = PyBytes_FromStringAndSize(NULL, width * n)
    cdef char* buf = PyBytes_AS_STRING(out)
    cdef const char* pp = prefix
    cdef const char* sp = suffix
    cdef uint32_t serial
    cdef uint64_t base = start
    with nogil:
        for i in range(n):
            serial = <uint32_t>(base + i)
            memcpy(buf + i * width, pp, plen)
            _write_code(ck0, ck1, _head(c_kind, c_key_id, c_tenant, c_batch, serial), serial, buf + i * width + plen)
            memcpy(buf + i * width + plen + N_CHARS, sp, slen)
    return out


def keyed_hash(key, tenant, kind, batch, serial):
    """SipHash-2-4 under ``key`` of each code's identity (tenant, kind, batch, serial).

    The identity is packed like a code's payload with key_id 0, so the hash does not change
    when a brand rotates its signing key.  Used for the lottery draw: deterministic,
    unpredictable without the key, and the same on every worker.
    """
    k0, k1 = _key_halves(key)
    cdef uint64_t ck0 = k0, ck1 = k1
    cdef const uint16_t[::1] t = np.ascontiguousarray(tenant, np.uint16)
    cdef const uint8_t[::1] k = np.ascontiguousarray(kind, np.uint8)
    cdef const uint32_t[::1] b = np.ascontiguousarray(batch, np.uint32)
    cdef const uint32_t[::1] s = np.ascontiguousarray(serial, np.uint32)
    cdef Py_ssize_t n = t.shape[0], i
    if not (k.shape[0] == n and b.shape[0] == n and s.shape[0] == n):
        raise ValueError(f"columns differ in length: tenant {n}, kind {k.shape[0]}, batch {b.shape[0]}, "
                         f"serial {s.shape[0]}")
    out = np.empty(n, np.uint64)
    cdef uint64_t[::1] o = out
    cdef uint64_t head, h
    with nogil:
        for i in range(n):
            head = _head(k[i] & 3, 0, t[i], b[i] & 0xFFFFFF, s[i])
            o[i] = _siphash_payload(ck0, ck1, head, s[i] & 0xFFFF)
    return out


def hash_strings(strings, key):
    """SipHash-2-4 under ``key`` of each string's UTF-8 bytes (uint64 array).

    Gives state-store keys and set members a fixed size and the same value on every worker
    and backend (Python's ``hash`` differs between processes).
    """
    k0, k1 = _key_halves(key)
    cdef uint64_t ck0 = k0, ck1 = k1
    seq = strings if isinstance(strings, (list, tuple)) else list(strings)
    cdef Py_ssize_t n = len(seq), i, size
    out = np.empty(n, np.uint64)
    cdef uint64_t[::1] o = out
    cdef const char* p
    for i in range(n):
        item = seq[i]
        if isinstance(item, str):
            p = PyUnicode_AsUTF8AndSize(item, &size)
        elif isinstance(item, bytes):
            p = PyBytes_AS_STRING(item)
            size = PyBytes_GET_SIZE(item)
        else:
            raise TypeError(f"hash_strings: element {i} is {type(item).__name__}; expected str or bytes")
        o[i] = _siphash_bytes(ck0, ck1, <const uint8_t*>p, size)
    return out


# -- the scans topic's partition of a code ------------------------------------------------------

cdef uint32_t MURMUR_M = 0x5BD1E995
cdef uint32_t MURMUR_SEED = 0x9747B28C


cdef inline uint32_t _murmur2(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Kafka's murmur2 (the default partitioner's hash, seed 0x9747B28C), little-endian words."""
    cdef uint32_t h = MURMUR_SEED ^ <uint32_t>n, k
    cdef Py_ssize_t i = 0, end = n & ~3
    while i < end:
        k = p[i] | (<uint32_t>p[i + 1] << 8) | (<uint32_t>p[i + 2] << 16) | (<uint32_t>p[i + 3] << 24)
        k *= MURMUR_M
        k ^= k >> 24
        k *= MURMUR_M
        h = (h * MURMUR_M) ^ k
        i += 4
    cdef Py_ssize_t rest = n & 3
    if rest == 3:
        h ^= <uint32_t>p[end + 2] << 16
    if rest >= 2:
        h ^= <uint32_t>p[end + 1] << 8
    if rest >= 1:
        h ^= p[end]
        h *= MURMUR_M
    h ^= h >> 13
    h *= MURMUR_M
    return h ^ (h >> 15)


def murmur2(const uint8_t[::1] data) -> int:
    """Kafka's murmur2 of ``data`` (what ``kafka.partitioner.default.murmur2`` gives)."""
    return _murmur2(&data[0] if data.shape[0] else NULL, data.shape[0])


cdef inline Py_ssize_t _decimal(uint64_t v, char* out) noexcept nogil:
    """``v`` in decimal at ``out``; its length."""
    cdef char tmp[20]
    cdef Py_ssize_t n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        v //= 10
        n += 1
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


def code_partitions(tenant, batch, serial, int partitions):
    """The partition among ``partitions`` of the scans topic that the publisher's key of each
    decoded code (``tenant:batch:serial``, ``streams.publisher.code_key``) names: Kafka's default
    partitioner, ``(murmur2(key) & 0x7fffffff) % partitions``, over whole columns (int32)."""
    if partitions < 1:
        raise ValueError(f"code_partitions: expected at least 1 partition, got {partitions}")
    cdef const uint16_t[::1] t = np.ascontiguousarray(tenant, np.uint16)
    cdef const uint32_t[::1] b = np.ascontiguousarray(batch, np.uint32)
    cdef const uint32_t[::1] s = np.ascontiguousarray(serial, np.uint32)
    cdef Py_ssize_t n = t.shape[0], i, m
    if not (b.shape[0] == n and s.shape[0] == n):
        raise ValueError(f"columns differ in length: tenant {n}, batch {b.shape[0]}, serial {s.shape[0]}")
    out = np.empty(n, np.int32)
    cdef int32_t[::1] o = out
    cdef char key[48]  # "65535:16777215:4294967295" is 25 characters
    cdef uint32_t parts = partitions
    with nogil:
        for i in range(n):
            m = _decimal(t[i], key)
            key[m] = 58  # ':'
            m += 1
            m += _decimal(b[i], key + m)
            key[m] = 58
            m += 1
            m += _decimal(s[i], key + m)
            o[i] = <int32_t>((_murmur2(<const uint8_t*>key, m) & 0x7FFFFFFF) % parts)
    return out
