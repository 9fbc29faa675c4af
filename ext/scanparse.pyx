# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Scan events (JSON lines) into columns: the parse stage's per-event loop, compiled.

There is no vectorised form of "decode one JSON object and check its fields", so this loop
is the one place where the engine touches events one by one.  It never raises for a bad
event: the event's ``reason`` column says what is wrong and the pipeline turns it into an
``invalid_event`` outcome that carries the original text.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.math cimport NAN, isfinite
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy

import numpy as np
import orjson

from cpython.bytes cimport PyBytes_AS_STRING
from cpython.dict cimport PyDict_Next
from cpython.exc cimport PyErr_Clear
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

cdef extern from "Python.h":
    # The same function as PyUnicode_AsUTF8AndSize, declared without an exception check: the
    # single pass over an event's fields (``_collect``) notes a failure and lets the fingerprint,
    # which reports it, raise it again.
    const char* _utf8_or_null "PyUnicode_AsUTF8AndSize"(PyObject* text, Py_ssize_t* size)
    # An ASCII text's characters are its UTF-8 bytes: read in place, without a call per text
    bint PyUnicode_CheckExact(PyObject* o)
    bint PyUnicode_IS_COMPACT_ASCII(PyObject* o)
    void* PyUnicode_DATA(PyObject* o)
    Py_ssize_t PyUnicode_GET_LENGTH(PyObject* o)

from ext.siphash cimport _siphash_bytes
from scanstream.ext.codec import _key_halves

#: An event larger than this is not parsed (a scan event is a few hundred bytes).
MAX_EVENT_BYTES = 65536
#: Identifiers (scan_id, user_id, store_id, ...) longer than this make the event invalid.
MAX_ID_CHARS = 256
#: The roles of the event schema, sorted (engine/audiences.py numbers them by position).
ROLES = ("consumer", "dealer", "guide", "store", "warehouse")
#: The role of an event that names none.
DEFAULT_ROLE = "consumer"
#: Trade actions (DESIGN "Trade events") and the one role allowed to take each: an outbound scan
#: binds goods to a dealer, a sale scan makes a guide the unit's guide; from anyone else the
#: action would move goods or money on a claim the role cannot make, so the event is refused.
ACTIONS = {"ship": "warehouse", "sell": "guide"}
#: The ``action`` column's codes: a small integer per scan (the stages compare it for every scan, an
#: integer comparison where text would be compared object by object); ``ACTION_NAMES[code]``.
ACTION_NONE, ACTION_SHIP, ACTION_SELL = 0, 1, 2
ACTION_NAMES = ("", "ship", "sell")
cdef dict _ACTION_CODES = {"ship": ACTION_SHIP, "sell": ACTION_SELL}
#: SipHash key of event fingerprints.  Not a secret: the fingerprint only has to tell two events
#: apart, the same on every worker and backend.
FINGERPRINT_KEY = b"scanstream-event"
#: Latitude and longitude outside these are not places on Earth: the event is unusable.
MAX_LAT = 90.0
MAX_LON = 180.0
#: Accepted event times: 2000-01-01 .. 2100-01-01 UTC, in epoch milliseconds.
TS_MIN_MS = 946684800000
TS_MAX_MS = 4102444800000

cdef int64_t _TS_MIN = TS_MIN_MS
cdef int64_t _TS_MAX = TS_MAX_MS
# C copies of the limits the per-event loop compares with (a module attribute is an object look-up)
cdef Py_ssize_t _MAX_EVENT_BYTES = MAX_EVENT_BYTES
cdef Py_ssize_t _MAX_ID_CHARS = MAX_ID_CHARS
cdef tuple _ROLES = ROLES
cdef tuple _ROLE_BYTES = tuple(role.encode("ascii") for role in ROLES)


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    # proleptic Gregorian calendar date -> days since 1970-01-01
    y -= m <= 2
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline int64_t _month_days(int64_t year, int64_t month) noexcept nogil:
    if month == 2:
        return 29 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 28
    return 30 if month in (4, 6, 9, 11) else 31


