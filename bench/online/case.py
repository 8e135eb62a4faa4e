"""The reference case of the online benchmark and its ensemble of initial states.

The case is WRF's idealised radiative-convective equilibrium (em_convrad) as run for the
project's reference data (../shared/data/wrf_ideal/README.md): 5 km grid, 30 s step, 45 eta
levels (44 mass levels), WSM6, YSU, revised MM5 surface layer, RRTMG every 5 min, cumulus every
step, periodic, history every 10 min with the cumulus fields added by an iofields file.

Initial states: ideal.exe is run once per grid (it perturbs theta in the lowest levels with
random numbers seeded from the operating system, so its output is kept and reused); member 0
is its wrfinput_d01 as written, the other members replace that perturbation by one of the same
distribution drawn from a seeded generator, rebalanced hydrostatically as ideal.exe does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from netCDF4 import Dataset

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "namelist.input.in"

START = dt.datetime(2007, 6, 1, 0, 0)
# The 45 eta levels of the reference run (ZNW of ../shared/data/wrf_ideal).
ETA_LEVELS = (
    1.0000, 0.9946, 0.9875, 0.9789, 0.9685, 0.9562, 0.9413, 0.9238, 0.9037, 0.8813, 0.8545,
    0.8260, 0.7955, 0.7629, 0.7274, 0.6912, 0.6538, 0.6150, 0.5756, 0.5362, 0.4964, 0.4571,
    0.4200, 0.3860, 0.3536, 0.3232, 0.2948, 0.2678, 0.2426, 0.2191, 0.1971, 0.1762, 0.1568,
    0.1385, 0.1213, 0.1052, 0.0913, 0.0774, 0.0645, 0.0530, 0.0414, 0.0305, 0.0201, 0.0100,
    0.0000)
# History additions (stream 0): the cumulus fields, as in the reference run.
CUMULUS_FIELDS = ("rthcuten", "rqvcuten", "rqccuten", "rqrcuten", "rqicuten", "rqscuten",
                  "rucuten", "rvcuten", "nca", "pratec", "raincv", "w0avg", "cldfra_dp",
                  "cldfra_sh", "qc_cu", "qi_cu", "cutop", "cubot")
# The cumulus fields as the scheme wrote them. WRF couples the R*CUTEN tendencies with the
# column mass at the start of a step and divides by the mass at its end (calculate_phy_tend,
# phy_prep_part2), so in the history they also carry the step's dynamics.
UNCOUPLED_CUMULUS_FIELDS = tuple(f for f in CUMULUS_FIELDS if not f.endswith("cuten"))
# Stream 7 ("custep_d01_<date>" files) holds the state and the cumulus fields of every step of
# the first minute after the restart time, for the restart check.
STEP_STREAM_FIELDS = CUMULUS_FIELDS + ("t", "qvapor", "qcloud", "qrain", "u", "v", "w", "ph", "p",
                                       "mu", "hfx", "qfx", "ust", "pblh", "rainc", "rainnc")
IOFIELDS = ("+:h:0:" + ",".join(CUMULUS_FIELDS + ("p_hyd",)) + "\n"
            "+:h:7:" + ",".join(STEP_STREAM_FIELDS) + "\n")
BUCKET_MM = 10.0

# WRF constants (share/module_model_constants.F) used to rebalance a perturbed state.
T0 = 300.0
P1000MB = 1.0e5
R_D = 287.0
R_V = 461.6
CP = 7.0 * R_D / 2.0
CV = CP - R_D
CVPM = -CV / CP
RVOVRD = R_V / R_D
# Seeds of the members' perturbations: member m draws from default_rng(MEMBER_SEED + m).
MEMBER_SEED = 20070601


class CaseError(RuntimeError):
    """A problem with the case's inputs; the message names the file and the variable."""


@dataclass(frozen=True)
class Config:
    """One cumulus configuration of the comparison."""
    name: str
    cu_physics: int
    hybrid: bool = False
    emulator: bool = False
    label: str = ""


CONFIGS = (
    Config("mskf", 11, label="MSKF (cu_physics = 11)"),
    Config("mlcu", 97, emulator=True, label="emulator (cu_physics = 97)"),
    Config("hybrid", 97, hybrid=True, emulator=True, label="emulator, hybrid mode"),
    Config("none", 0, label="no cumulus scheme"),
)
CONFIG_BY_NAME = {c.name: c for c in CONFIGS}


@dataclass(frozen=True)
class Case:
    """Grid, length and ensemble of one benchmark case."""
    name: str
    nx: int                  # mass columns in x and y
    hours: float             # simulated hours
    members: int
    dx: float = 5000.0
    time_step: int = 30
    history_minutes: int = 10
    radt_minutes: int = 5
    ranks: int = 2

    @property
    def minutes(self) -> int:
        return round(self.hours * 60)

    @property
    def half_minutes(self) -> int:
        """The restart time: half the run, on a history time."""
        half = self.minutes // 2
        return half - half % self.history_minutes

    @property
    def end(self) -> dt.datetime:
        return START + dt.timedelta(minutes=self.minutes)

    def member_names(self) -> list[str]:
        return [f"m{m}" for m in range(self.members)]


