"""Weather regimes for ``mlcu augment``: physically consistent changes of a column's state.

A regime is a set of ranges, one per knob (``KNOBS``); every column draws one regime (by the
regimes' weights) and then each knob's value uniformly in that regime's range. The knobs act on
a column already on its output grid (``Column``), in this order:

1. temperature: a whole-column shift (``t_shift_k``) and a change of the lapse rate between the
   boundary-layer top and ``lapse_top_m`` (``lapse_k_km``, positive: steeper, undone over a
   layer LAPSE_RETURN times as deep above), both with the vapour following the relative
   humidity; a capping inversion at the boundary-layer top, or at ``inversion_height_m``
   above ground where drawn (``inversion_k`` over ``inversion_depth_m``, decaying above over
   1.5 km), with the vapour kept (the warm layer is dry); smooth random profiles (the
   settings ``theta_k``, ``boundary_theta_k``);
2. moisture, multiplicative so that zeros stay zero: the relative humidity of the troposphere
   scaled (``rh_scale``, fading out between 250 and 150 hPa), a dry or moist layer
   (``layer_rh_factor`` at ``layer_center_hpa``, ``layer_depth_hpa`` deep), smooth random
   factors (``qv_relative``, ``boundary_qv_relative``);
3. the boundary layer re-profiled as a mixed layer ``pbl_m`` deep (mass-weighted mean theta
   plus ``pbl_theta_k``; vapour of relative humidity ``pbl_rh_top`` at its top, else the
   layer's mean), PBLH its depth;
4. constraints: theta does not fall with height above the two lowest levels where the
   reference column's did not (and no faster where it did), and vapour stays below
   saturation wherever the reference column was not supersaturated (and below its relative
   humidity where it was).

``psfc_hpa`` (a new surface pressure: the column re-based on higher or lower terrain),
``hfx_w_m2`` (the sensible heat flux over land), ``sea_hfx_w_m2`` (the column over the sea,
XLAND 2, with this sensible heat flux), ``ust_m_s`` (the friction velocity), ``shear_m_s`` /
``shear_depth_m`` (wind added linearly up to that depth, a random direction), ``llj_m_s`` / ``llj_height_m`` (a
low-level jet) and ``w_scale`` (a factor on the resolved vertical velocity) are applied by
``training.augment`` where those fields are built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator import constants as c
from emulator.derive import saturation_mixing_ratio

# Knob: default range ([lo, hi]; None: not applied). Ranges are drawn uniformly per column.
KNOBS = {
    "t_shift_k": [0.0, 0.0],
    "lapse_k_km": [0.0, 0.0],
    "lapse_top_m": [3000.0, 6000.0],
    "inversion_k": [0.0, 0.0],
    "inversion_depth_m": [100.0, 400.0],
    "inversion_height_m": None,
    "rh_scale": [1.0, 1.0],
    "layer_rh_factor": [1.0, 1.0],
    "layer_center_hpa": [400.0, 800.0],
    "layer_depth_hpa": [80.0, 250.0],
    "pbl_m": None,
    "pbl_theta_k": [0.0, 0.0],
    "pbl_rh_top": None,
    "hfx_w_m2": None,
    "sea_hfx_w_m2": None,
    "ust_m_s": None,
    "shear_m_s": [0.0, 0.0],
    "shear_depth_m": [3000.0, 8000.0],
    "llj_m_s": [0.0, 0.0],
    "llj_height_m": [500.0, 1500.0],
    "w_scale": [1.0, 1.0],
    "psfc_hpa": None,
}
N_MODES = 4
STABLE_FROM_LEVEL = 2  # theta may fall with height only in the levels below (surface layer)
TROPOSPHERE_PA = (25000.0, 15000.0)  # moisture scaling fades out between these pressures
INVERSION_DECAY_M = 1500.0
LAPSE_RETURN = 1.5  # the lapse-rate change is undone over a layer this many times as deep


@dataclass(frozen=True)
class Regime:
    name: str
    weight: float
    ranges: dict  # knob -> (lo, hi) or None

    @classmethod
    def parse(cls, name: str, raw: dict | None) -> "Regime":
        raw = dict(raw or {})
        weight = float(raw.pop("weight", 1.0))
        unknown = set(raw) - set(KNOBS)
        if unknown:
            raise ValueError(f"regime {name}: unknown settings {sorted(unknown)} (knobs: {list(KNOBS)})")
        if weight < 0:
            raise ValueError(f"regime {name}: weight must be >= 0, got {weight}")
        ranges = {}
        for knob, default in KNOBS.items():
            value = raw.get(knob, default)
            if value is not None:
                pair = value if isinstance(value, (list, tuple)) else [value, value]
                value = [float(v) for v in pair]
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f"regime {name}: {knob} must be [lo, hi] with lo <= hi, "
                                     f"got {raw.get(knob)}")
            ranges[knob] = value
        return cls(name, weight, ranges)


def parse_regimes(raw: dict) -> list[Regime]:
    regimes = [Regime.parse(name, spec) for name, spec in (raw or {}).items()]
    if not regimes or sum(r.weight for r in regimes) <= 0:
        raise ValueError("at least one regime with a positive weight is needed")
    return regimes


def draw(rng, regimes: list[Regime], n: int) -> tuple[np.ndarray, dict]:
    """Each of ``n`` columns' regime (index into ``regimes``) and knob values ({knob: (n,)},
    NaN where the regime does not apply the knob)."""
    weights = np.array([r.weight for r in regimes])
    which = rng.choice(len(regimes), size=n, p=weights / weights.sum())
    knobs = {}
    for knob in KNOBS:
        bounds = np.array([r.ranges[knob] if r.ranges[knob] is not None else [np.nan, np.nan]
                           for r in regimes])[which]
        knobs[knob] = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * rng.uniform(size=n)
    return which, knobs


def smooth_profiles(rng, s: np.ndarray) -> np.ndarray:
    """Random profiles of unit standard deviation over the normalised depth ``s`` (column,
    level) in [0, 1]: sine modes 1..N_MODES with random phases, amplitude falling as 1/mode."""
    n = s.shape[0]
    modes = np.arange(1, N_MODES + 1)
    amplitude = rng.standard_normal((n, N_MODES, 1)) / modes[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (n, N_MODES, 1))
    waves = np.sin(np.pi * modes[None, :, None] * s[:, None, :] + phase)
    return (amplitude * waves).sum(axis=1) / np.sqrt(0.5 * np.sum(1.0 / modes**2))


@dataclass
class Column:
    """Columns on their output grid: potential temperature and vapour on mass levels,
    pressure (Pa) on mass levels, height of mass levels above ground (m, of the reference
    state) and the boundary-layer height (m)."""

    theta: np.ndarray
    qv: np.ndarray
    p: np.ndarray
    z: np.ndarray
    pblh: np.ndarray

    @property
    def temperature(self) -> np.ndarray:
        return self.theta * (self.p / c.P1000MB) ** c.RCP


def _follow_rh(qv, t_old, t_new, p):
    """Vapour that keeps its relative humidity when the temperature changes."""
    return qv * saturation_mixing_ratio(t_new, p) / saturation_mixing_ratio(t_old, p)


def _col(a):
    return np.asarray(a)[:, None]


def temperature_changes(col: Column, knobs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(temperature change with the relative humidity kept, change with the vapour kept), K."""
    z, base = col.z, _col(np.clip(col.pblh, 300.0, 3000.0))
    top = np.maximum(_col(knobs["lapse_top_m"]), base + 1000.0)
    depth = top - base
    undone = np.clip(1.0 - (z - top) / (LAPSE_RETURN * depth), 0.0, None)
    cooling = _col(knobs["lapse_k_km"]) / 1000.0 * np.where(
        z < top, np.clip(z - base, 0.0, None), depth * undone)
    moist = _col(knobs["t_shift_k"]) - cooling
    height = knobs["inversion_height_m"]
    inv_base = np.where(np.isfinite(_col(height)), _col(height), base)
    ramp = np.clip((z - inv_base) / _col(knobs["inversion_depth_m"]), 0.0, 1.0)
    above = np.clip(z - inv_base - _col(knobs["inversion_depth_m"]), 0.0, None)
    dry = _col(knobs["inversion_k"]) * ramp * np.exp(-above / INVERSION_DECAY_M)
    return moist, dry


