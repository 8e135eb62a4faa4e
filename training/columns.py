"""From one history time of one wrfout file to training columns.

**Pairing** (setting ``pairing``):

* ``history`` (WRF history files): WRF writes history at the start of a step, before that
  step's physics, so the cumulus fields of frame t come from the scheme's last call while the
  state in frame t is one step (CUDT = 0) or up to CUDT later than the state that call saw. We
  pair the state of frame t with the cumulus fields of the same frame, for the columns that
  the last call computed ("fresh"). With CUDT = 0 the inputs lag the call by one time step;
  W0AVG in the frame is exactly the value the call used (the scheme updates it, then reads
  it). Runs with CUDT = 0 are the recommended source of training data.
* ``single_call``: the file holds the outputs of one call on its own inputs with every column
  evaluated (the MSKF oracle files): every finite column is a sample, paired exactly.

**Column classes** in ``history`` mode, from NCA, DT, STEPCU and the stored cumulus fields:

* ``not_called``: the frame precedes the first cumulus call (ITIMESTEP = 0);
* ``inactive``: NCA < DT/2 and no cumulus output: evaluated by the last call, not triggered
  (NCA = -100 in columns that never convected);
* ``shallow``: NCA < DT/2 with heating or moistening: recomputed on every call;
* ``deep``: NCA >= DT/2 with heating or moistening, set by the last call (``call_lag``): MSKF
  sets NCA to its advective time NINT(TADVEC / DT) DT, which the frame's cloud base and winds
  give again, so NCA = that - k DT for k in 0..STEPCU (k = 0 right after a call, k = 1 after
  WRF's countdown at the end of the same step); with TIMEC_KF in the file (``timec_kf``
  through iofields, with kf_edrates = 1), NCA = TIMEC_KF - k DT also counts;
* ``held``: any other NCA >= DT/2: tendencies from an earlier call;
* ``expired``: NCA < DT/2 with zero heating and moistening but other outputs left over
  (advance_ppt zeroes only the thermodynamic tendencies when a hold expires).

Only inactive, shallow and deep columns are training samples; the others are counted. The NCA
target of a deep column is the value the call set, before WRF's countdown. Columns
with NaN or Inf in any variable are dropped and their location recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from emulator.contract import Contract
from emulator.model import advective_time

INACTIVE, SHALLOW, DEEP, HELD, EXPIRED = "inactive", "shallow", "deep", "held", "expired"
NOT_CALLED = "not_called"
PAIRINGS = ("history", "single_call")
SAMPLE_CLASSES = (INACTIVE, SHALLOW, DEEP)  # stored, in this order of class codes 0, 1, 2
MSKF = 11  # its cu_physics option
# The regime of a column: the sounding family of the MSKF oracle files, or the regime of
# mlcu augment's columns; with the attribute naming the codes.
REGIME_FIELDS = {"ORACLE_FAMILY": "ORACLE_FAMILY_NAMES", "AUGMENT_REGIME": "AUGMENT_REGIME_NAMES"}
# The condensate species: not model inputs, but the runtime's constraints read them.
SPECIES = ("QCLOUD", "QRAIN", "QICE", "QSNOW")
LEFTOVER_OUTPUTS = ("PRATEC", "RUCUTEN", "RVCUTEN", "CLDFRA_DP", "CLDFRA_SH", "QC_CU", "QI_CU")


@dataclass
class UnitColumns:
    """The columns of one (file, time): arrays keyed by contract name, (column, values)."""

    arrays: dict[str, np.ndarray]
    column_class: np.ndarray  # int8 codes of SAMPLE_CLASSES
    i: np.ndarray
    j: np.ndarray
    family: np.ndarray  # the column's regime (REGIME_FIELDS), else -1
    counts: dict[str, int] = field(default_factory=dict)
    dropped: list[dict] = field(default_factory=list)


def _flatten(da: xr.DataArray) -> np.ndarray:
    """(level, south_north, west_east) or (south_north, west_east) -> (column, values)."""
    level = [d for d in da.dims if d.startswith("bottom_top")]
    da = da.transpose("south_north", "west_east", *level)
    ny, nx = da.sizes["south_north"], da.sizes["west_east"]
    return np.asarray(da.values, dtype=np.float32).reshape(ny * nx, -1)


def stepcu(attrs: dict) -> int:
    """Time steps between cumulus calls, from the file's STEPCU or CUDT attribute."""
    if "STEPCU" in attrs:
        return max(1, int(np.asarray(attrs["STEPCU"]).ravel()[0]))
    if "CUDT" in attrs:
        cudt = float(np.asarray(attrs["CUDT"]).ravel()[0])
        return max(1, int(round(cudt * 60.0 / float(attrs["DT"]))))
    return 1