cdef inline int _digits(const unsigned char* s, Py_ssize_t n, Py_ssize_t at, int count, int64_t* out) noexcept nogil:
    cdef int64_t v = 0
    cdef int i
    if at + count > n:
        return -1
    for i in range(count):
        if s[at + i] < 48 or s[at + i] > 57:
            return -1
        v = v * 10 + (s[at + i] - 48)
    out[0] = v
    return 0


cdef int _rfc3339_ms(const unsigned char* s, Py_ssize_t n, int64_t* out) noexcept nogil:
    """``YYYY-MM-DD[T ]HH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`` -> epoch ms; -1 if not that."""
    cdef int64_t year, month, day, hour, minute, second, frac = 0, oh, om, sign
    cdef Py_ssize_t i = 19
    cdef int fdigits = 0
    if n < 20 or s[4] != 45 or s[7] != 45 or s[13] != 58 or s[16] != 58:
        return -1
    if s[10] != 84 and s[10] != 116 and s[10] != 32:  # 'T', 't' or ' '
        return -1
    if (_digits(s, n, 0, 4, &year) or _digits(s, n, 5, 2, &month) or _digits(s, n, 8, 2, &day)
            or _digits(s, n, 11, 2, &hour) or _digits(s, n, 14, 2, &minute) or _digits(s, n, 17, 2, &second)):
        return -1
    if month < 1 or month > 12 or day < 1 or day > _month_days(year, month) or hour > 23 or minute > 59 \
            or second > 60:
        return -1
    if s[i] == 46:  # '.': keep milliseconds, drop finer digits
        i += 1
        while i < n and 48 <= s[i] <= 57:
            if fdigits < 3:
                frac = frac * 10 + (s[i] - 48)
            fdigits += 1
            i += 1
        if fdigits == 0:
            return -1
        while fdigits < 3:
            frac *= 10
            fdigits += 1
    if i == n - 1 and (s[i] == 90 or s[i] == 122):  # 'Z' / 'z'
        oh = 0; om = 0; sign = 1
    elif i == n - 6 and (s[i] == 43 or s[i] == 45) and s[i + 3] == 58:
        sign = 1 if s[i] == 43 else -1
        if _digits(s, n, i + 1, 2, &oh) or _digits(s, n, i + 4, 2, &om) or oh > 23 or om > 59:
            return -1
    else:
        return -1
    if second == 60:  # a leap second is read as the last millisecond of its minute
        second = 59
        frac = 999
    out[0] = ((_days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
               - sign * (oh * 3600 + om * 60)) * 1000 + frac)
    return 0


cdef enum:
    # A byte counter holds this many: ``_colons`` counts in blocks of this many bytes
    BYTE_COUNT_MAX = 255


