"""``mlcu augment``: new training columns labelled by WRF's own MSKF.

Each input file (wrfout, or an oracle file in the same layout) gives ``copies`` new files. In
each copy every column's state is perturbed, smoothly in the vertical and column by column,
within what a forecast's errors and a model's variability cover:

* potential temperature: a random profile (a few sine modes over the column's log-pressure
  depth) of ``theta_k`` K, plus ``boundary_theta_k`` K in the lowest ``boundary_depth_pa``;
* water vapour: the same kind of profile as a relative factor (``qv_relative``, plus
  ``boundary_qv_relative`` near the ground), never above saturation where the column was not
  supersaturated;
* vertical velocity: a profile of ``w_m_s`` m/s (W0AVG follows as the mean of W over each
  layer, as on a fresh start with CUDT = 0, so the scheme's running-mean update leaves it
  unchanged);
* surface fluxes and PBL height: random factors (log-normal, ``surface_log``), ZOL scaled with
  HFX / UST**3 as the Obukhov length goes;
* horizontal wind: one factor and one offset per file (staggered U and V stay consistent);
* grid spacing: one DX per file, log-uniform in ``dx_km``, with DT = 6 s per km.

Pressure stays as it was; geopotential and density follow the new temperature and vapour by
WRF's equation of state (the hypsometric layer thickness scales with the dry inverse density).
The perturbed state is written as a wrfout-like file, its contract inputs are read back by the
same code ``mlcu prepare`` uses, and MSKF (``training.mskf``) computes every output from
exactly those inputs, one call with every column evaluated: the files are ``single_call``
training data. Files already written are skipped, and each file appears only when complete, so
a killed job is rerun as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from emulator import constants as c
from emulator.contract import default_contract
from emulator.derive import density, saturation_mixing_ratio
from training import mskf
from training.columns import MSKF
from training.prepare import expand_inputs, runner
from training.settings import checked_settings
from training.wrfout import WrfoutError, open_wrfout

N_MODES = 4
DT_PER_KM = 6.0  # s: WRF's rule of thumb for the time step
# What augment changes; what else it reads; what it changes where the file has it.
STATE = ("T", "QVAPOR", "PH", "W", "U", "V", "HFX", "UST", "PBLH")
FIXED = ("P", "PB", "PHB")
OPTIONAL_STATE = ("RHO", "W0AVG", "ZOL")


@dataclass
class AugmentConfig:
    input: list = field(default_factory=list)
    out: str | None = None
    scheduler: str = "local"  # local | synchronous | address of a dask scheduler
    workers: int | None = None  # local workers; default: all cores
    copies: int = 4
    seed: int = 0
    theta_k: float = 0.8
    boundary_theta_k: float = 0.6
    qv_relative: float = 0.12
    boundary_qv_relative: float = 0.08
    boundary_depth_pa: float = 10000.0
    w_m_s: float = 0.05
    wind_scale: list = field(default_factory=lambda: [0.6, 1.4])
    wind_offset_m_s: float = 3.0
    surface_log: float = 0.3
    dx_km: list = field(default_factory=lambda: [2.0, 30.0])

    @classmethod
    def load(cls, path=None, sets=(), **flags) -> "AugmentConfig":
        cfg = cls(**checked_settings(cls, path, sets, flags, "augment"))
        if isinstance(cfg.input, str):
            cfg.input = [cfg.input]
        if not cfg.input or not cfg.out:
            raise ValueError("augment needs --input GLOB and --out DIR")
        if cfg.copies < 1:
            raise ValueError(f"copies must be >= 1, got {cfg.copies}")
        return cfg


def _smooth_profiles(rng, s: np.ndarray) -> np.ndarray:
    """Random profiles of unit standard deviation over the normalised depth ``s`` (column,
    level) in [0, 1]: sine modes 1..N_MODES with random phases, amplitude falling as 1/mode."""
    n = s.shape[0]
    modes = np.arange(1, N_MODES + 1)
    amplitude = rng.standard_normal((n, N_MODES, 1)) / modes[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (n, N_MODES, 1))
    waves = np.sin(np.pi * modes[None, :, None] * s[:, None, :] + phase)
    return (amplitude * waves).sum(axis=1) / np.sqrt(0.5 * np.sum(1.0 / modes**2))


def perturb(raw: dict, cfg: AugmentConfig, rng) -> dict:
    """A perturbed copy of one time's state ``raw`` ({wrfout name: array in WRF layout without
    Time}); see the module docstring."""
    out = {k: np.array(v, dtype=np.float64) for k, v in raw.items()}
    nz, ny, nx = raw["T"].shape
    cols = lambda a: a.reshape(a.shape[0], -1).T  # (level, y, x) -> (column, level)
    back = lambda a: a.T.reshape(-1, ny, nx)
    p = cols(out["P"] + out["PB"])
    theta, qv = cols(out["T"] + c.T0), cols(out["QVAPOR"])
    log_p = np.log(p)
    s = (log_p[:, :1] - log_p) / (log_p[:, :1] - log_p[:, -1:])
    near_ground = np.exp(-(p[:, :1] - p) / cfg.boundary_depth_pa)
    n = p.shape[0]

    new_theta = (theta + cfg.theta_k * _smooth_profiles(rng, s)
                 + cfg.boundary_theta_k * rng.standard_normal((n, 1)) * near_ground)
    factor = np.exp(cfg.qv_relative * _smooth_profiles(rng, s)
                    + cfg.boundary_qv_relative * rng.standard_normal((n, 1)) * near_ground)
    qsat = saturation_mixing_ratio(new_theta * (p / c.P1000MB) ** c.RCP, p)
    new_qv = np.clip(qv * factor, 1e-8, np.maximum(qsat, qv))

    # Hydrostatic layers at fixed pressure: thickness ~ inverse dry density ~ theta (1 + Rv/Rd qv).
    ratio = new_theta * (1 + c.RV_OVER_RD * new_qv) / (theta * (1 + c.RV_OVER_RD * qv))
    phi = cols(out["PH"] + out["PHB"])
    steps = np.diff(phi, axis=1) * ratio
    new_phi = np.concatenate([phi[:, :1], phi[:, :1] + np.cumsum(steps, axis=1)], axis=1)
    out["PH"] = back(new_phi) - out["PHB"]
    out["T"] = back(new_theta) - c.T0
    out["QVAPOR"] = back(new_qv)
    if "RHO" in out:
        out["RHO"] = back(density(new_theta, new_qv, p))

    # Vertical velocity on the inner full levels (the ground and model top stay as they were).
    w = cols(out["W"])
    dw = cfg.w_m_s * _smooth_profiles(rng, s)
    w[:, 1:-1] += 0.5 * (dw[:, 1:] + dw[:, :-1])
    out["W"] = back(w)
    if "W0AVG" in out:
        out["W0AVG"] = back(0.5 * (w[:, 1:] + w[:, :-1]))

    surface = np.exp(cfg.surface_log * rng.standard_normal((3, ny, nx)))
    out["HFX"] = out["HFX"] * surface[0]
    out["UST"] = out["UST"] * surface[1]
    out["PBLH"] = out["PBLH"] * surface[2]
    if "ZOL" in out:
        out["ZOL"] = out["ZOL"] * surface[0] / surface[1] ** 3

    scale = rng.uniform(*cfg.wind_scale)
    out["U"] = scale * out["U"] + cfg.wind_offset_m_s * rng.standard_normal()
    out["V"] = scale * out["V"] + cfg.wind_offset_m_s * rng.standard_normal()
    return {k: v.astype(np.float32) for k, v in out.items()}


def _label(path: Path, ds: xr.Dataset, exe) -> None:
    """MSKF's outputs for every time of the written state ``path``, stored into ``ds``."""
    contract = default_contract()
    ny, nx = ds.sizes["south_north"], ds.sizes["west_east"]
    for t in range(ds.sizes["Time"]):
        frame = open_wrfout(path, contract, outputs=False, chunks=None, time=t)
        result = mskf.run_mskf(mskf.column_inputs(frame), frame.attrs["DX"], frame.attrs["DT"], exe)
        for name, value in result.items():
            if name == "W0AVG":  # the input, which the update leaves as it is
                continue
            shaped = value.reshape(ny, nx, -1).transpose(2, 0, 1) if value.ndim == 2 else value.reshape(ny, nx)
            dims = ("Time",) + ("bottom_top", "south_north", "west_east")[-shaped.ndim:]
            if name not in ds.variables:
                ds[name] = (dims, np.zeros((ds.sizes["Time"],) + shaped.shape, np.float32))
            ds[name].values[t] = shaped


