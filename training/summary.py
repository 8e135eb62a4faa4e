"""A short summary of WRF history files, read through the contract reader."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from training.wrfout import open_wrfout

SECONDS_PER_DAY = 86400.0


def summarise(paths) -> dict:
    """Column counts, trigger/hold fractions and mean profiles of triggered columns per DX."""
    by_dx = defaultdict(lambda: defaultdict(list))
    for path in sorted(paths):
        ds = open_wrfout(path).load()
        group = by_dx[ds.attrs["DX"]]
        group["files"].append(str(path))
        group["DT"] = ds.attrs["DT"]
        triggered = ds["TRIGGER"].values > 0
        group["triggered"].append(triggered.ravel())
        # Held: skipped by the next cumulus call (NCA >= DT / 2), tendencies from an earlier call.
        group["held"].append((ds["NCA"].values >= 0.5 * ds.attrs["DT"]).ravel())
        group["pratec"].append(ds["PRATEC"].values.ravel())
        mask = triggered[:, None, :, :]
        for name in ("RTHCUTEN", "RQVCUTEN", "P_HYD"):
            values = np.where(mask, ds[name].values, 0.0)
            group[name].append(values.sum(axis=(0, 2, 3)))
        group["n_triggered"].append(triggered.sum())
    summary = {}
    for dx, g in sorted(by_dx.items()):
        trig = np.concatenate(g["triggered"])
        held = np.concatenate(g["held"])
        pratec = np.concatenate(g["pratec"])
        n_trig = max(int(sum(g["n_triggered"])), 1)
        summary[dx] = {
            "files": len(g["files"]),
            "DT": g["DT"],
            "columns": int(trig.size),
            "triggered_fraction": float(trig.mean()),
            "held_fraction": float(held.mean()),
            "raining_fraction": float((pratec > 0).mean()),
            "mean_rain_rate_mm_per_h": float(pratec[pratec > 0].mean() * 3600) if (pratec > 0).any() else 0.0,
            "profile_pressure_hPa": (np.sum(g["P_HYD"], axis=0) / n_trig / 100.0).tolist(),
            "heating_K_per_day": (np.sum(g["RTHCUTEN"], axis=0) / n_trig * SECONDS_PER_DAY).tolist(),
            "moistening_g_per_kg_per_day": (np.sum(g["RQVCUTEN"], axis=0) / n_trig * SECONDS_PER_DAY * 1000).tolist(),
        }
    return summary


def format_summary(summary: dict, every: int = 4) -> str:
    lines = ["DX (km)  DT (s)  files  columns  triggered  held   raining  mean rain (mm/h)"]
    for dx, s in summary.items():
        lines.append(f"{dx / 1000:7.1f}  {s['DT']:6.0f}  {s['files']:5d}  {s['columns']:7d}  "
                     f"{s['triggered_fraction']:9.1%}  {s['held_fraction']:5.1%}  "
                     f"{s['raining_fraction']:7.1%}  {s['mean_rain_rate_mm_per_h']:8.2f}")
    for dx, s in summary.items():
        lines.append("")
        lines.append(f"Mean profile of triggered columns, DX = {dx / 1000:g} km "
                     f"(every {every}th level, heating of theta and vapour tendency):")
        lines.append("  level   p (hPa)   K/day   g/kg/day")
        for k in range(0, len(s["heating_K_per_day"]), every):
            lines.append(f"  {k + 1:5d}  {s['profile_pressure_hPa'][k]:8.1f}  "
                         f"{s['heating_K_per_day'][k]:6.2f}  {s['moistening_g_per_kg_per_day'][k]:8.2f}")
    return "\n".join(lines)
