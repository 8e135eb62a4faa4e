"""Evaluation report of one or more models scored on the same data: JSON, Markdown and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOTS = {"profiles.png": "Mean profiles of triggered columns",
         "r2_per_level.png": "R2 per pressure band on triggered columns",
         "bias_per_level.png": "Bias per pressure band on triggered columns",
         "pratec_scatter.png": "Convective precipitation rate",
         "kind_confusion.png": "Kind of convection: MSKF (rows) against the emulator (columns)"}
GROUP_SCORES = ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQICUTEN", "RUCUTEN", "RVCUTEN", "PRATEC")


def _jsonable(obj):
    """Plain Python copy of obj: numpy converted, keys as strings, NaN and Inf as None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _get(d, *keys):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(value, spec=".3g"):
    return "n/a" if value is None else format(value, spec)


def _floats(values):
    """Float array with None as NaN, which matplotlib leaves out."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _union(dicts):
    """Keys of all dicts, in order of first appearance."""
    return list(dict.fromkeys(k for d in dicts for k in (d or {})))


def _markdown(title, results):
    models = list(results)
    variables = _union(_get(r, "regression") for r in results.values())
    thresholds = _union(_get(r, "precipitation", "ets") for r in results.values())
    lines = [f"# {title}", "", "## Outputs on triggered columns (pooled R2 / RMSE; R2 on all columns)", ""]
    lines += _table(["Variable"] + models, [
        [v] + [f"{_fmt(_get(results[m], 'regression', v, 'triggered', 'pooled', 'r2'))} / "
               f"{_fmt(_get(results[m], 'regression', v, 'triggered', 'pooled', 'rmse'))}; "
               f"{_fmt(_get(results[m], 'regression', v, 'all', 'pooled', 'r2'))}"
               for m in models] for v in variables])
    keys = ["accuracy", "precision", "recall", "f1", "csi"]
    lines += ["## Trigger", ""] + _table(["Model", "Accuracy", "Precision", "Recall", "F1", "CSI"], [
        [m] + [_fmt(_get(results[m], "trigger", k), ".3f") for k in keys] for m in models])
    kind = ["agreement", "shallow_made_deep", "deep_made_shallow", "shallow_outputs_raining",
            "shallow_outputs_with_deep_cloud", "deep_outputs_with_shallow_cloud"]
    lines += ["## Kind of convection (none, shallow, deep) against MSKF's", "",
              "Shallow columns made deep: MSKF shallow, emulator deep. The last three columns "
              "count outputs that break MSKF's semantics; the runtime makes them zero.", ""]
    lines += _table(["Model", "Agreement", "Shallow made deep", "Deep made shallow",
                     "Shallow raining", "Shallow with deep cloud", "Deep with shallow cloud"], [
        [m] + [_fmt(_get(results[m], "kind", k), ".4f" if k == "agreement" else "d") for k in kind]
        for m in models])
    lines += ["## Precipitation", ""] + _table(
        ["Model", "R2", "Bias (mm/h)"] + [f"ETS >= {t} mm/h" for t in thresholds],
        [[m, _fmt(_get(results[m], "precipitation", "r2"), ".3f"),
          _fmt(_get(results[m], "precipitation", "bias_mm_per_h"))]
         + [_fmt(_get(results[m], "precipitation", "ets", t), ".3f") for t in thresholds]
         for m in models])
    lines += ["## NCA (columns both MSKF and the emulator make deep)", ""] + _table(
        ["Model", "Within one step", "Mean abs error (steps)", "Columns"], [
            [m, _fmt(_get(results[m], "nca", "within_one_step_fraction"), ".1%"),
             _fmt(_get(results[m], "nca", "mean_abs_steps")), _fmt(_get(results[m], "nca", "n"), "d")]
            for m in models])
    lines += ["## Cloud base and top levels", ""] + _table(
        ["Model", "CUBOT exact", "CUBOT within one", "CUTOP exact", "CUTOP within one"],
        [[m] + [_fmt(_get(results[m], "cloud_levels", v, k), ".1%")
                for v in ("CUBOT", "CUTOP") for k in ("exact_fraction", "within_one_fraction")]
         for m in models])
    profiles = _union(_get(r, "profile_error") for r in results.values())
    lines += ["## Where the profile error lies", "",
              "Share of each profile's squared error, on columns both the truth and the model "
              "trigger, that the best amplitude per column would remove (the rest is shape), and "
              "share in columns whose cloud top (CUTOP) is wrong (their number: 1 - CUTOP exact above).", ""]
    lines += _table(["Variable"] + [f"{m}: amplitude / CUTOP wrong" for m in models], [
        [v] + [f"{_fmt(_get(results[m], 'profile_error', v, 'amplitude_fraction'), '.0%')} / "
               f"{_fmt(_get(results[m], 'profile_error', v, 'cloud_top_off_fraction'), '.0%')}"
               for m in models] for v in profiles])
    lines += ["## Columns out of the training distribution", "",
              "Flagged by the runtime's check where the network runs (the scores above include "
              "them: policy predict).", ""] + _table(
        ["Model", "Columns", "Flagged", "Of all columns", "Of convecting columns"],
        [[m, _fmt(_get(results[m], "out_of_distribution", "columns"), "d"),
          _fmt(_get(results[m], "out_of_distribution", "flagged"), "d"),
          _fmt(_get(results[m], "out_of_distribution", "fraction_of_columns"), ".2%"),
          _fmt(_get(results[m], "out_of_distribution", "fraction_of_convecting"), ".2%")] for m in models])
    lines += ["## Physics of the outputs", ""] + _table(
        ["Model", "Water budget residual mean abs (mm/h)", "Water budget residual max abs (mm/h)",
         "Columns with vapour negative over the hold"],
        [[m, _fmt(_get(results[m], "physics", "water_budget_residual_mm_per_h", "mean_abs")),
          _fmt(_get(results[m], "physics", "water_budget_residual_mm_per_h", "max_abs")),
          _fmt(_get(results[m], "physics", "negative_water_fraction"), ".2%")] for m in models])
    for group, heading, first in (("regime", "Per regime (sounding family, or file)", "Regime"),
                                  ("dx_km", "Per grid spacing", "DX (km)"),
                                  ("levels", "Per vertical grid (level count)", "Mass levels")):
        lines += [f"## {heading}", "", "Trigger F1, kind agreement and pooled R2 on triggered columns.", ""]
        header = [first, "Model", "Columns", "Triggered", "Trigger F1", "Kind"] + list(GROUP_SCORES)
        rows = []
        for key in _union(_get(r, "groups", group) for r in results.values()):
            for m in models:
                g = _get(results[m], "groups", group, key)
                if g is None:
                    continue
                rows.append([key, m, _fmt(g.get("columns"), "d"), _fmt(g.get("triggered"), "d"),
                             _fmt(g.get("trigger_f1"), ".4f"), _fmt(g.get("kind_agreement"), ".4f")]
                            + [_fmt(g.get(v), ".3f") for v in GROUP_SCORES])
        lines += _table(header, rows)
    lines += ["## Plots", ""] + [f"![{text}]({name})" for name, text in PLOTS.items()]
    return "\n".join(lines) + "\n"


def _panels(n, width=3.5, height=4.0, ncols=4):
    ncols = max(1, min(n, ncols))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_profiles(profiles, path):
    variables = _union(profiles.values())
    fig, axes = _panels(len(variables))
    for ax, var in zip(axes, variables):
        truth_drawn = False
        for model, by_var in profiles.items():
            if var not in by_var:
                continue
            p = _floats(by_var[var]["pressure_hPa"])
            if not truth_drawn:
                ax.plot(_floats(by_var[var]["truth_mean"]), p, "k-", lw=2, label="truth")
                truth_drawn = True
            ax.plot(_floats(by_var[var]["pred_mean"]), p, "--", label=model)
        ax.axvline(0.0, color="0.8", lw=0.8)
        ax.invert_yaxis()
        ax.set(title=var, xlabel="mean over triggered columns", ylabel="pressure (hPa)")
        ax.legend(fontsize="small")
    _save(fig, path)


def _plot_by_pressure(results, key, path, xlabel, clip=None):
    """One panel per profile output: a score per pressure band (``key`` of by_pressure)."""
    variables = [v for v in _union(_get(r, "regression") for r in results.values())
                 if any(_get(r, "regression", v, "triggered", "by_pressure") for r in results.values())]
    fig, axes = _panels(len(variables))
    for ax, var in zip(axes, variables):
        for model, res in results.items():
            bands = _get(res, "regression", var, "triggered", "by_pressure")
            if not bands:
                continue
            x = _floats(bands[key])
            if clip is not None:
                x = np.clip(x, *clip)
            ax.plot(x, _floats(bands["pressure_hPa"]), "o-", ms=3, label=model)
        if key == "bias":
            ax.axvline(0.0, color="0.8", lw=0.8)
        ax.invert_yaxis()
        ax.set(title=var, xlabel=xlabel, ylabel="pressure (hPa)")
        ax.legend(fontsize="small")
    _save(fig, path)


def _plot_scatter(scatter, path):
    fig, axes = _panels(len(scatter), width=4.0)
    for ax, (model, xy) in zip(axes, scatter.items()):
        truth, pred = np.asarray(xy["truth"], float), np.asarray(xy["pred"], float)
        ok = np.isfinite(truth) & np.isfinite(pred)
        ax.scatter(truth[ok], pred[ok], s=4, alpha=0.4)
        top = max(float(np.max(truth[ok], initial=0.0)), float(np.max(pred[ok], initial=0.0)), 1e-3)
        ax.plot([0.0, top], [0.0, top], "k--", lw=1, label="1:1")
        ax.set(title=model, xlabel="truth PRATEC (mm/h)", ylabel="predicted PRATEC (mm/h)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize="small")
    _save(fig, path)


def _plot_confusion(results, path):
    fig, axes = _panels(len(results), width=3.8, height=3.4)
    for ax, (model, res) in zip(axes, results.items()):
        counts = np.array(_get(res, "kind", "confusion") or np.zeros((3, 3), int))
        ax.imshow(counts, cmap="Blues", vmin=0)
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, f"{n:d}", ha="center", va="center",
                    color="white" if n > 0.6 * counts.max() else "black")
        names = ["none", "shallow", "deep"]
        ax.set(title=model, xticks=[0, 1, 2], yticks=[0, 1, 2], xticklabels=names,
               yticklabels=names, xlabel="emulator", ylabel="MSKF")
    _save(fig, path)


def write_report(out_dir, results: dict, profiles: dict, scatter: dict, title: str) -> dict:
    """Write report.json, report.md and the PNG plots of PLOTS into out_dir; return the JSON dict.

    results: model -> scores (see training.metrics); profiles: model -> variable ->
    {pressure_hPa, truth_mean, pred_mean}; scatter: model -> {truth, pred} PRATEC in mm/h.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = _jsonable({"title": title, "models": list(results),
                        "results": results, "profiles": profiles})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(_markdown(title, report["results"]))
    _plot_profiles(report["profiles"], out / "profiles.png")
    _plot_by_pressure(report["results"], "r2", out / "r2_per_level.png", "R2 (clipped at -1)", (-1.0, 1.0))
    _plot_by_pressure(report["results"], "bias", out / "bias_per_level.png", "bias (prediction - MSKF)")
    _plot_scatter(scatter, out / "pratec_scatter.png")
    _plot_confusion(report["results"], out / "kind_confusion.png")
    return report
