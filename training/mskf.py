"""Runs WRF's own MSKF scheme (``training/mskf_columns``, built from a WRF source tree by
``make mskf-columns WRF_SRC=...``) on columns given as contract inputs.

One call of ``MSKF_CPS`` as WRF makes it on a fresh start, with every column evaluated (see
``mskf_columns.F90``). The arrays go to the program through a temporary binary file in its own
layout (column index fastest); what comes back are MSKF's outputs under their wrfout names.
This is how ``mlcu augment`` labels new columns with the scheme the emulator replaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

PROGRAM_ENV = "MLCU_MSKF_COLUMNS"
DEFAULT_PROGRAM = Path(__file__).parent / "mskf_columns" / "build" / "mskf_columns"
# MSKF_CPS arguments -> contract inputs (TH is passed but not used by MSKF).
LEVEL_INPUTS = ("U_PHY", "V_PHY", None, "T_PHY", "QVAPOR", "DZ8W", "P_HYD", "RHO", "PI_PHY", "W0AVG")
SURFACE_INPUTS = ("HFX", "UST", "PBLH", "ZOL", "XLAND")
LEVEL_OUTPUTS = ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN",
                 "RUCUTEN", "RVCUTEN", "CLDFRA_DP", "CLDFRA_SH", "QC_CU", "QI_CU",
                 "UDR_KF", "DDR_KF", "UER_KF", "DER_KF", "W0AVG")
SURFACE_OUTPUTS = ("RAINCV", "PRATEC", "NCA", "CUTOP", "CUBOT", "TIMEC_KF")


class MskfError(RuntimeError):
    pass


def program(path=None) -> Path:
    """The mskf_columns executable: ``path``, else $MLCU_MSKF_COLUMNS, else the default build."""
    exe = Path(path or os.environ.get(PROGRAM_ENV) or DEFAULT_PROGRAM)
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise MskfError(f"{exe}: no mskf_columns program; build it with "
                        f"'make mskf-columns WRF_SRC=/path/to/WRF' (a WRF 4.x source tree)")
    return exe


def column_inputs(frame) -> dict:
    """The contract inputs of one time of ``open_wrfout`` as ``run_mskf`` takes them: (column,
    level) arrays, (column,) for surface fields, columns in (south_north, west_east) order."""
    from training.columns import _flatten

    out = {}
    for name, da in frame.isel(Time=0).data_vars.items():
        values = _flatten(da)
        out[name] = values[:, 0] if da.ndim == 2 else values
    return out


def run_mskf(inputs: dict, dx: float, dt: float, exe=None) -> dict:
    """MSKF's outputs for columns ``inputs`` ({contract name: (column, level) or (column,)
    array}, W on full levels), all of them evaluated in one call with grid spacing ``dx`` (m)
    and time step ``dt`` (s)."""
    return _call(inputs, dx, dt, exe, 1)[0]


def labelled_columns(path, exe=None) -> tuple[dict, dict, float]:
    """The columns of a wrfout-like file (``mlcu augment`` output or a WRF history frame) as
    the convection kernel takes them, MSKF's outputs for them (``run_mskf``) and DT. The
    kernel is given W0AVG as MSKF_CPS uses it: after its own update with the columns' W
    (STEPCU 1). ``mlcu augment`` output holds the layer mean of W already (the update changes
    nothing); history frames do not."""
    from emulator.runtime import running_w0avg
    from training.wrfout import open_wrfout

    frame = open_wrfout(path, chunks=None, time=0, outputs=False)
    dx, dt = float(frame.attrs["DX"]), float(frame.attrs["DT"])
    inputs = column_inputs(frame)
    truth = run_mskf(inputs, dx, dt, exe)
    inputs["W0AVG"] = running_w0avg(inputs["W0AVG"], inputs["W"], stepcu=1, dt=dt, cudt=0.0,
                                    adapt_step=False)
    inputs["DX"] = np.full(len(inputs["T_PHY"]), dx, np.float32)
    return inputs, truth, dt


def time_mskf(inputs: dict, dx: float, dt: float, exe=None, repeat: int = 5) -> float:
    """Wall time (s) of the fastest of ``repeat`` MSKF_CPS calls on ``inputs`` (as ``run_mskf``)."""
    stdout = _call(inputs, dx, dt, exe, repeat)[1]
    for line in stdout.splitlines():
        if line.startswith("mskf_cps_seconds"):
            return float(line.split()[1])
    raise MskfError(f"no timing in the output of mskf_columns: {stdout!r}")


def _call(inputs: dict, dx: float, dt: float, exe, repeat: int) -> tuple:
    exe = program(exe)
    n, nz = np.shape(inputs["T_PHY"])
    f32 = {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()}
    f32["TH"] = f32["T_PHY"] / f32["PI_PHY"]
    if f32["W"].shape != (n, nz + 1):
        raise MskfError(f"W has shape {f32['W'].shape}, expected {(n, nz + 1)} (full levels)")
    work = Path(tempfile.mkdtemp(prefix="mskf_"))
    try:
        src, dst = work / "in.bin", work / "out.bin"
        with open(src, "wb") as f:
            np.array([n, nz], dtype=np.int32).tofile(f)
            np.array([dx, dt], dtype=np.float32).tofile(f)
            for name in LEVEL_INPUTS:
                # Fortran (column, level) order: the column index runs fastest.
                np.asfortranarray(f32[name or "TH"]).T.tofile(f)
            np.asfortranarray(f32["W"]).T.tofile(f)
            for name in SURFACE_INPUTS:
                f32[name].reshape(n).tofile(f)
        done = subprocess.run([str(exe), str(src), str(dst), str(repeat)], capture_output=True, text=True)
        if done.returncode != 0:
            raise MskfError(f"{exe} failed (status {done.returncode}): {done.stderr.strip()[-2000:]}")
        raw = np.fromfile(dst, dtype=np.float32)
        expected = len(LEVEL_OUTPUTS) * n * nz + len(SURFACE_OUTPUTS) * n
        if raw.size != expected:
            raise MskfError(f"{exe} wrote {raw.size} values, expected {expected}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out, at = {}, 0
    for name in LEVEL_OUTPUTS:
        out[name] = raw[at:at + n * nz].reshape(nz, n).T.copy()
        at += n * nz
    for name in SURFACE_OUTPUTS:
        out[name] = raw[at:at + n].copy()
        at += n
    return out, done.stdout


SENSITIVITY_OUTPUTS = ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RUCUTEN",
                       "RVCUTEN", "PRATEC")


def sensitivity(files, perturbations, seed: int = 0, exe=None) -> dict:
    """How far MSKF's own outputs move when its input temperatures move by round-off.

    Every column of each single-call file is run as it is and with T_PHY multiplied by
    (1 + eps x N(0, 1)), value by value, for each relative ``eps`` of ``perturbations``. The
    perturbed outputs are scored against the unperturbed ones as the evaluation scores the
    emulator (trigger: any heating or moistening; R2 pooled over levels on the columns the
    unperturbed call triggers): the ceiling of what any emulator can reach against MSKF on
    these columns. Returns {eps: scores}."""
    from training.columns import convected
    from training.metrics import regression_scores, trigger_scores
    from training.wrfout import open_wrfout

    rng = np.random.default_rng(seed)
    runs, reference = [], []
    for path in files:
        frame = open_wrfout(path, chunks=None, time=0, outputs=False)
        inputs = column_inputs(frame)
        dx, dt = float(frame.attrs["DX"]), float(frame.attrs["DT"])
        runs.append((inputs, dx, dt))
        reference.append(run_mskf(inputs, dx, dt, exe))

    def fired(outs):  # as training.columns classifies columns
        return np.concatenate([convected(o["RTHCUTEN"], o["RQVCUTEN"]) for o in outs])

    def joined(outs, name):
        return np.concatenate([o[name] for o in outs])

    result = {}
    for eps in perturbations:
        moved = []
        for inputs, dx, dt in runs:
            t = inputs["T_PHY"]
            shifted = (t * (1.0 + eps * rng.standard_normal(t.shape))).astype(np.float32)
            moved.append(run_mskf(dict(inputs, T_PHY=shifted), dx, dt, exe))
        triggered = fired(reference)
        scores = {"columns": int(triggered.size), "triggered": int(triggered.sum()),
                  "trigger": trigger_scores(triggered, fired(moved))}
        for name in SENSITIVITY_OUTPUTS:
            scores[name] = regression_scores(joined(reference, name), joined(moved, name),
                                             triggered)["pooled"]
        result[f"{eps:g}"] = scores
    return result
