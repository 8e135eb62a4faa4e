"""``mlcu augment``: training columns over many vertical grids and regimes, labelled by WRF's
own MSKF.

Each input file (wrfout, or an oracle file in the same layout) gives ``copies`` output files;
each time of the input is rebuilt column by column:

1. **Grid.** One random vertical grid per output file (``regrid``): a mass level count, a
   model top p_top, an eta family (``training.regrid``: WRF-like stretched grids with random
   lowest-layer depth, stretching and maximum thickness, or smooth random eta functions;
   ``ramp`` grids are held out) and the hybrid coordinate (hybrid_opt 0, or 2 with a random
   etac). Without ``regrid`` the file's own grid is kept.
2. **Re-gridding** in pressure, conserving: the output column's pressures come from the
   hybrid coordinate applied to its surface pressure, and potential temperature and vapour are
   remapped conservatively (``regrid.remap_layers``, mass-weighted) from the source's layers;
   vapour that a new layer's mean holds above saturation (beyond the most humid source layer
   it overlaps) becomes cloud water, QCLOUD, so that column water and mass-weighted theta are
   both the source's over the pressure range both cover. Where the output reaches above the
   source's top, the source is extended by a stratosphere (temperature constant or warming
   upward at ``stratosphere.warming_k_km``, vapour the top level's times
   (p / p_top)^``stratosphere.qv_exponent``, falling upward); where its ground lies below the
   source's, by the lowest layer's air (well mixed). W, U and V are interpolated in log
   pressure (U and V on their staggered faces, at the mean pressure of the two columns they
   join; W above the source's top falls off with pressure). Perturbed states carry no QCLOUD.
3. **Regimes** (``perturb``): every column draws a regime and its knobs (``training.regimes``:
   temperature shifts with the vapour following relative humidity, lapse-rate changes,
   capping inversions, moist and dry layers, re-profiled mixed layers, terrain (a new surface
   pressure; HGT where the source column has that pressure, the base state following),
   sensible heat flux, wind shear and jets, vertical velocity), plus small smooth random
   perturbations of theta, vapour and W in every column (``theta_k``, ``qv_relative``,
   ``w_m_s``, ...), log-normal factors on HFX, UST and PBLH (``surface_log``) and one factor
   and offset on the winds per file. States stay physical: no supersaturation beyond the
   source's, theta not falling with height above the two lowest levels where the source's did
   not.
4. **Hydrostatic, WRF-consistent state**: geopotential by the hypsometric equation with
   virtual temperature from HGT; real.exe's base state (PB, PHB, MUB) for HGT; P = p - PB,
   PH = g z - PHB, RHO by WRF's equation of state, W0AVG the layer mean of W (a steady running
   mean), ZOL from HFX and UST at the lowest level (``derive.obukhov_zol``).
5. **Labels**: the file is written, its contract inputs are read back by the reader ``mlcu
   prepare`` uses, and MSKF (``training.mskf``) computes every output from exactly those
   inputs in one call with every column evaluated: ``single_call`` training data.

With ``perturb`` and ``regrid`` both off (``configs/augment_label.yaml``) a file's fields are
copied as they are and only labelled: MSKF's outputs for exactly the frame's inputs. One grid
spacing per file, log-uniform in ``dx_km`` (DT = 6 s per km), or the file's own when
``dx_km`` is null. ``holdout`` draws the grids and regimes reserved for held-out files (the
aspects named in ``holdout_aspects``); a training job never draws them.

The files are dask tasks; each appears only when complete (a rerun keeps those written),
failed inputs are named at the end, and every file is deterministic given (seed, file, copy,
holdout).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from emulator import constants as c
from emulator.contract import default_contract
from emulator.derive import density, obukhov_zol, saturation_mixing_ratio
from training import mskf, regimes, regrid
from training.columns import MSKF
from training.prepare import expand_inputs, runner
from training.settings import checked_settings
from training.wrfout import WrfoutError, open_wrfout

DT_PER_KM = 6.0  # s: WRF's rule of thumb for the time step
N_STRATOSPHERE = 8  # layers added above a source column's top
# Fields the state is rebuilt from; fields kept by a labelling copy (perturb and regrid off).
NEEDED = ("T", "QVAPOR", "P", "PB", "PH", "PHB", "W", "U", "V", "HFX", "UST", "PBLH", "XLAND",
          "ZNU", "ZNW", "P_TOP")
KEPT = NEEDED + ("Times", "P_HYD", "PI_PHY", "RHO", "W0AVG", "ZOL", "PSFC", "HGT", "MU", "MUB",
                 "C1H", "C2H", "C3H", "C4H", "C1F", "C2F", "C3F", "C4F", "DNW", "DN", "RDNW",
                 "RDN", "FNM", "FNP", "XLAT", "XLONG")
HOLDOUT_ASPECTS = ("levels", "top", "family", "regime")

DEFAULT_GRID = {
    "levels": [[30, 51], [58, 80]],  # mass level counts, inclusive ranges
    "top_hpa": [[9.0, 20.0], [30.0, 100.0]],  # model top p_top, uniform over the ranges
    "families": {"stretched": 1.0, "smooth": 1.0},  # eta families and their weights
    "hybrid_opt_2_fraction": 0.5,  # else hybrid_opt 0 (terrain-following)
    "etac": [0.1, 0.3],
    "dz_bottom_m": [25.0, 120.0],  # lowest layer in the 290 K reference atmosphere
    "stretch_surface": [1.08, 1.4],
    "stretch_upper": [1.02, 1.15],
    "max_dz_m": [600.0, 1600.0],
    "smooth_max_ratio": 1.35,
    "ramp_layers": [6, 10],
    "ramp_ratio": [2.5, 5.0],
    "ramp_max_ratio": 1.7,
}
DEFAULT_HOLDOUT_GRID = {"levels": [[52, 57]], "top_hpa": [[20.0, 30.0]], "families": {"ramp": 1.0}}
DEFAULT_STRATOSPHERE = {"warming_k_km": [0.0, 2.5], "qv_exponent": [0.05, 0.4]}


@dataclass
class AugmentConfig:
    input: list = field(default_factory=list)
    out: str | None = None
    scheduler: str = "local"  # local | synchronous | address of a dask scheduler
    workers: int | None = None  # local workers; default: all cores
    copies: int = 4
    seed: int = 0
    suffix: str | None = None  # output names <stem>_<suffix><copy>.nc; default aug / holdout
    perturb: bool = True  # regimes and the small random perturbations
    regrid: bool = True  # a random vertical grid per output file
    holdout: bool = False  # draw the reserved grids and regimes instead of the training ones
    holdout_aspects: list = field(default_factory=lambda: list(HOLDOUT_ASPECTS))
    dx_km: list | None = field(default_factory=lambda: [2.0, 30.0])  # null: the file's DX, DT
    hypsometric_opt: int = 2  # how real.exe integrates the base-state geopotential PHB
    theta_k: float = 0.8
    boundary_theta_k: float = 0.6
    qv_relative: float = 0.12
    boundary_qv_relative: float = 0.08
    boundary_depth_pa: float = 10000.0
    w_m_s: float = 0.05
    wind_scale: list = field(default_factory=lambda: [0.6, 1.4])
    wind_offset_m_s: float = 3.0
    surface_log: float = 0.3
    stratosphere: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    holdout_grid: dict = field(default_factory=dict)
    regimes: dict = field(default_factory=lambda: {"reference": {}})
    holdout_regimes: dict = field(default_factory=dict)

    def __post_init__(self):
        self.grid = {**DEFAULT_GRID, **(self.grid or {})}
        self.holdout_grid = {**DEFAULT_HOLDOUT_GRID, **(self.holdout_grid or {})}
        self.stratosphere = {**DEFAULT_STRATOSPHERE, **(self.stratosphere or {})}
        if isinstance(self.input, str):
            self.input = [self.input]
        if self.copies < 1:
            raise ValueError(f"copies must be >= 1, got {self.copies}")
        unknown = set(self.holdout_aspects) - set(HOLDOUT_ASPECTS)
        if unknown:
            raise ValueError(f"holdout_aspects: unknown {sorted(unknown)} (of {HOLDOUT_ASPECTS})")
        _check_reserved(self)

    @classmethod
    def load(cls, path=None, sets=(), **flags) -> "AugmentConfig":
        cfg = cls(**checked_settings(cls, path, sets, flags, "augment"))
        if not cfg.input or not cfg.out:
            raise ValueError("augment needs --input GLOB and --out DIR")
        return cfg

    def regime_list(self, held_out: bool) -> list[regimes.Regime]:
        return regimes.parse_regimes(self.holdout_regimes if held_out else self.regimes)

    @property
    def regime_names(self) -> list[str]:
        """Every regime, training then held out: AUGMENT_REGIME holds the index."""
        return list(self.regimes) + list(self.holdout_regimes)

    def drawn(self, aspect: str) -> bool:
        """Whether this job draws ``aspect`` from the reserved (held-out) settings."""
        return self.holdout and aspect in self.holdout_aspects


def _ranges_overlap(a: list, b: list) -> bool:
    return any(lo1 < hi2 and lo2 < hi1 for lo1, hi1 in a for lo2, hi2 in b)


def _check_reserved(cfg: AugmentConfig) -> None:
    """The held-out grids and regimes must be absent from the training ones."""
    train, held = cfg.grid, cfg.holdout_grid
    as_int_sets = lambda ranges: set().union(*(range(int(lo), int(hi) + 1) for lo, hi in ranges))
    clash = as_int_sets(train["levels"]) & as_int_sets(held["levels"])
    if clash:
        raise ValueError(f"level counts {sorted(clash)} are both in grid.levels and holdout_grid.levels")
    if _ranges_overlap(train["top_hpa"], held["top_hpa"]):
        raise ValueError(f"grid.top_hpa {train['top_hpa']} overlaps holdout_grid.top_hpa "
                         f"{held['top_hpa']}")
    for what, a, b in (("eta families", train["families"], held["families"]),
                       ("regimes", cfg.regimes, cfg.holdout_regimes)):
        if set(a) & set(b):
            raise ValueError(f"{what} {sorted(set(a) & set(b))} are both in training and held out")
    unknown = (set(train["families"]) | set(held["families"])) - set(regrid.FAMILIES)
    if unknown:
        raise ValueError(f"unknown eta families {sorted(unknown)} (of {regrid.FAMILIES})")
    regimes.parse_regimes(cfg.regimes)
    if cfg.holdout_regimes:
        regimes.parse_regimes(cfg.holdout_regimes)


# --- drawing grids -------------------------------------------------------------------------


def _pick_level_count(rng, ranges) -> int:
    counts = sorted(set().union(*(range(int(lo), int(hi) + 1) for lo, hi in ranges)))
    return int(counts[rng.integers(len(counts))])


def _pick_in_ranges(rng, ranges) -> float:
    widths = np.array([hi - lo for lo, hi in ranges], dtype=float)
    k = rng.choice(len(ranges), p=widths / widths.sum())
    return float(rng.uniform(*ranges[k]))


def _pick_weighted(rng, weights: dict) -> str:
    names = list(weights)
    w = np.array([weights[n] for n in names], dtype=float)
    return names[rng.choice(len(names), p=w / w.sum())]


def draw_grid(rng, cfg: AugmentConfig) -> regrid.VerticalGrid:
    """A random vertical grid: level count, top and eta family from the training settings
    (``grid``) or, for the aspects a held-out job draws, from ``holdout_grid``."""
    pick = lambda aspect, key: (cfg.holdout_grid if cfg.drawn(aspect) else cfg.grid)[key]
    n = _pick_level_count(rng, pick("levels", "levels"))
    p_top = 100.0 * _pick_in_ranges(rng, pick("top", "top_hpa"))
    family = _pick_weighted(rng, pick("family", "families"))
    hybrid_opt = 2 if rng.uniform() < cfg.grid["hybrid_opt_2_fraction"] else 0
    etac = float(rng.uniform(*cfg.grid["etac"])) if hybrid_opt == 2 else 0.0
    eta, params = regrid.draw_eta(rng, family, n, p_top, cfg.grid)
    return regrid.hybrid_grid(eta, p_top, hybrid_opt, etac, family, params)


def file_grid(ds: xr.Dataset, t: int) -> regrid.VerticalGrid:
    """The vertical grid stored in a wrfout dataset (its own coefficients)."""
    get = lambda name: np.asarray(ds[name].values[t], dtype=np.float64)
    guess = 0 if np.allclose(get("C3F"), get("ZNW")) else 2
    hybrid_opt = int(np.asarray(ds.attrs.get("HYBRID_OPT", guess)))
    return regrid.VerticalGrid(
        znw=get("ZNW"), znu=get("ZNU"), c1f=get("C1F"), c2f=get("C2F"), c3f=get("C3F"),
        c4f=get("C4F"), c1h=get("C1H"), c2h=get("C2H"), c3h=get("C3H"), c4h=get("C4H"),
        p_top=float(get("P_TOP")), hybrid_opt=hybrid_opt, etac=float(ds.attrs.get("ETAC", 0.0)),
        family="source")


# --- the source columns --------------------------------------------------------------------


def _columns(a: np.ndarray) -> np.ndarray:
    """(level, south_north, west_east) or (south_north, west_east) -> (column, level) / (column,)."""
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1).T if a.ndim == 3 else a.ravel()


def _layout(a: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """(column, level) -> (level, south_north, west_east); (column,) -> (south_north, west_east)."""
    return a.T.reshape(-1, ny, nx) if a.ndim == 2 else a.reshape(ny, nx)


def _to_faces(a: np.ndarray, axis: int) -> np.ndarray:
    """Mass-point values (level, south_north, west_east) on the staggered faces along ``axis``
    (2: U, 1: V): the mean of the two columns a face joins, the edge column's at the edges."""
    first, last = np.take(a, [0], axis=axis), np.take(a, [-1], axis=axis)
    n = a.shape[axis]
    inner = 0.5 * (np.take(a, range(0, n - 1), axis=axis) + np.take(a, range(1, n), axis=axis))
    return np.concatenate([first, inner, last], axis=axis)