def updated_w0avg(w0avg: np.ndarray, w: np.ndarray, steps_per_call: int) -> np.ndarray:
    """MSKF's running mean of w after a call's update, (W0AVG (TST - 1) + w_mass) / TST with
    TST = 2 STEPCU, in float32 as the runtime computes it (``emulator.runtime.update_w0avg``)."""
    f = np.float32
    tst = f(2.0 * max(1, int(steps_per_call)))
    w_mass = f(0.5) * (w[:, :-1] + w[:, 1:])
    return ((w0avg * (tst - f(1.0)) + w_mass * f(1.0)) / tst).astype(np.float32)


def regime_names(attrs: dict) -> str:
    """The names of a file's regime codes as "code=name ...": ORACLE_FAMILY_NAMES as it is,
    AUGMENT_REGIME_NAMES (names in code order) numbered."""
    if "ORACLE_FAMILY_NAMES" in attrs:
        return str(attrs["ORACLE_FAMILY_NAMES"])
    if "AUGMENT_REGIME_NAMES" in attrs:
        return " ".join(f"{k}={n}" for k, n in enumerate(str(attrs["AUGMENT_REGIME_NAMES"]).split()))
    return ""


def convected(rthcuten: np.ndarray, rqvcuten: np.ndarray) -> np.ndarray:
    """Columns (rows of (column, level) arrays) the scheme heats or moistens."""
    return (rthcuten != 0).any(axis=1) | (rqvcuten != 0).any(axis=1)


