"""Write frames as WRF history (wrfout) netCDF files.

The layout is WRF's: an unlimited ``Time`` dimension, ``Times`` as characters
(``DateStrLen`` = 19), (Time, bottom_top[_stag], south_north[_stag], west_east[_stag]) arrays
with the attributes WRF writes (FieldType, MemoryOrder, description, units, stagger,
coordinates), and WRF's global attributes (grid dimensions, DX, DY, DT, ...). The cumulus
fields are those an ``iofields`` line adds to stream 0, with the uncoupled per-second
tendencies WRF holds right after its cumulus driver.
"""

from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import numpy as np

from emulator.derive import GRID_DIMS

FLOAT, INT = 104, 106  # WRF FieldType codes
_COORDS = "XLONG XLAT XTIME"

# name: (grid, description, units). Grids are GRID_DIMS keys, or "eta"/"eta_stag"/"time".
FIELDS = {
    "XLAT": ("surface", "LATITUDE, SOUTH IS NEGATIVE", "degree_north"),
    "XLONG": ("surface", "LONGITUDE, WEST IS NEGATIVE", "degree_east"),
    "XTIME": ("time", None, None),  # description and units name the start date
    "ITIMESTEP": ("time", "", ""),
    "ZNU": ("eta", "eta values on half (mass) levels", ""),
    "ZNW": ("eta_stag", "eta values on full (w) levels", ""),
    "C1H": ("eta", "half levels, c1h = d bf / d eta, using znw", "Dimensionless"),
    "C2H": ("eta", "half levels, c2h = (1-c1h)*(p0-pt)", "Pa"),
    "C3H": ("eta", "half levels, c3h = bh", "Dimensionless"),
    "C4H": ("eta", "half levels, c4h = (eta-bh)*(p0-pt), using znu", "Pa"),
    "C1F": ("eta_stag", "full levels, c1f = d bf / d eta, using znu", "Dimensionless"),
    "C2F": ("eta_stag", "full levels, c2f = (1-c1f)*(p0-pt)", "Pa"),
    "C3F": ("eta_stag", "full levels, c3f = bf", "Dimensionless"),
    "C4F": ("eta_stag", "full levels, c4f = (eta-bf)*(p0-pt), using znw", "Pa"),
    "P_TOP": ("time", "PRESSURE TOP OF THE MODEL", "Pa"),
    "T": ("mass", "perturbation potential temperature theta-t0", "K"),
    "QVAPOR": ("mass", "Water vapor mixing ratio", "kg kg-1"),
    "QCLOUD": ("mass", "Cloud water mixing ratio", "kg kg-1"),
    "QRAIN": ("mass", "Rain water mixing ratio", "kg kg-1"),
    "QICE": ("mass", "Ice mixing ratio", "kg kg-1"),
    "QSNOW": ("mass", "Snow mixing ratio", "kg kg-1"),
    "QGRAUP": ("mass", "Graupel mixing ratio", "kg kg-1"),
    "P": ("mass", "perturbation pressure", "Pa"),
    "PB": ("mass", "BASE STATE PRESSURE", "Pa"),
    "P_HYD": ("mass", "hydrostatic pressure", "Pa"),
    "PH": ("w", "perturbation geopotential", "m2 s-2"),
    "PHB": ("w", "base-state geopotential", "m2 s-2"),
    "W": ("w", "z-wind component", "m s-1"),
    "U": ("u", "x-wind component", "m s-1"),
    "V": ("v", "y-wind component", "m s-1"),
    "PSFC": ("surface", "SFC PRESSURE", "Pa"),
    "HGT": ("surface", "Terrain Height", "m"),
    "MU": ("surface", "perturbation dry air mass in column", "Pa"),
    "MUB": ("surface", "base state dry air mass in column", "Pa"),
    "HFX": ("surface", "UPWARD HEAT FLUX AT THE SURFACE", "W m-2"),
    "UST": ("surface", "U* IN SIMILARITY THEORY", "m s-1"),
    "PBLH": ("surface", "PBL HEIGHT", "m"),
    "ZOL": ("surface", "z/L", ""),
    "XLAND": ("surface", "LAND MASK (1 FOR LAND, 2 FOR WATER)", ""),
    "W0AVG": ("mass", "AVERAGE VERTICAL VELOCITY FOR KF CUMULUS SCHEME", "m s-1"),
    "RHO": ("mass", "DENSITY", "kg m-3"),
    "PI_PHY": ("mass", "Exner function ((P+PB)/p1000mb)**(r_d/cp)", ""),
    "RTHCUTEN": ("mass", "THETA TENDENCY DUE TO CUMULUS SCHEME", "K s-1"),
    "RQVCUTEN": ("mass", "Q_V TENDENCY DUE TO CUMULUS SCHEME", "kg kg-1 s-1"),
    "RQCCUTEN": ("mass", "Q_C TENDENCY DUE TO CUMULUS SCHEME", "kg kg-1 s-1"),
    "RQRCUTEN": ("mass", "Q_R TENDENCY DUE TO CUMULUS SCHEME", "kg kg-1 s-1"),
    "RQICUTEN": ("mass", "Q_I TENDENCY DUE TO CUMULUS SCHEME", "kg kg-1 s-1"),
    "RQSCUTEN": ("mass", "Q_S TENDENCY DUE TO CUMULUS SCHEME", "kg kg-1 s-1"),
    "RUCUTEN": ("mass", "X WIND TENDENCY DUE TO CUMULUS PARAMETERIZATION", "m s-2"),
    "RVCUTEN": ("mass", "Y WIND TENDENCY DUE TO CUMULUS PARAMETERIZATION", "m s-2"),
    "RAINC": ("surface", "ACCUMULATED TOTAL CUMULUS PRECIPITATION", "mm"),
    "RAINCV": ("surface", "TIME-STEP CUMULUS PRECIPITATION", "mm"),
    "PRATEC": ("surface", "PRECIP RATE FROM CUMULUS SCHEME", "mm s-1"),
    "NCA": ("surface", "COUNTER OF THE CLOUD RELAXATION TIME IN KF CUMULUS SCHEME", "s"),
    "CUTOP": ("surface", "TOP OF CONVECTION LEVEL FROM CUMULUS PAR", ""),
    "CUBOT": ("surface", "BOT OF CONVECTION LEVEL FROM CUMULUS PAR", ""),
    "CLDFRA_DP": ("mass", "DEEP CONVECTIVE CLOUD FRACTION FROM KF", ""),
    "CLDFRA_SH": ("mass", "SHALLOW CONVECTIVE CLOUD FRACTION FROM KF", ""),
    "QC_CU": ("mass", "CLOUD WATER MIXING RATIO FROM A CU SCHEME", "kg kg-1"),
    "QI_CU": ("mass", "CLOUD ICE MIXING RATIO FROM A CU SCHEME", "kg kg-1"),
    "TIMEC_KF": ("surface", "CONVECTIVE TIMESCALE FROM CUMULUS SCHEME", "s"),
    "UDR_KF": ("mass", "UPDRAFT DETRAINMENT RATE FROM CUMULUS SCHEME", "kg s-1"),
    "DDR_KF": ("mass", "DOWNDRAFT DETRAINMENT RATE FROM CUMULUS SCHEME", "kg s-1"),
    "UER_KF": ("mass", "UPDRAFT ENTRAINMENT RATE FROM CUMULUS SCHEME", "kg s-1"),
    "DER_KF": ("mass", "DOWNDRAFT ENTRAINMENT RATE FROM CUMULUS SCHEME", "kg s-1"),
}
_EXTRA_DIMS = {"eta": ("Time", "bottom_top"), "eta_stag": ("Time", "bottom_top_stag"),
               "time": ("Time",)}
