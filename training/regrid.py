"""WRF's vertical grid, and columns moved from one grid onto another.

* ``VerticalGrid`` / ``hybrid_grid``: eta on full (w) and half (mass) levels and the
  coefficients of WRF's hybrid coordinate, p = c3 (p_s - p_top) + c4 + p_top on full levels and
  the same with the half-level coefficients on mass levels (``hybrid_opt = 0``: c3 = eta, the
  terrain-following coordinate; ``hybrid_opt = 2``: c3 = B(eta), Klemp's cubic that is 1 with
  slope 1 at the ground and 0 above ``eta = etac``, so the levels above are pure pressure).
* eta families, built as WRF's automatic levels are, from layer thicknesses in an isothermal
  290 K atmosphere that reaches the pressure ``p_top``: ``stretched`` (the first layer
  ``dz_bottom`` thick, each next one a factor thicker, the factor falling from a surface to an
  upper value as the layers approach half of ``max_dz``, then constant thickness to the top:
  WRF's ``auto_levels_opt = 2``), ``smooth`` (the log thickness a smooth random function of
  the level index) and ``ramp`` (thickness growing linearly over the lowest levels, then
  constant, as WRF's older ``auto_levels_opt = 1`` grids are).
* ``base_state``: real.exe's base state for the terrain height (PB, PHB, MUB).
* ``hydrostatic_column``: pressure from the hybrid coordinate applied to the surface pressure,
  geopotential from the hypsometric equation with virtual temperature.
* ``remap_layers`` (conservative: the mass-weighted integral of a layer quantity over any
  pressure range both grids cover is kept; monotone and positive), ``condense_excess``
  (what re-gridding makes supersaturated becomes cloud water) and ``interp_log_pressure`` (point
  values).

Columns are (column, level) arrays, level 0 at the ground; pressures (Pa) fall with level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emulator import constants as c
from emulator.derive import saturation_mixing_ratio

# The isothermal atmosphere WRF's automatic levels relate height and pressure with.
REFERENCE_T = 290.0  # K
# real.exe's base state (namelist defaults base_pres, base_temp, base_lapse, iso_temp,
# base_pres_strat = 0: no stratospheric lapse rate, base_lapse_strat).
BASE_P00, BASE_T00, BASE_A, BASE_TISO = 1.0e5, 290.0, 50.0, 200.0
BASE_P_STRAT, BASE_A_STRAT = 0.0, -11.0
FAMILIES = ("stretched", "smooth", "ramp")
MAX_TRIES = 500  # random eta parameters drawn before a family is given up for a grid


class GridError(ValueError):
    """A vertical grid that cannot be built as asked."""


@dataclass(frozen=True)
class VerticalGrid:
    """WRF's vertical coordinate: full-level eta ``znw`` (1 at the ground, 0 at the top), the
    half levels ``znu`` and the hybrid coefficients, as wrfout stores them."""

    znw: np.ndarray
    znu: np.ndarray
    c1f: np.ndarray
    c2f: np.ndarray
    c3f: np.ndarray
    c4f: np.ndarray
    c1h: np.ndarray
    c2h: np.ndarray
    c3h: np.ndarray
    c4h: np.ndarray
    p_top: float
    hybrid_opt: int
    etac: float
    family: str = ""
    params: dict = field(default_factory=dict, compare=False)

    @property
    def n_levels(self) -> int:
        return self.znu.size

    def pressure(self, psfc) -> tuple[np.ndarray, np.ndarray]:
        """Pressure on full and mass levels (column, level) for surface pressures ``psfc``
        (column,): the hybrid coordinate applied to the column's mass psfc - p_top."""
        mu = np.asarray(psfc, dtype=np.float64)[:, None] - self.p_top
        return (self.c3f * mu + self.c4f + self.p_top, self.c3h * mu + self.c4h + self.p_top)


