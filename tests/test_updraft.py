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


def test_initial_tendencies_dry_and_warm_the_column_by_the_same_energy():
    """The drafts' initial tendencies: the column's latent heating balances its drying (moist
    static energy moves but is not made), and it loses more vapour than it detrains as
    condensate (the rest precipitates)."""
    soundings = [_sounding(1), _sounding(1, rh_low=0.95, lapse=7.0e-3), _sounding(1, lapse=6.0e-3)]
    columns = {k: np.concatenate([s[k] for s in soundings]) for k in soundings[0]}
    lev, col = kf.diagnose(columns)
    assert (_field(col, "kind") == 2).all()
    heating, moistening, liquid, ice = (lev[:, kf.LEVEL_FIELDS.index(n)] for n in kf.GROUPS["tendencies"])
    condensate = liquid + ice
    mass = columns["RHO"] * columns["DZ8W"]  # kg/m2 per layer
    exner = (columns["P_HYD"] / 1.0e5) ** (c.R_D / c.CP)
    warming = (c.CP * exner * heating * mass).sum(axis=1)  # W/m2 per unit closure
    drying = -(c.XLV * moistening * mass).sum(axis=1)
    assert (warming > 0).all() and (drying > 0).all()
    np.testing.assert_allclose(warming / drying, 1.0, atol=0.1)
    assert ((c.XLV * condensate * mass).sum(axis=1) < 0.5 * drying).all()
    above = np.arange(40)[None, :] > _field(col, "top_level")[:, None] - 1
    assert not heating[above].any() and not moistening[above].any()


def test_channels_layout_and_error_when_the_extension_disagrees():
    x = kf.channels(_sounding(3))
    assert x.dtype == np.float32 and x.shape == (3, kf.CHANNELS, 40)
    np.testing.assert_array_equal(x[:, kf.DEEP], 1.0)  # deep flag on every level
    # The optional groups come after the updraft's channels, which do not change, in one order.
    both = kf.channels(_sounding(3), ("tendencies", "downdraft"))
    assert both.shape == (3, kf.n_channels(("downdraft", "tendencies")), 40)
    np.testing.assert_array_equal(both[:, :kf.CHANNELS], x)
    np.testing.assert_array_equal(both[:, :kf.n_channels(("downdraft",))],
                                  kf.channels(_sounding(3), ("downdraft",)))
    layouts = [kf.layout(g) for g in ((), ("downdraft",), ("tendencies",), ("downdraft", "tendencies"))]
    assert len(set(layouts)) == 4
    assert [kf.groups_of(s) for s in layouts[1:]] == [("downdraft",), ("tendencies",), ("downdraft", "tendencies")]
    assert kf.groups_of(layouts[0]) == () and kf.groups_of('{"channels": []}') is None
    with pytest.raises(kf.UpdraftError, match="unknown channel groups"):
        kf.n_channels(("closure",))
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
        # The drafts' initial tendencies, scaled per column, against MSKF's after its closure
        # (measured R2: vapour 0.94-0.95, cloud water 0.92-0.96, theta 0.60-0.63, whose profile
        # the closure's time integration reshapes most near the cloud top).
        for field, name, least in (("moistening", "RQVCUTEN", 0.92), ("detrained_liquid", "RQCCUTEN", 0.9),
                                   ("heating", "RTHCUTEN", 0.55)):
            b = _flatten(ref[name]).astype(np.float64)
            has = (kind > 0) & (np.abs(b).sum(axis=1) > 0)
            a, b = lev[has, kf.LEVEL_FIELDS.index(field)].astype(np.float64), b[has]
            fit = (a * b).sum(axis=1, keepdims=True) / np.maximum((a * a).sum(axis=1, keepdims=True), 1e-30)
            r2 = 1 - ((fit * a - b) ** 2).sum() / ((b - b.mean(axis=0)) ** 2).sum()
            assert r2 >= least, f"{path.name}: {name} profile R2 {r2:.4f}"


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