def moisture_factor(col: Column, knobs: dict) -> np.ndarray:
    """Multiplicative change of vapour: tropospheric RH scaling times a dry or moist layer."""
    p = col.p
    troposphere = np.clip((p - TROPOSPHERE_PA[1]) / (TROPOSPHERE_PA[0] - TROPOSPHERE_PA[1]), 0.0, 1.0)
    layer = np.exp(-(((p - 100.0 * _col(knobs["layer_center_hpa"]))
                      / (50.0 * _col(knobs["layer_depth_hpa"]))) ** 2))
    return _col(knobs["rh_scale"]) ** troposphere * _col(knobs["layer_rh_factor"]) ** layer


def mixed_layer(col: Column, theta, qv, knobs: dict):
    """Theta, vapour and PBLH with the boundary layer of the columns that draw ``pbl_m``
    re-profiled as a well-mixed layer of that depth (see the module docstring)."""
    depth = knobs["pbl_m"]
    on = np.isfinite(depth)
    if not on.any():
        return theta, qv, col.pblh
    inside = (col.z < _col(np.where(on, depth, -1.0))) | (np.arange(col.z.shape[1]) == 0)
    inside &= on[:, None]
    weight = np.where(inside, np.abs(np.gradient(col.p, axis=1)), 0.0)
    mass = np.maximum(weight.sum(axis=1), 1e-30)
    theta_ml = (theta * weight).sum(axis=1) / mass + np.nan_to_num(knobs["pbl_theta_k"])
    qv_ml = (qv * weight).sum(axis=1) / mass
    # The mixed layer's top: the highest level inside it.
    top = np.where(inside, np.arange(col.z.shape[1]), 0).max(axis=1)
    p_top = np.take_along_axis(col.p, top[:, None], axis=1)[:, 0]
    qsat_top = saturation_mixing_ratio(theta_ml * (p_top / c.P1000MB) ** c.RCP, p_top)
    rh_top = knobs["pbl_rh_top"]
    qv_ml = np.where(np.isfinite(rh_top), np.nan_to_num(rh_top) * qsat_top, np.minimum(qv_ml, qsat_top))
    theta = np.where(inside, theta_ml[:, None], theta)
    qv = np.where(inside & (qv > 0), qv_ml[:, None], qv)
    return theta, qv, np.where(on, depth, col.pblh)


