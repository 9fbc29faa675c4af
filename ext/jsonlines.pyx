# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Rows of columns as JSON objects, one ``bytes`` per row: the outcome lines of a batch.

The worker turns every scan's outcome into a JSON object twice a batch's worth of times (the
Redis reply and the ``scan-results`` line are the same bytes, made once).  A dict per row and
``orjson.dumps`` cost about 7 us a scan; this writes the objects directly from the column
lists and gives byte for byte what ``orjson.dumps(dict(zip(fields, row)))`` gives for str and
int values: strings that need an escape (a quote, a backslash, a control character) are
handed to orjson itself, everything else (UTF-8 included, which orjson leaves unescaped) is
copied as it is.
"""
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from libc.stdio cimport snprintf
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLong
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE

import orjson


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL


cdef struct Buffer:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _reserve(Buffer* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t want = b.size + more
    cdef char* grown
    if want > b.cap:
        while b.cap < want:
            b.cap *= 2
        grown = <char*> realloc(b.data, b.cap)
        if grown == NULL:
            raise MemoryError()
        b.data = grown
    return 0


cdef int _put(Buffer* b, const char* text, Py_ssize_t n) except -1:
    _reserve(b, n)
    memcpy(b.data + b.size, text, n)
    b.size += n
    return 0


cdef inline bint _plain(const char* s, Py_ssize_t n):
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char> s[i]
        if c < 0x20 or c == 0x22 or c == 0x5C:
            return False
    return True


cdef int _value(Buffer* b, object v) except -1:
    cdef const char* s
    cdef Py_ssize_t n
    cdef char digits[32]
    cdef bytes quoted
    if type(v) is str:
        s = PyUnicode_AsUTF8AndSize(v, &n)
        if _plain(s, n):
            _reserve(b, n + 2)
            b.data[b.size] = 0x22
            memcpy(b.data + b.size + 1, s, n)
            b.data[b.size + n + 1] = 0x22
            b.size += n + 2
        else:
            quoted = orjson.dumps(v)
            _put(b, PyBytes_AS_STRING(quoted), PyBytes_GET_SIZE(quoted))
    elif type(v) is int:
        n = snprintf(digits, 32, "%lld", PyLong_AsLongLong(v))
        _put(b, digits, n)
    else:  # anything else (None, float, bool) as orjson writes it
        quoted = orjson.dumps(v)
        _put(b, PyBytes_AS_STRING(quoted), PyBytes_GET_SIZE(quoted))
    return 0


def encode_rows(tuple fields, list columns):
    """One JSON object per row of ``columns`` (one list per field, all of one length)."""
    cdef Py_ssize_t nf = len(fields), rows, i, j
    if len(columns) != nf:
        raise ValueError(f"{len(columns)} columns for {nf} fields: expected one per field")
    if nf == 0:
        return []
    rows = PyList_GET_SIZE(columns[0])
    for j in range(nf):
        if not isinstance(columns[j], list) or PyList_GET_SIZE(columns[j]) != rows:
            raise ValueError(f"column {fields[j]!r}: expected a list of {rows} values")
    # '{"name":' before the first value, ',"name":' before the others
    keys = [(b"{" if j == 0 else b",") + orjson.dumps(fields[j]) + b":" for j in range(nf)]
    cdef Buffer b
    b.cap = 4096
    b.size = 0
    b.data = <char*> malloc(b.cap)
    if b.data == NULL:
        raise MemoryError()
    cdef list out = []
    cdef bytes key
    cdef object column
    try:
        for i in range(rows):
            b.size = 0
            for j in range(nf):
                key = <bytes> PyList_GET_ITEM(keys, j)
                _put(&b, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
                column = <object> PyList_GET_ITEM(columns, j)
                _value(&b, <object> PyList_GET_ITEM(column, i))
            _put(&b, "}", 1)
            out.append(PyBytes_FromStringAndSize(b.data, b.size))
    finally:
        free(b.data)
    return out
