"""GPS -> adcode: the Chinese administrative division whose centroid is nearest to a point.

Used by the enrich stage for scans that carry ``lat``/``lon`` but no ``region``.  A whole
batch is resolved per call: the Cython loop in ``ext.nearest`` looks each point's grid cell
up and scans that cell's candidate centroids, so the cost per point is a handful of dot
products however many centroids there are.

Why the candidate lists are exact.  Let a cell have centre m, and let every point of the
cell lie within angle R of m.  For a point p of the cell and any centroid c, the triangle
inequality gives ``d(m, c) - R <= d(p, c) <= d(m, c) + R``.  If c is p's nearest centroid,
then for every centroid c' ``d(m, c) - R <= d(p, c) <= d(p, c') <= d(m, c') + R``, so
``d(m, c) <= min_c' d(m, c') + 2R``; and if c is within the maximum distance D of p, then
``d(m, c) <= D + R``.  A cell's list keeps every centroid meeting both bounds, so it holds
the nearest centroid of every point of the cell that has one within D; and for a point with
none within D, whatever the list yields is at least as far as the true nearest, so it is
rejected too.  For a cell of ``dlat`` by ``dlon`` degrees, R = dlat/2 + dlon/2 * cos(phi)
where phi is the cell's latitude nearest the equator: walk from m along its meridian to p's
latitude (at most dlat/2), then along p's parallel (an arc of at most dlon/2 * cos(phi),
never shorter than the great circle between its ends).

Data: the ``adcodes.csv`` table shipped by the PyPI package ``cpca``, read as a file: the
package itself is never imported (its ``__init__`` needs ``pkg_resources``).  One reader
(``_cpca_rows``) gives both the centroids and the Chinese names of provinces and cities
(``division_names``, what the dashboards show for an adcode prefix).
"""
from __future__ import annotations

import csv
import importlib.util
import math
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import numpy as np

from scanstream.ext import nearest as _kernel

#: Mean Earth radius (IUGG), for converting the maximum distance to an angle.
EARTH_RADIUS_KM = 6371.0088
#: Points farther than this from every centroid resolve to "" (outside China, at sea).
DEFAULT_MAX_KM = 200.0
#: The package whose table of division centroids is read, and the table's path inside it.
DATA_PACKAGE = "cpca"
DATA_FILE = ("resources", "adcodes.csv")
#: Digits of a district-level adcode, as resolve() returns it.
ADCODE_DIGITS = 6
#: Digits of the adcodes in cpca's table (district code + six digits of township level).
TABLE_ADCODE_DIGITS = 12
#: Prefix digits that name a province and a prefecture-level city.
PROVINCE_DIGITS = 2
CITY_DIGITS = 4
#: cpca's names of city-level rows that group divisions instead of naming a place
#: (``division_names`` names them after their province).
MUNICIPAL_DISTRICTS = "市辖区"
COUNTIES = "县"
DIRECTLY_ADMINISTERED = "直辖县级行政区划"
LAT_LIMIT = 90.0
LON_LIMIT = 180.0
#: Target cell height of the grid: small enough that a cell's candidate list stays short
#: (a few dozen centroids in the densest city centres), large enough that the grid over
#: China has about 40 000 cells and builds in a fraction of a second.
CELL_DEG = 0.25
#: Cap on grid cells, so that an index over a wide area (tests, or a world table) still
#: builds in bounded time and memory; cells grow instead.
MAX_GRID_CELLS = 1 << 17
#: The grid reaches this far beyond the area any centroid can claim, so that float
#: rounding at its edge can never drop a point that has a centroid in range.
GRID_MARGIN_DEG = 0.01
#: Slack added to every candidate bound (about 6 m).  It covers float rounding in the
#: bounds, mostly arccos near 0, whose error grows like sqrt(machine epsilon) ~ 1.5e-8.
BOUND_SLACK_RAD = 1e-6


