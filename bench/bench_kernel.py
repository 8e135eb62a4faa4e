"""Cost and agreement of the convection kernel (emulator/kernel/) on the oracle files; prints
JSON lines.

* ``kernel``: one thread, every column of every oracle file (40,960 columns, 44 levels), the
  fastest of ``--repeat`` calls per file: microseconds per column of the extension call alone
  in wall-clock time (``kernel_us_per_column``, the figure the kernel's budget of 5 us is
  about) and in this process's CPU time (``kernel_cpu_us_per_column``, fairer where other
  work shares the cores; the 1-minute load average is reported), and of ``updraft.diagnose``
  with its conversion of the inputs (``diagnose_us_per_column``), per file and over all files
  (total time / total columns);
* ``agreement`` (with ``--agreement``): the kernel against WRF's own MSKF_CPS stored in the
  oracle files, per file and pooled (``updraft.agreement``: kind of convection, CUBOT, CUTOP,
  TIMEC within one time step, the drafts' mass-exchange shapes, the initial tendencies'
  profiles); with ``--augmented DIR``, also on files made by ``mlcu augment`` or on WRF
  history frames (MSKF's outputs recomputed with ``training.mskf.run_mskf``, which needs the
  mskf_columns program; the kernel is given W0AVG as MSKF updates it before its trigger).

    OMP_NUM_THREADS=1 python bench/bench_kernel.py [--oracle DIR] [--repeat N] [--agreement]
                                                   [--augmented DIR]
"""

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulator import updraft as kf  # noqa: E402

FIELDS = ("kind", "cubot", "cutop", "timec", "timec_shallow", "UER_KF_shape_r2", "UDR_KF_shape_r2",
          "UER_KF_shallow_shape_r2", "UDR_KF_shallow_shape_r2", "DER_KF_shape_r2", "DDR_KF_shape_r2",
          "DER_KF_presence", "RQVCUTEN_fit_r2", "RQCCUTEN_fit_r2", "RTHCUTEN_fit_r2",
          "RQVCUTEN_shallow_fit_r2", "RTHCUTEN_shallow_fit_r2")


def oracle_columns(path) -> tuple[dict, dict, float]:
    """The kernel's inputs of an oracle file, MSKF's stored outputs and the time step."""
    import xarray as xr

    from training import mskf
    from training.columns import _flatten
    from training.wrfout import open_wrfout

    inputs = mskf.column_inputs(open_wrfout(path, chunks=None, time=0, outputs=False))
    ref = xr.open_dataset(path).isel(Time=0)
    inputs["DX"] = np.full(len(inputs["T_PHY"]), ref.attrs["DX"], np.float32)
    names = kf.AGREEMENT_OUTPUTS + ("NCA",)
    truth = {n: _flatten(ref[n]) if ref[n].ndim == 3 else _flatten(ref[n])[:, 0] for n in names}
    return inputs, truth, float(ref.attrs["DT"])


def best_of(fn, repeat: int) -> tuple[float, float]:
    """The fastest of ``repeat`` calls: (wall-clock seconds, this process's CPU seconds; on a
    loaded machine the CPU time is the fairer figure)."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def timing(files: list, repeat: int) -> dict:
    ext = kf._kernel()
    rows, total, columns = [], np.zeros(3), 0
    for path in files:
        inputs = oracle_columns(path)[0]
        n = len(inputs["T_PHY"])
        levels = [np.asfortranarray(inputs[k], dtype=np.float32) for k in kf.LEVEL_INPUTS]
        surface = [np.ascontiguousarray(inputs[k], dtype=np.float32) for k in kf.SURFACE_INPUTS]
        wall, cpu = best_of(lambda: ext.convection_columns(len(kf.LEVEL_FIELDS), len(kf.COLUMN_FIELDS),
                                                           *levels, *surface), repeat)
        wall_diagnose, _ = best_of(lambda: kf.diagnose(inputs), repeat)
        rows.append({"file": Path(path).name, "columns": n, "levels": levels[0].shape[1],
                     "kernel_us_per_column": round(1e6 * wall / n, 3),
                     "kernel_cpu_us_per_column": round(1e6 * cpu / n, 3),
                     "diagnose_us_per_column": round(1e6 * wall_diagnose / n, 3)})
        total += (wall, cpu, wall_diagnose)
        columns += n
    return {"bench": "kernel", "threads": int(os.environ["OMP_NUM_THREADS"]), "columns": columns,
            "repeat": repeat, "load_average_1min": round(os.getloadavg()[0], 2),
            "kernel_us_per_column": round(1e6 * total[0] / columns, 3),
            "kernel_cpu_us_per_column": round(1e6 * total[1] / columns, 3),
            "diagnose_us_per_column": round(1e6 * total[2] / columns, 3), "files": rows}


def agreement(files: list, read, label: str) -> list:
    parts = []
    for path in files:
        inputs, truth, dt = read(path)
        lev, col = kf.diagnose(inputs)
        parts.append((Path(path).name, lev, col, truth, dt, float(inputs["DX"][0]), inputs["T_PHY"].shape[1]))
    rows = []
    for name, lev, col, truth, dt, dx, nz in parts:
        r = kf.agreement(lev, col, truth, dt)
        rows.append({"bench": "agreement", "set": label, "file": name, "dx_km": round(dx / 1000, 2), "levels": nz,
                     "columns": r["columns"], **{k: round(r[k], 4) for k in FIELDS}})
    # pooled: per-column values concatenated where the grids agree, else column-weighted means
    if len({p[6] for p in parts}) == 1:
        names = kf.AGREEMENT_OUTPUTS + ("NCA",)
        r = kf.agreement(np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
                         {n: np.concatenate([p[3][n] for p in parts]) for n in names},
                         np.concatenate([np.full(len(p[2]), p[4]) for p in parts]))
        pooled = {k: round(r[k], 4) for k in FIELDS}
    else:
        w = [row["columns"] for row in rows]
        pooled = {k: round(float(np.average([row[k] for row in rows], weights=w)), 4) for k in FIELDS}
    rows.append({"bench": "agreement", "set": label, "file": "all", "columns": sum(r["columns"] for r in rows),
                 **pooled})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oracle", default=str(REPO.parent / "shared" / "data" / "mskf_oracle"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--agreement", action="store_true")
    ap.add_argument("--augmented", help="a folder of files made by mlcu augment")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.oracle, "wrfout_oracle_*.nc")))
    if not files:
        sys.exit(f"no oracle files in {args.oracle}")
    if not args.no_timing:
        print(json.dumps(timing(files, args.repeat)), flush=True)
    if args.agreement:
        for row in agreement(files, oracle_columns, "oracle"):
            print(json.dumps(row), flush=True)
    if args.augmented:
        from training.mskf import labelled_columns

        for row in agreement(sorted(glob.glob(os.path.join(args.augmented, "*.nc"))), labelled_columns,
                             "augmented"):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