_STAGGER = {"w": "Z", "u": "X", "v": "Y", "eta_stag": "Z"}
_MEMORY_ORDER = {"mass": "XYZ", "w": "XYZ", "u": "XYZ", "v": "XYZ", "surface": "XY ",
                 "eta": "Z  ", "eta_stag": "Z  ", "time": "0  "}


def write_wrfout(path: Path, times: list[str], frames: list[dict], global_attrs: dict,
                 start_date: str) -> None:
    """Write ``frames`` (dicts of WRF name -> array without the Time axis) to ``path``.

    The file is written under a temporary name and renamed, so a killed run never leaves a
    half-written wrfout behind.
    """
    first = frames[0]
    nz, ny, nx = first["T"].shape
    tmp = path.with_name(path.name + ".part")
    with netCDF4.Dataset(tmp, "w", format="NETCDF4_CLASSIC") as nc:
        for name, size in [("Time", None), ("DateStrLen", 19), ("west_east", nx),
                           ("south_north", ny), ("bottom_top", nz), ("bottom_top_stag", nz + 1),
                           ("west_east_stag", nx + 1), ("south_north_stag", ny + 1)]:
            nc.createDimension(name, size)
        nc.setncatts(global_attrs)
        var = nc.createVariable("Times", "S1", ("Time", "DateStrLen"))
        var[:] = netCDF4.stringtochar(np.array(times, dtype="S19"))
        for name, (grid, description, units) in FIELDS.items():
            if name not in first:
                continue
            dims = GRID_DIMS.get(grid) or _EXTRA_DIMS[grid]
            dtype = "i4" if name == "ITIMESTEP" else "f4"
            var = nc.createVariable(name, dtype, dims, zlib=True, complevel=2, shuffle=True)
            if name == "XTIME":
                description = units = f"minutes since {start_date.replace('_', ' ')}"
            attrs = {"FieldType": np.int32(INT if dtype == "i4" else FLOAT),
                     "MemoryOrder": _MEMORY_ORDER[grid], "description": description,
                     "units": units, "stagger": _STAGGER.get(grid, "")}
            if grid in GRID_DIMS:
                attrs["coordinates"] = _COORDS
            var.setncatts(attrs)
            var[:] = np.stack([np.asarray(f[name]) for f in frames]).astype(dtype)
    os.replace(tmp, path)
