"""GPS -> adcode (engine.geo): known places, the finest-division table, and exactness.

Exactness is checked against brute force written here independently of the index: the
haversine distance from every point to every centroid, in numpy.  The grid's correctness
argument (engine.geo's docstring) is exercised on China's table and on synthetic tables
that cross the antimeridian, touch the poles, or have no distance limit.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from scanstream.engine import geo
from scanstream.engine.geo import AdcodeIndex

EARTH_RADIUS_KM = 6371.0088
#: A known place is only a fair test when its nearest centroid wins by at least this much.
UNAMBIGUOUS_MARGIN_KM = 0.5
#: Points per brute-force block: keeps the (points x centroids) matrices near 25 MB each.
BRUTE_BLOCK = 1024
#: China's bounding box (degrees), for random points.
CHINA_LAT = (18.0, 54.0)
CHINA_LON = (73.0, 135.0)

# (place, lat, lon, adcode); each nearest centroid checked by hand against cpca's table, and
# below by brute force.  Tiananmen itself is left out: it is a near tie between 东城区 and
# 西城区 centroids (2.72 km vs 2.73 km), so Wangfujing stands for 东城区.
KNOWN_PLACES = [
    ("Wangfujing, Beijing", 39.9150, 116.4110, "110101"),  # 东城区
    ("Futian, Shenzhen", 22.5431, 114.0579, "440304"),  # 福田区
    ("The Bund, Shanghai", 31.2400, 121.4900, "310101"),  # 黄浦区
    ("Jiefangbei, Chongqing", 29.5578, 106.5772, "500103"),  # 渝中区
    ("Potala Palace, Lhasa", 29.6578, 91.1169, "540102"),  # 城关区
    ("Tianhe, Guangzhou", 23.1248, 113.3612, "440106"),  # 天河区
    # cities with no district under them resolve to the city
    ("Dongguan city centre", 23.0207, 113.7518, "441900"),  # 东莞市
    ("Jiayuguan Pass", 39.8010, 98.2170, "620200"),  # 嘉峪关市
    # and Hong Kong to the region
    ("Central, Hong Kong", 22.2800, 114.1588, "810000"),
]


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km; broadcasts."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2) - np.radians(lon1)
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def brute_force(index: AdcodeIndex, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Adcode of the nearest centroid per point ("" beyond max_km or invalid), by exhaustive search."""
    out = np.full(len(lat), "", dtype=object)
    c_lat, c_lon = np.radians(index.lat)[None, :], np.radians(index.lon)[None, :]
    for start in range(0, len(lat), BRUTE_BLOCK):
        la, lo = lat[start:start + BRUTE_BLOCK], lon[start:start + BRUTE_BLOCK]
        valid = np.flatnonzero((np.abs(la) <= 90) & (np.abs(lo) <= 180))
        p, q = np.radians(la[valid])[:, None], np.radians(lo[valid])[:, None]
        # the haversine term h grows with distance, so its argmin is the nearest centroid;
        # computed in place because this matrix is the whole cost of the test
        h = np.sin((c_lat - p) / 2)
        h *= h
        across = np.sin((c_lon - q) / 2)
        across *= across
        across *= np.cos(p)
        across *= np.cos(c_lat)
        h += across
        rows = h.argmin(axis=1)
        near = haversine_km(la[valid], lo[valid], index.lat[rows], index.lon[rows]) <= index.max_km
        out[start + valid[near]] = index.adcodes[rows[near]]
    return out


@pytest.fixture(scope="module")
def china() -> AdcodeIndex:
    return AdcodeIndex.load()


@pytest.mark.parametrize(("place", "lat", "lon", "expected"), KNOWN_PLACES, ids=[p[0] for p in KNOWN_PLACES])
def test_known_places(china: AdcodeIndex, place: str, lat: float, lon: float, expected: str) -> None:
    assert china.resolve(np.array([lat]), np.array([lon])).tolist() == [expected]
    # the expectation is the data's, and not a near tie
    d = haversine_km(lat, lon, china.lat, china.lon)
    first, second = np.argsort(d)[:2]
    assert china.adcodes[first] == expected
    assert d[second] - d[first] >= UNAMBIGUOUS_MARGIN_KM, (place, china.adcodes[second])