@dataclass
class Source:
    """One time of an input file as columns ((south_north, west_east) order)."""

    ny: int
    nx: int
    p_m: np.ndarray
    p_w: np.ndarray
    theta: np.ndarray
    qv: np.ndarray
    z_w: np.ndarray
    w: np.ndarray
    u: np.ndarray  # WRF layout (level, south_north, west_east_stag)
    v: np.ndarray  # (level, south_north_stag, west_east)
    psfc: np.ndarray
    hgt: np.ndarray
    hfx: np.ndarray
    ust: np.ndarray
    pblh: np.ndarray
    xland: np.ndarray
    p_top: float

    @property
    def n(self) -> int:
        return self.ny * self.nx

    @classmethod
    def read(cls, ds: xr.Dataset, t: int, path) -> "Source":
        get = lambda name: np.asarray(ds[name].values[t], dtype=np.float64)
        ny, nx = ds.sizes["south_north"], ds.sizes["west_east"]
        p_m = _columns(get("P_HYD") if "P_HYD" in ds else get("P") + get("PB"))
        z_w = _columns(get("PH") + get("PHB")) / c.G
        grid = file_grid(ds, t)
        if "PSFC" in ds:
            psfc = _columns(get("PSFC"))
        else:  # linear in eta below the lowest mass level
            slope = (p_m[:, 1] - p_m[:, 0]) / (grid.znu[1] - grid.znu[0])
            psfc = p_m[:, 0] + slope * (grid.znw[0] - grid.znu[0])
        exact_w, exact_m = grid.pressure(psfc)
        # The file's own coordinate where it gives its pressures (hydrostatic files), else
        # interfaces between the mass levels (WRF's moist p_hyd).
        p_w = exact_w if np.max(np.abs(exact_m - p_m)) < 1.0 else regrid.layer_interfaces(
            p_m, grid.znu, grid.znw, psfc, grid.p_top)
        if np.any(np.diff(p_w, axis=1) >= 0):
            raise WrfoutError(path, "P", "pressure does not fall with height in every column")
        return cls(ny=ny, nx=nx, p_m=p_m, p_w=p_w, theta=_columns(get("T")) + c.T0,
                   qv=np.maximum(_columns(get("QVAPOR")), 0.0), z_w=z_w, w=_columns(get("W")),
                   u=get("U"), v=get("V"), psfc=psfc,
                   hgt=_columns(get("HGT")) if "HGT" in ds else z_w[:, 0],
                   hfx=_columns(get("HFX")), ust=_columns(get("UST")), pblh=_columns(get("PBLH")),
                   xland=_columns(get("XLAND")), p_top=grid.p_top)

    def terrain_height(self, psfc: np.ndarray) -> np.ndarray:
        """Height (m, >= 0) at which each column has pressure ``psfc``: log-linear between its
        full levels, below its ground the lowest layer's virtual temperature continued."""
        z = regrid.interp_log_pressure(self.p_w, self.z_w, psfc[:, None])[:, 0]
        t0 = self.theta[:, 0] * (self.p_m[:, 0] / c.P1000MB) ** c.RCP
        tv0 = regrid.virtual_temperature(t0, self.qv[:, 0])
        z = np.where(psfc > self.psfc, self.hgt - c.R_D * tv0 / c.G * np.log(psfc / self.psfc), z)
        return np.where(psfc == self.psfc, self.hgt, np.maximum(z, 0.0))

    def extended(self, p_bottom: np.ndarray, p_above: float, warming_k_km, qv_exponent):
        """Layer interfaces, theta and vapour of the columns extended down to ``p_bottom``
        (the lowest layer's air) and up to ``p_above`` (N_STRATOSPHERE layers even in log
        pressure: temperature warming upward at ``warming_k_km``, vapour the top level's times
        (p / p)^``qv_exponent``)."""
        p_src_top, p_top_m = self.p_w[:, -1:], self.p_m[:, -1:]
        edges = np.exp(np.linspace(np.log(p_src_top[:, 0]), np.log(p_above), N_STRATOSPHERE + 1, axis=1))
        mid = np.sqrt(edges[:, :-1] * edges[:, 1:])
        t_top = self.theta[:, -1:] * (p_top_m / c.P1000MB) ** c.RCP
        # T = T_top + warming (z - z_top) in an atmosphere of that temperature profile:
        # T = T_top (p_top / p) ** (R_d warming / g).
        t_ext = t_top * (p_top_m / mid) ** (c.R_D * warming_k_km[:, None] / 1000.0 / c.G)
        theta_ext = t_ext * (c.P1000MB / mid) ** c.RCP
        qv_ext = self.qv[:, -1:] * (mid / p_top_m) ** qv_exponent[:, None]
        bottom = np.maximum(p_bottom, self.psfc + 1.0)[:, None]
        p_w = np.concatenate([bottom, self.p_w, edges[:, 1:]], axis=1)
        theta = np.concatenate([self.theta[:, :1], self.theta, theta_ext], axis=1)
        qv = np.concatenate([self.qv[:, :1], self.qv, qv_ext], axis=1)
        return p_w, theta, qv