cdef Py_ssize_t _colons(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """The ':' bytes of ``s``, wherever they are.  Counted in a byte per block, which compilers
    vectorise into a comparison and a subtraction per 16 bytes (a wider counter costs more)."""
    cdef Py_ssize_t start = 0, i, end, count = 0
    cdef uint8_t block
    while start < n:
        end = start + BYTE_COUNT_MAX if n - start > BYTE_COUNT_MAX else n
        block = 0
        for i in range(start, end):
            block += s[i] == 58
        count += block
        start = end
    return count


cdef inline bint _keys_written_once(const unsigned char* s, Py_ssize_t n, Py_ssize_t distinct) noexcept nogil:
    """Whether the outermost object in ``s`` (valid JSON), which has ``distinct`` keys, writes none of
    them twice.  Every key written is followed by a ':', so when the line holds no more colons than
    distinct keys (no colon in a text or a nested object: most events) no key was written twice,
    without walking the JSON; otherwise the keys of the outermost object are counted."""
    return _colons(s, n) == distinct or _top_level_keys(s, n) == distinct


cdef Py_ssize_t _top_level_keys(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Keys of the outermost JSON object in ``s``, counted as written: a key written twice counts
    twice.  ``s`` is known to be valid JSON whose outermost value is an object."""
    cdef Py_ssize_t i = 0, keys = 0, before
    cdef int depth = 0
    cdef const unsigned char* quote
    while i < n:
        if s[i] == 34:  # a string: skip to its closing quote, found by memchr rather than byte by byte
            while True:
                quote = <const unsigned char*>memchr(s + i + 1, 34, n - i - 1)
                if quote == NULL:  # not valid JSON after all: nothing more to count
                    return keys
                i = quote - s
                # a quote is escaped when an odd number of backslashes precede it ("\\" is one
                # backslash); the opening quote stops the walk back
                before = i - 1
                while s[before] == 92:
                    before -= 1
                if (i - 1 - before) % 2 == 0:
                    break
        elif s[i] == 123 or s[i] == 91:  # { [
            depth += 1
        elif s[i] == 125 or s[i] == 93:  # } ]
            depth -= 1
        elif s[i] == 58 and depth == 1:  # ':' after a key of the outermost object
            keys += 1
        i += 1
    return keys


cdef enum:
    # Fields of an event that the fingerprint sorts in place; an event with more is unusable (a
    # scan event has about ten).
    FIELDS_MAX = 64
    # Type tags of the canonical form: a value's type is part of it ("1" is not 1).
    TAG_STR = 1
    TAG_INT = 2
    TAG_FLOAT = 3
    TAG_TRUE = 4
    TAG_FALSE = 5
    TAG_NULL = 6
    TAG_JSON = 7  # an object or array: its canonical JSON (orjson, keys sorted)

#: Fields an event may have (``FIELDS_MAX``).
MAX_FIELDS = FIELDS_MAX


cdef struct Canon:
    # the canonical form of one event, built in a buffer reused for the whole batch
    uint8_t* buf
    Py_ssize_t len
    Py_ssize_t cap


cdef inline int _grow(Canon* c, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap = c.cap
    cdef uint8_t* buf
    if c.len + more <= cap:
        return 0
    while cap < c.len + more:
        cap = cap * 2 if cap else 4096
    buf = <uint8_t*>realloc(c.buf, cap)
    if buf == NULL:
        raise MemoryError()
    c.buf, c.cap = buf, cap
    return 0


cdef inline int _put(Canon* c, uint8_t tag, const char* data, Py_ssize_t n) except -1:
    """A tag, a 4-byte length and ``n`` bytes: no two sequences of fields read as the same bytes."""
    _grow(c, n + 5)
    c.buf[c.len] = tag
    cdef uint32_t size = <uint32_t>n
    memcpy(c.buf + c.len + 1, &size, 4)
    if n:
        memcpy(c.buf + c.len + 5, data, n)
    c.len += n + 5
    return 0


cdef inline int _put_value(Canon* c, object value) except -1:
    cdef const char* text
    cdef Py_ssize_t size
    cdef long long whole
    cdef int overflow = 0
    cdef double real
    if type(value) is str:
        if PyUnicode_IS_COMPACT_ASCII(<PyObject*>value):
            text, size = <const char*>PyUnicode_DATA(<PyObject*>value), PyUnicode_GET_LENGTH(<PyObject*>value)
        else:
            text = PyUnicode_AsUTF8AndSize(value, &size)
        _put(c, TAG_STR, text, size)
    elif value is True:
        _put(c, TAG_TRUE, NULL, 0)
    elif value is False:
        _put(c, TAG_FALSE, NULL, 0)
    elif value is None:
        _put(c, TAG_NULL, NULL, 0)
    elif type(value) is int:
        whole = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow:
            raw = str(value).encode()
            _put(c, TAG_INT, raw, len(raw))
        else:
            _put(c, TAG_INT, <const char*>&whole, 8)
    elif type(value) is float:
        real = value
        _put(c, TAG_FLOAT, <const char*>&real, 8)
    else:  # nested objects and arrays are rare in scan events: orjson writes them canonically
        raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        _put(c, TAG_JSON, raw, len(raw))
    return 0


#: The fields the parser reads, in the order of their slots in ``Fields.slot`` (``F_*``).
FIELD_NAMES = ("scan_id", "ts", "code", "user_id", "role", "store_id", "channel", "region", "ip", "device_id",
               "dealer_id", "action", "lat", "lon")

cdef enum:
    F_SCAN_ID, F_TS, F_CODE, F_USER_ID, F_ROLE, F_STORE_ID, F_CHANNEL, F_REGION, F_IP, F_DEVICE_ID, F_DEALER_ID, \
        F_ACTION, F_LAT, F_LON, F_COUNT
    # Bytes of a name's prefix (``_prefix``), and of the longest name in FIELD_NAMES: a name is
    # recognised by its prefix and the prefix of its remaining bytes
    PREFIX_BYTES = 8
    FIELD_NAME_MAX = 2 * PREFIX_BYTES


cdef struct Fields:
    # One pass over an event's fields (``_collect``): what the field checks and the fingerprint read
    PyObject* slot[F_COUNT]  # the value of each field of FIELD_NAMES (borrowed), NULL when absent
    Py_ssize_t n  # fields of the event
    bint unreadable  # a name without a UTF-8 form (never from orjson): the fingerprint raises for it
    # the first FIELDS_MAX fields in dict order: name as UTF-8, its length and prefix, value (borrowed)
    const char* names[FIELDS_MAX]
    Py_ssize_t sizes[FIELDS_MAX]
    uint64_t prefixes[FIELDS_MAX]
    PyObject* values[FIELDS_MAX]


cdef inline uint64_t _prefix(const char* name, Py_ssize_t size) noexcept nogil:
    """The first PREFIX_BYTES bytes of a name as a big-endian integer, zero-padded.  Two names whose
    prefixes differ sort as their prefixes do (byte order, a name before the longer ones it starts):
    the bytes before the first difference are equal, and where a name ends its zero padding is below
    the other's byte there, which is not zero since the prefixes differ there."""
    cdef const uint8_t* p = <const uint8_t*>name
    cdef uint64_t out = 0
    cdef Py_ssize_t i
    if size >= PREFIX_BYTES:  # one expression: compilers make it one load
        return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40) | (<uint64_t>p[3] << 32)
                | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16) | (<uint64_t>p[6] << 8) | <uint64_t>p[7])
    for i in range(size):
        out |= (<uint64_t>p[i]) << (8 * (PREFIX_BYTES - 1 - i))
    return out


