"""What a WRF run of the benchmark produced, reduced to the numbers the report compares.

For each history time: domain-mean accumulated convective and grid-scale rain (buckets
included), the fractions of columns in which the cumulus scheme is active (any RTHCUTEN != 0),
holds a deep cloud (NCA > 0) or rains (PRATEC > 0), and the domain-mean profiles of temperature,
water vapour, cloud water + ice and the convective cloud fraction; at the end, the maps of
accumulated rain. Every variable of every history file is checked for non-finite values.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from case import BUCKET_MM, START, read_json, write_json
from netCDF4 import Dataset
from runs import counters, history_files, step_times

SUMMARY_VERSION = 2
RCP = 2.0 / 7.0     # R_d / c_p of WRF
P0 = 1.0e5
PROFILES = ("t", "qv", "cloud", "cloud_cu", "p")


def _field(ds: Dataset, name: str) -> np.ndarray | None:
    if name not in ds.variables:
        return None
    return np.asarray(ds[name][0], dtype=np.float64)


def nonfinite_variables(ds: Dataset) -> dict[str, int]:
    bad = {}
    for name, var in ds.variables.items():
        if var.dtype.kind != "f":
            continue
        data = np.asarray(var[:])
        count = int(data.size - np.isfinite(data).sum())
        if count:
            bad[name] = count
    return bad


def read_time(path: Path) -> dict:
    """The numbers of one history file."""
    with Dataset(path) as ds:
        ds.set_auto_mask(False)
        bad = nonfinite_variables(ds)
        rainc = _field(ds, "RAINC") + BUCKET_MM * _field(ds, "I_RAINC")
        rainnc = _field(ds, "RAINNC") + BUCKET_MM * _field(ds, "I_RAINNC")
        rthcuten, nca, pratec = (_field(ds, n) for n in ("RTHCUTEN", "NCA", "PRATEC"))
        theta = _field(ds, "T") + 300.0
        p = _field(ds, "P") + _field(ds, "PB")
        temp = theta * (p / P0) ** RCP
        cloud = _field(ds, "QCLOUD") + _field(ds, "QICE")
        cloud_cu = sum((x for x in (_field(ds, "CLDFRA_DP"), _field(ds, "CLDFRA_SH"))
                        if x is not None), np.zeros_like(temp))
        out = {
            "minutes": float(ds["XTIME"][0]),
            "rainc": float(rainc.mean()),
            "rainnc": float(rainnc.mean()),
            "frac_convecting": float(((rthcuten != 0).any(axis=0)).mean())
            if rthcuten is not None else 0.0,
            "frac_deep": float((nca > 0).mean()) if nca is not None else 0.0,
            "frac_raining": float((pratec > 0).mean()) if pratec is not None else 0.0,
            "t": temp.mean(axis=(1, 2)),
            "qv": _field(ds, "QVAPOR").mean(axis=(1, 2)),
            "cloud": cloud.mean(axis=(1, 2)),
            "cloud_cu": cloud_cu.mean(axis=(1, 2)),
            "p": p.mean(axis=(1, 2)),
            "rainc_map": rainc.astype(np.float32),
            "rain_map": (rainc + rainnc).astype(np.float32),
            "nonfinite": bad,
        }
    return out


def summarise(folder: Path, times: list[dt.datetime], dt_s: float, radt_s: float,
              inputs_hash: str) -> dict:
    """The run's summary (cached in summary.json + summary.npz next to its history)."""
    cached = read_json(folder / "summary.json")
    if cached and cached.get("hash") == inputs_hash and cached.get("version") == SUMMARY_VERSION \
            and (folder / "summary.npz").is_file():
        with np.load(folder / "summary.npz") as npz:
            return cached | {k: npz[k] for k in npz.files}
    files = history_files(folder, times)
    rows = [read_time(p) for p in files]
    series = {k: np.array([r[k] for r in rows]) for k in
              ("minutes", "rainc", "rainnc", "frac_convecting", "frac_deep", "frac_raining")}
    arrays = series | {f"prof_{k}": np.stack([r[k] for r in rows]) for k in PROFILES}
    arrays |= {"rainc_map": rows[-1]["rainc_map"], "rain_map": rows[-1]["rain_map"]}
    nonfinite = {p.name: r["nonfinite"] for p, r in zip(files, rows) if r["nonfinite"]}
    summary = {
        "version": SUMMARY_VERSION,
        "hash": inputs_hash,
        "history_files": len(files),
        "nonfinite": nonfinite,
        "timing": step_times(folder, dt_s, radt_s),
        "counters": counters(folder),
    }
    np.savez_compressed(folder / "summary.npz", **arrays)
    write_json(folder / "summary.json", summary)
    return summary | arrays


def compare_histories(a: Path, b: Path, only_names: list[str] | None = None) -> dict:
    """Bitwise comparison of every variable of two history files (or of ``only_names``; NaN
    equal to NaN); names the variables that differ and those found in one file only."""
    differ, only = [], []
    for path in (a, b):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: not written (history or step stream file)")
    with Dataset(a) as da, Dataset(b) as db:
        da.set_auto_mask(False)
        db.set_auto_mask(False)
        names = sorted(set(da.variables) | set(db.variables))
        if only_names is not None:
            names = [n for n in names if n in only_names]
        for name in names:
            if name not in da.variables or name not in db.variables:
                only.append(name)
                continue
            x, y = np.asarray(da[name][:]), np.asarray(db[name][:])
            if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
                detail = ""
                if x.shape == y.shape and x.dtype.kind == "f":
                    diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                    detail = f"max |diff| {np.nanmax(diff):.3g}, {int((x != y).sum())} values"
                differ.append({"variable": name, "detail": detail})
    return {"identical": not differ and not only, "variables": len(names),
            "differ": differ, "only_in_one": only}


def time_of(minutes: float) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)
