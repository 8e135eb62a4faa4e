"""The wrfout reader on real WRF output, the MSKF oracle files, synthetic files and bad input."""


import numpy as np
import pytest
import xarray as xr

from emulator.contract import ContractError, default_contract
from emulator.derive import density, exner
from training.wrfout import WrfoutError, open_wrfout

# Fraction of active columns (any RTHCUTEN != 0) per file, from the WRF run's own README.
IDEAL_ACTIVE = {"09:00": 0.345, "09:30": 0.361, "10:00": 0.360, "10:30": 0.355,
                "11:00": 0.389, "11:30": 0.378, "12:00": 0.405}


def _raw(path):
    return xr.open_dataset(path, decode_times=False, decode_coords=False)


def test_reads_every_oracle_file_with_wrf_derivations(oracle_files):
    contract = default_contract()
    for path in oracle_files:
        ds = open_wrfout(path).load()
        raw = _raw(path).load()
        assert ds.sizes == {"Time": 1, "bottom_top": 44, "bottom_top_stag": 45,
                            "south_north": 64, "west_east": 64}
        assert set(ds.data_vars) == set(contract.input_names + contract.output_names) - {"DX", "DT"}
        assert ds.attrs["DX"] == raw.attrs["DX"] and ds.attrs["DT"] == raw.attrs["DT"]
        # The recipes reproduce what WRF passed to MSKF (stored by the oracle as passed).
        t_phy = (raw.T + 300) * raw.PI_PHY
        np.testing.assert_allclose(ds.T_PHY.values, t_phy.values, rtol=2e-6)
        np.testing.assert_allclose(exner(raw.P + raw.PB).values, raw.PI_PHY.values, rtol=2e-6)
        rho = density(raw.T + 300, raw.QVAPOR, raw.P + raw.PB)
        np.testing.assert_allclose(rho.values, raw.RHO.values, rtol=2e-5)
        np.testing.assert_allclose(ds.U_PHY.values, 0.5 * (raw.U.values[..., 1:] + raw.U.values[..., :-1]))
        assert (ds.DZ8W.values > 0).all()
        # Heights of mass levels lie half a layer above the layer bottoms.
        tops = ds.DZ8W.cumsum("bottom_top")
        np.testing.assert_allclose(ds.Z_AGL.values, (tops - 0.5 * ds.DZ8W).values, rtol=1e-4, atol=0.01)
        trigger = (raw.ORACLE_TRIGGER > 0).values
        np.testing.assert_array_equal(ds.TRIGGER.values > 0, trigger)
        assert ds.attrs["contract"] == contract.with_levels(44).to_json()


def test_reads_real_wrf_history(ideal_files):
    assert len(ideal_files) == 7
    for path in ideal_files:
        ds = open_wrfout(path).load()
        raw = _raw(path)
        assert ds.attrs["DX"] == 5000.0 and ds.attrs["DT"] == 30.0
        np.testing.assert_array_equal(ds.P_HYD.values, raw.P_HYD.values)  # WRF's p_hyd used
        assert np.isfinite(ds.ZOL.values).all()  # not in history: derived from the fluxes
        assert (ds.ZOL.values >= -10).all() and (ds.ZOL.values <= 2).all()
        assert str(ds.Time.values[0]).replace("T", "_").startswith(raw.Times.values[0].decode())
        active = float(ds.TRIGGER.mean())
        assert active == pytest.approx(IDEAL_ACTIVE[path.name[-8:-3]], abs=6e-4)


def test_reads_synthetic_files(synthetic_files):
    for path in synthetic_files:
        ds = open_wrfout(path)
        assert ds.sizes["bottom_top"] == 44 and ds.sizes["west_east"] == 12
        assert np.isfinite(ds.T_PHY.values).all()


@pytest.fixture
def sample(synthetic_files, tmp_path):
    """A writable copy of one synthetic file and a helper to write a modified version."""
    src = synthetic_files[1]

    def modified(change, name="bad_wrfout"):
        ds = _raw(src).load()
        ds = change(ds) or ds
        out = tmp_path / name
        ds.to_netcdf(out)
        return out

    return src, modified


def test_missing_variable_names_file_variable_and_iofields(sample):
    _, modified = sample
    path = modified(lambda ds: ds.drop_vars("W0AVG"))
    with pytest.raises(WrfoutError) as err:
        open_wrfout(path)
    msg = str(err.value)
    assert str(path) in msg and "W0AVG" in msg and "+:h:0:w0avg" in msg
    # Without the cumulus outputs the inputs can still be read.
    path = modified(lambda ds: ds.drop_vars(["RTHCUTEN", "NCA"]), "inputs_only")
    assert "RTHCUTEN" not in open_wrfout(path, outputs=False)
    with pytest.raises(WrfoutError, match="RTHCUTEN: missing.*rthcuten"):
        open_wrfout(path)


def test_wrong_dimensions_and_units_are_named(sample):
    _, modified = sample

    def w_on_mass_levels(ds):
        w = ds.W.isel(bottom_top_stag=slice(0, -1)).rename(bottom_top_stag="bottom_top")
        return ds.drop_vars("W").assign(W=w)

    with pytest.raises(WrfoutError, match=r"variable W: has dimensions .*bottom_top.*expected"):
        open_wrfout(modified(w_on_mass_levels))

    def per_day(ds):
        ds.RTHCUTEN.attrs["units"] = "K day-1"

    with pytest.raises(WrfoutError, match="RTHCUTEN: has units 'K day-1', expected 'K s-1'"):
        open_wrfout(modified(per_day, "units"))

    def no_dx(ds):
        del ds.attrs["DX"]

    with pytest.raises(WrfoutError, match="DX: global attribute missing"):
        open_wrfout(modified(no_dx, "nodx"))


def test_inconsistent_staggered_dimension(sample):
    _, modified = sample
    path = modified(lambda ds: ds.isel(bottom_top_stag=slice(0, -1)), "stag")
    with pytest.raises(WrfoutError, match="bottom_top_stag = 44 is not bottom_top \\+ 1 = 45"):
        open_wrfout(path)


def test_corrupt_missing_and_foreign_files(sample, tmp_path):
    src, _ = sample
    truncated = tmp_path / "truncated"
    truncated.write_bytes(src.read_bytes()[:2000])
    with pytest.raises(WrfoutError, match="truncated: cannot be read as netCDF"):
        open_wrfout(truncated)
    with pytest.raises(WrfoutError, match="no such file"):
        open_wrfout(tmp_path / "absent")
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"x": ("n", np.arange(3.0))}).to_netcdf(foreign)
    with pytest.raises(WrfoutError, match="no 'Time' dimension: not a WRF history file"):
        open_wrfout(foreign)


def test_contract_for_another_level_count_is_refused(synthetic_files):
    with pytest.raises(ContractError, match="40 mass levels, the data have 44"):
        open_wrfout(synthetic_files[0], default_contract().with_levels(40))