def quick_case(members: int = 2, hours: float = 4.0) -> Case:
    return Case("quick", nx=32, hours=hours, members=members)


def full_case(members: int = 3, hours: float = 12.0) -> Case:
    return Case("full", nx=64, hours=hours, members=members)


# ---------------------------------------------------------------------------------------------
# namelist


def _eta_text() -> str:
    values = [f"{v:.4f}" for v in ETA_LEVELS]
    rows = [", ".join(values[i:i + 8]) for i in range(0, len(values), 8)]
    return (",\n" + " " * 28).join(rows) + ","


def cumulus_entries(config: Config, model: Path | None) -> str:
    """The &physics lines of a configuration beyond cu_physics."""
    if config.cu_physics == 0:
        return ""
    lines = [" cu_rad_feedback          = .true.,", " icloud                   = 1,"]
    if config.emulator:
        if model is None:
            raise CaseError(f"configuration {config.name} needs a model (--model)")
        text = str(model)
        if len(text) > 256:
            raise CaseError(f"mlcu_model is at most 256 characters: {text}")
        lines += [f" mlcu_model               = '{text}',",
                  " mlcu_threads             = 1,",
                  " mlcu_device              = 'cpu',",
                  " mlcu_nan_policy          = 'fatal',",
                  f" mlcu_ood_policy          = '{'fallback' if config.hybrid else 'predict'}',",
                  f" mlcu_hybrid              = {'.true.' if config.hybrid else '.false.'},"]
    return "\n".join(lines) + "\n"