def hybrid_grid(znw, p_top: float, hybrid_opt: int = 2, etac: float = 0.2, family: str = "",
                params: dict | None = None) -> VerticalGrid:
    """The grid of full-level eta ``znw`` with WRF's hybrid coefficients.

    c3f = B(eta) (eta itself for hybrid_opt 0), c4f = (eta - B)(p0 - p_top); on half levels c3h
    is the mean of the two full levels and c4h = (znu - c3h)(p0 - p_top); c1 = dB/deta from
    differences of B (c1f is 1 at the ground, and at the top 1 for hybrid_opt 0, 0 for 2),
    c2 = (1 - c1)(p0 - p_top)."""
    znw = np.asarray(znw, dtype=np.float64)
    if znw[0] != 1.0 or znw[-1] != 0.0 or np.any(np.diff(znw) >= 0):
        raise GridError("full-level eta must fall monotonically from 1 at the ground to 0 at the top")
    if hybrid_opt not in (0, 2):
        raise GridError(f"hybrid_opt must be 0 or 2, got {hybrid_opt}")
    if not 0.0 < p_top < c.P1000MB:
        raise GridError(f"p_top must be between 0 and 1e5 Pa, got {p_top}")
    dp0 = c.P1000MB - p_top
    if hybrid_opt == 0:
        c3f = znw.copy()
    else:
        if not 0.0 < etac < 1.0:
            raise GridError(f"etac must be in (0, 1), got {etac}")
        b1 = 2.0 * etac**2 * (1.0 - etac)
        b2 = -etac * (4.0 - 3.0 * etac - etac**3)
        b3 = 2.0 * (1.0 - etac**3)
        b4 = -(1.0 - etac**2)
        c3f = (b1 + b2 * znw + b3 * znw**2 + b4 * znw**3) / (1.0 - etac) ** 4
        c3f[znw < etac] = 0.0
        c3f[0], c3f[-1] = 1.0, 0.0
    znu = 0.5 * (znw[1:] + znw[:-1])
    c3h = 0.5 * (c3f[1:] + c3f[:-1])
    c1f = np.empty_like(znw)
    c1f[1:-1] = np.diff(c3h) / np.diff(znu)
    c1f[0], c1f[-1] = 1.0, (1.0 if hybrid_opt == 0 else 0.0)
    c1h = np.diff(c3f) / np.diff(znw)
    return VerticalGrid(znw=znw, znu=znu, c1f=c1f, c2f=(1.0 - c1f) * dp0, c3f=c3f,
                        c4f=(znw - c3f) * dp0, c1h=c1h, c2h=(1.0 - c1h) * dp0, c3h=c3h,
                        c4h=(znu - c3h) * dp0, p_top=float(p_top), hybrid_opt=int(hybrid_opt),
                        etac=float(etac if hybrid_opt == 2 else 0.0), family=family,
                        params=dict(params or {}))


# --- eta families ------------------------------------------------------------------------


def reference_top(p_top: float) -> float:
    """Height (m) of the pressure p_top in the isothermal reference atmosphere."""
    return c.R_D * REFERENCE_T / c.G * np.log(c.P1000MB / p_top)


def eta_from_thicknesses(dz: np.ndarray, p_top: float) -> np.ndarray:
    """Full-level eta of layers ``dz`` (m, from the ground up) in the reference atmosphere,
    stretched to end exactly at p_top."""
    z_w = np.concatenate([[0.0], np.cumsum(dz)])
    z_w *= reference_top(p_top) / z_w[-1]
    p = c.P1000MB * np.exp(-c.G * z_w / (c.R_D * REFERENCE_T))
    eta = (p - p_top) / (c.P1000MB - p_top)
    eta[0], eta[-1] = 1.0, 0.0
    return eta


