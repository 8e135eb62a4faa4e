"""The online benchmark's report: metrics per run and per ensemble, paired differences from
MSKF next to MSKF's own spread, the targets, plots, report.md and report.json."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from case import CONFIGS, Case, write_json

MSKF, NONE = "mskf", "none"
EMULATORS = tuple(c.name for c in CONFIGS if c.emulator)
COLORS = {"mskf": "black", "mlcu": "tab:red", "hybrid": "tab:blue", "none": "tab:gray"}
# The targets (full case).
RAINC_TOLERANCE = 0.15
TOTAL_TOLERANCE = 0.05
PROFILE_FRACTION = 0.25
FALLBACK_LIMIT = 0.01


# ---------------------------------------------------------------------------------------------
# metrics


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def end_profile(summary: dict, name: str) -> np.ndarray:
    return np.asarray(summary[f"prof_{name}"][-1], dtype=np.float64)


def fraction(counts: dict, key: str) -> float | None:
    evaluated = counts.get("evaluated", 0)
    return counts.get(key, 0) / evaluated if evaluated else None


def member_metrics(summary: dict | None, outcome, mskf: dict | None, ranks: int = 2) -> dict:
    """The numbers of one run; profile differences are taken from the MSKF run of the same
    initial state."""
    out = {"completed": bool(outcome.completed), "wall_s": round(outcome.wall_s, 1),
           "load5": getattr(outcome, "load", None), "cpu_s": getattr(outcome, "cpu_s", None),
           "reason": outcome.reason or None}
    if summary is None:
        out["completed"] = False
        return out
    nan_free = not summary["nonfinite"]
    out["completed"] = bool(outcome.completed and nan_free)
    out["nan_free"] = nan_free
    if not nan_free:
        first = next(iter(summary["nonfinite"].items()))
        out["reason"] = f"non-finite values in {first[0]}: {first[1]}"
    out["rainc_mm"] = float(summary["rainc"][-1])
    out["rainnc_mm"] = float(summary["rainnc"][-1])
    out["rain_total_mm"] = out["rainc_mm"] + out["rainnc_mm"]
    out["median_step_s"] = summary["timing"]["median_step_s"]
    steps = summary["timing"].get("steps")
    # CPU per step and rank: what the scheme costs, whatever else runs on the machine
    out["cpu_step_s"] = out["cpu_s"] / steps / ranks if out["cpu_s"] and steps else None
    out["mean_step_s"] = summary["timing"]["mean_step_s"]
    out["times_h"] = [round(float(m) / 60.0, 4) for m in summary["minutes"]]
    out["deep_fraction"] = [float(x) for x in summary["frac_deep"]]
    out["convecting_fraction"] = [float(x) for x in summary["frac_convecting"]]
    out["raining_fraction"] = [float(x) for x in summary["frac_raining"]]
    if mskf is not None:
        out["rms_t_k"] = rms(end_profile(summary, "t") - end_profile(mskf, "t"))
        out["rms_qv"] = rms(end_profile(summary, "qv") - end_profile(mskf, "qv"))
    else:
        out["rms_t_k"] = out["rms_qv"] = None
    final = summary["counters"]["final"]
    out["counters"] = final or None
    out["ood_fraction"] = fraction(final, "ood") if final else None
    out["fallback_fraction"] = fraction(final, "fallback") if final else None
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def ensemble_profile(summaries: list[dict], name: str, index: int = -1) -> np.ndarray:
    return np.mean([np.asarray(s[f"prof_{name}"][index], np.float64) for s in summaries], axis=0)


def ensemble_metrics(name: str, members: dict[str, dict], summaries: dict[str, dict | None],
                     mskf_summaries: list[dict]) -> dict:
    """Ensemble means at the top level, each member under ``members``. rms_t_k and rms_qv
    are those of the ensemble-mean profile against MSKF's ensemble-mean profile."""
    done = [m for m in members.values() if m.get("rainc_mm") is not None]
    runs = [s for s in summaries.values() if s is not None]
    out = {"completed": bool(members) and all(m["completed"] for m in members.values()),
           "members_completed": sum(m["completed"] for m in members.values()),
           "members": members}
    for key in ("rainc_mm", "rainnc_mm", "rain_total_mm", "median_step_s", "mean_step_s", "load5",
                "cpu_step_s"):
        out[key] = _mean(m.get(key) for m in done)
    for key in ("rainc_mm", "rain_total_mm"):
        values = [m[key] for m in done]
        out[f"{key}_range"] = [min(values), max(values)] if values else None
    if runs and mskf_summaries:
        out["rms_t_k"] = rms(ensemble_profile(runs, "t") - ensemble_profile(mskf_summaries, "t"))
        out["rms_qv"] = rms(ensemble_profile(runs, "qv") - ensemble_profile(mskf_summaries, "qv"))
    else:
        out["rms_t_k"] = out["rms_qv"] = None
    if done:
        out["times_h"] = done[0]["times_h"]
        for key in ("deep_fraction", "convecting_fraction", "raining_fraction"):
            out[key] = [float(x) for x in np.mean([m[key] for m in done], axis=0)]
        deep = np.array([m["deep_fraction"] for m in done])
        out["deep_fraction_range"] = [deep.min(axis=0).tolist(), deep.max(axis=0).tolist()]
    totals: dict[str, int] = {}
    for m in members.values():
        for k, v in (m.get("counters") or {}).items():
            totals[k] = totals.get(k, 0) + v
    out["counters"] = totals or None
    out["ood_fraction"] = fraction(totals, "ood") if totals else None
    out["fallback_fraction"] = fraction(totals, "fallback") if totals else None
    return out


