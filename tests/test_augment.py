"""mlcu augment (columns on random vertical grids and in random regimes, labelled by WRF's own
MSKF) and mlcu sensitivity (MSKF against itself under round-off perturbations).

The grids, the re-gridding and the perturbations are checked on every run. The scheme itself
needs the mskf_columns program, built from a WRF source tree: set MLCU_MSKF_COLUMNS (a built
program), MLCU_WRF_SRC (a source tree) or MLCU_WRF_GIT (a git clone; tag MLCU_WRF_TAG, default
v4.7.1). With it, the program must reproduce the oracle files bit for bit, and augmented files
must go through prepare.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from emulator import constants as c
from emulator.derive import density, saturation_mixing_ratio
from training import mskf, regimes, regrid
from training.augment import (AugmentConfig, Source, _read, augment, augment_file, draw_grid,
                              file_grid, rebuild)
from training.wrfout import open_wrfout

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "augment.yaml"
# Conservation over the pressure range both grids cover, relative, when the grids share their
# ground and top (float32 storage of T and QVAPOR is all that is left) and when the tops differ
# (the source's layer the new top cuts through is integrated as its linear reconstruction by
# the remap, as a constant by the check).
SAME_RANGE_RTOL = 1e-6
CUT_TOP_RTOL = 5e-4
SOURCE_MAX_RH = 1.001  # the oracle's most humid layers (saturation to float32 round-off)


def _load(*sets, **flags):
    flags.setdefault("input", ["x"])
    flags.setdefault("out", "y")
    return AugmentConfig.load(CONFIG, list(sets), **flags)


def _columns(da):
    """(Time=0) field -> (column, level) in (south_north, west_east) order."""
    a = np.asarray(da.values[0], dtype=np.float64)
    return a.reshape(a.shape[0], -1).T if a.ndim == 3 else a.ravel()


def _integral(p_w, values, lo, hi):
    """Sum of layer values times their pressure thickness within [lo, hi] (piecewise constant)."""
    top = np.clip(p_w[:, 1:], lo[:, None], hi[:, None])
    bottom = np.clip(p_w[:, :-1], lo[:, None], hi[:, None])
    return (values * (bottom - top)).sum(axis=1)


def _hydrostatic_heights(ds):
    """Full-level heights from the file's own coordinate, surface pressure, T and QVAPOR by the
    hypsometric equation with virtual temperature."""
    get = lambda n: np.asarray(ds[n].values[0], dtype=np.float64)
    psfc, hgt, p_top = _columns(ds["PSFC"]), _columns(ds["HGT"]), float(ds["P_TOP"].values[0])
    p_w = get("C3F") * (psfc[:, None] - p_top) + get("C4F") + p_top
    p_m = get("C3H") * (psfc[:, None] - p_top) + get("C4H") + p_top
    t = (_columns(ds["T"]) + c.T0) * (p_m / c.P1000MB) ** c.RCP
    qv = _columns(ds["QVAPOR"])
    tv = t * (1 + qv / c.EP2) / (1 + qv)
    steps = c.R_D * tv / c.G * np.log(p_w[:, :-1] / p_w[:, 1:])
    return p_w, p_m, np.concatenate([hgt[:, None], hgt[:, None] + np.cumsum(steps, axis=1)], axis=1)


# --- settings, grids and remapping (no MSKF needed) ---------------------------------------


def test_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown augment settings"):
        AugmentConfig.load(None, ["copies_=2"], input=["x"], out="y")
    with pytest.raises(ValueError, match="copies"):
        AugmentConfig.load(None, ["copies=0"], input=["x"], out="y")
    with pytest.raises(ValueError, match="both in grid.levels and holdout_grid.levels"):
        _load("holdout_grid.levels=[[50, 60]]")
    with pytest.raises(ValueError, match="overlaps holdout_grid.top_hpa"):
        _load("holdout_grid.top_hpa=[[15, 25]]")
    with pytest.raises(ValueError, match=r"regimes \['hot'\] are both"):
        _load("regimes.hot={t_shift_k: [5, 8]}")
    with pytest.raises(ValueError, match="unknown settings.*t_shift"):
        _load("regimes.moist.t_shift=[1, 2]")
    with pytest.raises(mskf.MskfError, match="make mskf-columns"):
        mskf.program(tmp_path / "absent")


def test_grids_lie_in_their_ranges_and_held_out_ones_are_never_drawn_in_training():
    train, held = _load(), _load("holdout=true")
    levels = lambda ranges: set().union(*(range(lo, hi + 1) for lo, hi in ranges))
    within = lambda x, ranges: any(lo <= x <= hi for lo, hi in ranges)
    rng = np.random.default_rng(0)
    seen = {"families": set(), "hybrid": set(), "levels": set()}
    for _ in range(150):
        grid = draw_grid(rng, train)
        n, top = grid.n_levels, grid.p_top / 100
        assert n in levels(train.grid["levels"]) and n not in levels(held.holdout_grid["levels"])
        assert within(top, train.grid["top_hpa"]) and not 20 < top < 30
        assert grid.family in train.grid["families"] and grid.family != "ramp"
        seen["families"].add(grid.family)
        seen["hybrid"].add(grid.hybrid_opt)
        seen["levels"].add(n)
        assert np.all(np.diff(grid.znw) < 0) and grid.znw[0] == 1 and grid.znw[-1] == 0
        # Lowest layer in the 290 K reference atmosphere: the configured range.
        z1 = -c.R_D * regrid.REFERENCE_T / c.G * np.log((grid.znw[1] * (1e5 - grid.p_top) + grid.p_top) / 1e5)
        assert 25 - 1e-6 <= z1 <= 120 + 1e-6
        if grid.hybrid_opt == 2:
            assert 0.1 <= grid.etac <= 0.3 and np.all(grid.c3f[grid.znw < grid.etac] == 0)
    assert seen["families"] == {"stretched", "smooth"} and seen["hybrid"] == {0, 2}
    assert min(seen["levels"]) < 40 and max(seen["levels"]) > 70
    for _ in range(30):
        grid = draw_grid(rng, held)
        assert 52 <= grid.n_levels <= 57 and 20 <= grid.p_top / 100 <= 30 and grid.family == "ramp"
    # Regimes: the training job's are the training ones only.
    assert [r.name for r in train.regime_list(train.drawn("regime"))] == list(train.regimes)
    assert [r.name for r in held.regime_list(held.drawn("regime"))] == ["hot", "plateau"]
    assert not set(train.regimes) & set(train.holdout_regimes)


def test_wrf_coordinate_and_base_state_are_reproduced(oracle_files, ideal_files):
    """The hybrid coefficients of both shared data sets (hybrid_opt 2 and 0) and the oracle's
    real.exe base state (built with hypsometric_opt 1) from eta, p_top and HGT alone."""
    for path, hybrid_opt, etac in ((oracle_files[0], 2, 0.2), (ideal_files[0], 0, 0.0)):
        ds = xr.open_dataset(path)
        grid = regrid.hybrid_grid(ds["ZNW"].values[0], float(ds["P_TOP"].values[0]), hybrid_opt, etac)
        for name in ("ZNU", "C1H", "C2H", "C3H", "C4H", "C1F", "C2F", "C3F", "C4F"):
            np.testing.assert_allclose(getattr(grid, name.lower()), ds[name].values[0], rtol=1e-5,
                                       atol=2e-2, err_msg=f"{path.name}: {name}")
    ds = xr.open_dataset(oracle_files[0])
    grid = regrid.hybrid_grid(ds["ZNW"].values[0], 5000.0, 2, 0.2)
    base = regrid.base_state(grid, _columns(ds["HGT"]), hypsometric_opt=1)
    np.testing.assert_allclose(base["MUB"], _columns(ds["MUB"]), atol=0.02)
    np.testing.assert_allclose(base["PB"], _columns(ds["PB"]), atol=0.02)
    np.testing.assert_allclose(base["PHB"], _columns(ds["PHB"]), atol=0.05)
    # WRF's default log-linear integration differs from it by metres, not more.
    assert np.abs(regrid.base_state(grid, _columns(ds["HGT"]))["PHB"] - base["PHB"]).max() / c.G < 15


def test_remapping_conserves_keeps_monotone_profiles_and_zeros():
    rng = np.random.default_rng(3)
    n, nz = 50, 44
    p_w = np.linspace(1.0, 0.05, nz + 1)[None] * rng.uniform(9.0e4, 1.03e5, (n, 1))
    theta = np.sort(rng.uniform(290, 600, (n, nz)), axis=1)  # monotone, like a stable column
    qv = np.sort(rng.uniform(0, 0.02, (n, nz)), axis=1)[:, ::-1].copy()
    qv[:, 35:] = 0.0
    np.testing.assert_allclose(regrid.remap_layers(p_w, theta, p_w), theta, rtol=1e-14)
    for nz_new in (30, 80):
        p_new = np.linspace(p_w[:, 0], p_w[:, -1], nz_new + 1).T ** 1.0
        p_new[:, 1:-1] *= rng.uniform(0.995, 1.005, (n, nz_new - 1))
        th, q = regrid.remap_layers(p_w, theta, p_new), regrid.remap_layers(p_w, qv, p_new)
        for old, new in ((theta, th), (qv, q)):
            column = lambda v, p: (v * -np.diff(p)).sum(axis=1)
            np.testing.assert_allclose(column(new, p_new), column(old, p_w), rtol=1e-12)
        assert np.all(np.diff(th, axis=1) >= -1e-10) and np.all(np.diff(q, axis=1) <= 1e-15) and q.min() >= 0
        # Layers wholly above the last moist source layer are exactly zero.
        dry = p_new[:, :-1] <= p_w[:, 35:36]
        assert dry.any() and np.all(q[dry] == 0)


def test_regridded_columns_are_hydrostatic_and_conserve_water_and_theta(oracle_files):
    """Pure re-gridding (no perturbation): onto a grid sharing the source's top, column water
    and mass-weighted theta are the source's; onto a higher top, the same over the common range
    and a stratosphere above it."""
    path = oracle_files[0]
    source = _read(path)
    src = Source.read(source, 0, path)
    cfg = _load("perturb=false")
    rng = np.random.default_rng(7)
    for p_top, n, hybrid_opt in ((src.p_top, 62, 0), (1500.0, 38, 2), (9000.0, 75, 2)):
        eta, _ = regrid.draw_eta(rng, "stretched", n, p_top, cfg.grid)
        grid = regrid.hybrid_grid(eta, p_top, hybrid_opt, 0.2, "stretched")
        state = rebuild(src, grid, cfg, rng, None, (1.0, 0.0, 0.0))
        cols = lambda name: state[name].reshape(state[name].shape[0], -1).T
        p_w, p_m = grid.pressure(state["PSFC"].ravel())
        np.testing.assert_array_equal(state["PSFC"].ravel(), src.psfc)
        lo, hi = np.maximum(p_w[:, -1], src.p_top), src.psfc
        rtol = SAME_RANGE_RTOL if p_top == src.p_top else CUT_TOP_RTOL
        theta, qv = cols("T").astype(np.float64) + c.T0, cols("QVAPOR").astype(np.float64)
        # What re-gridding made supersaturated became cloud water: total water is conserved.
        qc = cols("QCLOUD").astype(np.float64)
        for new, old in ((theta, src.theta), (qv + qc, src.qv)):
            np.testing.assert_allclose(_integral(p_w, new, lo, hi), _integral(src.p_w, old, lo, hi), rtol=rtol)
        assert qc.max() < 1e-3 and (qc > 0).mean() < 0.1
        t = theta * (p_m / c.P1000MB) ** c.RCP
        assert np.all(qv <= saturation_mixing_ratio(t, p_m) * SOURCE_MAX_RH)
        # Hydrostatic: geopotential is the hypsometric integral of the column.
        tv = t * (1 + qv / c.EP2) / (1 + qv)
        steps = c.R_D * tv / c.G * np.log(p_w[:, :-1] / p_w[:, 1:])
        z = state["HGT"].ravel()[:, None] + np.concatenate([np.zeros((src.n, 1)), np.cumsum(steps, axis=1)], axis=1)
        np.testing.assert_allclose((cols("PH") + cols("PHB")) / c.G, z, atol=0.02)
        np.testing.assert_allclose(cols("P") + cols("PB"), p_m, atol=0.02)
        np.testing.assert_allclose(cols("RHO"), density(theta, qv, p_m), rtol=2e-6)
        # Stability kept: the oracle's theta does not fall above its second level.
        assert np.diff(theta, axis=1)[:, 2:].min() > -1e-3
        if p_top < src.p_top:  # the stratosphere above the source's top
            above = p_m[0] < src.p_top
            assert above.sum() >= 2
            q_up, t_up = qv[:, above], t[:, above]
            assert np.all(np.diff(q_up, axis=1) < 0) and q_up.min() > 0
            assert np.all(q_up.std(axis=0) > 0) and np.all(t_up.std(axis=0) > 0)
            assert 150 < t_up.min() and t_up.max() < 300


def test_elevated_inversion_sits_at_its_height():
    """``inversion_height_m`` lifts the inversion from the boundary-layer top: no warming
    below that height, the full inversion at its top."""
    n, z = 3, np.linspace(0.0, 8000.0, 161)[None].repeat(3, 0)
    knobs = {k: np.full(n, np.nan if v is None else v[0]) for k, v in regimes.KNOBS.items()}
    knobs.update(inversion_k=np.full(n, 2.0), inversion_depth_m=np.full(n, 500.0),
                 inversion_height_m=np.array([np.nan, 3000.0, 4000.0]))
    col = regimes.Column(theta=np.zeros_like(z), qv=np.zeros_like(z), p=np.zeros_like(z), z=z,
                         pblh=np.full(n, 800.0))
    _, dry = regimes.temperature_changes(col, knobs)
    for k, base in enumerate((800.0, 3000.0, 4000.0)):
        assert np.all(dry[k, z[k] <= base] == 0) and dry[k, z[k] == base + 500.0] == pytest.approx(2.0)


def test_regimes_keep_states_physical():
    """Every regime of the configuration on a moist tropical column: no new supersaturation,
    no new instability above the surface layer, vapour zeros kept."""
    cfg = _load()
    n, nz = 400, 60
    p = np.linspace(1.0e5, 2000.0, nz)[None].repeat(n, 0)
    z = -8000.0 * np.log(p / 1.0e5)
    t = np.maximum(300.0 - 0.0065 * z, 205.0)
    theta = t * (c.P1000MB / p) ** c.RCP
    qv = 0.8 * saturation_mixing_ratio(t, p)
    qv[:, -5:] = 0.0
    col = regimes.Column(theta=theta, qv=qv, p=p, z=z, pblh=np.full(n, 800.0))
    rng = np.random.default_rng(0)
    for held_out in (False, True):
        which, knobs = regimes.draw(rng, cfg.regime_list(held_out), n)
        new_theta, new_qv, pblh = regimes.apply(col, knobs, rng, {
            k: getattr(cfg, k) for k in ("theta_k", "boundary_theta_k", "qv_relative",
                                         "boundary_qv_relative", "boundary_depth_pa")})
        new_t = new_theta * (p / c.P1000MB) ** c.RCP
        assert np.all(new_qv <= saturation_mixing_ratio(new_t, p) * (1 + 1e-12))
        assert np.all(np.diff(new_theta, axis=1)[:, regimes.STABLE_FROM_LEVEL - 1:] >= 0)
        assert np.all(new_qv[:, -5:] == 0) and np.all(new_qv[:, :-5] > 0)
        assert np.all(np.isfinite(new_theta)) and np.all(pblh > 0)
        # The temperature shifts span the freezing levels asked for.
        shift = np.median(new_t - t, axis=1)
        if held_out:
            assert shift[which == 0].min() > 3.0  # 5-8 K, less the smooth random perturbation
        else:
            assert shift.min() < -12 and shift.max() > 3.5


# --- files labelled by MSKF -------------------------------------------------------------------


def test_standalone_mskf_reproduces_the_oracle(oracle_files, mskf_program):
    from training.columns import _flatten

    path = oracle_files[-1]
    inputs = mskf.column_inputs(open_wrfout(path, chunks=None, time=0, outputs=False))
    ref = xr.open_dataset(path)
    out = mskf.run_mskf(inputs, ref.attrs["DX"], ref.attrs["DT"], mskf_program)
    for name in ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQICUTEN", "RUCUTEN", "CLDFRA_DP",
                 "QC_CU", "PRATEC", "RAINCV", "NCA", "CUTOP", "CUBOT", "TIMEC_KF"):
        expected = _flatten(ref[name].isel(Time=0))
        got = out[name].reshape(expected.shape)
        np.testing.assert_array_equal(got, expected, err_msg=f"{path.name}: {name}")
    # The benchmark's timing of the same call.
    seconds = mskf.time_mskf(inputs, ref.attrs["DX"], ref.attrs["DT"], mskf_program, repeat=2)
    assert 0 < seconds < 60


def _constant_levels(frame, ds):
    """Contract inputs with a level holding one value in every column, except those the
    coordinate makes so: pressure on pure-pressure levels of hybrid_opt 2 (where the columns'
    surface pressures move it by less than float32 resolves) and W at flat ground."""
    spread = ds["C3H"].values[0] * np.ptp(ds["PSFC"].values[0])
    pure_pressure = np.flatnonzero(spread < 1e-6 * np.asarray(frame["P_HYD"].values[0]).mean(axis=(1, 2)))
    found = []
    for name, da in frame.data_vars.items():
        a = np.asarray(da.values[0])
        if a.ndim != 3:
            continue
        a = a.reshape(a.shape[0], -1)
        for k in np.flatnonzero(a.min(axis=1) == a.max(axis=1)):
            if (name in ("P_HYD", "PI_PHY") and k in pure_pressure) or (name == "W" and k == 0):
                continue
            found.append((name, int(k)))
    return found


def test_augmented_files_are_training_data(oracle_files, mskf_program, tmp_path):
    from training.prepare import PrepareConfig, prepare

    cfg = _load("copies=1", input=[str(oracle_files[0])], out=str(tmp_path / "aug"), scheduler="synchronous")
    (written,) = augment(cfg, mskf_program)
    ds = xr.open_dataset(written)
    assert written.name == f"{oracle_files[0].stem}_aug00.nc"
    assert ds.attrs["AUGMENT_SOURCE"] == oracle_files[0].name and ds.attrs["AUGMENT_HOLDOUT"] == 0
    assert 2000 <= ds.attrs["DX"] <= 30000 and ds.attrs["DT"] == round(6 * ds.attrs["DX"] / 1000)
    # One grid of the configured training ranges, hydrostatic and density-consistent.
    n, top = ds.sizes["bottom_top"], float(ds["P_TOP"].values[0]) / 100
    assert (30 <= n <= 51 or 58 <= n <= 80) and (9 <= top <= 20 or 30 <= top <= 100)
    assert ds.attrs["AUGMENT_GRID_FAMILY"] in ("stretched", "smooth")
    assert ds.attrs["HYBRID_OPT"] in (0, 2) and float(ds.attrs["P_TOP"]) == float(ds["P_TOP"].values[0])
    p_w, p_m, z = _hydrostatic_heights(ds)
    np.testing.assert_allclose(_columns(ds["PH"] + ds["PHB"]) / c.G, z, atol=0.05)
    np.testing.assert_allclose(_columns(ds["P"] + ds["PB"]), p_m, atol=0.05)
    theta, qv = _columns(ds["T"]) + c.T0, _columns(ds["QVAPOR"])
    np.testing.assert_allclose(_columns(ds["RHO"]), density(theta, qv, p_m), rtol=2e-6)
    dz1 = z[:, 1] - z[:, 0]
    assert 20 <= dz1.min() and dz1.max() <= 150
    # Physical states: no supersaturation (the oracle has none), theta not falling above the
    # two lowest levels, no level that is the same in every column.
    t = theta * (p_m / c.P1000MB) ** c.RCP
    assert np.all(qv <= saturation_mixing_ratio(t, p_m) * SOURCE_MAX_RH)
    # (A column re-based on other ground keeps its source's shallow surface-layer decrease,
    # which may then lie a few levels up: at most a few hundredths of a kelvin.)
    regime_names = ds.attrs["AUGMENT_REGIME_NAMES"].split()
    rebased = ds["AUGMENT_REGIME"].values.ravel() == regime_names.index("terrain")
    falls = np.diff(theta, axis=1)[:, 2:].min(axis=1)
    assert falls[~rebased].min() > -1e-3 and falls[rebased].min() > -0.05
    frame = open_wrfout(written, outputs=False, chunks=None, time=0)
    assert _constant_levels(frame, ds) == []
    # Training regimes only, and each of them present.
    codes = ds["AUGMENT_REGIME"].values
    assert set(np.unique(codes)) == set(range(len(cfg.regimes)))
    assert ds.attrs["AUGMENT_REGIME_NAMES"].split() == list(cfg.regimes) + list(cfg.holdout_regimes)
    # The marine regime's columns lie over the sea with its weak surface fluxes.
    marine = codes.ravel() == list(cfg.regimes).index("marine")
    hfx, ust = (ds[name].values.ravel()[marine] for name in ("HFX", "UST"))
    assert marine.any() and np.all(ds["XLAND"].values.ravel()[marine] == 2)
    assert 0.5 <= hfx.min() and hfx.max() <= 15 and 0.08 <= ust.min() and ust.max() <= 0.3
    # MSKF's labels: convection in a share of the columns; shallow columns give no rain; deep
    # ones hold for a whole number of steps.
    fires = (ds["RTHCUTEN"] != 0).any("bottom_top")
    assert 0.2 < float(fires.mean()) < 0.7
    deep = ds["NCA"] > 0
    assert float(ds["PRATEC"].where(fires & ~deep).max()) == 0
    steps = ds["NCA"].where(deep) / ds.attrs["DT"]
    assert float(np.abs(steps - np.round(steps)).max()) < 1e-4
    assert np.all(ds["NCA"].values[~fires.values] == -100)
    # A second run leaves the file as it is.
    mtime = written.stat().st_mtime_ns
    augment(cfg, mskf_program)
    assert written.stat().st_mtime_ns == mtime
    # Files of one grid go through prepare (mixed grids: see the report to the lead).
    report = prepare(PrepareConfig.load(None, ["pairing=single_call", "split.method=files",
                                               "split.rules=[{pattern: '*', split: train}]"],
                                        input=[str(written)], out=str(tmp_path / "store"),
                                        scheduler="synchronous"))
    assert report["columns"]["train"]["kept"] == ds.sizes["south_north"] * ds.sizes["west_east"]


def test_held_out_files_use_only_reserved_grids_and_regimes(oracle_files, mskf_program, tmp_path):
    cfg = _load("copies=1", "holdout=true", input=[str(oracle_files[2])], out=str(tmp_path),
                scheduler="synchronous")
    (written,) = augment(cfg, mskf_program)
    assert written.name == f"{oracle_files[2].stem}_holdout00.nc"
    ds = xr.open_dataset(written)
    assert 52 <= ds.sizes["bottom_top"] <= 57 and 20 <= float(ds["P_TOP"].values[0]) / 100 <= 30
    assert ds.attrs["AUGMENT_GRID_FAMILY"] == "ramp" and ds.attrs["AUGMENT_HOLDOUT"] == 1
    names = ds.attrs["AUGMENT_REGIME_NAMES"].split()
    assert {names[k] for k in np.unique(ds["AUGMENT_REGIME"].values)} == {"hot", "plateau"}
    plateau = ds["AUGMENT_REGIME"].values[0] == names.index("plateau")
    psfc = ds["PSFC"].values[0]
    assert psfc[plateau].max() <= 76000 and psfc[plateau].min() >= 70000 and psfc[~plateau].min() > 90000
    # The base state follows the raised ground.
    assert np.all(ds["HGT"].values[0][plateau] > 1500) and np.all(ds["XLAND"].values[0][plateau] == 1)
    np.testing.assert_allclose(ds["PHB"].values[0, 0], 9.81 * ds["HGT"].values[0], rtol=1e-6)
    assert float((ds["RTHCUTEN"] != 0).any("bottom_top").mean()) > 0.05


def test_the_same_seed_file_and_copy_give_the_same_file(oracle_files, mskf_program, tmp_path):
    cfg = _load("copies=2", "dx_km=null", input=[str(oracle_files[1])], out=str(tmp_path / "a"),
                scheduler="synchronous")
    first = [xr.open_dataset(p) for p in augment(cfg, mskf_program)]
    (tmp_path / "b").mkdir()
    again = xr.open_dataset(augment_file((oracle_files[1], 1), tmp_path / "b", cfg, mskf_program))
    xr.testing.assert_identical(first[1].drop_attrs(), again.drop_attrs())
    assert first[0].sizes["bottom_top"] != first[1].sizes["bottom_top"] or not np.array_equal(
        first[0]["ZNW"].values, first[1]["ZNW"].values)
    assert first[0].attrs["DX"] == xr.open_dataset(oracle_files[1]).attrs["DX"]  # dx_km null


def test_labelling_copies_reproduce_the_frames_inputs(oracle_files, ideal_files, mskf_program, tmp_path):
    """configs/augment_label.yaml: no perturbation, no re-gridding; every contract input read
    back is the frame's, every column evaluated by MSKF (NCA = -100 where it does not
    convect), and on an oracle file MSKF's outputs are the oracle's."""
    from training.prepare import PrepareConfig, prepare

    sources = [ideal_files[0], oracle_files[-1]]
    cfg = AugmentConfig.load(REPO / "configs" / "augment_label.yaml", [], input=[str(s) for s in sources],
                             out=str(tmp_path / "mskf"), scheduler="synchronous")
    written = augment(cfg, mskf_program)
    assert [p.name for p in written] == sorted(f"{s.stem}_mskf00.nc" for s in sources)
    for src in sources:
        path = tmp_path / "mskf" / f"{src.stem}_mskf00.nc"
        before = open_wrfout(src, outputs=False, chunks=None, time=0)
        after = open_wrfout(path, outputs=False, chunks=None, time=0)
        assert after.attrs["DX"] == before.attrs["DX"] and after.attrs["DT"] == before.attrs["DT"]
        assert list(after.data_vars) == list(before.data_vars)
        for name in before.data_vars:
            np.testing.assert_array_equal(after[name].values, before[name].values,
                                          err_msg=f"{src.name}: {name}")
        ds = xr.open_dataset(path)
        fires = ((ds["RTHCUTEN"] != 0).any("bottom_top") | (ds["RQVCUTEN"] != 0).any("bottom_top")).values[0]
        nca = ds["NCA"].values[0]
        assert np.all(nca[~fires] == -100) and np.all(nca[fires] >= 0) and fires.mean() > 0.1
        assert ds.attrs["CUDT"] == 0 and ds.attrs["STEPCU"] == 1 and ds.attrs["AUGMENT_PERTURB"] == 0
    oracle = xr.open_dataset(sources[1])
    labelled = xr.open_dataset(tmp_path / "mskf" / f"{sources[1].stem}_mskf00.nc")
    for name in ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN", "RUCUTEN",
                 "RVCUTEN", "PRATEC", "NCA", "CUTOP", "CUBOT", "CLDFRA_DP", "QC_CU", "TIMEC_KF"):
        np.testing.assert_array_equal(labelled[name].values, oracle[name].values, err_msg=name)
    report = prepare(PrepareConfig.load(None, ["pairing=single_call", "split.method=files",
                                               "split.rules=[{pattern: '*', split: train}]"],
                                        input=[str(written[0])], out=str(tmp_path / "store"),
                                        scheduler="synchronous"))
    assert report["columns"]["train"]["kept"] == 64 * 64


def test_a_bad_file_is_named_and_the_others_are_written(oracle_files, mskf_program, tmp_path):
    bad = tmp_path / "wrfout_broken_00.nc"
    bad.write_bytes(b"not netCDF")
    cfg = _load("copies=1", input=[str(bad), str(oracle_files[1])], out=str(tmp_path / "aug"),
                scheduler="synchronous")
    with pytest.raises(RuntimeError, match="wrfout_broken_00.nc copy 0: .*cannot be read"):
        augment(cfg, mskf_program)
    assert [p.name for p in (tmp_path / "aug").iterdir()] == [f"{oracle_files[1].stem}_aug00.nc"]


def test_real_wrf_history_is_regridded_and_labelled(ideal_files, mskf_program, tmp_path):
    """A WRF history frame (hybrid_opt 0, top 9.7 hPa, moist p_hyd) on a new grid: the
    scheme's outputs for exactly the new state."""
    cfg = _load("copies=1", input=[str(ideal_files[0])], out=str(tmp_path), scheduler="synchronous")
    (written,) = augment(cfg, mskf_program)
    ds = xr.open_dataset(written)
    assert ds["TIMEC_KF"].dims == ("Time", "south_north", "west_east")
    assert ds["UDR_KF"].dims == ("Time", "bottom_top", "south_north", "west_east")
    assert float((ds["RTHCUTEN"] != 0).any("bottom_top").mean()) > 0.1
    np.testing.assert_allclose(ds["W0AVG"].values, 0.5 * (ds["W"].values[:, 1:] + ds["W"].values[:, :-1]),
                               atol=1e-6)
    p_w, p_m, z = _hydrostatic_heights(ds)
    np.testing.assert_allclose(_columns(ds["PH"] + ds["PHB"]) / c.G, z, atol=0.05)
    frame = open_wrfout(written, outputs=False, chunks=None, time=0)
    assert _constant_levels(frame, ds) == []
    grid = file_grid(ds, 0)
    assert grid.n_levels == ds.sizes["bottom_top"]