# --- one output state ----------------------------------------------------------------------


def _common(cfg: AugmentConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("theta_k", "boundary_theta_k", "qv_relative",
                                         "boundary_qv_relative", "boundary_depth_pa")}


def rebuild(src: Source, grid: regrid.VerticalGrid, cfg: AugmentConfig, rng,
            regime_list: list | None, wind: tuple) -> dict:
    """The state of the columns of ``src`` on ``grid`` (perturbed by their regimes when
    ``regime_list`` is given; ``wind``: the file's wind factor and U, V offsets), as wrfout
    fields in WRF layout (level, south_north, west_east) without Time, and AUGMENT_REGIME."""
    if regime_list is not None:
        which, knobs = regimes.draw(rng, regime_list, src.n)
    else:
        which, knobs = np.zeros(src.n, dtype=int), None
    # Terrain: a new surface pressure, the height where the source column has it.
    psfc = src.psfc.copy()
    if knobs is not None:
        psfc = np.where(np.isfinite(knobs["psfc_hpa"]), 100.0 * knobs["psfc_hpa"], psfc)
    hgt = src.terrain_height(psfc)
    col = _regridded(src, grid, psfc, cfg, rng)
    surface = {"HFX": src.hfx.copy(), "UST": src.ust.copy(), "PBLH": src.pblh.copy(),
               "XLAND": src.xland.copy()}
    if knobs is not None:
        _perturb(col, surface, src, grid, psfc, hgt, knobs, cfg, rng, wind)
    fields = _wrf_fields(grid, psfc, hgt, col, surface, cfg.hypsometric_opt)
    fields["AUGMENT_REGIME"] = which.astype(np.int32)
    out = {k: _layout(np.asarray(a), src.ny, src.nx) for k, a in fields.items()}
    out["U"], out["V"] = col["U"], col["V"]
    return out