def classify(frame: xr.Dataset, steps_per_call: int, pairing: str = "history",
             lag: np.ndarray | None = None) -> np.ndarray:
    """Class name of every column of one time (flattened south_north x west_east); ``lag``:
    ``call_lag`` of the frame when the caller has it already."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    dt = float(frame.attrs["DT"])
    nca = _flatten(frame["NCA"])[:, 0]
    thermo = convected(_flatten(frame["RTHCUTEN"]), _flatten(frame["RQVCUTEN"]))
    shallow_hold = steps_per_call * dt if steps_per_call > 1 else 0.0  # CUDT * 60
    held = nca >= 0.5 * dt
    classes = np.full(nca.shape, INACTIVE, dtype=object)
    if pairing == "single_call":
        deep = held & (np.abs(nca - shallow_hold) > 0.5 * dt)
        classes[thermo] = SHALLOW
        classes[thermo & deep] = DEEP
        return classes
    if "ITIMESTEP" in frame and int(frame["ITIMESTEP"]) == 0:
        return np.full(nca.shape, NOT_CALLED, dtype=object)
    leftover = np.zeros_like(thermo)
    for name in LEFTOVER_OUTPUTS:
        leftover |= (_flatten(frame[name]) != 0).any(axis=1)
    classes[~held & thermo] = SHALLOW
    classes[~held & ~thermo & leftover] = EXPIRED
    classes[held] = HELD
    lag = call_lag(frame, steps_per_call) if lag is None else lag
    classes[held & thermo & np.isfinite(lag)] = DEEP
    return classes


def call_lag(frame: xr.Dataset, steps_per_call: int) -> np.ndarray:
    """Steps since the call that set each column's NCA, where it can be told (else NaN).

    In files of MSKF runs (CU_PHYSICS = 11), MSKF sets a deep column's NCA to NINT(TADVEC / DT) DT, its advective time from the cloud
    base and the winds (``emulator.model.advective_time``); WRF counts it down by DT every step.
    Recomputed from the frame's own CUBOT and winds, a column called k <= steps_per_call steps
    ago has NCA = (NIC - k) DT. (The winds are a step later than those the call saw: a column
    whose NIC moved by a step since is missed, not mistaken.) With TIMEC_KF in the file,
    NCA = TIMEC_KF - k DT also identifies a column, where TADVEC is the longer time scale.
    """
    dt = float(frame.attrs["DT"])
    nca = _flatten(frame["NCA"])[:, 0].astype(np.float64)
    lag = np.full(nca.shape, np.nan)
    candidates = []
    scheme = int(np.asarray(frame.attrs.get("CU_PHYSICS", -1)).ravel()[0])
    if scheme == MSKF and {"U_PHY", "V_PHY", "P_HYD", "CUBOT"} <= set(frame.variables):
        columns = {k: torch.from_numpy(_flatten(frame[k])) for k in ("U_PHY", "V_PHY", "P_HYD")}
        columns["DX"] = torch.full((nca.size,), float(frame.attrs["DX"]))
        cloud_base = torch.from_numpy(_flatten(frame["CUBOT"])[:, 0])
        candidates.append(np.rint(advective_time(columns, cloud_base).numpy().astype(np.float64) / dt))
    if "TIMEC_KF" in frame:
        candidates.append(_flatten(frame["TIMEC_KF"])[:, 0] / dt)
    for steps in candidates:
        k = steps - nca / dt
        match = np.isnan(lag) & (np.abs(k - np.rint(k)) < 1e-3) & (k > -0.5) & (k < steps_per_call + 0.5)
        lag[match] = np.rint(k[match])
    return lag


def extract(frame: xr.Dataset, contract: Contract, steps_per_call: int,
            pairing: str = "history", share=None) -> UnitColumns:
    """Training columns of one time of an opened wrfout (``open_wrfout(...).isel(Time=t)``);
    with ``share`` (a function of the 0-based i, j of every column giving a mask), only the
    columns it keeps, and only they are counted."""
    ny, nx = frame.sizes["south_north"], frame.sizes["west_east"]
    jj, ii = np.divmod(np.arange(ny * nx), nx)
    mine = np.ones(ny * nx, dtype=bool) if share is None else share(ii, jj)
    lag = call_lag(frame, steps_per_call) if pairing == "history" else None
    classes = classify(frame, steps_per_call, pairing, lag)
    arrays = {}
    for var in contract.inputs + contract.outputs:
        if var.level == "scalar":
            arrays[var.name] = np.full((ny * nx, 1), frame.attrs[var.name], dtype=np.float32)
        else:
            arrays[var.name] = _flatten(frame[var.name])
    for name in SPECIES:  # a file without the species: none
        arrays[name] = (_flatten(frame[name]) if name in frame
                        else np.zeros((ny * nx, frame.sizes["bottom_top"]), np.float32))
    if pairing == "single_call":
        # MSKF updates W0AVG before it reads it: the value it used (that of the file where the
        # running mean is steady, as in the oracle files).
        arrays["W0AVG"] = updated_w0avg(arrays["W0AVG"], arrays["W"], steps_per_call)
    if pairing == "history":
        # The NCA target is what the call set, before WRF's countdown.
        deep = classes == DEEP
        arrays["NCA"] = arrays["NCA"].copy()
        arrays["NCA"][deep, 0] += (lag[deep] * float(frame.attrs["DT"])).astype(np.float32)
    finite = np.ones(ny * nx, dtype=bool)
    bad_vars = [[] for _ in range(ny * nx)]
    for name, values in arrays.items():
        bad = ~np.isfinite(values).all(axis=1)
        finite &= ~bad
        for col in np.flatnonzero(bad & mine):
            bad_vars[col].append(name)
    sample = np.isin(classes, SAMPLE_CLASSES) & finite & mine
    counts = {name: int(np.sum((classes == name) & finite & mine))
              for name in SAMPLE_CLASSES + (HELD, EXPIRED, NOT_CALLED)}
    counts["columns"] = int(mine.sum())
    counts["dropped_nonfinite"] = int(np.sum(~finite & mine))
    counts["kept"] = int(sample.sum())
    dropped = [{"i": int(ii[c]), "j": int(jj[c]), "variables": bad_vars[c]}
               for c in np.flatnonzero(~finite & mine)]
    codes = np.array([SAMPLE_CLASSES.index(c) for c in classes[sample]], dtype=np.int8)
    family = np.full(ny * nx, -1, np.int32)
    for name in REGIME_FIELDS:
        if name in frame:
            family = _flatten(frame[name])[:, 0].astype(np.int32)
    return UnitColumns({k: v[sample] for k, v in arrays.items()}, codes, ii[sample], jj[sample],
                       family[sample], counts, dropped)

