"""The convection kernel (emulator/kernel/, through emulator.updraft): physical sanity on
constructed columns, agreement with WRF's own MSKF_CPS on the oracle files and on perturbed,
re-gridded columns labelled by it, determinism and the checking build (signalling NaNs and
floating-point traps), the network's channels."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from emulator import constants as c
from emulator import features as ft
from emulator import updraft as kf

REPO = Path(__file__).resolve().parents[1]
CHECK_BUILD = REPO / "emulator" / "build" / "check"

# The agreement asked of the kernel (the lead's targets) and the floors the tests hold it to:
# what it reaches now, measured over all 40,960 oracle columns (emulator/kernel/README.md has
# the table per file and the reasons for the gaps). A floor is raised when the kernel improves;
# it never goes below what was measured.
TARGETS = {"kind": 0.995, "cubot": 0.99, "cutop": 0.98, "timec": 0.98, "timec_shallow": 0.98,
           "UER_KF_shape_r2": 0.97, "UDR_KF_shape_r2": 0.97, "UER_KF_shallow_shape_r2": 0.97,
           "UDR_KF_shallow_shape_r2": 0.97, "DER_KF_shape_r2": 0.97, "DDR_KF_shape_r2": 0.97,
           "RQVCUTEN_fit_r2": 0.94, "RQCCUTEN_fit_r2": 0.92, "RTHCUTEN_fit_r2": 0.60,
           "RQVCUTEN_shallow_fit_r2": 0.94, "RTHCUTEN_shallow_fit_r2": 0.60}
ORACLE_FLOORS = {"kind": 0.995, "cubot": 0.975, "cutop": 0.915, "timec": 0.73, "timec_shallow": 0.69,
                 "UER_KF_shape_r2": 0.95, "UDR_KF_shape_r2": 0.925, "UER_KF_shallow_shape_r2": 0.93,
                 "UDR_KF_shallow_shape_r2": 0.96, "DER_KF_shape_r2": 0.97, "DDR_KF_shape_r2": 0.96,
                 "RQVCUTEN_fit_r2": 0.87, "RQCCUTEN_fit_r2": 0.91, "RTHCUTEN_fit_r2": 0.62,
                 "RQVCUTEN_shallow_fit_r2": 0.95, "RTHCUTEN_shallow_fit_r2": 0.97}
AUGMENTED_FLOORS = {"kind": 0.99, "cubot": 0.965, "cutop": 0.915, "timec": 0.68, "timec_shallow": 0.60,
                    "UER_KF_shape_r2": 0.955, "UDR_KF_shape_r2": 0.94, "UER_KF_shallow_shape_r2": 0.91,
                    "UDR_KF_shallow_shape_r2": 0.92, "DER_KF_shape_r2": 0.975, "DDR_KF_shape_r2": 0.865,
                    "RQVCUTEN_fit_r2": 0.81, "RQCCUTEN_fit_r2": 0.85, "RTHCUTEN_fit_r2": 0.48,
                    "RQVCUTEN_shallow_fit_r2": 0.93, "RTHCUTEN_shallow_fit_r2": 0.965}
HISTORY_FLOORS = {"kind": 0.995, "cubot": 0.955, "cutop": 0.91, "timec": 0.51, "timec_shallow": 0.93,
                  "UER_KF_shape_r2": 0.86, "UDR_KF_shape_r2": 0.83, "UER_KF_shallow_shape_r2": 0.80,
                  "UDR_KF_shallow_shape_r2": 0.78, "DER_KF_shape_r2": 0.79, "DDR_KF_shape_r2": 0.56,
                  "RQVCUTEN_fit_r2": 0.71, "RQCCUTEN_fit_r2": 0.84, "RTHCUTEN_fit_r2": 0.82,
                  "RQVCUTEN_shallow_fit_r2": 0.32, "RTHCUTEN_shallow_fit_r2": 0.74}
REFERENCE = kf.AGREEMENT_OUTPUTS + ("NCA",)


def _sounding(n_columns=2, lapse=6.5e-3, rh_low=0.9, rh_high=0.6, w_max=1.0, nz=40, top=1.0e4):
    """Hydrostatic columns: T falling by ``lapse`` K/m from 300 K to a 210 K tropopause,
    relative humidity from ``rh_low`` to ``rh_high`` at 10 km, W0AVG peaking at ``w_max``;
    ``nz`` layers up to about ``top`` Pa."""
    z_top = 7000.0 * np.log(1.0e5 / top)
    dz = np.full(nz, (z_top - 1200.0) / (nz - 8))
    dz[:8] = np.linspace(60.0, 240.0, 8)
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


def _level(lev, name):
    return lev[:, kf.LEVEL_FIELDS.index(name)]


@pytest.mark.parametrize("nz,top", [(40, 1.0e4), (30, 5.0e3), (80, 1.0e3)])
def test_unstable_ascending_column_makes_a_deep_cloud_a_stable_dry_one_none(nz, top):
    deep, deep_col = kf.diagnose(_sounding(nz=nz, top=top))
    assert (_field(deep_col, "kind") == 2).all()
    lcl, top_level = _field(deep_col, "lcl_level")[0], _field(deep_col, "top_level")[0]
    assert 1 <= lcl < top_level <= nz and _field(deep_col, "cloud_depth")[0] > 4000.0
    assert _field(deep_col, "buoyant_energy")[0] > 100.0
    mass_flux, in_cloud = _level(deep, "mass_flux")[0], _level(deep, "in_cloud")[0]
    levels = np.arange(1, nz + 1)
    np.testing.assert_array_equal(in_cloud, (levels >= lcl) & (levels <= top_level))
    assert (mass_flux >= 0).all() and (mass_flux[(levels > lcl) & (levels < top_level)] > 0).all()
    assert (mass_flux[levels >= top_level] == 0).all()
    # Per unit cloud-base mass flux; entrainment and detrainment only inside the cloud.
    np.testing.assert_allclose(mass_flux[levels == lcl], 1.0, rtol=1e-5)
    for name in ("entrainment", "detrainment"):
        assert (_level(deep, name)[0][(levels < lcl - 30) | (levels > top_level)] == 0).all()
    # The time scale is never shorter than the advective one, and the efficiency in range.
    assert _field(deep_col, "time_scale")[0] >= _field(deep_col, "advective_time")[0]
    assert 0.2 <= _field(deep_col, "precipitation_efficiency")[0] <= 0.9

    cold = _sounding(lapse=2.0e-3, rh_low=0.3, rh_high=0.1, w_max=-0.5, nz=nz, top=top)
    stable = ft.kernel_channels(*kf.diagnose(cold), cold)
    assert stable.shape == (2, ft.N_KERNEL, nz) and not stable.any()


@pytest.mark.parametrize("nz,top", [(40, 1.0e4), (30, 5.0e3), (80, 1.0e3)])
def test_a_downdraft_under_dry_air_none_under_a_wet_heavily_raining_cloud(nz, top):
    """The downdraft descends (negative mass flux) from its source level above the source
    layer to the ground, taking in air above the source layer and giving it out below; where
    the cloud rains heavily into moist air (MSKF's deep columns without a downdraft), none."""
    lev, col = kf.diagnose(_sounding(rh_high=0.1, nz=nz, top=top))
    assert (_field(col, "kind") == 2).all()
    levels = np.arange(1, nz + 1)
    source = _field(col, "downdraft_source_level")[0]
    source_base = _field(col, "source_level")[0]
    assert source_base < source < _field(col, "top_level")[0]
    down = _level(lev, "downdraft_mass_flux")[0]
    assert (down <= 0).all() and down.min() < 0 and (down[levels > source] == 0).all()
    into, out = _level(lev, "downdraft_entrainment")[0], _level(lev, "downdraft_detrainment")[0]
    assert into.sum() > 0 and (into[levels > source] == 0).all()
    np.testing.assert_allclose(into.sum(), out.sum(), rtol=1e-5)  # all of it leaves again
    assert 0 < _field(col, "evaporation")[0] <= (1 - _field(col, "precipitation_efficiency")[0]) * \
        _field(col, "precipitation_production")[0] * (1 + 1e-6)
    wet_lev, wet_col = kf.diagnose(_sounding(nz=nz, top=top))
    assert (_field(wet_col, "kind") == 2).all() and _field(wet_col, "precipitation_production")[0] > 0.03
    assert not _level(wet_lev, "downdraft_mass_flux").any() and not _field(wet_col, "evaporation").any()


def test_initial_tendencies_dry_and_warm_the_column_by_the_same_energy():
    """The drafts' initial tendencies: the column's latent heating balances its drying (moist
    static energy moves but is not made), and it loses more vapour than it detrains as
    condensate (the rest precipitates); nothing above the cloud top."""
    soundings = [_sounding(1), _sounding(1, rh_low=0.95, lapse=7.0e-3), _sounding(1, lapse=6.0e-3)]
    columns = {k: np.concatenate([s[k] for s in soundings]) for k in soundings[0]}
    lev, col = kf.diagnose(columns)
    assert (_field(col, "kind") == 2).all()
    heating, moistening, liquid, ice = (_level(lev, n) for n in
                                        ("heating", "moistening", "detrained_liquid", "detrained_ice"))
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
    columns = _sounding(3)
    x = ft.kernel_channels(*kf.diagnose(columns), columns)
    assert x.dtype == np.float32 and x.shape == (3, ft.N_KERNEL, 40)
    np.testing.assert_array_equal(x[:, ft.KERNEL_INDEX["deep"]], 1.0)  # deep flag on every level
    np.testing.assert_array_equal(x[:, ft.KERNEL_INDEX["shallow"]], 0.0)
    # The kernel refuses a layout other than its own.
    args = [np.ones((1, 40), np.float32, order="F")] * 8 + [np.ones(1, np.float32)] * 5
    *_, status = kf._kernel().convection_columns(len(kf.LEVEL_FIELDS) - 1, len(kf.COLUMN_FIELDS), *args)
    assert status == 1


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


# --- against WRF's MSKF ------------------------------------------------------------------

def oracle_columns(path) -> tuple[dict, dict, float]:
    """The inputs of an oracle file as the kernel takes them, MSKF's stored outputs, DT."""
    from training import mskf
    from training.columns import _flatten
    from training.wrfout import open_wrfout

    inputs = mskf.column_inputs(open_wrfout(path, chunks=None, time=0, outputs=False))
    ref = xr.open_dataset(path).isel(Time=0)
    inputs["DX"] = np.full(len(inputs["T_PHY"]), ref.attrs["DX"], np.float32)
    truth = {n: _flatten(ref[n]) if ref[n].ndim == 3 else _flatten(ref[n])[:, 0] for n in REFERENCE}
    return inputs, truth, float(ref.attrs["DT"])


def _scored(parts) -> tuple[dict, list]:
    """Agreement of every part [(name, lev, col, reference, dt)] and of all of them pooled."""
    rows = [(name, kf.agreement(lev, col, ref, dt)) for name, lev, col, ref, dt in parts]
    nz = {p[1].shape[2] for p in parts}
    if len(nz) == 1:  # one vertical grid: pool the columns
        pooled = kf.agreement(np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
                              {n: np.concatenate([p[3][n] for p in parts]) for n in REFERENCE},
                              np.concatenate([np.full(len(p[2]), p[4]) for p in parts]))
    else:  # column-weighted means of the parts
        pooled = {k: float(np.average([r[k] for _, r in rows], weights=[r["columns"] for _, r in rows]))
                  for k in TARGETS}
    return pooled, rows


def _check(pooled: dict, rows: list, floors: dict, what: str) -> None:
    table = "\n".join(f"{name}: " + json.dumps({k: round(r[k], 4) for k in TARGETS}) for name, r in rows)
    print(f"\n{what}\n{table}\nall: " + json.dumps({k: round(pooled[k], 4) for k in TARGETS}))
    low = {k: (round(pooled[k], 4), floors[k], TARGETS[k]) for k in floors if pooled[k] < floors[k]}
    assert not low, f"{what}: below the floor (measured, floor, target): {low}\n{table}"


def test_the_kernel_agrees_with_wrf_mskf_on_every_oracle_file(oracle_files):
    """Kind of convection, cloud base and top, time scale, the shapes of the drafts' mass
    exchange and the initial tendencies' profiles against WRF's own MSKF_CPS (stored in the
    oracle files), on all 40,960 columns."""
    parts = []
    for path in oracle_files:
        inputs, truth, dt = oracle_columns(path)
        parts.append((path.name, *kf.diagnose(inputs), truth, dt))
    pooled, rows = _scored(parts)
    assert pooled["columns"] == sum(len(p[2]) for p in parts)
    _check(pooled, rows, ORACLE_FLOORS, "oracle files")


@pytest.fixture(scope="module")
def augmented_files(oracle_files, mskf_program, tmp_path_factory):
    """Perturbed copies of four oracle files (configs/augment.yaml: regimes, small random
    perturbations, a random vertical grid of 30-80 levels and model top 10-100 hPa), each at
    a random DX in its own part of 2-30 km, labelled by WRF's MSKF."""
    from dataclasses import replace

    from training.augment import AugmentConfig, augment_file

    out = tmp_path_factory.mktemp("augmented")
    cfg = AugmentConfig.load(REPO / "configs" / "augment.yaml", input=["-"], out=str(out), copies=1)
    files = []
    for name, dx_km in (("03km_00", [2.0, 4.0]), ("09km_00", [6.0, 12.0]), ("15km_00", [12.0, 20.0]),
                        ("25km_00", [20.0, 30.0])):
        source = [p for p in oracle_files if p.name.endswith(f"{name}.nc")][0]
        (out / name).mkdir()
        files.append(augment_file((source, 0), out / name, replace(cfg, dx_km=dx_km), exe=mskf_program))
    return files


def test_the_kernel_agrees_with_wrf_mskf_on_perturbed_regridded_columns(augmented_files, mskf_program):
    from training import mskf

    parts, grids = [], set()
    for path in augmented_files:
        inputs, truth, dt = mskf.labelled_columns(path, mskf_program)
        grids.add(inputs["T_PHY"].shape[1])
        parts.append((f"{path.name} (DX {inputs['DX'][0] / 1000:.1f} km, {inputs['T_PHY'].shape[1]} levels)",
                      *kf.diagnose(inputs), truth, dt))
    assert len(grids) > 1  # several vertical grids
    pooled, rows = _scored(parts)
    _check(pooled, rows, AUGMENTED_FLOORS, "perturbed, re-gridded columns")


def test_the_kernel_agrees_with_wrf_mskf_on_wrf_history_frames(ideal_files, mskf_program):
    """WRF's own history (the wrf_ideal run: 5 km, 44 levels, a grid and regime the oracle
    files do not have), three frames labelled by WRF's MSKF as they are; the kernel is given
    W0AVG after MSKF's own update (without it the kind of convection agrees in only 0.978
    and 0.991 of the columns of the frames 11:30 and 09:30)."""
    from training import mskf

    parts = []
    for path in ideal_files[::3]:
        inputs, truth, dt = mskf.labelled_columns(path, mskf_program)
        parts.append((path.name, *kf.diagnose(inputs), truth, dt))
    pooled, rows = _scored(parts)
    _check(pooled, rows, HISTORY_FLOORS, "WRF history frames (wrf_ideal)")


# --- determinism and the checking build ---------------------------------------------------

CHECK_SCRIPT = r"""
import importlib.util, sys, numpy as np
sys.path.insert(0, sys.argv[1])
from emulator import updraft as kf
from tests.test_kernel import oracle_columns
spec = importlib.util.spec_from_file_location("_kernel_check", sys.argv[2])
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)
for path in sys.argv[3:]:
    inputs = oracle_columns(path)[0]
    lev, col = kf.diagnose(inputs, check)
    again = kf.diagnose(inputs, check)
    back = kf.diagnose({k: v[::-1] for k, v in inputs.items()}, check)
    for a, b in ((lev, again[0]), (col, again[1]), (lev, back[0][::-1]), (col, back[1][::-1])):
        assert a.tobytes() == b.tobytes(), path
    assert np.isfinite(lev).all() and np.isfinite(col).all(), path
    # and the optimised build (vectorised, other flags) gives the same bits
    fast = kf.diagnose(inputs)
    assert lev.tobytes() == fast[0].tobytes() and col.tobytes() == fast[1].tobytes(), path
    print(path, int((col[:, 0] > 0).sum()), flush=True)
"""


def _check_build() -> Path:
    """The checking build, made (or brought up to date: make rebuilds it when a source changed)
    by make -C emulator check."""
    run = subprocess.run(["make", "--no-print-directory", "-C", str(REPO / "emulator"), "check",
                          f"PY={sys.executable}"], capture_output=True, text=True)
    assert run.returncode == 0, f"make -C emulator check failed:\n{run.stdout[-2000:]}{run.stderr[-4000:]}"
    return sorted(CHECK_BUILD.glob("_kernel_check*.so"))[0]


def test_checking_build_traps_nothing_and_repeats_bitwise_on_every_oracle_file(oracle_files):
    """The kernel built with every real a signalling NaN and every integer -99999 until
    written, trapping invalid operations, division by zero and overflow (make -C emulator
    check), in its own process over every oracle file: no trap, finite outputs, and bitwise the
    same result on a second call, with the columns in reverse order and from the optimised
    build."""
    run = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, str(REPO), str(_check_build()),
                          *map(str, oracle_files)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, f"checking build failed (rc {run.returncode}):\n{run.stderr[-4000:]}"
    assert len(run.stdout.splitlines()) == len(oracle_files)


FRESH_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from emulator import updraft as kf
from tests.test_kernel import oracle_columns
lev, col = kf.diagnose(oracle_columns(sys.argv[2])[0])
sys.stdout.buffer.write(lev.tobytes() + col.tobytes())
"""


def test_the_built_kernel_gives_the_same_bits_here_and_in_a_fresh_process(oracle_files):
    """No state survives between calls: the test process (which has called the kernel on
    other columns already) and a new process get bitwise the same outputs."""
    path = oracle_files[-1]
    kf.diagnose(_sounding(5, nz=44))
    kf.diagnose(oracle_columns(oracle_files[0])[0])
    lev, col = kf.diagnose(oracle_columns(path)[0])
    run = subprocess.run([sys.executable, "-c", FRESH_SCRIPT, str(REPO), str(path)], capture_output=True,
                         cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr.decode()[-4000:]
    assert run.stdout == lev.tobytes() + col.tobytes()