def keep_stable(theta, reference_theta):
    """Theta that does not fall with height above STABLE_FROM_LEVEL where the reference did
    not, nor faster than the reference where it did (an upward sweep)."""
    theta = theta.copy()
    allowed = np.minimum(np.diff(reference_theta, axis=1), 0.0)
    for k in range(STABLE_FROM_LEVEL, theta.shape[1]):
        theta[:, k] = np.maximum(theta[:, k], theta[:, k - 1] + allowed[:, k - 1])
    return theta


def cap_humidity(qv, t, p, reference_rh):
    """Vapour no more than saturated, or no more humid than the reference where it was
    supersaturated."""
    return np.minimum(qv, saturation_mixing_ratio(t, p) * np.maximum(1.0, reference_rh))


def apply(col: Column, knobs: dict, rng, common: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Theta, vapour and PBLH of the columns ``col`` changed by their knobs and the smooth
    random perturbations of ``common`` (theta_k, boundary_theta_k, qv_relative,
    boundary_qv_relative, boundary_depth_pa); see the module docstring."""
    t_ref = col.temperature
    rh_ref = col.qv / saturation_mixing_ratio(t_ref, col.p)
    log_p = np.log(col.p)
    s = (log_p[:, :1] - log_p) / (log_p[:, :1] - log_p[:, -1:])
    near_ground = np.exp(-(col.p[:, :1] - col.p) / common["boundary_depth_pa"])
    n = col.p.shape[0]

    # A re-profiled mixed layer sets the boundary-layer top the inversion and lapse change sit on.
    top = np.where(np.isfinite(knobs["pbl_m"]), knobs["pbl_m"], col.pblh)
    moist, dry = temperature_changes(Column(col.theta, col.qv, col.p, col.z, top), knobs)
    t = t_ref + moist
    qv = _follow_rh(col.qv, t_ref, t, col.p)
    exner = (col.p / c.P1000MB) ** c.RCP
    theta = (t + dry) / exner + (common["theta_k"] * smooth_profiles(rng, s)
                                 + common["boundary_theta_k"] * rng.standard_normal((n, 1)) * near_ground)
    qv = qv * moisture_factor(col, knobs) * np.exp(
        common["qv_relative"] * smooth_profiles(rng, s)
        + common["boundary_qv_relative"] * rng.standard_normal((n, 1)) * near_ground)
    theta, qv, pblh = mixed_layer(col, theta, qv, knobs)

    theta = keep_stable(theta, col.theta)
    qv = cap_humidity(qv, theta * exner, col.p, rh_ref)
    return theta, qv, pblh