def namelist(case: Case, config: Config | None, model: Path | None = None,
             start_minutes: int = 0, restart: bool = False) -> str:
    """namelist.input of a run of ``case`` with ``config`` (None: for ideal.exe), from
    ``start_minutes`` after the case start (a restarted run) to its end."""
    start = START + dt.timedelta(minutes=start_minutes)
    end = case.end
    length = int((end - start).total_seconds() // 60)
    values = {
        "run_hours": length // 60, "run_minutes": length % 60,
        "start_year": start.year, "start_month": start.month, "start_day": start.day,
        "start_hour": start.hour, "start_minute": start.minute,
        "end_year": end.year, "end_month": end.month, "end_day": end.day,
        "end_hour": end.hour, "end_minute": end.minute,
        "history_interval": case.history_minutes,
        "restart": ".true." if restart else ".false.",
        "restart_interval": case.half_minutes,
        # a restarted run keeps the intervals of this namelist (stream 7 starts at its start)
        "restart_extra": " override_restart_timers  = .true.,\n" if restart else "",
        "step_begin_m": case.half_minutes - start_minutes,
        "step_end_m": case.half_minutes - start_minutes + 1,
        "time_step": case.time_step,
        "e_we": case.nx + 1, "e_sn": case.nx + 1, "e_vert": len(ETA_LEVELS),
        "dx": f"{case.dx:.0f}", "eta_levels": _eta_text(), "radt": case.radt_minutes,
        "cu_physics": config.cu_physics if config else 0,
        "cumulus_extra": cumulus_entries(config, model) if config else "",
    }
    return TEMPLATE.read_text().format_map(values)


def history_times(case: Case, start_minutes: int = 0) -> list[dt.datetime]:
    first = start_minutes
    return [START + dt.timedelta(minutes=m)
            for m in range(first, case.minutes + 1, case.history_minutes)]


def wrf_date(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d_%H:%M:%S")


# ---------------------------------------------------------------------------------------------
# ensemble members


@dataclass
class Perturbation:
    """ideal.exe's theta perturbation as measured in its wrfinput_d01."""
    levels: int                  # perturbed mass levels from the surface
    amplitude_k: float           # full width of the uniform distribution (K)
    max_abs_k: float             # largest deviation from the level mean found
    std_k: float                 # standard deviation over the perturbed levels
    hydrostatic_residual: float  # max |PH recomputed - PH in the file| (m2 s-2), a check
    moist_residual_k: float      # max |THM - moist theta from T and QVAPOR| (K), a check


def _read(ds: Dataset, path: Path, name: str) -> np.ndarray:
    if name not in ds.variables:
        raise CaseError(f"{path}: variable {name} missing")
    return np.asarray(ds[name][0], dtype=np.float64)


def moist_theta(t: np.ndarray, qv: np.ndarray) -> np.ndarray:
    """WRF's moist perturbation theta (THM with use_theta_m = 1) from dry T and QVAPOR."""
    return (t + T0) * (1.0 + RVOVRD * qv) - T0


def hydrostatic_ph(ph_surface: np.ndarray, al: np.ndarray, alb: np.ndarray, mu: np.ndarray,
                   mub: np.ndarray, dnw: np.ndarray, c1h: np.ndarray, c2h: np.ndarray) -> np.ndarray:
    """Perturbation geopotential integrated upwards as ideal.exe rebalances it after its
    perturbation: ph(k) = ph(k-1) - dnw(k-1) [(c1h mub + c2h + c1h mu) al + c1h mu alb](k-1)."""
    nz = al.shape[0]
    ph = np.empty((nz + 1,) + al.shape[1:])
    ph[0] = ph_surface
    for k in range(1, nz + 1):
        c1, c2 = c1h[k - 1], c2h[k - 1]
        ph[k] = ph[k - 1] - dnw[k - 1] * ((c1 * mub + c2 + c1 * mu) * al[k - 1]
                                           + (c1 * mu) * alb[k - 1])
    return ph


def measure_perturbation(path: Path) -> Perturbation:
    """Depth and size of ideal.exe's perturbation: the deviation of T from its level mean (the
    unperturbed state is horizontally uniform); also checks that the file's PH and THM are
    what the rebalancing below would compute, so that the members are built the same way."""
    with Dataset(path) as ds:
        t, qv = _read(ds, path, "T"), _read(ds, path, "QVAPOR")
        dev = t - t.mean(axis=(1, 2), keepdims=True)
        spread = np.abs(dev).max(axis=(1, 2))
        levels = int(np.argmax(spread < 1e-3)) if (spread < 1e-3).any() else t.shape[0]
        if levels == 0:
            raise CaseError(f"{path}: T has no perturbation in the lowest level (not from "
                            "em_convrad's ideal.exe?)")
        perturbed = dev[:levels]
        max_abs = float(np.abs(perturbed).max())
        # The range of n uniform draws of width a is a (n - 1) / (n + 1) on average, whatever
        # the level's mean.
        n = perturbed[0].size
        ranges = perturbed.max(axis=(1, 2)) - perturbed.min(axis=(1, 2))
        amplitude = float(ranges.mean()) * (n + 1) / (n - 1)
        ph = hydrostatic_ph(_read(ds, path, "PH")[0], _read(ds, path, "AL"),
                            _read(ds, path, "ALB"), _read(ds, path, "MU"),
                            _read(ds, path, "MUB"), _read(ds, path, "DNW"),
                            _read(ds, path, "C1H"), _read(ds, path, "C2H"))
        ph_residual = float(np.abs(ph - _read(ds, path, "PH")).max())
        moist = (float(np.abs(_read(ds, path, "THM") - moist_theta(t, qv)).max())
                 if "THM" in ds.variables else 0.0)
    return Perturbation(levels, round(amplitude, 3), max_abs, float(perturbed.std()),
                        ph_residual, moist)


def perturbed_member(source: Path, dest: Path, seed: int, pert: Perturbation) -> dict:
    """A copy of ``source`` whose theta perturbation (the lowest pert.levels levels) is replaced
    by uniform noise of width pert.amplitude_k from default_rng(seed); THM, AL and PH follow as
    ideal.exe computes them. Returns what was done."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(source, tmp)
    rng = np.random.default_rng(seed)
    with Dataset(tmp, "r+") as ds:
        t = _read(ds, source, "T")
        qv = _read(ds, source, "QVAPOR")
        al, alb = _read(ds, source, "AL"), _read(ds, source, "ALB")
        n = pert.levels
        base = t[:n].mean(axis=(1, 2), keepdims=True)
        noise = pert.amplitude_k * (rng.random(t[:n].shape) - 0.5)
        t_new = t.copy()
        t_new[:n] = base + noise
        # inverse density at constant pressure scales with theta; AL is its perturbation
        alt = (al + alb) * (t_new + T0) / (t + T0)
        al_new = alt - alb
        ph_new = hydrostatic_ph(_read(ds, source, "PH")[0], al_new, alb,
                                _read(ds, source, "MU"), _read(ds, source, "MUB"),
                                _read(ds, source, "DNW"), _read(ds, source, "C1H"),
                                _read(ds, source, "C2H"))
        ds["T"][0] = t_new.astype(np.float32)
        ds["AL"][0] = al_new.astype(np.float32)
        ds["PH"][0] = ph_new.astype(np.float32)
        if "THM" in ds.variables:
            ds["THM"][0] = moist_theta(t_new, qv).astype(np.float32)
        ds.setncattr("MLCU_BENCH_MEMBER_SEED", seed)
    tmp.replace(dest)
    return {"seed": seed, "levels": n, "amplitude_k": pert.amplitude_k,
            "noise_std_k": float(noise.std()), "noise_max_abs_k": float(np.abs(noise).max())}


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None

