"""``mlcu evaluate``: offline accuracy of one or more models on a store split, scored on exactly
what WRF receives.

Every model goes through the runtime's own code (``emulator.runtime.Runtime.run_columns``, the
path of ``run_tile``): the kernel's trigger and kind of convection, the network where it fires,
the out-of-distribution policy, the physical constraints and MSKF's semantics (hold time,
shallow convection without rain, one kind of cloud). A run folder is exported first (to a
temporary file). ``raw=True`` (``--raw``) scores the unconstrained network instead: its outputs
gated by its trigger, nothing else. ``mlcu replay`` scores the same way, on files, tile by tile.

Scores (``score``), on the columns the store holds (those the scheme freshly computed):

* per output: R2, RMSE, MAE and bias pooled over levels on triggered columns and on all
  columns, and per pressure band (profiles of R2 and bias, on any mix of grids);
* trigger accuracy, precision, recall, F1, CSI; the kind of convection (none, shallow, deep)
  against MSKF's, with the shallow columns made deep and the outputs that break MSKF's
  semantics (shallow columns raining or with a deep cloud, deep ones with a shallow cloud);
* precipitation R2, bias and ETS at 0.1, 1, 5 and 10 mm/h; NCA within one step on columns
  both call deep; cloud base and top exact and within one level; where each profile's error
  lies (amplitude or shape, columns with the cloud top wrong);
* the column water budget after the constraints (its residual against PRATEC) and columns
  whose vapour would go negative over the hold;
* the headline scores per regime (the oracle files' sounding family, or augment's regime; else
  per file) and per grid spacing.

Several models are compared side by side in one report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from emulator.derive import activated
from emulator.runtime import Runtime
from training import metrics
from training.columns import SPECIES
from training.data import ColumnBatches
from training.normalization import PRESSURE_EDGES_PA
from training.report import write_report
from training.store import Store

ETS_THRESHOLDS_MM_H = (0.1, 1.0, 5.0, 10.0)
PHYSICS_INPUTS = ("RHO", "DZ8W", "QVAPOR", "P_HYD")
LEVEL_INDICES = ("CUBOT", "CUTOP")
# The scores of the per-regime and per-DX tables.
HEADLINE = ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQICUTEN", "RUCUTEN", "RVCUTEN", "PRATEC")


def family_names(text: str) -> dict:
    """{code: name} from "1=wk82 2=jordan ..." (``training.columns.regime_names``)."""
    out = {}
    for item in str(text).split():
        code, _, name = item.partition("=")
        if code.strip().lstrip("-").isdigit() and name:
            out[int(code)] = name
    return out


def predictions(runtime: Runtime, inputs: dict, dt, cudt, raw: bool = False) -> dict:
    """What WRF receives from the runtime for evaluated columns ``inputs`` (``run_columns``:
    NCA NaN where it is left as it was), or with ``raw`` the network's outputs gated by its
    trigger; TRIGGER as the scheme's activity (heating or moistening anywhere, as the truth is
    read)."""
    if raw:
        out = runtime.predict_columns(inputs)
        fires = out[runtime.trigger] >= runtime.options.trigger_threshold
        pred = {k: np.where(fires.reshape(-1, *[1] * (v.ndim - 1)), v, 0.0)
                for k, v in out.items() if k != runtime.trigger}
        ood = runtime.out_of_distribution(inputs) & fires
    else:
        pred, info = runtime.run_columns(inputs, dt, cudt)
        pred.pop("FALLBACK", None)
        ood = info["ood"]
    pred[runtime.trigger] = activated(pred["RTHCUTEN"], pred["RQVCUTEN"], 1)
    return {k: np.asarray(v) for k, v in pred.items()}, ood


def _part(truth: dict, pred: dict, column_class, family, dx, dt, cudt) -> dict:
    """The columns of one grid: truth, prediction and what groups them."""
    return {"truth": truth, "pred": pred, "class": np.asarray(column_class), "family": np.asarray(family),
            "dx": np.asarray(dx, np.float64), "dt": np.asarray(dt, np.float64),
            "cudt": np.asarray(cudt, np.float64)}


def store_parts(runtime: Runtime, store: Store, split: str, raw: bool = False) -> list[dict]:
    """The split's columns, one part per shard (one grid), through the runtime."""
    contract = store.contract()
    parts = []
    for shard in store.shards(split):
        pieces = []
        for batch in ColumnBatches(store, split, contract, 4096, shuffle=False, shards=[shard]):
            b = {k: v.numpy() for k, v in batch.items()}
            inputs = {k: b[k] for k in contract.input_names + list(SPECIES)}
            dt = b["DT"]
            cudt = np.array([store.file_info(f)["cudt"] for f in b["FILE_ID"]])
            pred, ood = predictions(runtime, inputs, dt, cudt, raw)
            truth = {k: b[k] for k in contract.output_names + list(PHYSICS_INPUTS)}
            # Where nothing convects NCA stays as it was, which the scheme left as it was too.
            pred["NCA"] = np.where(np.isnan(pred["NCA"]), truth["NCA"], pred["NCA"])
            pieces.append(_part(truth, pred, b["COLUMN_CLASS"], b["FAMILY"], b["DX"], dt, cudt)
                          | {"file_id": b["FILE_ID"], "ood": ood})
        if pieces:
            parts.append({k: ({n: np.concatenate([p[k][n] for p in pieces]) for n in pieces[0][k]}
                              if isinstance(pieces[0][k], dict) else np.concatenate([p[k] for p in pieces]))
                          for k in pieces[0]})
    if not parts:
        raise ValueError(f"{store.root}: split {split!r} has no columns")
    return parts


