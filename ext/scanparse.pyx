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
from libc.string cimport memcmp, memcpy

import numpy as np
import orjson

from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

from ext.siphash cimport _siphash_bytes
from scanstream.ext.codec import _key_halves

#: An event larger than this is not parsed (a scan event is a few hundred bytes).
MAX_EVENT_BYTES = 65536
#: Identifiers (scan_id, user_id, store_id, ...) longer than this make the event invalid.
MAX_ID_CHARS = 256
#: The roles of the event schema, sorted (engine/audiences.py numbers them by position).
ROLES = ("consumer", "dealer", "guide", "store", "warehouse")
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


cdef Py_ssize_t _top_level_keys(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Keys of the outermost JSON object in ``s``, counted as written: a key written twice counts
    twice.  ``s`` is known to be valid JSON whose outermost value is an object."""
    cdef Py_ssize_t i = 0, keys = 0
    cdef int depth = 0
    cdef bint in_string = False
    while i < n:
        if in_string:
            if s[i] == 92:  # backslash: the next byte is escaped
                i += 1
            elif s[i] == 34:
                in_string = False
        elif s[i] == 34:
            in_string = True
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


cdef uint64_t _fingerprint(dict event, Canon* c, uint64_t k0, uint64_t k1) except? 0:
    """SipHash of the event's canonical form: its fields in the byte order of their names, each
    name and value with a type tag and a length.  Spacing, key order and the spelling of a
    number ("1.50" or "1.5") do not change it; any field's value does."""
    cdef Py_ssize_t pos = 0, n = 0, i, j, size
    cdef PyObject* key
    cdef PyObject* value
    cdef const char* names[FIELDS_MAX]
    cdef Py_ssize_t sizes[FIELDS_MAX]
    cdef PyObject* values[FIELDS_MAX]
    cdef const char* tn
    cdef Py_ssize_t ts
    cdef PyObject* tv
    cdef int order
    if len(event) > FIELDS_MAX:
        raise ValueError(f"an event has at most {FIELDS_MAX} fields, this one {len(event)}")
    while PyDict_Next(event, &pos, &key, &value):
        names[n] = PyUnicode_AsUTF8AndSize(<object>key, &size)  # JSON keys are str
        sizes[n], values[n] = size, value
        # insertion sort: a handful of fields
        j = n
        while j > 0:
            order = memcmp(names[j - 1], names[j], sizes[j - 1] if sizes[j - 1] < sizes[j] else sizes[j])
            if order < 0 or (order == 0 and sizes[j - 1] <= sizes[j]):
                break
            tn, ts, tv = names[j], sizes[j], values[j]
            names[j], sizes[j], values[j] = names[j - 1], sizes[j - 1], values[j - 1]
            names[j - 1], sizes[j - 1], values[j - 1] = tn, ts, tv
            j -= 1
        n += 1
    c.len = 0
    for i in range(n):
        _put(c, 0, names[i], sizes[i])
        _put_value(c, <object>values[i])
    return _siphash_bytes(k0, k1, c.buf, c.len) | 1  # never 0: 0 marks an event without one


cdef str _ident(dict event, str field, bint required, list problems):
    """An identifier field as str ('' when absent); records a problem when unusable."""
    cdef PyObject* p = PyDict_GetItem(event, field)
    if p == NULL or <object>p is None:
        if required:
            problems.append(f"missing required field {field!r}")
        return ""
    value = <object>p
    if type(value) is str:
        if required and not value:
            problems.append(f"{field} is empty")
        elif len(value) > MAX_ID_CHARS:
            problems.append(f"{field} has {len(value)} characters; at most {MAX_ID_CHARS} allowed")
            return ""
        return value
    if type(value) is int:  # numeric ids are common in scan APIs: keep them, as text
        return str(value)
    problems.append(f"{field} must be a string, got {type(value).__name__}")
    return ""


cdef inline bint _number(dict event, str field, double* out, list problems):
    """Read an optional number field into ``out``; False (with a problem) when unusable."""
    cdef PyObject* p = PyDict_GetItem(event, field)
    if p == NULL or <object>p is None:
        return True
    value = <object>p
    if (type(value) is float or type(value) is int) and isfinite(<double>value):
        out[0] = <double>value
        return True
    problems.append(f"{field} must be a number, got {str(value)[:40]!r}")
    return False


cdef inline void _coordinate(dict event, str field, double limit, double* out, list problems):
    """An optional coordinate into ``out`` (NaN when absent); a problem when unusable or off Earth."""
    cdef double coord
    cdef PyObject* p = PyDict_GetItem(event, field)
    if p == NULL or <object>p is None or not _number(event, field, &coord, problems):
        return
    if -limit <= coord <= limit:
        out[0] = coord
    else:
        problems.append(f"{field} {coord!r} is outside -{limit:g}..{limit:g}")


def parse_events(list lines):
    """Columns of the events in ``lines`` (each ``bytes`` or ``str``, one JSON object).

    Returns a dict of numpy columns: scan_id, ts (epoch ms), code, user_id, role, store_id,
    channel, region, lat, lon, ip, device_id, action (uint8 ``ACTION_*`` codes), dealer_id (an outbound
    scan's dealer), and ``reason`` ('' for a usable event, else
    why it is an ``invalid_event``).  ``raw`` holds the original text of invalid events only.
    ``fingerprint`` (uint64) identifies a usable event's content: SipHash of its canonical form
    (``_fingerprint``: fields sorted by name, typed values), so key order and spacing do not
    matter and every field does; 0 for invalid events.  An object that writes a key twice
    is unusable: a reader that keeps the first value and one that keeps the last would see two
    different events under one fingerprint.
    """
    cdef Py_ssize_t n = len(lines), i
    cdef object line, value, text
    cdef dict event
    cdef PyObject* p
    cdef int64_t ms
    cdef double coord
    cdef const unsigned char* buf
    cdef list problems = []
    cdef Canon canon
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
    cols["role"][:] = "consumer"
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
        elif len(line) > MAX_EVENT_BYTES:
            problems.append(f"event of {len(line)} bytes exceeds the limit of {MAX_EVENT_BYTES}")
        else:
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                problems.append(f"not JSON: {exc}")
            else:
                if type(value) is dict:
                    buf = line
                    if _top_level_keys(buf, len(line)) != len(<dict>value):
                        problems.append("a key is written twice in the event")
                    event = value
                else:
                    problems.append(f"not a JSON object but {type(value).__name__}")
        if event is not None:
            scan_id_c[i] = _ident(event, "scan_id", True, problems)
            user_c[i] = _ident(event, "user_id", True, problems)
            p = PyDict_GetItem(event, "code")
            if p == NULL or <object>p is None:
                problems.append("missing required field 'code'")
            elif type(<object>p) is str:
                code_c[i] = <object>p  # the codec judges it; a bad code is 'malformed', not invalid
            else:
                problems.append(f"code must be a string, got {type(<object>p).__name__}")
            p = PyDict_GetItem(event, "ts")
            if p == NULL or <object>p is None:
                problems.append("missing required field 'ts'")
            else:
                value = <object>p
                if type(value) is int:
                    if _TS_MIN <= value < _TS_MAX:
                        ts_v[i] = value
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
            p = PyDict_GetItem(event, "role")
            if p != NULL and <object>p is not None:
                if <object>p in ROLES:
                    role_c[i] = <object>p
                else:
                    problems.append(f"role {str(<object>p)[:40]!r} is not one of {list(ROLES)}")
            if PyDict_GetItem(event, "store_id") != NULL:
                store_c[i] = _ident(event, "store_id", False, problems)
            if PyDict_GetItem(event, "channel") != NULL:
                channel_c[i] = _ident(event, "channel", False, problems)
            if PyDict_GetItem(event, "region") != NULL:
                region = _ident(event, "region", False, problems)
                if region and not (len(region) in (2, 4, 6) and region.isdigit() and region.isascii()):
                    problems.append(f"region {region[:40]!r} is not an adcode of 2, 4 or 6 digits")
                region_c[i] = region
            if PyDict_GetItem(event, "ip") != NULL:
                ip_c[i] = _ident(event, "ip", False, problems)
            if PyDict_GetItem(event, "device_id") != NULL:
                device_c[i] = _ident(event, "device_id", False, problems)
            if PyDict_GetItem(event, "dealer_id") != NULL:
                dealer_c[i] = _ident(event, "dealer_id", False, problems)
            p = PyDict_GetItem(event, "action")
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
            _coordinate(event, "lat", MAX_LAT, &lat_v[i], problems)
            _coordinate(event, "lon", MAX_LON, &lon_v[i], problems)
            if not problems:
                try:
                    fp_v[i] = _fingerprint(event, &canon, fk0, fk1)
                except (TypeError, ValueError, orjson.JSONEncodeError) as exc:  # nested past orjson's depth limit
                    problems.append(f"event cannot be fingerprinted: {exc}")
        if problems:
            reason_c[i] = "; ".join(problems)
            raw_c[i] = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
            problems.clear()
    free(canon.buf)
    cols["fingerprint"] = fingerprint
    cols["action"] = action
    cols["ts"] = ts
    cols["lat"] = lat
    cols["lon"] = lon
    return cols