def test_table_keeps_the_finest_divisions(china: AdcodeIndex) -> None:
    codes = set(china.adcodes)
    assert len(codes) == len(china)
    assert all(len(c) == 6 and c.isdigit() for c in codes)
    # districts, not the cities or provinces above them
    assert {"110101", "440304", "310101", "510104"} <= codes
    assert not {"110000", "440000", "440300", "510100"} & codes
    # cities without districts (嘉峪关's only district row, 620201, has no coordinates)
    assert {"441900", "442000", "460400", "620200"} <= codes
    assert "620201" not in codes
    # regions with no division under them
    assert {"710000", "810000", "820000"} <= codes
    assert all(c[4:] != "00" for c in codes - {"441900", "442000", "460400", "620200", "710000", "810000", "820000"})
    assert len(china) > 2800
    assert "cpca" not in sys.modules, "the cpca package must be read as data, never imported"


def test_load_is_cached_per_process(china: AdcodeIndex) -> None:
    assert AdcodeIndex.load() is china
    assert AdcodeIndex.load(geo.DEFAULT_MAX_KM) is china


def test_invalid_points_give_blank(china: AdcodeIndex) -> None:
    lat = np.array([np.nan, 39.915, 90.5, -91.0, 39.915, 39.915, np.inf, 39.915])
    lon = np.array([116.411, np.nan, 116.411, 116.411, 180.5, -181.0, 116.411, -np.inf])
    assert china.resolve(lat, lon).tolist() == [""] * len(lat)


def test_far_from_china_gives_blank(china: AdcodeIndex) -> None:
    places = {"Pacific": (0.0, -160.0), "Paris": (48.8566, 2.3522), "North Pole": (90.0, 0.0),
              "antimeridian": (30.0, 180.0), "Tokyo": (35.68, 139.77)}
    lat, lon = (np.array(v) for v in zip(*places.values()))
    assert china.resolve(lat, lon).tolist() == [""] * len(places)


def test_max_km_is_the_limit() -> None:
    index = AdcodeIndex(["110101"], [0.0], [0.0], max_km=100.0)
    degrees_per_km = 180.0 / (math.pi * EARTH_RADIUS_KM)
    lat = np.array([99.9, 100.1, -99.9, -100.1]) * degrees_per_km
    lon = np.zeros(4)
    assert index.resolve(lat, lon).tolist() == ["110101", "", "110101", ""]
    assert index.resolve(lon, lat).tolist() == ["110101", "", "110101", ""]


def test_random_points_in_china_match_brute_force(china: AdcodeIndex) -> None:
    rng = np.random.default_rng(20240601)
    n = 50_000
    lat = rng.uniform(*CHINA_LAT, n)
    lon = rng.uniform(*CHINA_LON, n)
    got = china.resolve(lat, lon)
    expected = brute_force(china, lat, lon)
    mismatch = np.flatnonzero(got != expected)
    assert mismatch.size == 0, [(lat[k], lon[k], got[k], expected[k]) for k in mismatch[:5]]
    # the box holds both resolved and blank points, so both paths were taken
    assert 0.2 < np.mean(expected != "") < 0.9


def test_points_near_centroids_match_brute_force(china: AdcodeIndex) -> None:
    # Random points in the box fall mostly on sparse western cells; these land where the
    # centroids are densest (city centres), where the candidate lists are longest.
    rng = np.random.default_rng(7)
    rows = rng.integers(0, len(china), 20_000)
    lat = china.lat[rows] + rng.normal(0.0, 0.05, rows.size)
    lon = china.lon[rows] + rng.normal(0.0, 0.05, rows.size)
    assert (china.resolve(lat, lon) == brute_force(china, lat, lon)).all()


