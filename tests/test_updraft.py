"""MSKF's trigger, updraft and downdraft (emulator/kf_updraft.f90 through emulator.updraft):
against WRF's own MSKF on the oracle files, and physical sanity on constructed columns."""

import numpy as np
import pytest
import xarray as xr

from emulator import constants as c
from emulator import updraft as kf


def _sounding(n_columns=2, lapse=6.5e-3, rh_low=0.9, rh_high=0.6, w_max=1.0, nz=40):
    """Hydrostatic columns: T falling by ``lapse`` K/m from 300 K to a 210 K tropopause,
    relative humidity from ``rh_low`` to ``rh_high`` at 10 km, W0AVG peaking at ``w_max``."""
    dz = np.full(nz, 400.0)
    dz[:8] = np.linspace(60.0, 400.0, 8)
    z = np.cumsum(dz) - 0.5 * dz
    t = np.maximum(300.0 - lapse * z, 210.0)
    p = np.empty(nz)
    p_half = 1.0e5
    for k in range(nz):  # hypsometric, layer by layer
        p[k] = p_half * np.exp(-c.G * 0.5 * dz[k] / (c.R_D * t[k]))
        p_half = p[k] * np.exp(-c.G * 0.5 * dz[k] / (c.R_D * t[k]))
    es = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))
    qsat = 0.622 * es / (p - es)
    rh = np.interp(z, [0.0, 10000.0], [rh_low, rh_high])
    qv = rh * qsat
    w0 = w_max * (z / 3000.0) * np.exp(1.0 - z / 3000.0)
    columns = {"T_PHY": t, "QVAPOR": qv, "P_HYD": p, "RHO": p / (c.R_D * t * (1 + 0.608 * qv)),
               "DZ8W": dz, "W0AVG": w0, "U_PHY": 5.0 + z / 1000.0, "V_PHY": np.zeros(nz)}
    out = {k: np.tile(v.astype(np.float32), (n_columns, 1)) for k, v in columns.items()}
    out |= {"HFX": np.full(n_columns, 200.0, np.float32), "UST": np.full(n_columns, 0.3, np.float32),
            "PBLH": np.full(n_columns, 1000.0, np.float32), "ZOL": np.full(n_columns, -0.5, np.float32),
            "DX": np.full(n_columns, 9000.0, np.float32)}
    return out


def _field(col, name):
    return col[:, kf.COLUMN_FIELDS.index(name)]


def test_unstable_ascending_column_makes_a_deep_cloud_a_stable_dry_one_none():
    deep, deep_col = kf.diagnose(_sounding())
    assert (_field(deep_col, "kind") == 2).all()
    lcl, top = _field(deep_col, "lcl_level")[0], _field(deep_col, "top_level")[0]
    assert 1 <= lcl < top <= 40 and _field(deep_col, "cloud_depth")[0] > 4000.0
    assert _field(deep_col, "buoyant_energy")[0] > 100.0
    mass_flux, in_cloud = deep[0, 0], deep[0, kf.LEVEL_FIELDS.index("in_cloud")]
    levels = np.arange(1, 41)
    np.testing.assert_array_equal(in_cloud, (levels >= lcl) & (levels <= top))
    assert (mass_flux >= 0).all() and (mass_flux[(levels > lcl) & (levels < top)] > 0).all()
    assert (mass_flux[levels >= top] == 0).all()
    # The time scale is never shorter than the advective one, and the efficiency in range.
    assert _field(deep_col, "time_scale")[0] >= _field(deep_col, "advective_time")[0]
    assert 0.2 <= _field(deep_col, "precipitation_efficiency")[0] <= 0.9

    stable = kf.channels(_sounding(lapse=2.0e-3, rh_low=0.3, rh_high=0.1, w_max=-0.5))
    assert stable.shape == (2, kf.CHANNELS, 40) and not stable.any()