def stretched_thicknesses(n: int, z_top: float, dz_bottom: float, stretch_surface: float,
                          stretch_upper: float, max_dz: float) -> np.ndarray | None:
    """``n`` layers from ``dz_bottom`` up: each layer ``a`` times the one below, ``a`` falling
    linearly from ``stretch_surface`` to ``stretch_upper`` as the layer approaches max_dz / 2;
    as soon as the even share of the depth left is thinner than the next stretched layer, the
    remaining layers take that share. None when n layers do not reach z_top that way or the
    constant upper layers would be thicker than 1.5 max_dz (WRF refuses both)."""
    dz, z = [dz_bottom], dz_bottom
    for i in range(1, n):
        taper = max((0.5 * max_dz - dz[-1]) / (0.5 * max_dz), 0.0)
        a = stretch_upper + (stretch_surface - stretch_upper) * taper
        even = (z_top - z) / (n - i)
        if even < a * dz[-1]:
            return np.array(dz + [even] * (n - i)) if even <= 1.5 * max_dz else None
        dz.append(a * dz[-1])
        z += dz[-1]
    return None


def smooth_thicknesses(rng, n: int, z_top: float, dz_bottom: float, max_ratio: float,
                       max_dz: float) -> np.ndarray | None:
    """``n`` layers whose log thickness is a smooth random function of the level index: a
    tanh ramp (random centre and width) plus a few sine modes, scaled so that the layers fill
    z_top, the first exactly ``dz_bottom``. None when consecutive layers differ by more than
    ``max_ratio`` or one is thicker than ``max_dz``."""
    s = np.arange(n) / (n - 1)
    centre, width = rng.uniform(0.1, 0.5), rng.uniform(0.08, 0.3)
    ramp = (np.tanh((s - centre) / width) - np.tanh(-centre / width)) / (
        np.tanh((1 - centre) / width) - np.tanh(-centre / width))
    modes = np.arange(1, 5)
    wiggle = (rng.normal(0.0, 0.12, modes.size)[:, None] / modes[:, None]
              * np.sin(np.pi * modes[:, None] * s)).sum(axis=0)
    shape = np.maximum(ramp + wiggle, 0.0)
    shape[0] = 0.0
    if n * dz_bottom >= z_top or shape.max() <= 0:
        return None
    lo, hi = 0.0, 50.0
    for _ in range(80):  # the total depth grows with the scale of the log-thickness profile
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.sum(dz_bottom * np.exp(mid * shape)) < z_top else (lo, mid)
    dz = dz_bottom * np.exp(0.5 * (lo + hi) * shape)
    dz *= z_top / dz.sum()
    ratio = dz[1:] / dz[:-1]
    if ratio.max() > max_ratio or ratio.min() < 1.0 / max_ratio or dz.max() > max_dz:
        return None
    return dz


def ramp_thicknesses(n: int, z_top: float, dz_bottom: float, ramp_layers: int,
                     ramp_ratio: float, max_dz: float, max_ratio: float) -> np.ndarray | None:
    """``ramp_layers`` layers growing linearly from ``dz_bottom`` to ``ramp_ratio`` times it,
    three layers blending into a constant thickness, and that thickness to z_top. None when
    the constant thickness is not above the ramp's last layer or exceeds ``max_dz``, or when
    consecutive layers differ by more than ``max_ratio``."""
    ramp = dz_bottom * (1.0 + (ramp_ratio - 1.0) * np.arange(ramp_layers) / (ramp_layers - 1))
    rest = n - ramp_layers
    if rest < 4:
        return None
    # 3 blend layers d + (D - d) j / 4 (j = 1..3) and rest - 3 layers D fill the depth left.
    d = ramp[-1]
    constant = (z_top - ramp.sum() - 1.5 * d) / (rest - 1.5)
    if not d < constant <= max_dz:
        return None
    blend = d + (constant - d) * np.arange(1, 4) / 4.0
    dz = np.concatenate([ramp, blend, np.full(rest - 3, constant)])
    return dz if np.max(dz[1:] / dz[:-1]) <= max_ratio else None


