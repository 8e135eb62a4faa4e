"""How each model variable is obtained from WRF fields.

Two layers, one implementation:

* elementwise physics (``exner``, ``temperature``, ``density``, ...) that works on numpy arrays
  and xarray DataArrays alike, so the WRF runtime and the training pipeline share it;
* ``RECIPES``: for every derivation named in the variable contract, the wrfout fields it reads
  (with their grid and units) and a function that builds the model variable from an open wrfout
  dataset, using WRF's dimension names.

Formulas follow WRF's ``phy_prep`` so that a derived field equals what WRF passes to the scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import xarray as xr

from emulator import constants as c

# Dimensions of each WRF grid in a wrfout file (Time first, as WRF writes them).
GRID_DIMS = {
    "mass": ("Time", "bottom_top", "south_north", "west_east"),
    "w": ("Time", "bottom_top_stag", "south_north", "west_east"),
    "u": ("Time", "bottom_top", "south_north", "west_east_stag"),
    "v": ("Time", "bottom_top", "south_north_stag", "west_east"),
    "surface": ("Time", "south_north", "west_east"),
}


# --- elementwise physics -------------------------------------------------------------------


def exner(p):
    """Exner function (p / 1000 hPa) ** (R_d / c_p) of full pressure p (Pa)."""
    return (p / c.P1000MB) ** c.RCP


def temperature(theta, p):
    """Temperature (K) from potential temperature theta (K) and pressure p (Pa)."""
    return theta * exner(p)


def density(theta, qv, p):
    """Moist air density (kg m-3) as WRF's phy_prep forms rho from the equation of state.

    alt = (R_d / p0) * theta * (1 + R_v/R_d * qv) * (p / p0) ** (-c_v / c_p) is the inverse dry
    density; rho = (1 + qv) / alt counts the vapour mass too (the rho MSKF receives).
    """
    alt = (c.R_D / c.P1000MB) * theta * (1.0 + c.RV_OVER_RD * qv) * (p / c.P1000MB) ** c.CVPM
    return (1.0 + qv) / alt


def saturation_mixing_ratio(t, p):
    """Saturation water-vapour mixing ratio (kg kg-1) over liquid, Bolton's formula."""
    es = 1000.0 * c.SVP1 * np.exp(c.SVP2 * (t - c.SVPT0) / (t - c.SVP3))  # Pa
    es = np.minimum(es, 0.5 * p)
    return c.EP2 * es / (p - es)


def obukhov_zol(z1, theta1, qv1, rho1, hfx, ust):
    """Stability parameter z/L at the lowest mass level from the surface fluxes.

    L = -u*^3 theta_v rho c_p / (k g H). Used only when a file has no ZOL (real wrfout does
    not write it by default); clipped to the range the surface layer schemes produce.
    """
    theta_v = theta1 * (1.0 + 0.608 * qv1)
    ust3 = np.maximum(ust, 0.01) ** 3
    zol = -c.KARMAN * c.G * hfx * z1 / (ust3 * theta_v * rho1 * c.CP)
    return np.clip(zol, -10.0, 2.0)


def height_above_ground_from_thickness(dz8w):
    """Height of mass levels above ground (m) from layer thicknesses (..., level): what the
    ``height_above_ground`` recipe gives from PH and PHB, for callers that hold only DZ8W
    (the WRF runtime)."""
    return np.cumsum(dz8w, axis=-1) - 0.5 * dz8w


# --- recipes over wrfout datasets ------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A wrfout field a recipe reads: name, grid (key of GRID_DIMS) and units."""

    name: str
    grid: str
    units: str


@dataclass(frozen=True)
class Recipe:
    """How a model variable is derived from wrfout fields.

    ``sources`` are required; ``prefer`` names a field that, when the file has it, is used as
    is (for example P_HYD, or the RHO an oracle stored exactly as passed to the scheme).
    """

    name: str
    formula: str
    sources: tuple[Source, ...]
    build: Callable[[xr.Dataset], xr.DataArray]
    prefer: Source | None = None


def _destagger(da: xr.DataArray, stag_dim: str, dim: str) -> xr.DataArray:
    n = da.sizes[stag_dim]
    lo = da.isel({stag_dim: slice(0, n - 1)})
    hi = da.isel({stag_dim: slice(1, n)})
    return (0.5 * (lo + hi)).rename({stag_dim: dim})


def _full_pressure(ds):
    return ds["P"] + ds["PB"]


def _theta(ds):
    return ds["T"] + c.T0


def _temperature(ds):
    # The Exner function as the scheme received it where the file stores it: a power computed
    # again differs in the last bit, and MSKF's trigger is sensitive to that.
    pi = ds[PI_SRC.name] if PI_SRC.name in ds.variables else exner(_full_pressure(ds))
    return _theta(ds) * pi


def _height_w(ds):
    """Height of the full (w) levels above sea level, m."""
    return (ds["PH"] + ds["PHB"]) / c.G