cdef uint64_t _FIELD_PREFIX[F_COUNT]
cdef uint64_t _FIELD_REST[F_COUNT]  # the prefix of a name's bytes after its first PREFIX_BYTES
# the slots ordered by the length of their names, and where those of each length start in that
# order: a name is compared only with the two or three of its length
cdef int _BY_SIZE[F_COUNT]
cdef int _FIRST_OF_SIZE[FIELD_NAME_MAX + 2]


def _init_fields():
    """Fill the tables ``_slot_of`` reads from FIELD_NAMES (once, at import)."""
    cdef int f, size
    cdef bytes name
    if len(FIELD_NAMES) != F_COUNT:
        raise ImportError(f"FIELD_NAMES has {len(FIELD_NAMES)} names for {F_COUNT} slots")
    for f in range(F_COUNT):
        name = FIELD_NAMES[f].encode("ascii")
        if len(name) > FIELD_NAME_MAX:
            raise ImportError(f"field name {FIELD_NAMES[f]!r} is longer than {FIELD_NAME_MAX} bytes")
        _FIELD_PREFIX[f] = _prefix(name, len(name))
        _FIELD_REST[f] = _prefix(<const char*>name + PREFIX_BYTES, len(name) - PREFIX_BYTES) \
            if len(name) > PREFIX_BYTES else 0
    by_size = sorted(range(F_COUNT), key=lambda slot: len(FIELD_NAMES[slot]))
    for f in range(F_COUNT):
        _BY_SIZE[f] = by_size[f]
    for size in range(FIELD_NAME_MAX + 2):
        _FIRST_OF_SIZE[size] = sum(1 for name in FIELD_NAMES if len(name) < size)