def draw_eta(rng, family: str, n: int, p_top: float, settings: dict) -> tuple[np.ndarray, dict]:
    """Full-level eta of a random grid of family ``family`` with ``n`` mass levels and top
    ``p_top`` (Pa), and the parameters drawn; ``settings`` holds the parameter ranges
    (``dz_bottom_m``, ``stretch_surface``, ``stretch_upper``, ``max_dz_m``, ``smooth_max_ratio``,
    ``ramp_layers``, ``ramp_ratio``, ``ramp_max_ratio``). Parameters are drawn again until the
    grid is valid."""
    z_top = reference_top(p_top)
    uniform = lambda key: float(rng.uniform(*settings[key]))
    for _ in range(MAX_TRIES):
        params = {"dz_bottom_m": uniform("dz_bottom_m"), "max_dz_m": uniform("max_dz_m")}
        if family == "stretched":
            params.update(stretch_surface=uniform("stretch_surface"),
                          stretch_upper=uniform("stretch_upper"))
            dz = stretched_thicknesses(n, z_top, params["dz_bottom_m"], params["stretch_surface"],
                                       params["stretch_upper"], params["max_dz_m"])
        elif family == "smooth":
            dz = smooth_thicknesses(rng, n, z_top, params["dz_bottom_m"],
                                    settings["smooth_max_ratio"], 1.5 * params["max_dz_m"])
        elif family == "ramp":
            lo, hi = settings["ramp_layers"]
            params.update(ramp_layers=int(rng.integers(lo, hi + 1)), ramp_ratio=uniform("ramp_ratio"))
            dz = ramp_thicknesses(n, z_top, params["dz_bottom_m"], params["ramp_layers"],
                                  params["ramp_ratio"], 1.5 * params["max_dz_m"],
                                  settings["ramp_max_ratio"])
        else:
            raise GridError(f"unknown eta family {family!r} (one of {FAMILIES})")
        if dz is not None:
            return eta_from_thicknesses(dz, p_top), params
    raise GridError(f"no {family} grid of {n} levels up to {p_top / 100:.1f} hPa within the "
                    f"configured parameter ranges ({MAX_TRIES} draws)")


# --- base state and hydrostatic columns ----------------------------------------------------


def base_state(grid: VerticalGrid, hgt, hypsometric_opt: int = 2, p00: float = BASE_P00,
               t00: float = BASE_T00, lapse: float = BASE_A, tiso: float = BASE_TISO,
               p_strat: float = BASE_P_STRAT, lapse_strat: float = BASE_A_STRAT) -> dict:
    """real.exe's base state for terrain heights ``hgt`` (column,), (column, level) arrays:

    base surface pressure p00 exp(-t00/A + sqrt((t00/A)^2 - 2 g hgt / (A R_d))), MUB = that
    - p_top, PB from the hybrid coordinate applied to it, a base temperature t00 + A ln(PB/p00)
    floored at tiso (and below p_strat, tiso + A_strat ln(PB/p_strat)), its inverse density,
    and PHB integrated up from g hgt: hypsometric_opt 1 through dPHB = -dη (c1 MUB + c2) alb,
    2 (WRF's default) through dPHB = alb PB ln(p_below / p_above)."""
    hgt = np.asarray(hgt, dtype=np.float64)
    p_surf = p00 * np.exp(-t00 / lapse + np.sqrt((t00 / lapse) ** 2 - 2.0 * c.G * hgt / (lapse * c.R_D)))
    mub = p_surf - grid.p_top
    pf, pb = grid.pressure(p_surf)
    temp = np.maximum(tiso, t00 + lapse * np.log(pb / p00))
    if p_strat > 0:
        temp = np.where(pb < p_strat, tiso + lapse_strat * np.log(pb / p_strat), temp)
    theta = temp * (p00 / pb) ** c.RCP
    alb = (c.R_D / c.P1000MB) * theta * (pb / c.P1000MB) ** c.CVPM
    if hypsometric_opt == 1:
        steps = -np.diff(grid.znw) * (grid.c1h * mub[:, None] + grid.c2h) * alb
    elif hypsometric_opt == 2:
        steps = alb * pb * np.log(pf[:, :-1] / pf[:, 1:])
    else:
        raise GridError(f"hypsometric_opt must be 1 or 2, got {hypsometric_opt}")
    phb = c.G * hgt[:, None] + np.concatenate([np.zeros((hgt.size, 1)), np.cumsum(steps, axis=1)], axis=1)
    return {"PB": pb, "PHB": phb, "MUB": mub}