def _cat(parts: list, side: str, name: str) -> np.ndarray:
    return np.concatenate([p[side][name] for p in parts])


def _profile_scores(parts: list, name: str, masks: list) -> dict:
    return metrics.pooled_and_banded([p["truth"][name] for p in parts], [p["pred"][name] for p in parts],
                                     [p["truth"]["P_HYD"] for p in parts], masks, PRESSURE_EDGES_PA)


def headline(parts: list, trigger: str, masks: list) -> dict:
    """Trigger F1, kind agreement and R2 of the HEADLINE outputs (triggered columns) on the
    columns ``masks`` selects in each part."""
    sub = [{"truth": {k: v[m] for k, v in p["truth"].items()},
            "pred": {k: v[m] for k, v in p["pred"].items()}, "class": p["class"][m],
            "dt": p["dt"][m], "cudt": p["cudt"][m]} for p, m in zip(parts, masks)]
    triggered = [s["truth"][trigger] > 0.5 for s in sub]
    out = {"columns": int(sum(m.sum() for m in masks)), "triggered": int(sum(t.sum() for t in triggered)),
           "trigger_f1": metrics.trigger_scores(np.concatenate(triggered),
                                                np.concatenate([s["pred"][trigger] >= 0.5 for s in sub]))["f1"]}
    pred_class = np.concatenate([metrics.output_class(s["pred"][trigger] >= 0.5, s["pred"]["NCA"],
                                                      s["dt"], s["cudt"]) for s in sub])
    truth_class = np.concatenate([s["class"] for s in sub])
    out["kind_agreement"] = float(np.mean(pred_class == truth_class)) if truth_class.size else None
    for name in HEADLINE:
        if sub[0]["truth"][name].ndim == 2:
            out[name] = _profile_scores(sub, name, triggered)["pooled"]["r2"]
        else:
            t = np.concatenate([s["truth"][name][m] for s, m in zip(sub, triggered)])
            pr = np.concatenate([s["pred"][name][m] for s, m in zip(sub, triggered)])
            out[name] = metrics.regression_scores(t, pr)["pooled"]["r2"]
    return out


