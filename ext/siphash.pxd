# SipHash-2-4, inline: shared by ext.codec (codes, state keys) and ext.scanparse (event
# fingerprints).  Inline functions only, so the modules that cimport it need no module of its
# own at run time (a wheel installs them under scanstream.ext, a checkout under ext).
from libc.stdint cimport uint8_t, uint64_t


cdef inline uint64_t _rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline uint64_t _load_le64(const uint8_t* p) noexcept nogil:
    # Eight bytes as a little-endian integer, spelled out in one expression: it means the same on
    # every machine, and compilers make it a single load where a loop over the bytes stays a loop
    # (a message word of every SipHash block: most of the instructions of hashing a short text).
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56))


cdef inline void _sipround(uint64_t* v0, uint64_t* v1, uint64_t* v2, uint64_t* v3) noexcept nogil:
    v0[0] += v1[0]; v1[0] = _rotl(v1[0], 13); v1[0] ^= v0[0]; v0[0] = _rotl(v0[0], 32)
    v2[0] += v3[0]; v3[0] = _rotl(v3[0], 16); v3[0] ^= v2[0]
    v0[0] += v3[0]; v3[0] = _rotl(v3[0], 21); v3[0] ^= v0[0]
    v2[0] += v1[0]; v1[0] = _rotl(v1[0], 17); v1[0] ^= v2[0]; v2[0] = _rotl(v2[0], 32)


cdef inline uint64_t _siphash_bytes(uint64_t k0, uint64_t k1, const uint8_t* data, Py_ssize_t n) noexcept nogil:
    """SipHash-2-4 of ``n`` bytes, as the integer of its little-endian output bytes."""
    cdef uint64_t v0 = k0 ^ 0x736F6D6570736575ULL
    cdef uint64_t v1 = k1 ^ 0x646F72616E646F6DULL
    cdef uint64_t v2 = k0 ^ 0x6C7967656E657261ULL
    cdef uint64_t v3 = k1 ^ 0x7465646279746573ULL
    cdef uint64_t m
    cdef Py_ssize_t i, j, full = n - n % 8
    for i in range(0, full, 8):
        m = _load_le64(data + i)
        v3 ^= m
        _sipround(&v0, &v1, &v2, &v3); _sipround(&v0, &v1, &v2, &v3)
        v0 ^= m
    m = (<uint64_t>(n & 0xFF)) << 56
    for j in range(n - full):
        m |= (<uint64_t>data[full + j]) << (8 * j)
    v3 ^= m
    _sipround(&v0, &v1, &v2, &v3); _sipround(&v0, &v1, &v2, &v3)
    v0 ^= m
    v2 ^= 0xFF
    _sipround(&v0, &v1, &v2, &v3); _sipround(&v0, &v1, &v2, &v3)
    _sipround(&v0, &v1, &v2, &v3); _sipround(&v0, &v1, &v2, &v3)
    return v0 ^ v1 ^ v2 ^ v3