def _regridded(src: Source, grid: regrid.VerticalGrid, psfc, cfg: AugmentConfig, rng) -> dict:
    """The columns of ``src`` moved onto ``grid`` with surface pressures ``psfc``: theta,
    vapour and cloud water conservatively (with a random stratosphere above the source's top),
    W, U and V interpolated; and the new pressures."""
    warming = rng.uniform(*cfg.stratosphere["warming_k_km"], size=src.n)
    qv_exponent = rng.uniform(*cfg.stratosphere["qv_exponent"], size=src.n)
    p_w, p_m = grid.pressure(psfc)
    ext_p, ext_theta, ext_qv = src.extended(psfc, 0.5 * min(grid.p_top, src.p_top), warming, qv_exponent)
    theta = regrid.remap_layers(ext_p, ext_theta, p_w)
    qv = regrid.remap_layers(ext_p, ext_qv, p_w)
    # No more humid than the source: the excess becomes cloud water (QCLOUD).
    ext_pm = _mid(ext_p)
    ext_rh = ext_qv / saturation_mixing_ratio(ext_theta * (ext_pm / c.P1000MB) ** c.RCP, ext_pm)
    rh_max = np.maximum(1.0, regrid.overlap_max(ext_p, ext_rh, p_w))
    qv, qc = regrid.condense_excess(theta, qv, p_m, rh_max)

    w = regrid.interp_log_pressure(src.p_w, src.w, p_w)
    w = np.where(p_w < src.p_top, w * p_w / src.p_top, w)  # fading out above the source's top
    w[:, 0] = src.w[:, 0]
    faces = lambda p, axis: _to_faces(_layout(p, src.ny, src.nx), axis)
    return {"theta": theta, "qv": qv, "qc": qc, "W": w, "p_w": p_w, "p_m": p_m,
            "U": _interp_faces(src.u, faces(src.p_m, 2), faces(p_m, 2)),
            "V": _interp_faces(src.v, faces(src.p_m, 1), faces(p_m, 1))}