def test_channels_layout_and_error_when_the_extension_disagrees():
    x = kf.channels(_sounding(3))
    assert x.dtype == np.float32 and x.shape == (3, kf.CHANNELS, 40)
    np.testing.assert_array_equal(x[:, kf.DEEP], 1.0)  # deep flag on every level
    # The downdraft's channels come after the updraft's, which do not change.
    with_downdraft = kf.channels(_sounding(3), downdraft=True)
    assert with_downdraft.shape == (3, kf.n_channels(downdraft=True), 40)
    np.testing.assert_array_equal(with_downdraft[:, :kf.CHANNELS], x)
    assert kf.layout() != kf.layout(downdraft=True)
    # The kernel refuses a layout other than its own.
    args = [np.ones((40, 1), np.float32, order="F")] * 8 + [np.ones(1, np.float32)] * 5
    *_, status = kf._kernel().updraft_columns(len(kf.LEVEL_FIELDS) - 1, len(kf.COLUMN_FIELDS), *args)
    assert status == 1


def test_the_kernel_reproduces_wrf_mskf_on_the_oracle(oracle_files):
    """Kind of convection, cloud base and top, time scale and the mass-exchange profiles of
    WRF's own MSKF_CPS (stored in the oracle files) on the held-out files."""
    from training import mskf
    from training.columns import _flatten
    from training.wrfout import open_wrfout

    for path in [p for p in oracle_files if p.name.endswith("_01.nc")]:
        inputs = mskf.column_inputs(open_wrfout(path, chunks=None, time=0, outputs=False))
        ref = xr.open_dataset(path).isel(Time=0)
        dx, dt = ref.attrs["DX"], ref.attrs["DT"]
        inputs["DX"] = np.full(len(inputs["T_PHY"]), dx, np.float32)
        lev, col = kf.diagnose(inputs)
        truth = {n: _flatten(ref[n]) if ref[n].ndim == 3 else _flatten(ref[n])[:, 0]
                 for n in ("ORACLE_TRIGGER", "CUTOP", "CUBOT", "TIMEC_KF", "UER_KF", "UDR_KF",
                           "DER_KF", "DDR_KF")}
        kind = _field(col, "kind")
        assert (kind == truth["ORACLE_TRIGGER"]).mean() >= 0.999, path.name
        both = (kind > 0) & (truth["ORACLE_TRIGGER"] > 0)
        assert (_field(col, "lcl_level")[both] == truth["CUBOT"][both]).mean() >= 0.995, path.name
        assert (_field(col, "top_level")[both] == truth["CUTOP"][both]).mean() >= 0.99, path.name
        deep = (kind == 2) & (truth["ORACLE_TRIGGER"] == 2)
        timec = np.minimum(np.rint(_field(col, "time_scale") / dt) * dt, c.MAX_HOLD)
        assert (np.abs(timec - truth["TIMEC_KF"])[deep] <= dt).mean() >= 0.99, path.name
        # MSKF stores the rates after its closure: compare their shapes, where both have them
        # (the downdraft's: where both find one).
        for field, name in (("entrainment", "UER_KF"), ("detrainment", "UDR_KF"),
                            ("downdraft_entrainment", "DER_KF"), ("downdraft_detrainment", "DDR_KF")):
            a, b = lev[deep, kf.LEVEL_FIELDS.index(field)], truth[name][deep]
            has = np.abs(a).sum(axis=1) > 0
            assert (has == (np.abs(b).sum(axis=1) > 0)).mean() >= 0.995, f"{path.name}: {name}"
            a = a[has] / a[has].sum(axis=1, keepdims=True)
            b = b[has] / b[has].sum(axis=1, keepdims=True)
            r2 = 1 - ((a - b) ** 2).sum() / ((b - b.mean(axis=0)) ** 2).sum()
            assert r2 >= 0.99, f"{path.name}: {name} shape R2 {r2:.4f}"


@pytest.mark.parametrize("bad", ["levels", "missing"])
def test_inputs_that_do_not_fit_are_refused(bad):
    inputs = _sounding()
    if bad == "levels":
        inputs["W0AVG"] = inputs["W0AVG"][:, :-1]
        with pytest.raises(kf.UpdraftError, match="same 40 mass levels"):
            kf.diagnose(inputs)
    else:
        del inputs["PBLH"]
        with pytest.raises(KeyError, match="PBLH"):
            kf.diagnose(inputs)
