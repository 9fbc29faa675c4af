# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The in-process state store's per-scan dict work, compiled: its scan_id answers.

``engine.state.memory`` keeps every scan_id's first answer in a dict, ``scan_id -> (verdict,
fingerprint, first user)``; a batch looks up each of its scan_ids and stores an answer for each
new one.  In Python that is a look-up, a tuple and an insert per scan, driven through ``map`` and
``zip`` over lists made from the columns for the purpose; here it is one loop over the columns.

The answers stored are the same tuples, so the store's snapshots (``engine.state.embedded``) do
not change.  They are untracked by the garbage collector when made: a tuple of two integers and a
string can never be part of a reference cycle, and CPython itself untracks such a tuple at the
first collection that meets it; done here, a batch's thousands of answers do not make each of
the collections they trigger walk the batch's other young objects with them.
"""
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.long cimport PyLong_FromLong, PyLong_FromUnsignedLongLong
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int64_t, uint8_t, uint64_t

import numpy as np

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(object op)
    bint PyUnicode_CheckExact(object op)


def look_up(dict answers, object[::1] scan_id):
    """Each scan_id's stored answer: returns ``(fresh, stored, known)``.  ``stored`` (bool) flags the
    scan_ids answered before, ``known`` holds their answers in row order, and ``fresh`` (bool) the
    first row of each other scan_id (a scan_id repeated inside the batch is judged against its
    first occurrence)."""
    cdef Py_ssize_t n = scan_id.shape[0], i, seen_before
    cdef PyObject* found
    fresh = np.zeros(n, bool)
    stored = np.zeros(n, bool)
    cdef uint8_t[::1] fresh_v = fresh.view(np.uint8)
    cdef uint8_t[::1] stored_v = stored.view(np.uint8)
    cdef list known = []
    cdef set seen = set()  # the batch's new scan_ids so far
    for i in range(n):
        found = PyDict_GetItem(answers, scan_id[i])
        if found != NULL:
            stored_v[i] = True
            known.append(<object>found)
        else:
            seen_before = len(seen)
            seen.add(scan_id[i])
            fresh_v[i] = len(seen) > seen_before
    return fresh, stored, known


def remember(dict answers, object[::1] scan_id, const int64_t[::1] rows, const uint8_t[::1] verdict,
             const uint64_t[::1] fingerprint, object[::1] user):
    """Store the answer ``(verdict, fingerprint, user)`` of each row of ``rows`` (indices into the
    other columns) under its scan_id."""
    cdef Py_ssize_t i, r
    cdef object answer, code, fp, first_user
    for i in range(rows.shape[0]):
        r = rows[i]
        code = PyLong_FromLong(verdict[r])  # a small integer: shared, not made
        fp = PyLong_FromUnsignedLongLong(fingerprint[r])
        first_user = user[r]
        answer = PyTuple_New(3)
        # PyTuple_SET_ITEM takes over a reference: one more for each item, which this loop keeps too
        Py_INCREF(code)
        PyTuple_SET_ITEM(answer, 0, code)
        Py_INCREF(fp)
        PyTuple_SET_ITEM(answer, 1, fp)
        Py_INCREF(first_user)
        PyTuple_SET_ITEM(answer, 2, first_user)
        if PyUnicode_CheckExact(first_user):  # integers and a str: atoms, never in a cycle
            PyObject_GC_UnTrack(answer)
        PyDict_SetItem(answers, scan_id[r], answer)


def distinct_columns(dict store, const uint64_t[::1] keys, const uint64_t[:, ::1] members,
                     const uint8_t[:, ::1] has, const uint8_t[::1] fresh):
    """The windows' k sets per key (``MemoryStateStore.distinct`` with columns), compiled:
    returns ``(sizes, added)``, each row's set sizes after its member went in (int64, n x k) and
    the keys given a value by this call.

    A key's value is a tuple of k columns, each None (empty), a member (a set of one, kept as
    the int) or a set; a value of one column (a member or a set, as the one-set calls keep it) is
    its column 0.  The ``fresh`` rows (their code's first scan) go first, in row order, each
    starting its sets afresh; then the other rows, in row order, each adding its members (``has``
    flags the columns a row has a member for).  The order and the values are those the store
    kept before this loop was compiled, so its snapshots do not change."""
    cdef Py_ssize_t n = keys.shape[0], k = members.shape[1], i, j
    sizes = np.zeros((n, k), np.int64)
    cdef int64_t[:, ::1] size = sizes
    cdef list added = []
    cdef list columns
    cdef object key, value, cur, m, cell
    cdef PyObject* found
    for i in range(n):
        if not fresh[i]:
            continue
        key = PyLong_FromUnsignedLongLong(keys[i])
        value = PyTuple_New(k)
        for j in range(k):
            if has[i, j]:
                cell = PyLong_FromUnsignedLongLong(members[i, j])
                size[i, j] = 1
            else:
                cell = None
            Py_INCREF(cell)
            PyTuple_SET_ITEM(value, j, cell)
        PyDict_SetItem(store, key, value)
        added.append(key)
    for i in range(n):
        if fresh[i]:
            continue
        key = PyLong_FromUnsignedLongLong(keys[i])
        found = PyDict_GetItem(store, key)
        if found == NULL:
            columns = [None] * k
            added.append(key)
        else:
            value = <object>found
            if type(value) is tuple:
                columns = list(value) + [None] * (k - len(<tuple>value))
            else:
                columns = [value] + [None] * (k - 1)
        for j in range(k):
            cur = columns[j]
            if has[i, j]:
                m = PyLong_FromUnsignedLongLong(members[i, j])
                if cur is None:
                    cur = m
                elif type(cur) is int:
                    if cur != m:
                        cur = {cur, m}
                else:
                    (<set>cur).add(m)
                columns[j] = cur
            size[i, j] = 0 if cur is None else 1 if type(cur) is int else len(<set>cur)
        PyDict_SetItem(store, key, tuple(columns))
    return sizes, added