def virtual_temperature(t, qv):
    """Virtual temperature (K) of air at temperature t with vapour mixing ratio qv."""
    return t * (1.0 + qv / c.EP2) / (1.0 + qv)


def hypsometric_heights(p_w, t, qv, hgt) -> np.ndarray:
    """Heights (m above sea level) of the full levels at pressures ``p_w`` of a column whose
    layers have temperature ``t`` and vapour ``qv``: z[k+1] = z[k] + R_d Tv / g ln(p[k] / p[k+1])."""
    hgt = np.asarray(hgt, dtype=np.float64)[:, None]
    steps = c.R_D * virtual_temperature(t, qv) / c.G * np.log(p_w[:, :-1] / p_w[:, 1:])
    return np.concatenate([hgt, hgt + np.cumsum(steps, axis=1)], axis=1)


def hydrostatic_column(grid: VerticalGrid, psfc, hgt, theta, qv) -> dict:
    """Pressure on full and mass levels, temperature and full-level heights of columns with
    surface pressure ``psfc``, terrain height ``hgt`` and potential temperature / vapour on the
    grid's mass levels."""
    p_w, p_m = grid.pressure(psfc)
    t = theta * (p_m / c.P1000MB) ** c.RCP
    z_w = hypsometric_heights(p_w, t, qv, np.asarray(hgt, dtype=np.float64))
    return {"p_w": p_w, "p_m": p_m, "t": t, "z_w": z_w}


# --- moving columns between grids ----------------------------------------------------------