def _layer_bounds(ds):
    """Heights of the lower and upper full levels of every mass level."""
    z = _height_w(ds)
    n = z.sizes["bottom_top_stag"]
    upper = z.isel(bottom_top_stag=slice(1, n)).rename(bottom_top_stag="bottom_top")
    lower = z.isel(bottom_top_stag=slice(0, n - 1)).rename(bottom_top_stag="bottom_top")
    return lower, upper, z.isel(bottom_top_stag=0)


def _dz8w(ds):
    lower, upper, _ = _layer_bounds(ds)
    return upper - lower


def _height_above_ground(ds):
    lower, upper, ground = _layer_bounds(ds)
    return 0.5 * (upper + lower) - ground


def _zol(ds):
    z_w = _height_w(ds)
    z1 = 0.5 * (z_w.isel(bottom_top_stag=1) - z_w.isel(bottom_top_stag=0))
    theta = _theta(ds).isel(bottom_top=0)
    qv = ds["QVAPOR"].isel(bottom_top=0)
    rho = density(theta, qv, _full_pressure(ds).isel(bottom_top=0))
    return obukhov_zol(z1, theta, qv, rho, ds["HFX"], ds["UST"])


def activated(rthcuten, rqvcuten, levels):
    """1 where the scheme produced any heating or moistening in the column, else 0.

    ``levels`` is the level axis (numpy) or dimension name (xarray)."""
    return ((rthcuten != 0).any(levels) | (rqvcuten != 0).any(levels)).astype("float32")


def _activated(ds):
    return activated(ds["RTHCUTEN"], ds["RQVCUTEN"], "bottom_top")


T_SRC = Source("T", "mass", "K")
P_SRC = Source("P", "mass", "Pa")
PB_SRC = Source("PB", "mass", "Pa")
QV_SRC = Source("QVAPOR", "mass", "kg kg-1")
PH_SRC = Source("PH", "w", "m2 s-2")
PI_SRC = Source("PI_PHY", "mass", "")
PHB_SRC = Source("PHB", "w", "m2 s-2")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "destagger_x",
            "0.5 * (U[i] + U[i+1]): x-wind at mass points, as phy_prep forms u_phy",
            (Source("U", "u", "m s-1"),),
            lambda ds: _destagger(ds["U"], "west_east_stag", "west_east"),
        ),
        Recipe(
            "destagger_y",
            "0.5 * (V[j] + V[j+1]): y-wind at mass points, as phy_prep forms v_phy",
            (Source("V", "v", "m s-1"),),
            lambda ds: _destagger(ds["V"], "south_north_stag", "south_north"),
        ),
        Recipe(
            "temperature",
            "(T + 300) * PI_PHY when the file has PI_PHY, else (T + 300) * ((P + PB) / 1e5) ** (R_d / c_p)",
            (T_SRC, P_SRC, PB_SRC),
            _temperature,
        ),
        Recipe(
            "hydrostatic_pressure",
            "P_HYD when the file has it (WRF passes p_hyd to the scheme), else P + PB",
            (P_SRC, PB_SRC),
            _full_pressure,
            prefer=Source("P_HYD", "mass", "Pa"),
        ),
        Recipe(
            "exner",
            "PI_PHY when the file has it (as phy_prep passed it), else ((P + PB) / 1e5) ** (R_d / c_p)",
            (P_SRC, PB_SRC),
            lambda ds: exner(_full_pressure(ds)),
            prefer=PI_SRC,
        ),
        Recipe(
            "density",
            "RHO when present, else (1 + QVAPOR) / alt with WRF's equation of state for alt",
            (T_SRC, P_SRC, PB_SRC, QV_SRC),
            lambda ds: density(_theta(ds), ds["QVAPOR"], _full_pressure(ds)),
            prefer=Source("RHO", "mass", "kg m-3"),
        ),
        Recipe(
            "layer_thickness",
            "(PH + PHB)[k+1] / g - (PH + PHB)[k] / g",
            (PH_SRC, PHB_SRC),
            _dz8w,
        ),
        Recipe(
            "height_above_ground",
            "0.5 * ((PH + PHB)[k] + (PH + PHB)[k+1]) / g - (PH + PHB)[0] / g",
            (PH_SRC, PHB_SRC),
            _height_above_ground,
        ),
        Recipe(
            "obukhov_zol",
            "ZOL when present, else z1 / L from HFX, UST and the lowest level's theta, qv, rho",
            (T_SRC, P_SRC, PB_SRC, QV_SRC, PH_SRC, PHB_SRC,
             Source("HFX", "surface", "W m-2"), Source("UST", "surface", "m s-1")),
            _zol,
            prefer=Source("ZOL", "surface", ""),
        ),
        Recipe(
            "activated",
            "1 where any RTHCUTEN or RQVCUTEN level is non-zero, else 0",
            (Source("RTHCUTEN", "mass", "K s-1"), Source("RQVCUTEN", "mass", "kg kg-1 s-1")),
            _activated,
        ),
    ]
}

# Identity recipes: the wrfout field with the variable's own name, grid and units.
FIELD = "field"
# Domain constants stored as global attributes of the file (DX, DT).
GLOBAL_ATTRIBUTE = "global_attribute"