def _perturb(col: dict, surface: dict, src: Source, grid, psfc, hgt, knobs: dict,
             cfg: AugmentConfig, rng, wind: tuple) -> None:
    """The regimes' and the small random perturbations applied to the re-gridded columns
    ``col`` and their surface fields, in place."""
    n, ny, nx = src.n, src.ny, src.nx
    factors = np.exp(cfg.surface_log * rng.standard_normal((3, n)))
    for name, factor in zip(("HFX", "UST", "PBLH"), factors):
        surface[name] = surface[name] * factor
    raised = hgt > src.hgt + 1.0  # raised ground is land
    sea = np.isfinite(knobs["sea_hfx_w_m2"]) & ~raised
    surface["XLAND"] = np.where(raised, 1.0, np.where(sea, 2.0, surface["XLAND"]))
    surface["HFX"] = np.where(sea, knobs["sea_hfx_w_m2"], surface["HFX"])
    surface["UST"] = np.where(np.isfinite(knobs["ust_m_s"]), knobs["ust_m_s"], surface["UST"])
    land = surface["XLAND"] == 1.0
    surface["HFX"] = np.where(np.isfinite(knobs["hfx_w_m2"]) & land, knobs["hfx_w_m2"], surface["HFX"])

    reference = regrid.hydrostatic_column(grid, psfc, hgt, col["theta"], col["qv"])
    z_agl = 0.5 * (reference["z_w"][:, 1:] + reference["z_w"][:, :-1]) - hgt[:, None]
    column = regimes.Column(theta=col["theta"], qv=col["qv"], p=col["p_m"], z=z_agl, pblh=surface["PBLH"])
    col["theta"], col["qv"], surface["PBLH"] = regimes.apply(column, knobs, rng, _common(cfg))
    col["qc"] = np.zeros_like(col["qc"])  # perturbed states carry no condensate (MSKF does not read it)

    log_p = np.log(col["p_w"])
    s = (log_p[:, :1] - log_p) / (log_p[:, :1] - log_p[:, -1:])
    noise = cfg.w_m_s * regimes.smooth_profiles(rng, s)
    col["W"][:, 1:] = knobs["w_scale"][:, None] * col["W"][:, 1:] + noise[:, 1:]
    du, dv = _wind_change(rng, knobs, z_agl)
    scale, offset_u, offset_v = wind
    col["U"] = scale * (col["U"] + _to_faces(_layout(du, ny, nx), 2)) + offset_u
    col["V"] = scale * (col["V"] + _to_faces(_layout(dv, ny, nx), 1)) + offset_v


