"""Invariants of the synthetic WRF output and of the reference convection scheme."""

import netCDF4
import numpy as np
import pytest
import xarray as xr

from emulator import constants as c
from emulator.derive import exner
from training.synthetic.generate import GenerateConfig, generate, time_step


def _open(path):
    return xr.open_dataset(path, decode_times=False, decode_coords=False).load()


def _column_mass(ds):
    z_w = (ds.PH + ds.PHB) / c.G
    dz = z_w.diff("bottom_top_stag").rename(bottom_top_stag="bottom_top")
    return ds.RHO * dz


def _fresh(ds):
    """Columns the scheme computed in the step just before this output time."""
    dt = float(ds.attrs["DT"])
    active = (ds.RTHCUTEN != 0).any("bottom_top")
    return active & ((ds.NCA <= 0) | (ds.NCA == ds.TIMEC_KF - dt))


def test_hydrostatic_balance(synthetic_files):
    for path in synthetic_files:
        ds = _open(path)
        p = ds.P + ds.PB
        p_w = ds.C3F * (ds.PSFC - ds.P_TOP) + ds.C4F + ds.P_TOP
        temp = (ds.T + c.T0) * exner(p)
        t_v = temp * (1 + ds.QVAPOR / c.EP2) / (1 + ds.QVAPOR)
        log_thick = np.log(p_w.values[:, :-1] / p_w.values[:, 1:])
        expected = c.R_D * t_v.values * log_thick
        dphi = np.diff((ds.PH + ds.PHB).values, axis=1)
        np.testing.assert_allclose(dphi, expected, rtol=2e-4, err_msg=str(path))
        np.testing.assert_allclose((ds.PH + ds.PHB).values[:, 0], c.G * ds.HGT.values, atol=0.05)
        p_mass = ds.C3H * (ds.PSFC - ds.P_TOP) + ds.C4H + ds.P_TOP
        np.testing.assert_allclose(p.values, p_mass.values, rtol=1e-6)
        np.testing.assert_allclose(ds.P_HYD.values, p.values, rtol=1e-6)
        assert (np.diff(p.values, axis=1) < 0).all(), "pressure must fall with height"


def test_precipitation_equals_column_moisture_sink(synthetic_files):
    n_rain = n_shallow = 0
    for path in synthetic_files:
        ds = _open(path)
        fresh = _fresh(ds)
        water = ds.RQVCUTEN + ds.RQCCUTEN + ds.RQRCUTEN + ds.RQICUTEN + ds.RQSCUTEN
        sink = -(water * _column_mass(ds)).sum("bottom_top")
        gross = (abs(ds.RQVCUTEN) * _column_mass(ds)).sum("bottom_top")
        # Held columns too: their tendencies and rain come from the same earlier call.
        raining = (ds.RTHCUTEN != 0).any("bottom_top") & (ds.PRATEC > 0)
        np.testing.assert_allclose(sink.values[raining.values], ds.PRATEC.values[raining.values],
                                   rtol=0.01)
        shallow = fresh & (ds.NCA <= 0)
        assert (ds.PRATEC.values[shallow.values] == 0).all(), "shallow convection must not rain"
        assert (abs(sink) <= 0.01 * gross).values[shallow.values].all()
        n_rain += int(raining.sum())
        n_shallow += int(shallow.sum())
    assert n_rain > 10 and n_shallow > 10


def test_deep_convection_heats_aloft_and_dries(synthetic_files):
    heating_aloft, moistening = [], []
    for path in synthetic_files:
        ds = _open(path)
        deep = ((ds.NCA > 0) & (ds.RTHCUTEN != 0).any("bottom_top")).values
        aloft = ((ds.P + ds.PB) < 50000).values
        rth, rqv = ds.RTHCUTEN.values, (ds.RQVCUTEN * _column_mass(ds)).sum("bottom_top").values
        heating_aloft += list(np.where(aloft, rth, 0).sum(axis=1)[deep])
        moistening += list(rqv[deep])
    assert len(heating_aloft) > 10
    assert np.mean(heating_aloft) > 0 and np.mean(np.array(heating_aloft) > 0) > 0.9
    assert np.all(np.array(moistening) < 0)


def test_hold_logic_and_time_scale(synthetic_files):
    held_seen = 0
    for path in synthetic_files:
        ds = _open(path)
        dt = float(ds.attrs["DT"])
        nca = ds.NCA.values
        if ds.ITIMESTEP.values[0] == 0:
            assert (nca == -100).all() and (ds.RTHCUTEN.values == 0).all()
        positive = nca > 0
        np.testing.assert_allclose(nca[positive] / dt, np.rint(nca[positive] / dt), atol=1e-4)
        timec = ds.TIMEC_KF.values
        np.testing.assert_allclose(timec / dt, np.rint(timec / dt), atol=1e-4)
        held = positive & (nca >= 0.5 * dt) & (nca < timec - dt)
        held_seen += int(held.sum())
        # A held column keeps its earlier tendencies, precipitation and per-step rain.
        assert ((ds.RTHCUTEN.values != 0).any(axis=1) | (ds.PRATEC.values > 0))[held].all()
        np.testing.assert_allclose(ds.RAINCV.values, ds.PRATEC.values * dt, rtol=1e-5, atol=1e-12)
    assert held_seen > 0, "convection must persist so that some columns are held"