@pytest.mark.parametrize(("seed", "centre_lat", "centre_lon", "spread", "max_km"), [
    (1, 0.0, 179.0, 5.0, 500.0),  # straddles the antimeridian
    (2, 85.0, 0.0, 4.0, 300.0),  # caps reach the pole
    (3, -60.0, -70.0, 20.0, 200.0),
    (4, 10.0, 20.0, 60.0, 2000.0),
    (5, 0.0, 0.0, 90.0, math.inf),  # no limit: every point resolves
    (6, 30.0, 110.0, 0.5, 5.0),  # a few cells' worth of area
])
def test_synthetic_tables_match_brute_force(seed: int, centre_lat: float, centre_lon: float, spread: float,
                                            max_km: float) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    lat = np.clip(centre_lat + rng.uniform(-spread, spread, n), -90, 90)
    lon = (centre_lon + rng.uniform(-spread, spread, n) + 180) % 360 - 180
    index = AdcodeIndex([f"{k + 100000:06d}" for k in range(n)], lat, lon, max_km=max_km)
    m = 20_000
    # anywhere on Earth, then around the centroids, then the poles and the antimeridian
    near = rng.integers(0, n, m)
    q_lat = np.concatenate([rng.uniform(-90, 90, m), np.clip(lat[near] + rng.normal(0, 1, m), -90, 90),
                            [90.0, -90.0, 0.0, 0.0]])
    q_lon = np.concatenate([rng.uniform(-180, 180, m), (lon[near] + rng.normal(0, 1, m) + 180) % 360 - 180,
                            [0.0, 0.0, 180.0, -180.0]])
    expected = brute_force(index, q_lat, q_lon)
    assert (index.resolve(q_lat, q_lon) == expected).all()
    if math.isinf(max_km):
        assert (expected != "").all()


def test_exact_tie_takes_the_first_row() -> None:
    index = AdcodeIndex(["110101", "110102"], [39.9, 39.9], [116.4, 116.4])
    assert index.resolve([39.95], [116.45]).tolist() == ["110101"]


def test_empty_batch(china: AdcodeIndex) -> None:
    out = china.resolve(np.array([]), np.array([]))
    assert out.shape == (0,) and out.dtype == object


def test_output_is_object_array_of_str(china: AdcodeIndex) -> None:
    out = china.resolve([31.24, np.nan], [121.49, 121.49])
    assert out.dtype == object
    assert out.tolist() == ["310101", ""]
    assert all(type(v) is str for v in out)


def test_accepts_lists_and_strided_columns(china: AdcodeIndex) -> None:
    points = np.array([[31.24, 121.49, 0.0], [22.5431, 114.0579, 0.0]])
    assert china.resolve(points[:, 0], points[:, 1]).tolist() == ["310101", "440304"]
    assert china.resolve([31.24], [121.49]).tolist() == ["310101"]
    assert china.resolve(np.array([31.24], dtype=np.float32), np.array([121.49], dtype=np.float32)).tolist() \
        == ["310101"]


def test_different_lengths_raise_naming_both(china: AdcodeIndex) -> None:
    with pytest.raises(ValueError, match=r"lat of length 3 and lon of length 2"):
        china.resolve(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"1-D"):
        china.resolve(np.zeros((2, 2)), np.zeros((2, 2)))


@pytest.mark.parametrize(("codes", "lat", "lon", "max_km", "message"), [
    (["1101"], [0.0], [0.0], 200.0, r"'1101': expected 6 digits"),
    (["110101", "110102"], [0.0], [0.0, 1.0], 200.0, r"got 2, shape \(1,\), shape \(2,\)"),
    (["110101"], [95.0], [0.0], 200.0, r"110101 at \(95.0, 0.0\)"),
    (["110101"], [np.nan], [0.0], 200.0, r"expected latitude"),
    (["110101"], [0.0], [0.0], 0.0, r"max_km 0.0"),
    ([], [], [], 200.0, r"at least one centroid"),
])
def test_constructor_rejects_bad_tables(codes: list[str], lat: list[float], lon: list[float], max_km: float,
                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdcodeIndex(codes, lat, lon, max_km=max_km)


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"'cpca' is not installed"):
        geo.cpca_table_path()


def test_table_is_found_without_importing_cpca() -> None:
    path = geo.cpca_table_path()
    assert path.name == "adcodes.csv" and path.parent.parent.name == "cpca"
    assert "cpca" not in sys.modules