def score(parts: list, trigger: str = "TRIGGER", regimes: dict | None = None,
          file_names: dict | None = None) -> dict:
    """Every score of the module docstring over the parts (``store_parts``, or replay's);
    ``regimes``: {file id: {regime code: name}}, ``file_names``: {file id: name}, for the
    per-regime scores (columns without a regime are grouped by file)."""
    regimes, file_names = regimes or {}, file_names or {}
    triggered = [p["truth"][trigger] > 0.5 for p in parts]
    fires = [p["pred"][trigger] >= 0.5 for p in parts]
    every = [np.ones_like(t) for t in triggered]
    regression = {}
    for name in parts[0]["pred"]:
        if name == trigger or name not in parts[0]["truth"]:
            continue
        if parts[0]["pred"][name].ndim == 2:
            regression[name] = {"triggered": _profile_scores(parts, name, triggered),
                                "all": _profile_scores(parts, name, every)}
        else:
            t, pr, m = _cat(parts, "truth", name), _cat(parts, "pred", name), np.concatenate(triggered)
            regression[name] = {"triggered": metrics.regression_scores(t, pr, m),
                                "all": metrics.regression_scores(t, pr)}
    rain_true, rain_pred = _cat(parts, "truth", "PRATEC") * 3600.0, _cat(parts, "pred", "PRATEC") * 3600.0
    rain = metrics.regression_scores(rain_true, rain_pred)["pooled"]
    dt, cudt = np.concatenate([p["dt"] for p in parts]), np.concatenate([p["cudt"] for p in parts])
    truth_class = np.concatenate([p["class"] for p in parts])
    pred_class = metrics.output_class(np.concatenate(fires), _cat(parts, "pred", "NCA"), dt, cudt)
    both_deep = (truth_class == 2) & (pred_class == 2)
    both = np.concatenate(triggered) & np.concatenate(fires)
    residual = np.concatenate([metrics.water_budget_residual(
        {n: p["pred"][n] for n in metrics.WATER_TENDENCIES if n in p["pred"]},
        p["truth"]["RHO"], p["truth"]["DZ8W"], p["pred"]["PRATEC"])[f] for p, f in zip(parts, fires)])
    negative = [metrics.negative_water_fraction(p["truth"]["QVAPOR"][f], p["pred"]["RQVCUTEN"][f],
                                                np.maximum(p["pred"]["NCA"], p["dt"])[f]) * f.sum()
                for p, f in zip(parts, fires)]
    n_fired = int(sum(f.sum() for f in fires))
    profile_error = {}
    fired = [t & f for t, f in zip(triggered, fires)]
    for name in regression:
        if parts[0]["pred"][name].ndim == 2:
            profile_error[name] = metrics.profile_error_split(
                *([p[side][key][b] for p, b in zip(parts, fired)]
                  for side, key in (("truth", name), ("pred", name), ("truth", "CUTOP"), ("pred", "CUTOP"))))
    groups = {"regime": {}, "dx_km": {}, "levels": {}}
    for p in parts:
        files = p.get("file_id", np.full(len(p["family"]), -1))
        p["regime"] = np.array([regimes.get(int(i), {}).get(int(f)) or file_names.get(int(i), str(i))
                                for f, i in zip(p["family"], files)])
    for key in sorted({r for p in parts for r in p["regime"]}):
        groups["regime"][key] = headline(parts, trigger, [p["regime"] == key for p in parts])
    for dx in sorted({round(float(d) / 1000.0, 1) for p in parts for d in p["dx"]}):
        groups["dx_km"][f"{dx:g}"] = headline(
            parts, trigger, [np.round(p["dx"] / 1000.0, 1) == dx for p in parts])
    for n in sorted({p["pred"]["RTHCUTEN"].shape[1] for p in parts}):  # one vertical grid per level count
        groups["levels"][str(n)] = headline(
            parts, trigger, [np.full(len(p["dx"]), p["pred"]["RTHCUTEN"].shape[1] == n) for p in parts])
    ood = {}
    if all("ood" in p for p in parts):  # flagged where the network runs (policy "predict")
        flagged = np.concatenate([p["ood"] for p in parts])
        convecting = int(sum(f.sum() for f in fires))
        ood = {"columns": int(flagged.size), "flagged": int(flagged.sum()),
               "fraction_of_columns": float(flagged.mean()) if flagged.size else None,
               "fraction_of_convecting": float(flagged.sum() / convecting) if convecting else None}
    return {
        "out_of_distribution": ood,
        "regression": regression,
        "trigger": metrics.trigger_scores(np.concatenate(triggered), np.concatenate(fires)),
        "kind": metrics.kind_scores(truth_class, pred_class, rain_pred,
                                    np.concatenate([p["pred"]["CLDFRA_DP"].max(axis=1) for p in parts]),
                                    np.concatenate([p["pred"]["CLDFRA_SH"].max(axis=1) for p in parts])),
        "precipitation": {"r2": rain["r2"], "bias_mm_per_h": rain["bias"],
                          "ets": metrics.equitable_threat_scores(rain_true, rain_pred, ETS_THRESHOLDS_MM_H)},
        "nca": metrics.nca_step_errors(_cat(parts, "truth", "NCA")[both_deep],
                                       _cat(parts, "pred", "NCA")[both_deep], dt[both_deep]),
        "cloud_levels": {name: metrics.level_index_scores(_cat(parts, "truth", name)[both],
                                                          _cat(parts, "pred", name)[both])
                         for name in LEVEL_INDICES},
        "profile_error": profile_error,
        "physics": {
            "water_budget_residual_mm_per_h": {
                "mean_abs": float(np.mean(np.abs(residual)) * 3600) if residual.size else None,
                "max_abs": float(np.max(np.abs(residual)) * 3600) if residual.size else None},
            "negative_water_fraction": float(sum(negative) / n_fired) if n_fired else 0.0,
        },
        "groups": groups,
    }