def _wrf_fields(grid: regrid.VerticalGrid, psfc, hgt, col: dict, surface: dict,
                hypsometric_opt: int) -> dict:
    """The wrfout fields (column, level) of hydrostatic columns with theta and vapour ``col``:
    pressure from the hybrid coordinate, heights by the hypsometric equation, real.exe's base
    state and the perturbations from it, density by WRF's equation of state, W0AVG the layer
    mean of W, ZOL from the surface fluxes."""
    theta, qv = col["theta"], col["qv"]
    state = regrid.hydrostatic_column(grid, psfc, hgt, theta, qv)
    base = regrid.base_state(grid, hgt, hypsometric_opt)
    f32 = lambda a: np.asarray(a, dtype=np.float32)
    t32, qv32, w32 = f32(theta - c.T0), f32(qv), f32(col["W"])
    p32, pb32 = f32(state["p_m"] - base["PB"]), f32(base["PB"])
    p_hyd = p32 + pb32  # what the reader forms from P and PB
    rho = density(t32.astype(np.float64) + c.T0, qv32, p_hyd.astype(np.float64))
    z1 = 0.5 * (state["z_w"][:, 1] - state["z_w"][:, 0])
    zol = obukhov_zol(z1, theta[:, 0], qv[:, 0], rho[:, 0], surface["HFX"], surface["UST"])
    return {"T": t32, "QVAPOR": qv32, "QCLOUD": col["qc"], "P": p32, "PB": pb32, "P_HYD": p_hyd,
            "RHO": rho, "PH": c.G * state["z_w"] - base["PHB"], "PHB": base["PHB"], "W": w32,
            "W0AVG": 0.5 * (w32[:, 1:] + w32[:, :-1]), "MU": psfc - grid.p_top - base["MUB"],
            "MUB": base["MUB"], "PSFC": psfc, "HGT": hgt, "ZOL": zol, **surface}


def _mid(p_w):
    """Mass-level pressure of layers between full levels ``p_w``: their mean (as the hybrid
    coordinate's half levels are)."""
    return 0.5 * (p_w[:, 1:] + p_w[:, :-1])


def _interp_faces(values, p_faces, p_faces_new):
    """Staggered winds (level, ...) interpolated in log pressure between face pressure profiles."""
    shape = values.shape
    flat = lambda a: a.reshape(a.shape[0], -1).T
    moved = regrid.interp_log_pressure(flat(p_faces), flat(values), flat(p_faces_new))
    return moved.T.reshape((p_faces_new.shape[0],) + shape[1:])


def _wind_change(rng, knobs, z):
    """Wind added at mass points: shear growing linearly to ``shear_depth_m`` and a low-level
    jet, each in a random direction."""
    n = z.shape[0]
    shear_dir, jet_dir = rng.uniform(0, 2 * np.pi, (2, n))
    shear = knobs["shear_m_s"][:, None] * np.clip(z / knobs["shear_depth_m"][:, None], 0.0, 1.0)
    jet = knobs["llj_m_s"][:, None] * np.exp(-(((z - knobs["llj_height_m"][:, None]) / 400.0) ** 2))
    du = shear * np.cos(shear_dir)[:, None] + jet * np.cos(jet_dir)[:, None]
    dv = shear * np.sin(shear_dir)[:, None] + jet * np.sin(jet_dir)[:, None]
    return du, dv


# --- writing -------------------------------------------------------------------------------

# wrfout name: (units, description, stagger)
FIELDS = {
    "T": ("K", "perturbation potential temperature theta-t0", ""),
    "QVAPOR": ("kg kg-1", "Water vapor mixing ratio", ""),
    "QCLOUD": ("kg kg-1", "Cloud water mixing ratio (what re-gridding made supersaturated)", ""),
    "P": ("Pa", "perturbation pressure", ""),
    "PB": ("Pa", "BASE STATE PRESSURE", ""),
    "P_HYD": ("Pa", "hydrostatic pressure", ""),
    "RHO": ("kg m-3", "DENSITY (equation of state, moist)", ""),
    "PH": ("m2 s-2", "perturbation geopotential", "Z"),
    "PHB": ("m2 s-2", "base-state geopotential", "Z"),
    "W": ("m s-1", "z-wind component", "Z"),
    "W0AVG": ("m s-1", "AVERAGE VERTICAL VELOCITY FOR KF CUMULUS SCHEME", ""),
    "U": ("m s-1", "x-wind component", "X"),
    "V": ("m s-1", "y-wind component", "Y"),
    "MU": ("Pa", "perturbation dry air mass in column", ""),
    "MUB": ("Pa", "base state dry air mass in column", ""),
    "PSFC": ("Pa", "SFC PRESSURE", ""),
    "HGT": ("m", "Terrain Height", ""),
    "HFX": ("W m-2", "UPWARD HEAT FLUX AT THE SURFACE", ""),
    "UST": ("m s-1", "U* IN SIMILARITY THEORY", ""),
    "PBLH": ("m", "PBL HEIGHT", ""),
    "ZOL": ("", "z/L", ""),
    "XLAND": ("", "LAND MASK (1 FOR LAND, 2 FOR WATER)", ""),
    "AUGMENT_REGIME": ("", "regime of the column (index into the AUGMENT_REGIME_NAMES attribute)", ""),
}
COORDINATES = {
    "ZNU": ("eta values on half (mass) levels", "bottom_top"),
    "ZNW": ("eta values on full (w) levels", "bottom_top_stag"),
    "DNW": ("d(eta) values between full (w) levels", "bottom_top"),
    "RDNW": ("inverse d(eta) values between full (w) levels", "bottom_top"),
    "C1H": ("half levels, c1h = d bf / d eta, using znw", "bottom_top"),
    "C2H": ("half levels, c2h = (1-c1h)*(p0-pt)", "bottom_top"),
    "C3H": ("half levels, c3h = bh", "bottom_top"),
    "C4H": ("half levels, c4h = (eta-bh)*(p0-pt)+pt, using znu", "bottom_top"),
    "C1F": ("full levels, c1f = d bf / d eta, using znu", "bottom_top_stag"),
    "C2F": ("full levels, c2f = (1-c1f)*(p0-pt)", "bottom_top_stag"),
    "C3F": ("full levels, c3f = bf", "bottom_top_stag"),
    "C4F": ("full levels, c4f = (eta-bf)*(p0-pt)+pt, using znw", "bottom_top_stag"),
}
DIMS = {"": ("bottom_top", "south_north", "west_east"),
        "Z": ("bottom_top_stag", "south_north", "west_east"),
        "X": ("bottom_top", "south_north", "west_east_stag"),
        "Y": ("bottom_top", "south_north_stag", "west_east")}


