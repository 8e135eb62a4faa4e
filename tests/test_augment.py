"""mlcu augment (perturbed columns labelled by WRF's own MSKF) and mlcu sensitivity (MSKF
against itself under round-off perturbations).

The perturbations are checked on every run. The scheme itself needs the mskf_columns program,
built from a WRF source tree: set MLCU_MSKF_COLUMNS (a built program), MLCU_WRF_SRC (a source
tree) or MLCU_WRF_GIT (a git clone; tag MLCU_WRF_TAG, default v4.7.1). With it, the program
must reproduce the oracle files bit for bit, and augmented files must go through prepare.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from emulator import constants as c
from emulator.derive import density, saturation_mixing_ratio
from training import mskf
from training.augment import AugmentConfig, augment, perturb

REPO = Path(__file__).resolve().parents[1]


def _state(path):
    ds = xr.open_dataset(path)
    names = ("T", "QVAPOR", "PH", "PHB", "P", "PB", "W", "U", "V", "HFX", "UST", "PBLH",
             "RHO", "W0AVG", "ZOL")
    return {n: ds[n].values[0] for n in names}


def test_perturbations_keep_the_state_consistent(oracle_files):
    raw = _state(oracle_files[0])
    cfg = AugmentConfig(input=["x"], out="y")
    new = perturb(raw, cfg, np.random.default_rng(1))
    p = raw["P"] + raw["PB"]
    theta, qv = new["T"] + c.T0, new["QVAPOR"]
    # Temperature and vapour change by the configured amounts.
    assert 0.5 < np.sqrt(np.mean((new["T"] - raw["T"]) ** 2)) < 2.0
    rel = np.log(new["QVAPOR"] / raw["QVAPOR"])
    assert 0.05 < rel.std() < 0.3
    # Never above saturation where the column was not.
    qsat = saturation_mixing_ratio(theta * (p / c.P1000MB) ** c.RCP, p)
    assert np.all(qv <= np.maximum(qsat, raw["QVAPOR"]) * (1 + 1e-5))
    # Hydrostatic layers: thickness over inverse dry density is what it was.
    def alt(t, q):
        return (t + c.T0) * (1 + c.RV_OVER_RD * q)
    dz_old = np.diff(raw["PH"] + raw["PHB"], axis=0) / alt(raw["T"], raw["QVAPOR"])
    dz_new = np.diff(new["PH"] + new["PHB"], axis=0) / alt(new["T"], new["QVAPOR"])
    np.testing.assert_allclose(dz_new, dz_old, rtol=1e-4)
    np.testing.assert_allclose(new["RHO"], density(theta, qv, p), rtol=1e-5)
    # W0AVG is the layer mean of the new W (the scheme's update leaves it unchanged).
    np.testing.assert_allclose(new["W0AVG"], 0.5 * (new["W"][1:] + new["W"][:-1]), atol=1e-6)
    np.testing.assert_array_equal(new["W"][0], raw["W"][0])
    # Winds: one factor and offset per file, so the staggered fields stay consistent.
    du = new["U"] - raw["U"]
    fit = np.polyfit(raw["U"].ravel(), new["U"].ravel(), 1)
    assert 0.6 <= fit[0] <= 1.4
    np.testing.assert_allclose(du, (fit[0] - 1) * raw["U"] + fit[1], atol=1e-3)
    # ZOL goes as HFX / UST**3.
    ratio = (new["HFX"] / raw["HFX"]) / (new["UST"] / raw["UST"]) ** 3
    ok = np.abs(raw["ZOL"]) > 1e-6
    np.testing.assert_allclose(new["ZOL"][ok], raw["ZOL"][ok] * ratio[ok], rtol=1e-4)
    # The same stream gives the same columns.
    again = perturb(raw, cfg, np.random.default_rng(1))
    np.testing.assert_array_equal(again["T"], new["T"])


def test_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown augment settings"):
        AugmentConfig.load(None, ["copies_=2"], input=["x"], out="y")
    with pytest.raises(ValueError, match="copies"):
        AugmentConfig.load(None, ["copies=0"], input=["x"], out="y")
    with pytest.raises(mskf.MskfError, match="make mskf-columns"):
        mskf.program(tmp_path / "absent")


def test_standalone_mskf_reproduces_the_oracle(oracle_files, mskf_program):
    from training.columns import _flatten
    from training.wrfout import open_wrfout

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


def test_augmented_files_are_training_data(oracle_files, mskf_program, tmp_path):
    from training.prepare import PrepareConfig, prepare

    cfg = AugmentConfig.load(REPO / "configs" / "augment.yaml", ["copies=1"],
                             input=[str(oracle_files[0])], out=str(tmp_path / "aug"),
                             scheduler="synchronous")
    (written,) = augment(cfg, mskf_program)
    ds = xr.open_dataset(written)
    assert ds.attrs["AUGMENT_SOURCE"] == oracle_files[0].name
    assert 2000 <= ds.attrs["DX"] <= 30000 and ds.attrs["DT"] == round(6 * ds.attrs["DX"] / 1000)
    fires = (ds["RTHCUTEN"] != 0).any("bottom_top")
    assert 0.2 < float(fires.mean()) < 0.7
    # Shallow columns give no rain; deep ones hold for a whole number of steps.
    deep = ds["NCA"] > 0
    assert float(ds["PRATEC"].where(fires & ~deep).max()) == 0
    steps = ds["NCA"].where(deep) / ds.attrs["DT"]
    assert float(np.abs(steps - np.round(steps)).max()) < 1e-4
    # A second run leaves the file as it is.
    mtime = written.stat().st_mtime_ns
    augment(cfg, mskf_program)
    assert written.stat().st_mtime_ns == mtime
    report = prepare(PrepareConfig.load(None, ["pairing=single_call", "split.method=files",
                                               "split.rules=[{pattern: '*', split: train}]"],
                                        input=[str(written)], out=str(tmp_path / "store"),
                                        scheduler="synchronous"))
    assert report["columns"]["train"]["kept"] == ds.sizes["south_north"] * ds.sizes["west_east"]


def test_a_bad_file_is_named_and_the_others_are_written(oracle_files, mskf_program, tmp_path):
    bad = tmp_path / "wrfout_broken_00.nc"
    bad.write_bytes(b"not netCDF")
    cfg = AugmentConfig(input=[str(bad), str(oracle_files[1])], out=str(tmp_path / "aug"),
                        scheduler="synchronous", copies=1)
    with pytest.raises(RuntimeError, match="wrfout_broken_00.nc copy 0: .*cannot be read"):
        augment(cfg, mskf_program)
    assert [p.name for p in (tmp_path / "aug").iterdir()] == [f"{oracle_files[1].stem}_aug00.nc"]


def test_real_wrf_history_is_labelled_afresh(ideal_files, mskf_program, tmp_path):
    """A WRF history frame (no oracle fields such as TIMEC_KF) becomes a single-call file: the
    scheme's outputs for exactly the perturbed state, on the file's own grid."""
    cfg = AugmentConfig(input=[str(ideal_files[0])], out=str(tmp_path), scheduler="synchronous",
                        copies=1)
    (written,) = augment(cfg, mskf_program)
    ds = xr.open_dataset(written)
    assert ds["TIMEC_KF"].dims == ("Time", "south_north", "west_east")
    assert ds["UDR_KF"].dims == ("Time", "bottom_top", "south_north", "west_east")
    assert float((ds["RTHCUTEN"] != 0).any("bottom_top").mean()) > 0.1
    np.testing.assert_allclose(ds["W0AVG"].values, 0.5 * (ds["W"].values[:, 1:] + ds["W"].values[:, :-1]),
                               atol=1e-6)


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