def paired_differences(runs: dict) -> dict:
    """(configuration - MSKF) from the same initial state, and MSKF - MSKF between initial
    states: what a difference must exceed to be signal rather than the ensemble's noise."""
    mskf = runs.get(MSKF, {}).get("members", {})
    keys = ("rainc_mm", "rain_total_mm", "deep_fraction_end", "rms_t_k", "rms_qv")

    def value(m: dict, key: str):
        if key == "deep_fraction_end":
            return m["deep_fraction"][-1] if m.get("deep_fraction") else None
        return m.get(key)

    out = {}
    ok = {k: v for k, v in mskf.items() if v.get("rainc_mm") is not None}
    pairs = list(itertools.combinations(sorted(ok), 2))
    noise = {}
    for key in ("rainc_mm", "rain_total_mm", "deep_fraction_end"):
        noise[key] = [value(ok[a], key) - value(ok[b], key) for a, b in pairs]
    # profile spread: RMS over levels of MSKF - MSKF between members
    out["mskf_minus_mskf"] = noise | {"pairs": [f"{a}-{b}" for a, b in pairs]}
    for name, run in runs.items():
        if name == MSKF:
            continue
        diffs = {}
        for key in keys:
            per = {}
            for member, m in run.get("members", {}).items():
                if member not in ok or value(m, key) is None:
                    continue
                per[member] = value(m, key) if key.startswith("rms") else \
                    value(m, key) - value(ok[member], key)
            diffs[key] = per
        out[name] = diffs
    return out


def mskf_profile_noise(summaries: dict[str, dict | None]) -> dict:
    """RMS over levels of MSKF - MSKF end profiles between members (T in K, QVAPOR in kg/kg)."""
    ok = {k: v for k, v in summaries.items() if v is not None}
    out = {}
    for name, key in (("t", "rms_t_k"), ("qv", "rms_qv")):
        out[key] = [rms(end_profile(ok[a], name) - end_profile(ok[b], name))
                    for a, b in itertools.combinations(sorted(ok), 2)]
    return out


# ---------------------------------------------------------------------------------------------
# targets


@dataclass
class Target:
    name: str
    passed: bool | None      # None: could not be evaluated
    detail: str

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"{mark}  {self.name}: {self.detail}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def deep_start_index(mskf: dict) -> int | None:
    """The first history time with deep convection in the MSKF ensemble mean."""
    deep = mskf.get("deep_fraction")
    if not deep:
        return None
    hits = [i for i, x in enumerate(deep) if x > 0]
    return hits[0] if hits else None


