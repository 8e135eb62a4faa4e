"""``mlcu generate``: synthetic WRF runs with convective labels, the built-in default data.

Each DX case is a small "model run": the synthetic atmosphere is rebuilt every time step, the
reference convection scheme is called on cumulus steps with WRF's cumulus-driver semantics,
and history is written the way WRF writes it:

* W0AVG is updated on every call: (W0AVG * (TST - 1) + w) / TST with TST = 2 * STEPCU;
* a column whose NCA >= DT / 2 is held (its tendencies, PRATEC and RAINCV stay); every other
  column has its outputs zeroed and is recomputed;
* after each step, as WRF's advance_ppt does: RAINC += PRATEC * DT, and where NCA > 0 the
  heating/moistening tendencies are zeroed once nint(NCA / DT) <= 1, then NCA -= DT;
* history is written at the start of a step, before that step's physics, so a frame's
  cumulus fields come from the last call (up to the hold time earlier) and NCA starts at
  WRF's initial -100.

The atmosphere does not feel the tendencies (the weather is prescribed); the labels are
consistent with the state they were computed from.
"""

from __future__ import annotations

import datetime as dt_
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from emulator import constants as c
from emulator.derive import obukhov_zol
from training.synthetic import reference_scheme
from training.regrid import hybrid_grid
from training.synthetic.atmosphere import SyntheticAtmosphere, stretched_levels
from training.synthetic.wrfout_writer import write_wrfout

WRF_DATE = "%Y-%m-%d_%H:%M:%S"
HOLD_ZEROED = ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN")
CUMULUS_2D = ("PRATEC", "RAINCV", "NCA", "CUTOP", "CUBOT", "TIMEC_KF")
CUMULUS_3D = reference_scheme.OUTPUT_3D


@dataclass
class GenerateConfig:
    seed: int = 20261127
    nx: int = 32
    ny: int = 32
    n_levels: int = 44
    p_top: float = 5000.0
    etac: float = 0.2
    dx: list = field(default_factory=lambda: [3000.0, 9000.0, 25000.0])
    start: str = "2026-07-01_12:00:00"
    run_minutes: float = 60.0
    history_interval: float = 10.0  # minutes
    frames_per_outfile: int = 1
    cudt: float = 0.0  # minutes between cumulus calls; 0 = every step

    @classmethod
    def from_yaml(cls, path: Path | None, **overrides) -> "GenerateConfig":
        values = {}
        if path is not None:
            raw = yaml.safe_load(Path(path).read_text()) or {}
            unknown = set(raw) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
            values.update(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self):
        if min(self.nx, self.ny) < 4 or self.n_levels < 10:
            raise ValueError("the domain needs nx, ny >= 4 and n_levels >= 10")
        if self.run_minutes < self.history_interval or self.history_interval <= 0:
            raise ValueError("run_minutes must cover at least one history interval")
        if any(d <= 0 for d in self.dx):
            raise ValueError(f"grid spacings must be positive, got {self.dx}")
        dt_.datetime.strptime(self.start, WRF_DATE)


def time_step(dx: float, history_interval_min: float) -> float:
    """WRF's rule of thumb DT = 6 s per km of DX, lowered to a divisor of the history
    interval so that history times fall on model steps."""
    interval = int(round(history_interval_min * 60))
    limit = max(1, int(6.0 * dx / 1000.0))
    return float(max(d for d in range(1, limit + 1) if interval % d == 0))


def _columns(a):  # (k, j, i) -> (column, k)
    return a.reshape(a.shape[0], -1).T


def _grid(a, shape):  # (column, k) -> (k, j, i)
    return a.T.reshape(shape)