_init_fields()


cdef inline int _slot_of(const char* name, Py_ssize_t size, uint64_t prefix) noexcept nogil:
    """The slot of a field of FIELD_NAMES, -1 for any other name."""
    cdef int at, f
    if size > FIELD_NAME_MAX:
        return -1
    for at in range(_FIRST_OF_SIZE[size], _FIRST_OF_SIZE[size + 1]):
        f = _BY_SIZE[at]
        if _FIELD_PREFIX[f] == prefix and (size <= PREFIX_BYTES
                                           or _FIELD_REST[f] == _prefix(name + PREFIX_BYTES, size - PREFIX_BYTES)):
            return f
    return -1


cdef void _collect(dict event, Fields* f) noexcept:
    """Every field of ``event`` in one pass: the slots of the fields the parser reads (a look-up per
    field would compare names again for each of them) and the names and values the fingerprint sorts."""
    cdef Py_ssize_t pos = 0, n = 0, size
    cdef PyObject* key
    cdef PyObject* value
    cdef const char* name
    cdef uint64_t prefix
    cdef int slot
    for slot in range(F_COUNT):
        f.slot[slot] = NULL
    f.unreadable = False
    while PyDict_Next(event, &pos, &key, &value):
        if PyUnicode_CheckExact(key) and PyUnicode_IS_COMPACT_ASCII(key):  # JSON names are str
            name, size = <const char*>PyUnicode_DATA(key), PyUnicode_GET_LENGTH(key)
        else:
            name = _utf8_or_null(key, &size)
        if name == NULL:
            PyErr_Clear()
            f.unreadable = True
        else:
            prefix = _prefix(name, size)
            slot = _slot_of(name, size, prefix)
            if slot >= 0:
                f.slot[slot] = value
            if n < FIELDS_MAX:
                f.names[n], f.sizes[n], f.prefixes[n], f.values[n] = name, size, prefix, value
        n += 1
    f.n = n