class AdcodeIndex:
    """Nearest division centroid for batches of GPS points, within a maximum distance.

    Build it from arrays (``AdcodeIndex(adcodes, lat, lon)``) or from cpca's table
    (``AdcodeIndex.load()``, once per process).  ``resolve`` is exact: it returns the adcode
    of the centroid with the smallest great-circle distance (lowest row on an exact tie).
    """

    __slots__ = ("adcodes", "lat", "lon", "max_km", "_xyz", "_codes_or_blank", "_min_dot",
                 "_lat_lo", "_lon_lo", "_lat_step", "_lon_step", "_nrows", "_ncols", "_offsets", "_members")

    def __init__(self, adcodes: Sequence[str], lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray,
                 max_km: float = DEFAULT_MAX_KM):
        """Index the centroids ``(lat[k], lon[k])`` (degrees) of divisions ``adcodes[k]`` (6 digits)."""
        codes = [str(code) for code in adcodes]
        lat_a = np.array(lat, dtype=np.float64, ndmin=1)
        lon_a = np.array(lon, dtype=np.float64, ndmin=1)
        if not (len(codes) == lat_a.size == lon_a.size) or lat_a.ndim != 1 or lon_a.ndim != 1:
            raise ValueError(f"adcodes, lat and lon must be 1-D of one length; got {len(codes)}, "
                             f"shape {lat_a.shape}, shape {lon_a.shape}")
        if not codes:
            raise ValueError("an AdcodeIndex needs at least one centroid; got none")
        for code in codes:
            if len(code) != ADCODE_DIGITS or not code.isascii() or not code.isdigit():
                raise ValueError(f"adcode {code!r}: expected {ADCODE_DIGITS} digits")
        bad = ~((np.abs(lat_a) <= LAT_LIMIT) & (np.abs(lon_a) <= LON_LIMIT))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"centroid of {codes[k]} at ({lat_a[k]}, {lon_a[k]}): expected latitude in "
                             f"[-{LAT_LIMIT}, {LAT_LIMIT}] and longitude in [-{LON_LIMIT}, {LON_LIMIT}]")
        max_km = float(max_km)
        if not max_km > 0:
            raise ValueError(f"max_km {max_km!r}: expected a positive distance in km (inf for no limit)")
        self.adcodes = np.array(codes, dtype=object)
        self.lat = lat_a
        self.lon = lon_a
        self.max_km = max_km
        for array in (self.adcodes, self.lat, self.lon):
            array.flags.writeable = False
        self._xyz = _unit_vectors(lat_a, lon_a)
        # a trailing "": the kernel's "no centroid" row, -1, indexes the last element
        self._codes_or_blank = np.array(codes + [""], dtype=object)
        max_angle = max_km / EARTH_RADIUS_KM
        self._min_dot = math.cos(max_angle) if max_angle < math.pi else -2.0  # -2: below any dot
        self._build_grid(max_angle)

    @classmethod
    def load(cls, max_km: float = DEFAULT_MAX_KM) -> AdcodeIndex:
        """The index over cpca's finest divisions, built once per process for each ``max_km``.

        Raises ``ModuleNotFoundError`` naming the package when cpca is not installed.
        """
        return _load_cached(float(max_km))

    def __len__(self) -> int:
        return len(self.adcodes)

    def __repr__(self) -> str:
        return (f"AdcodeIndex({len(self)} centroids, max_km={self.max_km}, "
                f"grid {self._nrows}x{self._ncols}, {len(self._members)} candidates)")

    def resolve(self, lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray) -> np.ndarray:
        """Adcode (6-digit str) of the nearest centroid to each point, in an object array.

        "" where the latitude or longitude is NaN or out of range (|lat| > 90, |lon| > 180),
        or no centroid is within ``max_km``.  ``lat`` and ``lon`` are degrees, 1-D, of one
        length; raises ``ValueError`` naming both lengths otherwise.
        """
        return self._codes_or_blank[self.nearest_rows(lat, lon)]

    def nearest_rows(self, lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray) -> np.ndarray:
        """Row of the nearest centroid (into ``adcodes``/``lat``/``lon``) per point, int32, -1 for none."""
        lat_a = np.ascontiguousarray(lat, dtype=np.float64)
        lon_a = np.ascontiguousarray(lon, dtype=np.float64)
        if lat_a.ndim != 1 or lon_a.ndim != 1 or lat_a.shape != lon_a.shape:
            raise ValueError(f"lat and lon must be 1-D of one length; got lat of length {_describe(lat_a)} "
                             f"and lon of length {_describe(lon_a)}")
        rows = np.empty(lat_a.shape[0], dtype=np.int32)
        _kernel.nearest_rows(lat_a, lon_a, self._xyz, self._offsets, self._members, self._lat_lo, self._lon_lo,
                             self._lat_step, self._lon_step, self._nrows, self._ncols, self._min_dot, rows)
        return rows

    def _build_grid(self, max_angle: float) -> None:
        """Lay the grid over the area the centroids can claim and fill each cell's candidates."""
        reach_deg = math.degrees(min(max_angle, math.pi))
        lat_lo = max(-LAT_LIMIT, float(self.lat.min()) - reach_deg - GRID_MARGIN_DEG)
        lat_hi = min(LAT_LIMIT, float(self.lat.max()) + reach_deg + GRID_MARGIN_DEG)
        # A point at angle <= a from a centroid at latitude phi lies within asin(sin a / cos phi)
        # of its longitude (the cap's widest parallel), unless the cap reaches a pole.
        cos_far = math.cos(math.radians(float(np.abs(self.lat).max())))
        lon_lo, lon_hi = -LON_LIMIT, LON_LIMIT
        if max_angle < math.pi / 2 and math.sin(max_angle) < cos_far:
            lon_reach = math.degrees(math.asin(math.sin(max_angle) / cos_far)) + GRID_MARGIN_DEG
            if float(self.lon.min()) - lon_reach >= -LON_LIMIT and float(self.lon.max()) + lon_reach <= LON_LIMIT:
                lon_lo, lon_hi = float(self.lon.min()) - lon_reach, float(self.lon.max()) + lon_reach
            # else the area wraps across the antimeridian: the grid spans every longitude
        lat_span, lon_span = lat_hi - lat_lo, lon_hi - lon_lo
        # cells about square on the ground at the centroids' middle latitude
        mid_cos = math.cos(math.radians((lat_lo + lat_hi) / 2))
        nrows = max(1, math.ceil(lat_span / CELL_DEG))
        ncols = max(1, math.ceil(lon_span * mid_cos / CELL_DEG))
        if nrows * ncols > MAX_GRID_CELLS:
            shrink = math.sqrt(MAX_GRID_CELLS / (nrows * ncols))
            nrows, ncols = max(1, int(nrows * shrink)), max(1, int(ncols * shrink))
        lat_step, lon_step = lat_span / nrows, lon_span / ncols

        row_lo = lat_lo + lat_step * np.arange(nrows)
        row_hi = row_lo + lat_step
        # cos of the row's latitude nearest the equator: where a parallel is longest
        cos_max = np.where((row_lo <= 0) & (row_hi >= 0), 1.0,
                           np.maximum(np.cos(np.radians(row_lo)), np.cos(np.radians(np.minimum(row_hi, LAT_LIMIT)))))
        row_radius = math.radians(lat_step) / 2 + math.radians(lon_step) / 2 * cos_max
        centre_lat = np.repeat(row_lo + lat_step / 2, ncols)
        centre_lon = np.tile(lon_lo + lon_step * (np.arange(ncols) + 0.5), nrows)
        radius = np.ascontiguousarray(np.repeat(row_radius, ncols))
        centres = _unit_vectors(centre_lat, centre_lon)

        self._offsets, self._members = _kernel.cell_candidates(centres, radius, self._xyz, max_angle,
                                                               BOUND_SLACK_RAD)
        self._lat_lo, self._lon_lo, self._lat_step, self._lon_step = lat_lo, lon_lo, lat_step, lon_step
        self._nrows, self._ncols = nrows, ncols


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(n, 3) C-contiguous unit vectors of points given in degrees."""
    phi, lam = np.radians(lat), np.radians(lon)
    return np.ascontiguousarray(np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=1))


def _describe(a: np.ndarray) -> str:
    return str(a.shape[0]) if a.ndim == 1 else f"? (shape {a.shape}, expected 1-D)"


@lru_cache(maxsize=None)
def _load_cached(max_km: float) -> AdcodeIndex:
    codes, lat, lon = read_cpca_divisions()
    return AdcodeIndex(codes, lat, lon, max_km=max_km)


def cpca_table_path() -> Path:
    """Path of cpca's ``adcodes.csv``, found without importing cpca (its import needs pkg_resources)."""
    # find_spec of a top-level name locates the package without executing its __init__
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None:
        raise ModuleNotFoundError(f"the Python package {DATA_PACKAGE!r} is not installed; GPS -> adcode needs "
                                  f"its table of division centroids (pip install {DATA_PACKAGE})",
                                  name=DATA_PACKAGE)
    if spec.submodule_search_locations:
        package_dir = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        package_dir = Path(spec.origin).parent
    else:
        raise ModuleNotFoundError(f"the Python package {DATA_PACKAGE!r} was found but has no location on disk "
                                  f"(spec {spec!r}); expected an installed package directory", name=DATA_PACKAGE)
    path = package_dir.joinpath(*DATA_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {DATA_PACKAGE!r} package has no {'/'.join(DATA_FILE)}; "
                                f"expected its table of division centroids there")
    return path