def profiles(parts: list, trigger: str) -> dict:
    """Mean profiles of triggered columns per pressure band (any mix of grids)."""
    out = {}
    centres = np.sqrt(PRESSURE_EDGES_PA[:-1] * PRESSURE_EDGES_PA[1:]) / 100.0
    for name in parts[0]["pred"]:
        if parts[0]["pred"][name].ndim != 2 or name not in parts[0]["truth"]:
            continue
        sums = np.zeros((3, len(centres)))
        for p in parts:
            m = p["truth"][trigger] > 0.5
            band = np.clip(np.searchsorted(PRESSURE_EDGES_PA, p["truth"]["P_HYD"][m]) - 1, 0, len(centres) - 1)
            for row, values in enumerate((np.ones_like(band), p["truth"][name][m], p["pred"][name][m])):
                sums[row] += np.bincount(band.ravel(), weights=np.asarray(values, np.float64).ravel(),
                                         minlength=len(centres))
        seen = sums[0] > 0
        out[name] = {"pressure_hPa": centres[seen].tolist(),
                     "truth_mean": (sums[1][seen] / sums[0][seen]).tolist(),
                     "pred_mean": (sums[2][seen] / sums[0][seen]).tolist()}
    return out


def runtime_for(model, store_path, workdir: Path) -> Runtime:
    """The runtime of an exported model, or of a run folder exported into ``workdir``."""
    path = Path(model)
    if path.suffix != ".onnx":
        from training.export import export

        exported = workdir / f"{path.name}.onnx"
        export(path, exported, store=store_path)
        path = exported
    return Runtime.from_options({"model": str(path)})


def evaluate(models: list, store_path, split: str, out_dir, raw: bool = False) -> dict:
    """Score every model (run folders or exported .onnx files) on one split and write one
    report comparing them."""
    store = Store(store_path)
    manifest = store.manifest()
    regimes, file_names = {}, {}
    for k, path in enumerate(manifest["files"]):
        regimes[k] = family_names(store.file_info(k)["families"])
        file_names[k] = Path(path).name
    results, profile, scatter = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="mlcu-evaluate-") as tmp:
        for run in models:
            name = Path(run).name if Path(run).name not in results else str(run)
            runtime = runtime_for(run, store_path, Path(tmp))
            parts = store_parts(runtime, store, split, raw)
            results[name] = score(parts, runtime.trigger, regimes, file_names)
            profile[name] = profiles(parts, runtime.trigger)
            scatter[name] = {"truth": _cat(parts, "truth", "PRATEC") * 3600.0,
                             "pred": _cat(parts, "pred", "PRATEC") * 3600.0}
    what = "the unconstrained network (--raw)" if raw else "what WRF receives (the runtime's output)"
    title = f"Evaluation on split '{split}' of {store.root}: {what}"
    return write_report(out_dir, results, profile, scatter, title)