cdef inline bint _sorts_after(Fields* f, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Whether name ``a`` comes after name ``b`` in byte order (a name before the longer ones it
    starts); the prefixes decide unless they are equal."""
    cdef int order
    if f.prefixes[a] != f.prefixes[b]:
        return f.prefixes[a] > f.prefixes[b]
    order = memcmp(f.names[a], f.names[b], f.sizes[a] if f.sizes[a] < f.sizes[b] else f.sizes[b])
    return order > 0 or (order == 0 and f.sizes[a] > f.sizes[b])


cdef uint64_t _fingerprint(dict event, Fields* f, Canon* c, uint64_t k0, uint64_t k1) except? 0:
    """SipHash of the event's canonical form: its fields in the byte order of their names, each
    name and value with a type tag and a length.  Spacing, key order and the spelling of a
    number ("1.50" or "1.5") do not change it; any field's value does.  ``f`` is the event's
    fields as ``_collect`` found them."""
    cdef Py_ssize_t pos = 0, n = f.n, i, j, size, at
    cdef Py_ssize_t order[FIELDS_MAX]
    cdef PyObject* key
    cdef PyObject* value
    if n > FIELDS_MAX:
        raise ValueError(f"an event has at most {FIELDS_MAX} fields, this one {len(event)}")
    if f.unreadable:  # the error of reading the name, for the reason to name it
        while PyDict_Next(event, &pos, &key, &value):
            PyUnicode_AsUTF8AndSize(<object>key, &size)
        raise ValueError("a field name has no UTF-8 form")
    for i in range(n):  # insertion sort of the positions: a handful of fields
        j = i
        while j > 0 and _sorts_after(f, order[j - 1], i):
            order[j] = order[j - 1]
            j -= 1
        order[j] = i
    c.len = 0
    for i in range(n):
        at = order[i]
        _put(c, 0, f.names[at], f.sizes[at])
        _put_value(c, <object>f.values[at])
    return _siphash_bytes(k0, k1, c.buf, c.len) | 1  # never 0: 0 marks an event without one


cdef str _ident(PyObject* p, str field, bint required, list problems):
    """An identifier field (its value ``p``, NULL when absent) as str ('' when absent); records a
    problem when unusable."""
    cdef str text
    if p == NULL or <object>p is None:
        if required:
            problems.append(f"missing required field {field!r}")
        return ""
    value = <object>p
    if type(value) is str:
        text = <str>value
        if required and len(text) == 0:
            problems.append(f"{field} is empty")
        elif len(text) > _MAX_ID_CHARS:
            problems.append(f"{field} has {len(text)} characters; at most {MAX_ID_CHARS} allowed")
            return ""
        return text
    if type(value) is int:  # numeric ids are common in scan APIs: keep them, as text
        return str(value)
    problems.append(f"{field} must be a string, got {type(value).__name__}")
    return ""


cdef inline bint _number(PyObject* p, str field, double* out, list problems):
    """Read an optional number field (its value ``p``) into ``out``; False (with a problem) when unusable."""
    if p == NULL or <object>p is None:
        return True
    value = <object>p
    if (type(value) is float or type(value) is int) and isfinite(<double>value):
        out[0] = <double>value
        return True
    problems.append(f"{field} must be a number, got {str(value)[:40]!r}")
    return False


cdef inline void _coordinate(PyObject* p, str field, double limit, double* out, list problems):
    """An optional coordinate (its value ``p``) into ``out`` (NaN when absent); a problem when unusable
    or off Earth."""
    cdef double coord
    if p == NULL or <object>p is None or not _number(p, field, &coord, problems):
        return
    if -limit <= coord <= limit:
        out[0] = coord
    else:
        problems.append(f"{field} {coord!r} is outside -{limit:g}..{limit:g}")


cdef int _role(object value):
    """The number in ROLES of the role ``value`` names, -1 when it names none.  An ASCII text is
    compared byte by byte with each role, without a comparison of objects."""
    cdef Py_ssize_t size, r
    cdef const char* text
    if type(value) is not str:
        return -1
    if not PyUnicode_IS_COMPACT_ASCII(<PyObject*>value):  # a role is ASCII: rare texts take the long way
        return _ROLES.index(value) if value in _ROLES else -1
    text, size = <const char*>PyUnicode_DATA(<PyObject*>value), PyUnicode_GET_LENGTH(<PyObject*>value)
    for r in range(len(_ROLES)):
        if size == len(<bytes>_ROLE_BYTES[r]) and memcmp(text, <const char*><bytes>_ROLE_BYTES[r], size) == 0:
            return r
    return -1


cdef int _is_adcode(str region) except -1:
    """Whether ``region`` is 2, 4 or 6 ASCII digits, read from its UTF-8 bytes (a digit of another
    script is not ASCII, and an ASCII text has as many bytes as characters)."""
    cdef Py_ssize_t size, i
    cdef const char* text = PyUnicode_AsUTF8AndSize(region, &size)
    if size != 2 and size != 4 and size != 6:
        return False
    for i in range(size):
        if text[i] < 48 or text[i] > 57:  # '0' .. '9'
            return False
    return True


def parse_events(list lines):
    """Columns of the events in ``lines`` (each ``bytes`` or ``str``, one JSON object).

    Returns a dict of numpy columns: scan_id, ts (epoch ms), code, user_id, role, store_id,
    channel, region, lat, lon, ip, device_id, action (uint8 ``ACTION_*`` codes), dealer_id (an outbound
    scan's dealer), ``role_no`` (uint8: the role's number in ROLES, for the stages to compare numbers
    rather than texts), and ``reason`` ('' for a usable event, else
    why it is an ``invalid_event``).  ``raw`` holds the original text of invalid events only.
    ``fingerprint`` (uint64) identifies a usable event's content: SipHash of its canonical form
    (``_fingerprint``: fields sorted by name, typed values), so key order and spacing do not
    matter and every field does; 0 for invalid events.  An object that writes a key twice
    is unusable: a reader that keeps the first value and one that keeps the last would see two
    different events under one fingerprint.
    """
    cdef Py_ssize_t n = len(lines), i
    cdef int role
    cdef object line, value, text
    cdef dict event
    cdef PyObject* p
    cdef int64_t ms
    cdef long long whole
    cdef int overflow = 0
    cdef double coord
    cdef const unsigned char* buf
    cdef list problems = []
    cdef Fields fields
    cdef Canon canon
    # module attributes read once per batch, not once per event
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
    canon.buf, canon.len, canon.cap = NULL, 0, 0
    k0, k1 = _key_halves(FINGERPRINT_KEY)
    cdef uint64_t fk0 = k0, fk1 = k1
    fingerprint = np.zeros(n, dtype=np.uint64)
    cdef uint64_t[::1] fp_v = fingerprint
    names = ("scan_id", "code", "user_id", "role", "store_id", "channel", "region", "ip", "device_id",
             "dealer_id", "reason", "raw")
    cols = {}
    for name in names:
        cols[name] = np.empty(n, dtype=object)
        cols[name][:] = ""
    cols["role"][:] = DEFAULT_ROLE
    role_no = np.full(n, ROLES.index(DEFAULT_ROLE), dtype=np.uint8)
    cdef uint8_t[::1] role_no_v = role_no
    ts = np.zeros(n, dtype=np.int64)
    lat = np.full(n, np.nan)
    lon = np.full(n, np.nan)
    cdef int64_t[::1] ts_v = ts
    cdef double[::1] lat_v = lat
    cdef double[::1] lon_v = lon
    cdef object[::1] scan_id_c = cols["scan_id"], code_c = cols["code"], user_c = cols["user_id"]
    cdef object[::1] role_c = cols["role"], store_c = cols["store_id"], channel_c = cols["channel"]
    cdef object[::1] region_c = cols["region"], ip_c = cols["ip"], device_c = cols["device_id"]
    cdef object[::1] reason_c = cols["reason"], raw_c = cols["raw"]
    cdef object[::1] dealer_c = cols["dealer_id"]
    action = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] action_v = action
    for i in range(n):
        line = lines[i]
        event = None
        if type(line) is str:  # the size limit is in bytes, whatever form the line came in
            try:
                line = (<str>line).encode("utf-8")
            except UnicodeEncodeError:
                line = (<str>line).encode("utf-8", "replace")
                problems.append("event is not valid Unicode text")
        if problems:
            pass
        elif type(line) is not bytes:
            problems.append(f"event must be bytes or str, got {type(line).__name__}")
        elif len(<bytes>line) > _MAX_EVENT_BYTES:
            problems.append(f"event of {len(line)} bytes exceeds the limit of {MAX_EVENT_BYTES}")
        else:
            try:
                value = loads(line)
            except JSONDecodeError as exc:
                problems.append(f"not JSON: {exc}")
            else:
                if type(value) is dict:
                    buf = <const unsigned char*>PyBytes_AS_STRING(line)
                    if not _keys_written_once(buf, len(<bytes>line), len(<dict>value)):
                        problems.append("a key is written twice in the event")
                    event = value
                else:
                    problems.append(f"not a JSON object but {type(value).__name__}")
        if event is not None:
            _collect(event, &fields)
            scan_id_c[i] = _ident(fields.slot[F_SCAN_ID], "scan_id", True, problems)
            user_c[i] = _ident(fields.slot[F_USER_ID], "user_id", True, problems)
            p = fields.slot[F_CODE]
            if p == NULL or <object>p is None:
                problems.append("missing required field 'code'")
            elif type(<object>p) is str:
                code_c[i] = <object>p  # the codec judges it; a bad code is 'malformed', not invalid
            else:
                problems.append(f"code must be a string, got {type(<object>p).__name__}")
            p = fields.slot[F_TS]
            if p == NULL or <object>p is None:
                problems.append("missing required field 'ts'")
            else:
                value = <object>p
                if type(value) is int:
                    whole = PyLong_AsLongLongAndOverflow(value, &overflow)  # compared in C, not as objects
                    if not overflow and _TS_MIN <= whole < _TS_MAX:
                        ts_v[i] = whole
                    else:
                        problems.append(f"ts {value} is not epoch milliseconds in 2000..2100")
                elif type(value) is str:
                    text = (<str>value).encode("utf-8", "replace")
                    buf = text
                    if _rfc3339_ms(buf, len(text), &ms) != 0:
                        problems.append(f"ts {value[:40]!r} is not an RFC 3339 time with a zone")
                    elif not (_TS_MIN <= ms < _TS_MAX):
                        problems.append(f"ts {value[:40]!r} is not in 2000..2100")
                    else:
                        ts_v[i] = ms
                else:
                    problems.append(f"ts must be an RFC 3339 string or epoch milliseconds, got {type(value).__name__}")
            p = fields.slot[F_ROLE]
            if p != NULL and <object>p is not None:
                role = _role(<object>p)
                if role >= 0:  # the column holds the ROLES constant: one object per role
                    role_c[i], role_no_v[i] = _ROLES[role], role
                else:
                    problems.append(f"role {str(<object>p)[:40]!r} is not one of {list(ROLES)}")
            if fields.slot[F_STORE_ID] != NULL:
                store_c[i] = _ident(fields.slot[F_STORE_ID], "store_id", False, problems)
            if fields.slot[F_CHANNEL] != NULL:
                channel_c[i] = _ident(fields.slot[F_CHANNEL], "channel", False, problems)
            if fields.slot[F_REGION] != NULL:
                region = _ident(fields.slot[F_REGION], "region", False, problems)
                if region and not _is_adcode(region):
                    problems.append(f"region {region[:40]!r} is not an adcode of 2, 4 or 6 digits")
                region_c[i] = region
            if fields.slot[F_IP] != NULL:
                ip_c[i] = _ident(fields.slot[F_IP], "ip", False, problems)
            if fields.slot[F_DEVICE_ID] != NULL:
                device_c[i] = _ident(fields.slot[F_DEVICE_ID], "device_id", False, problems)
            if fields.slot[F_DEALER_ID] != NULL:
                dealer_c[i] = _ident(fields.slot[F_DEALER_ID], "dealer_id", False, problems)
            p = fields.slot[F_ACTION]
            if p != NULL and <object>p is not None:
                value = <object>p
                if type(value) is not str or value not in ACTIONS:
                    problems.append(f"action {str(value)[:40]!r} is not one of {sorted(ACTIONS)}")
                elif ACTIONS[value] != role_c[i]:
                    problems.append(f"action {value!r} is taken by role {ACTIONS[value]!r}, not {role_c[i]!r}")
                elif value == "ship" and not dealer_c[i]:
                    problems.append("action 'ship' needs the dealer_id the goods are shipped to")
                else:
                    action_v[i] = _ACTION_CODES[value]
            _coordinate(fields.slot[F_LAT], "lat", MAX_LAT, &lat_v[i], problems)
            _coordinate(fields.slot[F_LON], "lon", MAX_LON, &lon_v[i], problems)
            if not problems:
                try:
                    fp_v[i] = _fingerprint(event, &fields, &canon, fk0, fk1)
                    if fp_v[i] == 0:  # 0 marks an unusable event (the stages read it so): a 1-in-2**64 hash moves
                        fp_v[i] = 1
                except (TypeError, ValueError, orjson.JSONEncodeError) as exc:  # nested past orjson's depth limit
                    problems.append(f"event cannot be fingerprinted: {exc}")
        if problems:
            reason_c[i] = "; ".join(problems)
            raw_c[i] = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
            problems.clear()
    free(canon.buf)
    cols["fingerprint"] = fingerprint
    cols["action"] = action
    cols["role_no"] = role_no
    cols["ts"] = ts
    cols["lat"] = lat
    cols["lon"] = lon
    return cols
