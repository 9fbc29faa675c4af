# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Nearest centroid for a batch of GPS points, by candidate lists on a lat/lon grid.

``engine.geo.AdcodeIndex`` lays out the grid and proves the candidate bounds (every point's
true nearest centroid is in the list of the point's cell); ``cell_candidates`` fills the
lists once when the index is built, and ``nearest_rows`` looks each point's cell up and
scans its list.  Both loops run without the GIL.  Shapes are checked once per call; after
that every index is clamped to the grid or read from ``offsets``, which is why bounds
checks are off.
"""
from libc.math cimport M_PI, acos, cos, fabs, sin
from libc.stdint cimport int32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

import numpy as np

cdef double DEG = M_PI / 180.0
cdef double LAT_LIMIT = 90.0
cdef double LON_LIMIT = 180.0
cdef Py_ssize_t INT32_MAX = 2147483647


def nearest_rows(const double[::1] lat, const double[::1] lon, const double[:, ::1] xyz,
                 const int32_t[::1] offsets, const int32_t[::1] members,
                 double lat_lo, double lon_lo, double lat_step, double lon_step,
                 Py_ssize_t nrows, Py_ssize_t ncols, double min_dot, int32_t[::1] out):
    """Write into ``out[k]`` the row in ``xyz`` of the centroid nearest to point k, or -1.

    -1 when the point is NaN or out of range, lies outside the grid, or its nearest centroid
    has a dot product below ``min_dot`` (farther than the index's maximum distance).  Cell
    (i, j) covers ``lat_lo + i*lat_step`` .. ``+lat_step`` and the same in longitude; its
    candidates are ``members[offsets[c]:offsets[c + 1]]`` with ``c = i*ncols + j``.
    """
    cdef Py_ssize_t n = lat.shape[0], k, i, j, c, m
    cdef double la, lo, ti, tj, x, y, z, cl, dot, best_dot
    cdef int32_t best, row
    if lon.shape[0] != n or out.shape[0] != n:
        raise ValueError(f"lat, lon and out must have one length; got {n}, {lon.shape[0]}, {out.shape[0]}")
    if xyz.shape[1] != 3 or offsets.shape[0] != nrows * ncols + 1:
        raise ValueError(f"grid of {nrows}x{ncols} cells needs {nrows * ncols + 1} offsets and (n, 3) centroids; "
                         f"got {offsets.shape[0]} offsets and centroids of shape ({xyz.shape[0]}, {xyz.shape[1]})")
    with nogil:
        for k in range(n):
            la = lat[k]
            lo = lon[k]
            out[k] = -1
            # written as "not <=" so that NaN, which fails every comparison, is rejected too
            if not (fabs(la) <= LAT_LIMIT and fabs(lo) <= LON_LIMIT):
                continue
            ti = (la - lat_lo) / lat_step
            tj = (lo - lon_lo) / lon_step
            # the grid reaches past every centroid by more than the maximum distance, so a
            # point outside it has no centroid near enough
            if not (0.0 <= ti <= nrows and 0.0 <= tj <= ncols):
                continue
            # cells are closed: a point on the far edge of the grid belongs to the last cell
            i = min(<Py_ssize_t>ti, nrows - 1)
            j = min(<Py_ssize_t>tj, ncols - 1)
            c = i * ncols + j
            if offsets[c] == offsets[c + 1]:
                continue
            cl = cos(la * DEG)
            x = cl * cos(lo * DEG)
            y = cl * sin(lo * DEG)
            z = sin(la * DEG)
            best = -1
            best_dot = -2.0  # below any dot product of unit vectors
            for m in range(offsets[c], offsets[c + 1]):
                row = members[m]
                dot = x * xyz[row, 0] + y * xyz[row, 1] + z * xyz[row, 2]
                # strict ">" keeps the lowest row among exact ties, like numpy's argmax
                if dot > best_dot:
                    best_dot = dot
                    best = row
            if best_dot >= min_dot:
                out[k] = best


def cell_candidates(const double[:, ::1] centres, const double[::1] radius, const double[:, ::1] xyz,
                    double max_angle, double slack):
    """Candidate lists of the grid cells: ``(offsets, members)``, int32, CSR layout.

    Cell k (unit-vector centre ``centres[k]``, every point within angle ``radius[k]`` of it)
    keeps centroid c when ``d(centre, c) <= min(d_min + 2 * radius, max_angle + radius) +
    slack``, with d_min the angle from the centre to its nearest centroid (the bound is
    proved in ``engine.geo``).  A cell's members are in ascending row order.
    """
    cdef Py_ssize_t ncells = centres.shape[0], n = xyz.shape[0], k, c, used = 0, capacity
    cdef double cx, cy, cz, best, bound, threshold
    cdef bint failed = False
    cdef double* dots
    cdef int32_t* buf
    cdef int32_t* grown
    cdef int32_t[::1] mem
    if centres.shape[1] != 3 or xyz.shape[1] != 3 or radius.shape[0] != ncells:
        raise ValueError(f"expected (cells, 3) centres, (cells,) radii and (n, 3) centroids; got shapes "
                         f"({ncells}, {centres.shape[1]}), ({radius.shape[0]},), ({n}, {xyz.shape[1]})")
    if n > INT32_MAX:
        raise ValueError(f"{n} centroids: expected at most {INT32_MAX} (rows are int32)")
    offsets = np.zeros(ncells + 1, dtype=np.int32)
    cdef int32_t[::1] off = offsets
    capacity = max(ncells, n, 1)
    dots = <double*>malloc(max(n, 1) * sizeof(double))
    buf = <int32_t*>malloc(capacity * sizeof(int32_t))
    if dots == NULL or buf == NULL:
        free(dots)
        free(buf)
        raise MemoryError(f"cannot allocate candidate buffers for {ncells} cells and {n} centroids")
    try:
        with nogil:
            for k in range(ncells):
                cx = centres[k, 0]
                cy = centres[k, 1]
                cz = centres[k, 2]
                best = -2.0  # below any dot product of unit vectors
                for c in range(n):
                    dots[c] = cx * xyz[c, 0] + cy * xyz[c, 1] + cz * xyz[c, 2]
                    if dots[c] > best:
                        best = dots[c]
                bound = min(acos(min(max(best, -1.0), 1.0)) + 2.0 * radius[k], max_angle + radius[k]) + slack
                threshold = cos(bound) if bound < M_PI else -2.0
                # room for the worst case, every centroid, before the cell is scanned
                if used + n > capacity:
                    capacity = max(2 * capacity, used + n)
                    grown = <int32_t*>realloc(buf, capacity * sizeof(int32_t))
                    if grown == NULL:
                        failed = True
                        break
                    buf = grown
                for c in range(n):
                    if dots[c] >= threshold:
                        buf[used] = <int32_t>c
                        used += 1
                if used > INT32_MAX:
                    failed = True
                    break
                off[k + 1] = <int32_t>used
        if failed:
            raise MemoryError(f"candidate lists outgrew memory or int32 offsets at {used} entries; "
                              f"expected fewer (a coarser grid or a smaller max_km)")
        members = np.empty(used, dtype=np.int32)
        if used:
            mem = members
            memcpy(&mem[0], buf, used * sizeof(int32_t))
    finally:
        free(dots)
        free(buf)
    return offsets, members