def run_case(cfg: GenerateConfig, dx: float, out_dir: Path, case_index: int,
             progress: bool = True) -> list[Path]:
    """Simulate one DX case and write its wrfout files; returns their paths."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, case_index]))
    dt = time_step(dx, cfg.history_interval)
    stepcu = max(1, int(round(cfg.cudt * 60.0 / dt)))
    tst = 2.0 * stepcu
    n_steps = int(round(cfg.run_minutes * 60.0 / dt))
    history_every = int(round(cfg.history_interval * 60.0 / dt))
    grid = hybrid_grid(stretched_levels(cfg.n_levels, cfg.p_top), cfg.p_top, 2, cfg.etac)
    atm = SyntheticAtmosphere(rng, cfg.nx, cfg.ny, grid, dx, cfg.run_minutes * 60.0)
    nz, shape2 = cfg.n_levels, (cfg.ny, cfg.nx)
    shape3 = (nz,) + shape2

    cu = {name: np.zeros(shape3) for name in CUMULUS_3D}
    cu.update({name: np.zeros(shape2) for name in CUMULUS_2D})
    cu["NCA"][:] = -100.0  # WRF's initial value
    cu["CUTOP"][:], cu["CUBOT"][:] = 1.0, nz + 1.0
    w0avg = np.zeros(shape3)
    rainc = np.zeros(shape2)
    start = dt_.datetime.strptime(cfg.start, WRF_DATE)
    attrs = _global_attrs(cfg, dx, dt, stepcu, grid)
    static = _static_fields(grid)
    case_dir = out_dir / f"dx{int(round(dx / 1000)):02d}km"
    case_dir.mkdir(parents=True, exist_ok=True)
    written, pending, pending_times = [], [], []

    steps = tqdm(range(n_steps + 1), desc=f"DX {dx / 1000:g} km", unit="step",
                 disable=not progress, leave=False)
    for step in steps:
        t = step * dt
        frame = None
        if step % history_every == 0:
            frame = atm.frame(t)
            fields = dict(frame.fields, **static, W0AVG=w0avg.copy(), RAINC=rainc.copy(),
                          XTIME=np.float32(t / 60.0), ITIMESTEP=np.int32(step))
            fields.update({k: v.copy() for k, v in cu.items()})
            fields["ZOL"] = _zol(frame)
            for q in ("QCLOUD", "QRAIN", "QICE", "QSNOW", "QGRAUP"):
                fields[q] = np.zeros(shape3)
            fields["XLAT"] = np.full(shape2, 10.0)
            fields["XLONG"] = np.zeros(shape2)
            pending.append(fields)
            pending_times.append((start + dt_.timedelta(seconds=t)).strftime(WRF_DATE))
            if len(pending) == cfg.frames_per_outfile or step + history_every > n_steps:
                path = case_dir / f"wrfout_d01_{pending_times[0]}"
                write_wrfout(path, pending_times, pending, attrs, cfg.start)
                written.append(path)
                pending, pending_times = [], []
        if step == n_steps:
            break
        if step % stepcu == 0:
            frame = frame or atm.frame(t)
            w0avg = (w0avg * (tst - 1.0) + 0.5 * (frame["W"][1:] + frame["W"][:-1])) / tst
            _cumulus_call(frame, w0avg, cu, dx, dt, cfg.cudt)
        # advance_ppt: accumulate rain, expire holds, count NCA down.
        rainc += cu["PRATEC"] * dt
        counting = cu["NCA"] > 0
        expiring = counting & (np.rint(cu["NCA"] / dt) <= 1)
        for name in HOLD_ZEROED:
            cu[name][:, expiring] = 0.0
        cu["NCA"][counting] -= dt
    return written


def _zol(frame):
    z1 = frame.z_mass[0]
    theta1 = frame["T"][0] + c.T0
    return obukhov_zol(z1, theta1, frame["QVAPOR"][0], frame["RHO"][0], frame["HFX"], frame["UST"])


def _cumulus_call(frame, w0avg, cu, dx, dt, cudt):
    """One cumulus step: recompute every column that is not held, in place."""
    evaluate = (cu["NCA"] < 0.5 * dt).ravel()
    idx = np.flatnonzero(evaluate)
    z_w = (frame["PH"] + frame["PHB"]) / c.G
    inputs = {
        "T": frame["T_PHY"], "QV": frame["QVAPOR"], "P": frame["P_HYD"], "PI": frame["PI_PHY"],
        "RHO": frame["RHO"], "DZ": z_w[1:] - z_w[:-1], "Z": frame.z_mass, "W0AVG": w0avg,
        "U": 0.5 * (frame["U"][:, :, 1:] + frame["U"][:, :, :-1]),
        "V": 0.5 * (frame["V"][:, 1:, :] + frame["V"][:, :-1, :]),
    }
    cols = {k: _columns(v)[idx] for k, v in inputs.items()}
    cols["HFX"] = frame["HFX"].ravel()[idx]
    cols["PBLH"] = frame["PBLH"].ravel()[idx]
    result = reference_scheme.run(cols, dx, dt, cudt)
    activated = result["KIND"] != reference_scheme.INACTIVE
    for name in CUMULUS_3D:
        flat = _columns(cu[name])
        flat[idx] = result[name]
        cu[name][...] = _grid(flat, cu[name].shape)
    for name in ("PRATEC", "CUTOP", "CUBOT", "TIMEC_KF"):
        cu[name].ravel()[idx] = result[name]
    cu["RAINCV"].ravel()[idx] = result["PRATEC"] * dt
    nca = cu["NCA"].ravel()
    nca[idx] = np.where(activated, result["NCA"], nca[idx])  # inactive columns keep NCA
    cu["NCA"][...] = nca.reshape(cu["NCA"].shape)


def _static_fields(grid):
    return {"ZNU": grid.znu, "ZNW": grid.znw, "C1H": grid.c1h, "C2H": grid.c2h, "C3H": grid.c3h,
            "C4H": grid.c4h, "C1F": grid.c1f, "C2F": grid.c2f, "C3F": grid.c3f, "C4F": grid.c4f,
            "P_TOP": np.float32(grid.p_top)}


def _global_attrs(cfg, dx, dt, stepcu, grid):
    return {
        "TITLE": " OUTPUT FROM MLCU SYNTHETIC GENERATOR (WRF HISTORY LAYOUT)",
        "START_DATE": cfg.start, "SIMULATION_START_DATE": cfg.start,
        "WEST-EAST_GRID_DIMENSION": np.int32(cfg.nx + 1),
        "SOUTH-NORTH_GRID_DIMENSION": np.int32(cfg.ny + 1),
        "BOTTOM-TOP_GRID_DIMENSION": np.int32(cfg.n_levels + 1),
        "DX": np.float32(dx), "DY": np.float32(dx), "DT": np.float32(dt),
        "CUDT": np.float32(cfg.cudt), "STEPCU": np.int32(stepcu),
        "HYBRID_OPT": np.int32(2), "ETAC": np.float32(grid.etac), "P_TOP": np.float32(grid.p_top),
        "USE_THETA_M": np.int32(0), "GRIDTYPE": "C", "MAP_PROJ": np.int32(0),
        "MAP_PROJ_CHAR": "Cartesian", "SIMULATION_INITIALIZATION_TYPE": "SYNTHETIC DATA",
        "CUMULUS_LABELS": "reference convection scheme of training.synthetic.reference_scheme",
        "SYNTHETIC_SEED": np.int32(cfg.seed),
    }


def generate(cfg: GenerateConfig, out_dir: Path, progress: bool = True) -> list[Path]:
    """Run every DX case of ``cfg`` into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    files = []
    for index, dx in enumerate(cfg.dx):
        files += run_case(cfg, float(dx), out_dir, index, progress)
    return files