def augment_file(job: tuple, out_dir: Path, cfg: AugmentConfig, exe=None) -> Path:
    """Copy number ``copy`` of ``src`` (``job`` = (src, copy)): perturbed, labelled, written
    atomically."""
    src, copy = job
    dst = out_dir / f"{src.stem}_aug{copy:02d}.nc"
    if dst.exists():
        return dst
    # One stream per (seed, file, copy): the same settings give the same files in any order.
    rng = np.random.default_rng([cfg.seed, copy, *src.name.encode()])
    try:
        ds = xr.open_dataset(src, decode_times=False, decode_coords=False).load()
    except Exception as err:
        raise WrfoutError(src, None, f"cannot be read as netCDF ({type(err).__name__}: {err})",
                          unreadable=True) from None
    missing = [n for n in STATE + FIXED if n not in ds.variables]
    if missing:
        raise WrfoutError(src, missing[0], "missing: augment perturbs the model state")
    ds = ds.drop_vars([n for n in ds.variables if n.startswith("ORACLE_")])
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("ORACLE_")}
    names = [n for n in STATE + FIXED + OPTIONAL_STATE if n in ds.variables]
    for t in range(ds.sizes["Time"]):
        new = perturb({n: ds[n].values[t] for n in names}, cfg, rng)
        for n in names:
            if n not in FIXED:
                ds[n].values[t] = new[n]
    dx_km = float(np.exp(rng.uniform(*np.log(cfg.dx_km))))
    ds.attrs.update(DX=np.float32(1000 * dx_km), DY=np.float32(1000 * dx_km),
                    DT=np.float32(max(1.0, round(DT_PER_KM * dx_km))), CU_PHYSICS=np.int32(MSKF),
                    CUDT=np.float32(0), STEPCU=np.int32(1), KF_EDRATES=np.int32(1),
                    AUGMENT_SOURCE=src.name, AUGMENT_COPY=np.int32(copy), AUGMENT_SEED=np.int32(cfg.seed))
    encoding = {n: {"zlib": True, "complevel": 4, "shuffle": True}
                for n in ds.data_vars if ds[n].dtype.kind == "f"}
    # The state is read back as prepare reads it; the labelled file appears only when complete.
    state, part = dst.with_name(f".{dst.name}.state"), dst.with_name(f".{dst.name}.part")
    try:
        ds.to_netcdf(state, format="NETCDF4_CLASSIC", encoding=encoding)
        _label(state, ds, exe)
        ds.to_netcdf(part, format="NETCDF4_CLASSIC", encoding=encoding)
        os.replace(part, dst)
    finally:
        state.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    return dst


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
        for (src, k), result in run.map(augment_file, jobs, "augment", out_dir=out_dir, cfg=cfg, exe=exe):
            if isinstance(result, Exception):
                failed.append(f"{src} copy {k}: {result}")
            else:
                done.append(result)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} augmented files failed:\n" + "\n".join(failed))
    return sorted(done)