def _wrf_attrs(units, description, stagger, memory_order):
    return {"FieldType": np.int32(104), "MemoryOrder": memory_order, "description": description,
            "units": units, "stagger": stagger}


def grid_dataset(times: xr.DataArray, grid: regrid.VerticalGrid, states: list[dict]) -> xr.Dataset:
    """A wrfout-like dataset of ``states`` (one per time, from ``rebuild``) on ``grid``."""
    nt = len(states)
    data = {"Times": times}
    coefficients = {"ZNU": grid.znu, "ZNW": grid.znw, "DNW": np.diff(grid.znw),
                    "RDNW": 1.0 / np.diff(grid.znw), "C1H": grid.c1h, "C2H": grid.c2h,
                    "C3H": grid.c3h, "C4H": grid.c4h, "C1F": grid.c1f, "C2F": grid.c2f,
                    "C3F": grid.c3f, "C4F": grid.c4f}
    for name, values in coefficients.items():
        description, dim = COORDINATES[name]
        data[name] = xr.Variable(("Time", dim), np.tile(values.astype(np.float32), (nt, 1)),
                                 _wrf_attrs("", description, "Z" if dim.endswith("stag") else "", "Z  "))
    data["P_TOP"] = xr.Variable(("Time",), np.full(nt, grid.p_top, np.float32),
                                _wrf_attrs("Pa", "PRESSURE TOP OF THE MODEL", "", "0  "))
    for name, (units, description, stagger) in FIELDS.items():
        stacked = np.stack([s[name] for s in states])
        if stacked.ndim == 4:
            dims, order = ("Time",) + DIMS[stagger], "XYZ"
        else:
            dims, order = ("Time", "south_north", "west_east"), "XY "
        dtype = np.int32 if name == "AUGMENT_REGIME" else np.float32
        data[name] = xr.Variable(dims, stacked.astype(dtype),
                                 _wrf_attrs(units, description, stagger, order))
    return xr.Dataset(data)


def _label(path: Path, ds: xr.Dataset, exe) -> None:
    """MSKF's outputs for every time of the written state ``path``, stored into ``ds``."""
    contract = default_contract()
    ny, nx = ds.sizes["south_north"], ds.sizes["west_east"]
    for t in range(ds.sizes["Time"]):
        frame = open_wrfout(path, contract, outputs=False, chunks=None, time=t)
        result = mskf.run_mskf(mskf.column_inputs(frame), frame.attrs["DX"], frame.attrs["DT"], exe)
        for name, value in result.items():
            # W0AVG stays the input as the file holds it: MSKF's update (W0AVG + w) / 2 leaves a
            # steady running mean (rebuilt states) unchanged; a history frame's is the frame's.
            if name == "W0AVG":
                continue
            if value.ndim == 2:
                shaped = value.reshape(ny, nx, -1).transpose(2, 0, 1)
            else:
                shaped = value.reshape(ny, nx)
            dims = ("Time",) + ("bottom_top", "south_north", "west_east")[-shaped.ndim:]
            if name not in ds.variables:
                ds[name] = (dims, np.zeros((ds.sizes["Time"],) + shaped.shape, np.float32))
            ds[name].values[t] = shaped


def _read(src: Path) -> xr.Dataset:
    try:
        ds = xr.open_dataset(src, decode_times=False, decode_coords=False).load()
    except Exception as err:
        raise WrfoutError(src, None, f"cannot be read as netCDF ({type(err).__name__}: {err})",
                          unreadable=True) from None
    missing = [n for n in NEEDED if n not in ds.variables]
    if missing:
        raise WrfoutError(src, missing[0], "missing: augment rebuilds the model state from it")
    if "Times" not in ds.variables:
        raise WrfoutError(src, "Times", "missing: not a WRF history file")
    return ds


def output_name(src: Path, copy: int, cfg: AugmentConfig) -> str:
    suffix = cfg.suffix or ("holdout" if cfg.holdout else "aug")
    return f"{src.stem}_{suffix}{copy:02d}.nc"