def test_sensitivity_measures_mskf_against_itself(oracle_files, mskf_program, tmp_path):
    from training.cli import main

    out = tmp_path / "sensitivity.json"
    assert main(["sensitivity", "--input", str(oracle_files[-1]), "--eps", "0", "1e-5",
                 "--mskf", str(mskf_program), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    # The program is deterministic: unmoved inputs give the same outputs exactly.
    assert scores["0"]["trigger"]["f1"] == 1.0
    assert all(scores["0"][k]["r2"] == 1.0 for k in mskf.SENSITIVITY_OUTPUTS)
    # A few thousandths of a kelvin move some columns' convection, not the whole picture.
    moved = scores["1e-05"]
    assert moved["triggered"] > 0 and 0.95 < moved["trigger"]["f1"] < 1.0
    assert 0.9 < moved["RTHCUTEN"]["r2"] < 1.0


def test_sensitivity_without_the_program_says_how_to_build_it(oracle_files, tmp_path, capsys):
    from training.cli import main

    missing = tmp_path / "no_such_program"
    assert main(["sensitivity", "--input", str(oracle_files[-1]), "--mskf", str(missing)]) == 2
    assert "make mskf-columns" in capsys.readouterr().err


def test_a_model_of_a_runs_augmented_copies_accepts_that_runs_columns(ideal_files, mskf_program,
                                                                      tmp_path):
    """The out-of-distribution check in physical terms: a model trained on augmented copies of
    a WRF run's history (re-gridded, perturbed, labelled by MSKF) does not flag that run's own
    columns (< 1 %), although the copies' ranges at single levels differ from the run's."""
    import yaml

    from emulator.runtime import Runtime
    from training.export import export
    from training.prepare import PrepareConfig, prepare
    from training.train import TrainConfig, train

    cfg = AugmentConfig.load(REPO / "configs" / "augment.yaml", ["copies=1"],
                             input=[str(f) for f in ideal_files], out=str(tmp_path / "aug"),
                             scheduler="synchronous")
    augment(cfg, mskf_program)
    store = tmp_path / "store"
    prepare(PrepareConfig.load(REPO / "configs" / "prepare.yaml",
                               ["pairing=single_call", "split.rules=[{pattern: '*09:00:00*', split: validation}, "
                                "{pattern: '*', split: train}]"],
                               input=[str(tmp_path / "aug" / "*.nc")], out=str(store), scheduler="synchronous"))
    settings = TrainConfig.load(REPO / "configs" / "train.yaml",
                                ["epochs=1", "threads=1", "model.hidden=8", "model.column_hidden=8"])
    train(settings, store, tmp_path / "run", yaml.safe_dump({"t": 1}), progress=False)
    export(tmp_path / "run", tmp_path / "model.onnx")
    rt = Runtime.from_options({"model": str(tmp_path / "model.onnx")})
    frame = open_wrfout(ideal_files[-1], outputs=False, chunks=None, time=0).isel(Time=0)
    columns = mskf.column_inputs(frame.expand_dims("Time"))
    columns["DX"] = np.full(len(columns["T_PHY"]), frame.attrs["DX"], np.float32)
    flagged = rt.out_of_distribution(columns)
    assert flagged.mean() < 0.01, f"{flagged.mean():.2%} of the run's columns flagged"