def _intervals(x: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """Index j of the interval [x[j], x[j+1]] holding each x_new, per column (x increasing
    along axis 1, j clipped to the valid intervals)."""
    j = (x_new[:, :, None] >= x[:, None, :]).sum(axis=2) - 1
    return np.clip(j, 0, x.shape[1] - 2)


def _minmod_slopes(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Slopes of a piecewise-linear reconstruction of layer means ``values`` on layers between
    ``x``: the smaller of the two one-sided gradients where they agree in sign, else 0
    (minmod), and 0 in the end layers. The reconstruction stays between the neighbouring
    means, so monotone profiles stay monotone and positive ones positive."""
    centres = 0.5 * (x[:, 1:] + x[:, :-1])
    gradient = np.diff(values, axis=1) / np.diff(centres, axis=1)
    below, above = gradient[:, :-1], gradient[:, 1:]
    inner = np.where(below * above > 0, np.sign(below) * np.minimum(np.abs(below), np.abs(above)), 0.0)
    zero = np.zeros((values.shape[0], 1))
    return np.concatenate([zero, inner, zero], axis=1)


def remap_layers(p_w: np.ndarray, values: np.ndarray, p_w_new: np.ndarray) -> np.ndarray:
    """Layer means on the layers between pressures ``p_w_new`` of a quantity whose layer means
    between pressures ``p_w`` are ``values``, conserving its pressure-weighted (that is,
    mass-weighted) integral: each source layer is reconstructed linearly in pressure with
    limited slopes (``_minmod_slopes``) and integrated over its overlap with every new layer.
    The same layers come back unchanged (to round-off), monotone profiles stay monotone,
    positive values positive, and a new layer that overlaps only zero-valued source layers is
    exactly zero. The new layers must lie within the source's pressure range."""
    if np.any(p_w_new[:, 0] > p_w[:, 0] * (1 + 1e-12)) or np.any(p_w_new[:, -1] < p_w[:, -1] * (1 - 1e-12)):
        raise ValueError("remap_layers: the new layers reach outside the source column")
    x = p_w[:, :1] - p_w  # pressure depth above the source's lowest interface, increasing
    x_new = np.clip(p_w[:, :1] - p_w_new, 0.0, x[:, -1:])
    slopes = _minmod_slopes(x, values)
    lower, upper = x_new[:, :-1], x_new[:, 1:]
    total = np.zeros(lower.shape)
    for k in range(values.shape[1]):
        lo = np.maximum(lower, x[:, k:k + 1])
        hi = np.minimum(upper, x[:, k + 1:k + 2])
        width = np.clip(hi - lo, 0.0, None)
        centre = 0.5 * (x[:, k:k + 1] + x[:, k + 1:k + 2])
        mean = values[:, k:k + 1] + slopes[:, k:k + 1] * (0.5 * (lo + hi) - centre)
        total += np.where(width > 0, width * mean, 0.0)
    return total / (upper - lower)


def condense_excess(theta, qv, p, rh_max):
    """Vapour above ``rh_max`` times saturation moved to cloud water, for layers that
    re-gridding made supersaturated (the layer mean of a saturated profile exceeds saturation
    at the mean temperature). Returns the vapour and the cloud water: their sum is the vapour
    given, and theta is left as it is (so both column water and mass-weighted theta are
    conserved, and a monotone theta profile stays monotone)."""
    limit = rh_max * saturation_mixing_ratio(theta * (p / c.P1000MB) ** c.RCP, p)
    excess = np.maximum(qv - limit, 0.0)
    return qv - excess, excess


def overlap_max(p_w: np.ndarray, values: np.ndarray, p_w_new: np.ndarray) -> np.ndarray:
    """The largest of ``values`` (source layers between ``p_w``) over the source layers each
    new layer between ``p_w_new`` overlaps."""
    x = p_w[:, :1] - p_w
    x_new = np.clip(p_w[:, :1] - p_w_new, 0.0, x[:, -1:])
    first = _intervals(x, x_new[:, :-1])
    last = np.maximum(_intervals(x, x_new[:, 1:] - 1e-9 * (x[:, -1:] + 1.0)), first)
    out = np.full(first.shape, -np.inf)
    for k in range(values.shape[1]):
        inside = (first <= k) & (k <= last)
        out = np.where(inside, np.maximum(out, values[:, k:k + 1]), out)
    return out


def interp_log_pressure(p: np.ndarray, values: np.ndarray, p_new: np.ndarray) -> np.ndarray:
    """Point values at pressures ``p_new`` interpolated linearly in log pressure from
    ``values`` at pressures ``p`` (falling along axis 1); beyond the ends, the end value."""
    x, x_new = -np.log(p), -np.log(p_new)
    j = _intervals(x, x_new)
    x0, x1 = np.take_along_axis(x, j, axis=1), np.take_along_axis(x, j + 1, axis=1)
    v0, v1 = np.take_along_axis(values, j, axis=1), np.take_along_axis(values, j + 1, axis=1)
    w = np.clip((x_new - x0) / (x1 - x0), 0.0, 1.0)
    return v0 + w * (v1 - v0)


def layer_interfaces(p_m: np.ndarray, znu: np.ndarray, znw: np.ndarray, psfc,
                     p_top: float) -> np.ndarray:
    """Full-level pressures of a source column from its mass-level pressures: linear in eta
    between neighbouring mass levels inside, the surface pressure and p_top at the ends (what
    the hybrid coordinate gives exactly for hybrid_opt 0, to a small fraction of a layer for
    hybrid_opt 2, whose B(eta) is smooth)."""
    w = (znw[1:-1] - znu[:-1]) / (znu[1:] - znu[:-1])
    inner = p_m[:, :-1] + w * (p_m[:, 1:] - p_m[:, :-1])
    return np.concatenate([np.asarray(psfc, dtype=np.float64)[:, None], inner,
                           np.full((p_m.shape[0], 1), float(p_top))], axis=1)