def augment_file(job: tuple, out_dir: Path, cfg: AugmentConfig, exe=None) -> Path:
    """Copy number ``copy`` of ``src`` (``job`` = (src, copy)): rebuilt, labelled, written
    atomically."""
    src, copy = job
    dst = out_dir / output_name(src, copy, cfg)
    if dst.exists():
        return dst
    # One stream per (seed, file, copy, held out or not): the same files in any order.
    rng = np.random.default_rng([cfg.seed, copy, int(cfg.holdout), *src.name.encode()])
    source = _read(src)
    attrs = {k: v for k, v in source.attrs.items() if not k.startswith("ORACLE_")}
    if cfg.regrid or cfg.perturb:
        grid = draw_grid(rng, cfg) if cfg.regrid else file_grid(source, 0)
        regime_list = cfg.regime_list(cfg.drawn("regime")) if cfg.perturb else None
        offset = 0 if not cfg.drawn("regime") else len(cfg.regimes)
        states = []
        for t in range(source.sizes["Time"]):
            wind = (rng.uniform(*cfg.wind_scale), *(cfg.wind_offset_m_s * rng.standard_normal(2)))
            state = rebuild(Source.read(source, t, src), grid, cfg, rng, regime_list, wind)
            state["AUGMENT_REGIME"] = state["AUGMENT_REGIME"] + offset
            states.append(state)
        times = xr.Variable(("Time",), source["Times"].values)
        ds = grid_dataset(times, grid, states)
        attrs.update(HYBRID_OPT=np.int32(grid.hybrid_opt), ETAC=np.float32(grid.etac),
                     P_TOP=np.float32(grid.p_top), HYPSOMETRIC_OPT=np.int32(cfg.hypsometric_opt),
                     AUGMENT_GRID_FAMILY=grid.family, AUGMENT_GRID_PARAMS=json.dumps(grid.params),
                     AUGMENT_REGIME_NAMES=" ".join(cfg.regime_names))
        attrs["BOTTOM-TOP_GRID_DIMENSION"] = np.int32(grid.n_levels + 1)
    else:  # a labelling copy: the frame's fields as they are
        ds = source[[n for n in KEPT if n in source.variables]]
    if cfg.dx_km:
        dx_km = float(np.exp(rng.uniform(*np.log(cfg.dx_km))))
        attrs.update(DX=np.float32(1000 * dx_km), DY=np.float32(1000 * dx_km),
                     DT=np.float32(max(1.0, round(DT_PER_KM * dx_km))))
    attrs.update(CU_PHYSICS=np.int32(MSKF), CUDT=np.float32(0), STEPCU=np.int32(1),
                 KF_EDRATES=np.int32(1), KFETA_TRIGGER=np.int32(1), ITIMESTEP=np.int32(1),
                 AUGMENT_SOURCE=src.name, AUGMENT_COPY=np.int32(copy), AUGMENT_SEED=np.int32(cfg.seed),
                 AUGMENT_PERTURB=np.int32(cfg.perturb), AUGMENT_REGRID=np.int32(cfg.regrid),
                 AUGMENT_HOLDOUT=np.int32(cfg.holdout),
                 AUGMENT_HOLDOUT_ASPECTS=" ".join(cfg.holdout_aspects) if cfg.holdout else "")
    ds.attrs = attrs
    _write_labelled(ds, dst, exe)
    return dst


def _write_labelled(ds: xr.Dataset, dst: Path, exe) -> None:
    """``ds`` labelled by MSKF and written to ``dst``, which appears only when complete."""
    encoding = {n: {"zlib": True, "complevel": 4, "shuffle": True}
                for n in ds.data_vars if ds[n].dtype.kind == "f"}
    if "Times" in ds:
        ds["Times"].encoding = {"char_dim_name": "DateStrLen"}
    # The state is read back as prepare reads it (uncompressed: it lives for a moment).
    state, part = dst.with_name(f".{dst.name}.state"), dst.with_name(f".{dst.name}.part")
    try:
        ds.to_netcdf(state, format="NETCDF4_CLASSIC", encoding={n: {"zlib": False} for n in encoding})
        _label(state, ds, exe)
        ds.to_netcdf(part, format="NETCDF4_CLASSIC", encoding=encoding)
        os.replace(part, dst)
    finally:
        state.unlink(missing_ok=True)
        part.unlink(missing_ok=True)


def augment(cfg: AugmentConfig, exe=None) -> list[Path]:
    """Every (input file, copy) of ``cfg``, as tasks on dask (``cfg.scheduler``); returns the
    written (or already present) files. Failed files are named together at the end, after
    the others are done."""
    exe = mskf.program(exe).resolve()  # fail before any work without the scheme
    out_dir = Path(cfg.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(Path(f).resolve(), k) for f in expand_inputs(cfg.input) for k in range(cfg.copies)]
    done, failed = [], []
    with runner(cfg.scheduler, cfg.workers) as run:
        results = run.map(augment_file, jobs, "augment", out_dir=out_dir, cfg=cfg, exe=exe)
        for (src, k), result in results:
            if isinstance(result, Exception):
                failed.append(f"{src} copy {k}: {result}")
            else:
                done.append(result)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} augmented files failed:\n" + "\n".join(failed))
    return sorted(done)