def targets(runs: dict, restart: dict | None, history_minutes: int) -> list[Target]:
    out: list[Target] = []
    failed = [f"{name}/{member}" for name, run in runs.items()
              for member, m in run.get("members", {}).items() if not m["completed"]]
    out.append(Target("every run completed, no NaN in any history field", not failed,
                      "all runs complete" if not failed else "not complete: " + ", ".join(failed)))
    mskf = runs.get(MSKF, {})
    for emu in EMULATORS:
        run = runs.get(emu)
        if not run or mskf.get("rainc_mm") is None or run.get("rainc_mm") is None:
            out.append(Target(f"{emu}: rain", None, "no completed runs to compare"))
            continue
        for key, tol, label in (("rainc_mm", RAINC_TOLERANCE, "RAINC"),
                                ("rain_total_mm", TOTAL_TOLERANCE, "RAINC+RAINNC")):
            lo, hi = mskf[f"{key}_range"]
            value, ref = run[key], mskf[key]
            rel = 0.0 if value == ref else (value - ref) / ref if ref else math.inf
            ok = lo <= value <= hi and abs(rel) <= tol
            out.append(Target(
                f"{emu}: ensemble-mean {label} at the end within the MSKF range and {tol:.0%} "
                f"of its mean", ok,
                f"{value:.4f} mm vs MSKF {ref:.4f} mm (range {lo:.4f}..{hi:.4f}), "
                f"{100 * rel:+.1f} %"))
        start = deep_start_index(mskf)
        if start is None:
            out.append(Target(f"{emu}: deep fraction within the MSKF range every hour", None,
                              "MSKF has no deep convection in this run"))
        else:
            per_hour = 60 // history_minutes
            lo, hi = (np.asarray(x) for x in mskf["deep_fraction_range"])
            mean = np.asarray(run["deep_fraction"])
            first_hour = -(-start // per_hour) * per_hour
            checks = list(range(first_hour, len(mean), per_hour))
            bad = [i for i in checks if not lo[i] <= mean[i] <= hi[i]]
            hours = [run["times_h"][i] for i in bad]
            out.append(Target(
                f"{emu}: ensemble-mean deep fraction within the MSKF range every hour after deep "
                f"convection starts ({run['times_h'][start]:.2f} h)", not bad and bool(checks),
                f"{len(checks) - len(bad)}/{len(checks)} hours inside"
                + (f"; outside at {', '.join(f'{h:g} h' for h in hours)}" if bad else "")))
        none = runs.get(NONE, {})
        for key, unit in (("rms_t_k", "K"), ("rms_qv", "kg/kg")):
            scale = none.get(key)
            value = run.get(key)
            if scale is None or value is None:
                out.append(Target(f"{emu}: {key}", None, "no no-cumulus run to scale with"))
                continue
            ok = value <= PROFILE_FRACTION * scale
            out.append(Target(
                f"{emu}: ensemble-mean {'T' if key == 'rms_t_k' else 'QVAPOR'} profile at the end "
                f"within {PROFILE_FRACTION:.0%} of MSKF - none (RMS over levels)", ok,
                f"{value:.3g} {unit} vs MSKF - none {scale:.3g} {unit} "
                f"(ratio {value / scale if scale else math.inf:.2f})"))
        step, ref = run.get("median_step_s"), mskf.get("median_step_s")
        if step is None or ref is None:
            out.append(Target(f"{emu}: median plain step", None, "no timing"))
        else:
            loads = (run.get("load5"), mskf.get("load5"))
            load = "" if None in loads else f"; load averages {loads[0]:.1f} and {loads[1]:.1f}"
            cpus = (run.get("cpu_step_s"), mskf.get("cpu_step_s"))
            if None not in cpus:
                load += f"; CPU per step and rank {cpus[0]:.4f} s vs {cpus[1]:.4f} s"
            out.append(Target(f"{emu}: median plain step no slower than MSKF's", step <= ref,
                              f"{step:.4f} s vs MSKF {ref:.4f} s ({step / ref:.2f}x{load})"))
    hybrid = runs.get("hybrid", {})
    fb = hybrid.get("fallback_fraction")
    out.append(Target(f"hybrid: falls back to MSKF on < {FALLBACK_LIMIT:.0%} of the columns "
                      "evaluated", None if fb is None else fb < FALLBACK_LIMIT,
                      f"fallback fraction {_pct(fb)}"))
    if restart is not None:
        out.append(Target("restart: the emulator run restarted from its half-time restart file "
                          "is bit for bit the run itself (or differs only as WRF's own restart "
                          "does)", restart.get("identical"), restart.get("verdict", "")))
    return out


# ---------------------------------------------------------------------------------------------
# plots


def plots(out: Path, case: Case, summaries: dict[str, dict[str, dict | None]]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def runs_of(name):
        return [s for s in summaries.get(name, {}).values() if s is not None]

    def hours(s):
        return np.asarray(s["minutes"]) / 60.0

    def series(ax, key, scale=1.0):
        for name, runs in ((n, runs_of(n)) for n in summaries):
            for s in runs:
                ax.plot(hours(s), scale * np.asarray(s[key]), color=COLORS[name], lw=0.6, alpha=0.4)
            if runs:
                mean = np.mean([scale * np.asarray(s[key]) for s in runs], axis=0)
                ax.plot(hours(runs[0]), mean, color=COLORS[name], lw=2, label=name)
        ax.set_xlabel("hours")
        ax.grid(alpha=0.3)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series(axes[0], "rainc")
    axes[0].set_title("domain-mean accumulated RAINC (mm)")
    series(axes[1], "rainnc")
    axes[1].set_title("domain-mean accumulated RAINNC (mm)")
    axes[0].legend()
    fig.suptitle("thin: members, thick: ensemble mean")
    fig.tight_layout()
    fig.savefig(out / "rain.png", dpi=110)
    plt.close(fig)
    made.append("rain.png")

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("frac_convecting", "frac_deep", "frac_raining"),
                              ("convecting (any RTHCUTEN != 0)", "deep (NCA > 0)",
                               "raining (PRATEC > 0)")):
        series(ax, key, 100.0)
        ax.set_title(f"columns {title}, %")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "fractions.png", dpi=110)
    plt.close(fig)
    made.append("fractions.png")

    mskf = runs_of(MSKF)
    if mskf:
        n_times = len(mskf[0]["minutes"])
        indices = sorted({(n_times - 1) // 2, n_times - 1})
        quantities = (("t", "T (K)", 1.0), ("qv", "QVAPOR (g/kg)", 1e3),
                      ("cloud", "QCLOUD+QICE (mg/kg)", 1e6),
                      ("cloud_cu", "CLDFRA_DP+CLDFRA_SH", 1.0))
        fig, axes = plt.subplots(len(indices), 4, figsize=(15, 5 * len(indices)), squeeze=False)
        for row, index in enumerate(indices):
            p = ensemble_profile(mskf, "p", index) / 100.0
            ref = {q: ensemble_profile(mskf, q, index) for q, *_ in quantities}
            for ax, (q, label, scale) in zip(axes[row], quantities):
                for s in mskf:  # MSKF's own spread
                    ax.plot(scale * (np.asarray(s[f"prof_{q}"][index]) - ref[q]), p,
                            color="0.6", lw=0.8)
                for name in summaries:
                    runs = runs_of(name)
                    if name == MSKF or not runs:
                        continue
                    ax.plot(scale * (ensemble_profile(runs, q, index) - ref[q]), p,
                            color=COLORS[name], lw=2 if name != NONE else 1.2,
                            ls="--" if name == NONE else "-", label=f"{name} - mskf")
                ax.axvline(0, color="k", lw=0.5)
                ax.set_ylim(1000, 100)
                ax.set_title(f"{label} at {mskf[0]['minutes'][index] / 60:g} h")
                ax.set_ylabel("hPa")
                ax.grid(alpha=0.3)
            axes[row][0].legend(fontsize=8, title="grey: MSKF member - mean", title_fontsize=8)
        fig.suptitle("ensemble-mean profile differences from MSKF (none: scale of the "
                     "cumulus scheme's effect)")
        fig.tight_layout()
        fig.savefig(out / "profiles.png", dpi=100)
        plt.close(fig)
        made.append("profiles.png")

    names = [n for n in summaries if runs_of(n)]
    members = sorted({m for n in names for m in summaries[n]})
    if names:
        vmax = max(float(np.max(s["rain_map"])) for n in names for s in runs_of(n)) or 1.0
        fig, axes = plt.subplots(len(names), len(members),
                                 figsize=(3 * len(members) + 1, 3 * len(names)), squeeze=False)
        for r, name in enumerate(names):
            for c, member in enumerate(members):
                ax = axes[r][c]
                s = summaries[name].get(member)
                ax.set_xticks([])
                ax.set_yticks([])
                if s is None:
                    ax.set_title(f"{name} {member}: failed", fontsize=9)
                    continue
                im = ax.imshow(s["rain_map"], origin="lower", cmap="Blues", vmin=0, vmax=vmax)
                ax.set_title(f"{name} {member}: mean {float(np.mean(s['rain_map'])):.3f} mm",
                             fontsize=9)
        fig.colorbar(im, ax=axes, shrink=0.6, label="RAINC + RAINNC (mm)")
        fig.suptitle(f"accumulated rain at {case.hours:g} h")
        fig.savefig(out / "rain_maps.png", dpi=90)
        plt.close(fig)
        made.append("rain_maps.png")
    return made


def plot_steps(out: Path, runs: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, run) in enumerate(runs.items()):
        values = [m.get("median_step_s") for m in run["members"].values()
                  if m.get("median_step_s") is not None]
        if values:
            ax.bar(i, np.mean(values), color=COLORS[name], alpha=0.6)
            ax.plot([i] * len(values), values, "k.", ms=6)
    ax.set_xticks(range(len(runs)), list(runs))
    ax.set_ylabel("median plain step (s)")
    ax.set_title("wall time of a step without radiation or output\n(bars: ensemble mean, dots: members)")
    fig.tight_layout()
    fig.savefig(out / "step_time.png", dpi=110)
    plt.close(fig)
    made.append("step_time.png")
    return made


def plot_paired(out: Path, paired: dict) -> list[str]:
    """Each configuration minus MSKF from the same initial state (dots), against the spread
    of MSKF minus MSKF between initial states (grey band)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("rainc_mm", "RAINC at end (mm)"), ("rain_total_mm", "RAINC+RAINNC at end (mm)"),
            ("deep_fraction_end", "deep fraction at end"))
    names = [n for n in paired if n != "mskf_minus_mskf"]
    if not names:
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6))
    for ax, (key, label) in zip(axes, keys):
        spread = [abs(v) for v in paired.get("mskf_minus_mskf", {}).get(key, [])]
        if spread:
            ax.axhspan(-max(spread), max(spread), color="0.85", label="|mskf - mskf|")
        for i, name in enumerate(names):
            values = list(paired[name].get(key, {}).values())
            ax.plot([i] * len(values), values, "o", color=COLORS.get(name, "k"))
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(range(len(names)), [f"{n} - mskf" for n in names], fontsize=8)
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("paired differences from MSKF (same initial state) and MSKF's own spread")
    fig.tight_layout()
    fig.savefig(out / "paired.png", dpi=110)
    plt.close(fig)
    return ["paired.png"]


def plot_counters(out: Path, counter_series: dict[str, dict[str, dict]]) -> list[str]:
    """Per history interval: fractions of the evaluated columns the emulator triggered, made
    deep or shallow, found out of distribution and handed to MSKF."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("triggered", "deep", "shallow", "ood", "fallback")
    if not any(counter_series.values()):
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
    for name, members in counter_series.items():
        for member, by_time in members.items():
            # running totals since the start: each interval is the difference of two lines
            by_time = {"0": {}} | by_time
            times = sorted(int(t) for t in by_time)
            if len(times) < 2:
                continue
            for ax, key in zip(axes, keys):
                frac = []
                for a, b in itertools.pairwise(times):
                    da = {k: by_time[str(b)].get(k, 0) - by_time[str(a)].get(k, 0)
                          for k in ("evaluated", key)}
                    frac.append(100 * da[key] / da["evaluated"] if da["evaluated"] else np.nan)
                ax.plot(np.array(times[1:]) / 3600.0, frac, color=COLORS[name], lw=1,
                        label=f"{name} {member}")
    for ax, key in zip(axes, keys):
        ax.set_title(f"{key}, % of evaluated")
        ax.set_xlabel("hours")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "counters.png", dpi=100)
    plt.close(fig)
    return ["counters.png"]


# ---------------------------------------------------------------------------------------------
# report.md


def _f(x, fmt="{:.4f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def markdown(case: Case, meta: dict, runs: dict, paired: dict, noise: dict,
             checks: list[Target], restart: dict | None, pictures: list[str],
             walls: dict) -> str:
    L = [f"# Online benchmark: the emulator inside WRF ({case.name} case)", ""]
    L += [(f"em_convrad, {case.nx} x {case.nx} columns, DX {case.dx / 1000:g} km, DT "
          f"{case.time_step} s, {case.hours:g} h, {case.members} initial states, "
          f"{case.ranks} MPI ranks. Model: `{meta.get('model')}`. WRF: `{meta.get('wrf')}` "
          f"(build {meta.get('build_action')}). Initial states: ideal.exe (m0) and seeded "
          f"replacements of its theta perturbation ({meta.get('perturbation')})."), ""]
    if case.name != "full":
        L += [("The targets below are defined for the full 12-h case; on this case they are "
              "indicative only."), ""]
    L += ["## Ensemble means", "",
          ("| run | completed | RAINC (mm) | RAINC+RAINNC (mm) | deep at end | RMS T vs MSKF (K) "
          "| RMS QV vs MSKF (g/kg) | median plain step (s) | CPU per step and rank (s) | OOD "
          "| fallback |"),
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        deep = r.get("deep_fraction", [None])[-1] if r.get("deep_fraction") else None
        L.append(f"| {name} | {r['members_completed']}/{len(r['members'])} | "
                 f"{_f(r.get('rainc_mm'))} | {_f(r.get('rain_total_mm'))} | {_pct(deep)} | "
                 f"{_f(r.get('rms_t_k'), '{:.3f}')} | "
                 f"{_f(None if r.get('rms_qv') is None else 1e3 * r['rms_qv'], '{:.4f}')} | "
                 f"{_f(r.get('median_step_s'))} | {_f(r.get('cpu_step_s'))} | "
                 f"{_pct(r.get('ood_fraction'))} | {_pct(r.get('fallback_fraction'))} |")
    L += ["", ("RMS over levels of the difference of the ensemble-mean profiles at the end "
          "from MSKF's; OOD and fallback as fractions of the columns the emulator evaluated. "
          "The median plain step is wall time (the target); CPU per step and rank (user + "
          "system time of the ranks over all steps, radiation and output included) does not "
          "depend on other work on the machine."), "",
          "## Members", "",
          ("| run | member | completed | RAINC (mm) | RAINC+RAINNC (mm) | deep at end | RMS T (K) "
          "| RMS QV (g/kg) | median step (s) | wall (s) | load |"),
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        for member, m in r["members"].items():
            deep = m["deep_fraction"][-1] if m.get("deep_fraction") else None
            done = "yes" if m["completed"] else f"NO ({m.get('reason')})"
            L.append(f"| {name} | {member} | {done} | {_f(m.get('rainc_mm'))} | "
                     f"{_f(m.get('rain_total_mm'))} | {_pct(deep)} | "
                     f"{_f(m.get('rms_t_k'), '{:.3f}')} | "
                     f"{_f(None if m.get('rms_qv') is None else 1e3 * m['rms_qv'], '{:.4f}')} | "
                     f"{_f(m.get('median_step_s'))} | {_f(m.get('wall_s'), '{:.0f}')} | "
                     f"{_f(m.get('load5'), '{:.1f}')} |")
    L += ["", ("load: the machine's 5-minute load average when the run ended; the 2 ranks of WRF "
               "make 2, more means other work slowed the run and its step times."),
          "", "## Signal or noise: paired differences", "",
          ("Each configuration minus MSKF from the same initial state, next to MSKF minus MSKF "
          "between initial states (the ensemble's own spread). A difference smaller than the "
          "spread is not a signal."), "",
          "| quantity | " + " | ".join(f"{n} - mskf" for n in runs if n != MSKF)
          + " | mskf - mskf |", "|---|" + "---|" * len(runs)]
    for key, label, fmt in (("rainc_mm", "RAINC at end (mm)", "{:+.4f}"),
                            ("rain_total_mm", "RAINC+RAINNC at end (mm)", "{:+.4f}"),
                            ("deep_fraction_end", "deep fraction at end", "{:+.4f}")):
        cells = []
        for name in runs:
            if name == MSKF:
                continue
            per = paired.get(name, {}).get(key, {})
            cells.append(", ".join(f"{m}: {fmt.format(v)}" for m, v in per.items()) or "n/a")
        spread = paired.get("mskf_minus_mskf", {}).get(key, [])
        cells.append(", ".join(fmt.format(v) for v in spread) or "n/a (one member)")
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label, scale in (("rms_t_k", "RMS T profile at end (K)", 1.0),
                              ("rms_qv", "RMS QVAPOR profile at end (g/kg)", 1e3)):
        cells = []
        for name in runs:
            if name == MSKF:
                continue
            per = paired.get(name, {}).get(key, {})
            cells.append(", ".join(f"{m}: {scale * v:.4f}" for m, v in per.items()) or "n/a")
        spread = noise.get(key, [])
        cells.append(", ".join(f"{scale * v:.4f}" for v in spread) or "n/a (one member)")
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    emu_runs = {n: r for n, r in runs.items() if r.get("counters")}
    if emu_runs:
        keys = sorted({k for r in emu_runs.values() for k in r["counters"]})
        L += ["", "## The emulator's counters", "",
              ("Summed over ranks and members at the end of the runs (columns counted at every "
              "cumulus call; `evaluated` are those not held by NCA)."), "",
              "| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, r in emu_runs.items():
            L.append(f"| {name} | " + " | ".join(str(r["counters"].get(k, 0)) for k in keys) + " |")
    L += ["", "## Targets", "", "```"] + [t.line() for t in checks] + ["```", ""]
    if restart is not None:
        L += ["## Restart", "", restart.get("summary", ""), ""]
        for item in restart.get("details", []):
            L.append(f"- {item}")
        L.append("")
    L += ["## Wall times", "", "| step | seconds |", "|---|---|"]
    L += [f"| {k} | {v:.0f} |" for k, v in walls.items()]
    L += [""]
    for name in pictures:
        L += [f"![{name}]({name})", ""]
    return "\n".join(L)


def counter_series(summaries: dict[str, dict[str, dict | None]]) -> dict:
    return {name: {m: s["counters"]["by_time_s"] for m, s in members.items()
                   if s is not None and s["counters"]["by_time_s"]}
            for name, members in summaries.items() if name in EMULATORS}


def write(out: Path, case: Case, meta: dict, outcomes: dict, summaries: dict,
          restart: dict | None, walls: dict) -> tuple[dict, list[Target]]:
    """report.json, report.md and the plots in ``out``; returns (report, targets)."""
    out.mkdir(parents=True, exist_ok=True)
    mskf_by_member = summaries.get(MSKF, {})
    runs = {}
    for config in CONFIGS:
        if config.name not in outcomes:
            continue
        members = {m: member_metrics(summaries[config.name].get(m), outcomes[config.name][m],
                                     mskf_by_member.get(m), case.ranks)
                   for m in outcomes[config.name]}
        runs[config.name] = ensemble_metrics(
            config.name, members, summaries[config.name],
            [s for s in mskf_by_member.values() if s is not None])
    paired = paired_differences(runs)
    noise = mskf_profile_noise(mskf_by_member)
    checks = targets(runs, restart, case.history_minutes)
    pictures = plots(out, case, summaries) + plot_paired(out, paired) \
        + plot_steps(out, runs) + plot_counters(out, counter_series(summaries))
    report = {"case": case.name, "meta": meta, "runs": runs, "paired_differences": paired,
              "mskf_profile_noise": noise, "restart": restart,
              "targets": [{"name": t.name, "passed": t.passed, "detail": t.detail}
                          for t in checks],
              "wall_s": walls}
    write_json(out / "report.json", report)
    (out / "report.md").write_text(markdown(case, meta, runs, paired, noise, checks, restart,
                                            pictures, walls))
    return report, checks
