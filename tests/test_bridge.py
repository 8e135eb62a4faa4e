"""The Fortran bridge driven from Python through its f2py extension:
Python -> f2py -> module_cu_mlcu -> C shim -> emulator.runtime -> back, on the caller's memory."""

import sys
from pathlib import Path

import numpy as np
import pytest
from netCDF4 import Dataset

from emulator.runtime import Runtime
from training.replay import wrf_arrays
from training.wrfout import open_wrfout

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "fortran_bridge"))
from pybridge import BridgeError, FortranScheme  # noqa: E402

HALO = 3


@pytest.fixture(scope="module")
def frame(synthetic_files):
    """The synthetic history time with the most columns held by NCA."""
    def held(path):
        with Dataset(path) as ds:
            return int((ds["NCA"][0] >= 0.5 * ds.DT).sum())

    path = max(synthetic_files, key=held)
    assert held(path) > 0
    return open_wrfout(path, extras=("QCLOUD", "QRAIN", "QICE", "QSNOW"), chunks=None,
                       time=0).isel(Time=0).load()


@pytest.fixture
def scheme():
    """Start the bridge with given settings; stop it after the test (one runtime per process)."""
    started = []

    def start(model, **options):
        s = FortranScheme(model, **{"n_levels": 44, **options})
        started.append(s)
        return s

    yield start
    for s in started:
        s.finalize()


def halo_arrays(rt, frame):
    """WRF memory with a 3-point halo filled with NaN around the domain (which must never be
    read or written), NCA and cumulus fields from the file; returns (arrays, bounds)."""
    nx, ny, nz = frame.sizes["west_east"], frame.sizes["south_north"], frame.sizes["bottom_top"]
    arrays = {}
    for name, a in wrf_arrays(frame, rt, "history").items():
        shape = (nx + 2 * HALO,) + a.shape[1:-1] + (ny + 2 * HALO,)
        big = np.full(shape, -7 if a.dtype == np.int32 else np.nan, dtype=a.dtype, order="F")
        big[HALO:HALO + nx, ..., HALO:HALO + ny] = a
        arrays[name] = big
    bounds = [1, nx + 1, 1, ny + 1, 1, nz + 1, 1 - HALO, nx + HALO, 1 - HALO, ny + HALO, 1, nz + 1,
              1, nx, 1, ny, 1, nz]
    return arrays, bounds


def tiles(bounds, n):
    """WRF-style tiles: the j range cut into n pieces."""
    jts, jte = bounds[14], bounds[15]
    edges = np.linspace(jts, jte + 1, n + 1).astype(int)
    return [bounds[:14] + [lo, hi - 1] + bounds[16:] for lo, hi in zip(edges[:-1], edges[1:])]


def same_bits(a, b):
    """Bitwise equality (NaN equals NaN, -0 differs from 0)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_fortran_call_equals_runtime_in_place(frame, onnx_model, scheme):
    rt = Runtime.from_options({"model": str(onnx_model), "threads": 1, "n_levels": 44})
    fortran = scheme(onnx_model)
    arrays, bounds = halo_arrays(rt, frame)
    start = {k: v.copy(order="F") for k, v in arrays.items()}
    direct = {k: v.copy(order="F") for k, v in arrays.items()}
    dt, dx = frame.attrs["DT"], frame.attrs["DX"]

    evaluated = 0
    for tile in tiles(bounds, 3):
        fortran.run_tile(arrays, tile, dt, dx, 0.0, 1)
        evaluated += rt.run_tile(direct, tile, dt, dx, 0.0, 1)["evaluated"]
    for name in arrays:
        assert same_bits(arrays[name], direct[name]), name
    assert fortran.counter("evaluated") == evaluated > 0

    inner = (slice(HALO, -HALO), slice(HALO, -HALO))
    held = start["NCA"][inner] >= 0.5 * dt
    assert 0 < held.sum() < held.size
    for name in ("RTHCUTEN", "QC_CU", "PRATEC", "RAINCV", "CUTOP", "NCA"):
        a, s = arrays[name], start[name]
        if a.ndim == 3:
            a, s = a.transpose(0, 2, 1), s.transpose(0, 2, 1)
        assert same_bits(a[inner][held], s[inner][held]), name
    # The halo is neither read (it holds NaN, which would be fatal) nor written.
    for name in arrays:
        ring = np.ones(arrays[name].shape, dtype=bool)
        ring[HALO:-HALO, ..., HALO:-HALO] = False
        assert same_bits(arrays[name][ring], start[name][ring]), name
    # The runtime wrote into the caller's memory: W0AVG is updated on every tile column.
    tile_w0avg = (inner[0], slice(0, 44), inner[1])
    assert not np.array_equal(arrays["W0AVG"][tile_w0avg], start["W0AVG"][tile_w0avg])


def test_errors_come_back_as_messages(frame, onnx_model, scheme, tmp_path):
    with pytest.raises(BridgeError, match=r"cu_mlcu_init: .*model file .*missing.onnx does not exist"):
        scheme(tmp_path / "missing.onnx")
    # Models are level-agnostic: another level count is accepted.
    scheme(onnx_model, n_levels=40).finalize()
    with pytest.raises(BridgeError, match="nan_policy='sometimes'"):
        scheme(onnx_model, nan_policy="sometimes")

    rt = Runtime.from_options({"model": str(onnx_model), "n_levels": 44})
    arrays, bounds = halo_arrays(rt, frame)
    arrays["NCA"][...] = -100.0
    arrays["T_PHY"][HALO + 4, 10, HALO + 2] = np.nan
    fortran = scheme(onnx_model)
    with pytest.raises(BridgeError, match="cu_mlcu_driver: .*non-finite T_PHY in column i=5, j=3 level k=11"):
        fortran.run_tile(arrays, bounds, frame.attrs["DT"], frame.attrs["DX"], 0.0, 1)
    with pytest.raises(BridgeError, match="already running with other settings"):
        scheme(onnx_model, nan_policy="zero")
    fortran.finalize()

    tolerant = scheme(onnx_model, nan_policy="zero")
    tolerant.run_tile(arrays, bounds, frame.attrs["DT"], frame.attrs["DX"], 0.0, 1)
    assert tolerant.counter("nan") == 1
    assert arrays["NCA"][HALO + 4, HALO + 2] == -100.0  # the bad column is left as reset


def test_counters_line_sums_every_runtime_counter(frame, onnx_model, scheme):
    """cu_mlcu_counters (the line WRF prints as `mlcu counters:`) holds every counter the
    runtime returns, summed over the calls, in the runtime's order."""
    rt = Runtime.from_options({"model": str(onnx_model), "threads": 1, "n_levels": 44})
    fortran = scheme(onnx_model)
    assert fortran.counters() == {}
    arrays, bounds = halo_arrays(rt, frame)
    direct = {k: v.copy(order="F") for k, v in arrays.items()}
    dt, dx = frame.attrs["DT"], frame.attrs["DX"]
    expected: dict[str, int] = {}
    for tile in tiles(bounds, 2):
        fortran.run_tile(arrays, tile, dt, dx, 0.0, 1)
        for key, value in rt.run_tile(direct, tile, dt, dx, 0.0, 1).items():
            expected[key] = expected.get(key, 0) + int(value)
    got = fortran.counters()
    assert got == expected
    assert list(got) == list(expected)
    assert got["evaluated"] + got["held"] == got["columns"] > 0
    assert fortran.counter("triggered") == expected["triggered"]
