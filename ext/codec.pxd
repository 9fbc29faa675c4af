# The codec's SipHash-2-4 over bytes, shared with ext.scanparse (event fingerprints).
from libc.stdint cimport uint8_t, uint64_t

cdef uint64_t _siphash_bytes(uint64_t k0, uint64_t k1, const uint8_t* data, Py_ssize_t n) noexcept nogil