def _cpca_rows() -> Iterator[tuple[Path, int, str, str, str, str]]:
    """The one reader of cpca's table: (path, line, 6-digit adcode, name, latitude, longitude text)
    of every row down to district level; township rows are skipped.

    Both the centroids (``read_cpca_divisions``) and the names (``division_names``) come from
    here, so the engine's GPS resolution and the dashboards' names read one table, one way.
    """
    path = cpca_table_path()
    with path.open(encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            code = (row.get("adcode") or "").strip()
            if len(code) != TABLE_ADCODE_DIGITS or not code.isascii() or not code.isdigit():
                raise ValueError(f"{path}:{line}: adcode {code!r}: expected {TABLE_ADCODE_DIGITS} digits")
            if code[ADCODE_DIGITS:].strip("0"):
                continue  # finer than a district (township level): not a level resolve() returns
            yield (path, line, code[:ADCODE_DIGITS], (row.get("name") or "").strip(),
                   (row.get("latitude") or "").strip(), (row.get("longitude") or "").strip())


@lru_cache(maxsize=1)
def read_cpca_divisions() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """The finest divisions in cpca's table: 6-digit adcodes and centroid lat, lon (degrees).

    Districts (县级), plus every city or province row that has no division with a centroid
    under it, so that each point gets the finest code there is: prefecture-level cities
    without districts (东莞 441900, 中山 442000, 儋州 460400, and 嘉峪关 620200, whose only
    district row has no centroid) and Hong Kong, Macau and Taiwan (810000, 820000, 710000).
    Rows without coordinates (mostly 市辖区 placeholders) are skipped.
    """
    path = cpca_table_path()
    rows: dict[str, tuple[float, float]] = {}
    for path, line, code, _name, lat_text, lon_text in _cpca_rows():
        if not lat_text or not lon_text:
            continue
        try:
            rows[code] = (float(lat_text), float(lon_text))
        except ValueError:
            raise ValueError(f"{path}:{line}: coordinates ({lat_text!r}, {lon_text!r}) of {code}: "
                             f"expected decimal degrees") from None
    # every prefix that has a finer division with a centroid below it
    covered = set()
    for code in rows:
        length = _prefix_length(code)
        covered.update(code[:n] for n in (PROVINCE_DIGITS, CITY_DIGITS) if n < length)
    finest = sorted(code for code in rows if code[:_prefix_length(code)] not in covered)
    if not finest:
        raise ValueError(f"{path}: no division with coordinates; expected columns adcode, name, longitude, latitude")
    lat = np.array([rows[code][0] for code in finest])
    lon = np.array([rows[code][1] for code in finest])
    # cached and shared by every caller: read-only
    lat.flags.writeable = lon.flags.writeable = False
    return tuple(finest), lat, lon


@lru_cache(maxsize=1)
def division_names() -> Mapping[str, str]:
    """Chinese names of provinces and prefecture-level cities, by adcode prefix, from cpca's table.

    Keys are the prefixes the outputs carry: 2 digits for a province (``"44"`` -> 广东省), 4 for
    a city (``"4403"`` -> 深圳市).  cpca names a few city-level rows by what they group rather
    than by a place; they are named so that a reader can tell where they are:

    * 市辖区 (the districts of a municipality: 1101, 1201, 3101, 5001) -> the municipality's
      name (北京市);
    * 县 (5002, the counties of Chongqing) and the ...直辖县级行政区划 groups (1390, 4190,
      4290, 4690, 6590) -> the province's name before the group's (重庆市县, 河南省省直辖县级行政区划).

    These are the names of the ClickHouse view ``geo_regions`` (config/clickhouse/240_geo_regions.sql),
    which the dashboards read; ``tests/test_dashboard_names.py`` holds that view to this function.
    A read-only mapping, built once per process.
    """
    names: dict[str, str] = {}
    for path, line, code, name, _lat, _lon in _cpca_rows():
        if not name:
            raise ValueError(f"{path}:{line}: adcode {code} has no name; expected columns adcode, name, ...")
        length = _prefix_length(code)
        if length != ADCODE_DIGITS:  # districts are not named here: outputs name provinces and cities
            names[code[:length]] = name
    for code, name in list(names.items()):
        if len(code) != CITY_DIGITS:
            continue
        province = names.get(code[:PROVINCE_DIGITS], "")
        if name == MUNICIPAL_DISTRICTS:
            names[code] = province or name
        elif name == COUNTIES or name.endswith(DIRECTLY_ADMINISTERED):
            names[code] = province + name
    return MappingProxyType(names)


def _prefix_length(code: str) -> int:
    """Digits that name a 6-digit adcode's division: 6 for a district, 4 for a city, 2 for a province."""
    if code[CITY_DIGITS:ADCODE_DIGITS] != "00":
        return ADCODE_DIGITS
    if code[PROVINCE_DIGITS:CITY_DIGITS] != "00":
        return CITY_DIGITS
    return PROVINCE_DIGITS
