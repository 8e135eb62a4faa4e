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
* ``deep``: NCA >= DT/2 and, with TIMEC_KF in the file, NCA = TIMEC_KF - k DT for k in
  0..STEPCU: triggered at the last call (k = 0 right after a call, k = 1 after WRF's countdown
  at the end of the same step). MSKF's NCA is always its advective time NINT(TADVEC / DT) DT,
  while TIMEC_KF = max(TADVEC, its dynamic time scale): fresh columns where the dynamic one is
  longer cannot be told from held ones and are counted as held.
  A held column can never match (its NCA is at least a call's worth below TIMEC_KF - DT);
* ``held``: any other NCA >= DT/2: tendencies from an earlier call, or of unknown age when the
  file has no TIMEC_KF (add ``timec_kf`` through iofields, with kf_edrates = 1);
* ``expired``: NCA < DT/2 with zero heating and moistening but other outputs left over
  (advance_ppt zeroes only the thermodynamic tendencies when a hold expires).

Only inactive, shallow and deep columns are training samples; the others are counted. The NCA
target of a deep column is the value the call set (TIMEC_KF), before WRF's countdown. Columns
with NaN or Inf in any variable are dropped and their location recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from emulator.contract import Contract

INACTIVE, SHALLOW, DEEP, HELD, EXPIRED = "inactive", "shallow", "deep", "held", "expired"
NOT_CALLED = "not_called"
PAIRINGS = ("history", "single_call")
SAMPLE_CLASSES = (INACTIVE, SHALLOW, DEEP)  # stored, in this order of class codes 0, 1, 2
LEFTOVER_OUTPUTS = ("PRATEC", "RUCUTEN", "RVCUTEN", "CLDFRA_DP", "CLDFRA_SH", "QC_CU", "QI_CU")


@dataclass
class UnitColumns:
    """The columns of one (file, time): arrays keyed by contract name, (column, values)."""

    arrays: dict[str, np.ndarray]
    column_class: np.ndarray  # int8 codes of SAMPLE_CLASSES
    i: np.ndarray
    j: np.ndarray
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


def classify(frame: xr.Dataset, steps_per_call: int, pairing: str = "history") -> np.ndarray:
    """Class name of every column of one time (flattened south_north x west_east)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    dt = float(frame.attrs["DT"])
    nca = _flatten(frame["NCA"])[:, 0]
    thermo = (_flatten(frame["RTHCUTEN"]) != 0).any(axis=1) | (_flatten(frame["RQVCUTEN"]) != 0).any(axis=1)
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
    if "TIMEC_KF" in frame:
        lag = (_flatten(frame["TIMEC_KF"])[:, 0] - nca) / dt
        steps = np.rint(lag)
        just_called = (np.abs(lag - steps) < 1e-3) & (steps >= 0) & (steps <= steps_per_call)
        classes[held & thermo & just_called] = DEEP
    return classes


def extract(frame: xr.Dataset, contract: Contract, steps_per_call: int,
            pairing: str = "history") -> UnitColumns:
    """Training columns of one time of an opened wrfout (``open_wrfout(...).isel(Time=t)``)."""
    ny, nx = frame.sizes["south_north"], frame.sizes["west_east"]
    jj, ii = np.divmod(np.arange(ny * nx), nx)
    classes = classify(frame, steps_per_call, pairing)
    arrays = {}
    for var in contract.inputs + contract.outputs:
        if var.level == "scalar":
            arrays[var.name] = np.full((ny * nx, 1), frame.attrs[var.name], dtype=np.float32)
        else:
            arrays[var.name] = _flatten(frame[var.name])
    if pairing == "history" and "TIMEC_KF" in frame:
        # The NCA target is what the call set, before WRF's countdown at the end of the step.
        deep = classes == DEEP
        arrays["NCA"][deep] = _flatten(frame["TIMEC_KF"])[deep]
    finite = np.ones(ny * nx, dtype=bool)
    bad_vars = [[] for _ in range(ny * nx)]
    for name, values in arrays.items():
        bad = ~np.isfinite(values).all(axis=1)
        finite &= ~bad
        for col in np.flatnonzero(bad):
            bad_vars[col].append(name)
    sample = np.isin(classes, SAMPLE_CLASSES) & finite
    counts = {name: int(np.sum((classes == name) & finite)) for name in SAMPLE_CLASSES + (HELD, EXPIRED, NOT_CALLED)}
    counts["columns"] = ny * nx
    counts["dropped_nonfinite"] = int(np.sum(~finite))
    counts["kept"] = int(sample.sum())
    dropped = [{"i": int(ii[c]), "j": int(jj[c]), "variables": bad_vars[c]} for c in np.flatnonzero(~finite)]
    codes = np.array([SAMPLE_CLASSES.index(c) for c in classes[sample]], dtype=np.int8)
    return UnitColumns({k: v[sample] for k, v in arrays.items()}, codes, ii[sample], jj[sample],
                       counts, dropped)