def test_physical_ranges_and_no_nan(synthetic_files):
    for path in synthetic_files:
        ds = _open(path)
        for name, var in ds.data_vars.items():
            if var.dtype.kind == "f":
                assert np.isfinite(var.values).all(), f"{path}: {name} has NaN/Inf"
        dp, sh = ds.CLDFRA_DP.values, ds.CLDFRA_SH.values
        assert dp.max() <= 0.6 and (dp[dp > 0] >= 0.01).all()
        assert sh.max() <= 0.2 and (sh[sh > 0] >= 0.01).all()
        assert (ds.PRATEC.values >= 0).all() and (ds.QC_CU.values >= 0).all()
        assert ((ds.CUTOP >= ds.CUBOT) | (ds.CUTOP == 1)).all()
        rh = ds.QVAPOR / (0.622 * 611.2 * np.exp(17.67 * ((ds.T + 300) * exner(ds.P + ds.PB) - 273.15)
                                                 / ((ds.T + 300) * exner(ds.P + ds.PB) - 29.65))
                          / (ds.P + ds.PB))
        assert float(rh.max()) <= 1.01
        assert 5.0 < float(ds.QVAPOR.max()) * 1000 < 30.0  # g/kg in moist boundary layers
        t = ((ds.T + 300) * exner(ds.P + ds.PB)).values
        assert 180 < t.min() and t.max() < 320


def test_momentum_transport_conserves_column_momentum(synthetic_files):
    for path in synthetic_files:
        ds = _open(path)
        fresh = _fresh(ds).values
        mass = _column_mass(ds)
        net = (ds.RUCUTEN * mass).sum("bottom_top").values[fresh]
        gross = (abs(ds.RUCUTEN) * mass).sum("bottom_top").values[fresh]
        assert (abs(net) <= 1e-3 * gross + 1e-12).all()


def test_layout_matches_the_oracle_files(oracle_files, tmp_path):
    cfg = GenerateConfig(nx=64, ny=64, n_levels=44, dx=[25000.0], run_minutes=10.0)
    (path, *_) = generate(cfg, tmp_path, progress=False)
    with netCDF4.Dataset(oracle_files[0]) as ref, netCDF4.Dataset(path) as syn:
        assert {d: len(v) for d, v in ref.dimensions.items()} == \
               {d: len(v) for d, v in syn.dimensions.items()}
        for name, var in ref.variables.items():
            if name.startswith("ORACLE_"):
                continue
            assert name in syn.variables, f"{name} missing from the synthetic file"
            mine = syn.variables[name]
            assert mine.dimensions == var.dimensions, name
            assert mine.dtype == var.dtype, name
            for attr in ("stagger", "MemoryOrder", "FieldType"):
                if attr in var.ncattrs():
                    assert mine.getncattr(attr) == var.getncattr(attr), (name, attr)
        for attr in ("DX", "DY", "DT", "WEST-EAST_GRID_DIMENSION", "BOTTOM-TOP_GRID_DIMENSION"):
            assert attr in syn.ncattrs()
        assert syn.variables["Times"][:].tobytes().decode().startswith("2026-07-01_12:00:00")
        assert syn.dimensions["Time"].isunlimited()


def test_vertical_grid_matches_wrf_hybrid_coefficients(oracle_files):
    from training.regrid import hybrid_grid

    ds = _open(oracle_files[0])
    grid = hybrid_grid(ds.ZNW.values[0], float(ds.P_TOP.values[0]), 2, float(ds.attrs["ETAC"]))
    for name in ("C1H", "C2H", "C3H", "C4H", "C1F", "C2F", "C3F", "C4F", "ZNU"):
        np.testing.assert_allclose(getattr(grid, name.lower()), ds[name].values[0],
                                   rtol=1e-4, atol=2e-3, err_msg=name)


def test_deterministic_given_a_seed(tmp_path):
    cfg = GenerateConfig(nx=8, ny=8, n_levels=20, dx=[25000.0], run_minutes=20.0)
    first = generate(cfg, tmp_path / "a", progress=False)
    second = generate(cfg, tmp_path / "b", progress=False)
    other = generate(GenerateConfig(**dict(cfg.__dict__, seed=1)), tmp_path / "c", progress=False)
    for a, b, o in zip(first, second, other):
        da, db, do = _open(a), _open(b), _open(o)
        assert da.sizes["bottom_top"] == 20  # the level count is a setting, not a constant
        for name in da.data_vars:
            np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
        assert not np.array_equal(da.T.values, do.T.values)


def test_several_grid_spacings_and_time_steps(synthetic_files):
    dxs = {float(_open(p).attrs["DX"]) for p in synthetic_files}
    assert dxs == {3000.0, 25000.0}
    assert time_step(3000.0, 10) == 15 and time_step(25000.0, 10) == 150
    assert time_step(9000.0, 10) == 50


def test_config_rejects_unknown_settings(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nx: 8\nresolution: 3\n")
    with pytest.raises(ValueError, match="unknown settings.*resolution"):
        GenerateConfig.from_yaml(bad)
