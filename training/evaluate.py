"""``mlcu evaluate``: offline accuracy of one or more trained models on a store split.

Predictions are taken as WRF would use them: where the predicted trigger probability is below
0.5 every output is zero. Scores per output variable (per level and all levels pooled) are
given on the triggered columns (truth trigger) and on all columns; the store holds only
columns the scheme freshly computed. Also: trigger accuracy, precision, recall, F1 and CSI;
precipitation R2, bias and equitable threat score at several thresholds; NCA error in time
steps on deep columns; cloud base and top levels exact and within one level, and where the
profile error lies (amplitude or shape, columns with the cloud top wrong), on columns both the
truth and the model trigger; physics checks on the predicted columns (column water budget residual
against PRATEC, and the fraction of columns whose vapour would go negative over the predicted
hold time). Several models are compared side by side in one report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training import metrics
from training.data import ColumnBatches
from training.report import write_report
from training.store import Store
from training.train import build_model

ETS_THRESHOLDS_MM_H = (0.1, 1.0, 5.0, 10.0)
PHYSICS_INPUTS = ("RHO", "DZ8W", "QVAPOR", "P_HYD", "DT")
DEEP = 2
LEVEL_INDICES = ("CUBOT", "CUTOP")


class Predictor:
    """Raw predictions in SI units of a run folder (PyTorch) or an exported model (ONNX Runtime)."""

    def __init__(self, model):
        self.path = Path(model)
        if self.path.suffix == ".onnx":
            from emulator.runtime import Runtime

            self.runtime = Runtime.from_options({"model": str(self.path)})
            self.trigger, self.inputs = self.runtime.trigger, self.runtime.contract.input_names
        else:
            self.runtime = None
            self.model = build_model(self.path)
            self.trigger, self.inputs = self.model.trigger, self.model.contract.input_names

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        if self.runtime is not None:
            return self.runtime.predict_columns({k: batch[k].numpy() for k in self.inputs})
        return {k: v.numpy() for k, v in self.model.physical(self.model(batch), batch).items()}


def predict(model: Predictor, store: Store, split: str) -> tuple[dict, dict]:
    """(truth, prediction) arrays in SI units over a split; predictions gated by the trigger."""
    contract = store.contract()
    batches = ColumnBatches(store, split, contract, 4096, shuffle=False)
    truth, pred = {}, {}
    for batch in batches:
        out = model(batch)
        fires = out[model.trigger] >= 0.5
        for name, value in out.items():
            gated = value if name == model.trigger else np.where(
                fires.reshape(-1, *[1] * (value.ndim - 1)), value, 0.0).astype(np.float32)
            pred.setdefault(name, []).append(gated)
        for name in contract.output_names + list(PHYSICS_INPUTS):
            truth.setdefault(name, []).append(batch[name].numpy())
    return ({k: np.concatenate(v) for k, v in truth.items()},
            {k: np.concatenate(v) for k, v in pred.items()})


def score(truth: dict, pred: dict, trigger: str, column_class: np.ndarray) -> dict:
    triggered = truth[trigger] > 0.5
    fires = pred[trigger] >= 0.5
    regression = {name: {"triggered": metrics.regression_scores(truth[name], pred[name], triggered),
                         "all": metrics.regression_scores(truth[name], pred[name])}
                  for name in pred if name != trigger}
    rain_true, rain_pred = truth["PRATEC"] * 3600.0, pred["PRATEC"] * 3600.0
    rain = metrics.regression_scores(rain_true, rain_pred)["pooled"]
    deep = column_class == DEEP
    water = {n: pred[n] for n in metrics.WATER_TENDENCIES if n in pred}
    residual = metrics.water_budget_residual(water, truth["RHO"], truth["DZ8W"], pred["PRATEC"])[fires]
    hold = np.maximum(pred["NCA"], truth["DT"])
    both = triggered & fires
    return {
        "regression": regression,
        "trigger": metrics.trigger_scores(triggered, fires),
        "precipitation": {"r2": rain["r2"], "bias_mm_per_h": rain["bias"],
                          "ets": metrics.equitable_threat_scores(rain_true, rain_pred, ETS_THRESHOLDS_MM_H)},
        "nca": metrics.nca_step_errors(truth["NCA"][deep], pred["NCA"][deep], truth["DT"][deep]),
        "cloud_levels": {name: metrics.level_index_scores(truth[name][both], pred[name][both])
                         for name in LEVEL_INDICES},
        "profile_error": {name: metrics.profile_error_split(truth[name][both], pred[name][both],
                                                            truth["CUTOP"][both], pred["CUTOP"][both])
                          for name in pred if pred[name].ndim == 2},
        "physics": {
            "water_budget_residual_mm_per_h": {
                "mean_abs": float(np.mean(np.abs(residual)) * 3600) if residual.size else None,
                "p99_abs": float(np.percentile(np.abs(residual), 99) * 3600) if residual.size else None},
            "negative_water_fraction": metrics.negative_water_fraction(
                truth["QVAPOR"][fires], pred["RQVCUTEN"][fires], hold[fires]),
        },
    }


def profiles(truth: dict, pred: dict, trigger: str) -> dict:
    triggered = truth[trigger] > 0.5
    pressure = (truth["P_HYD"][triggered].mean(axis=0) / 100.0).tolist()
    return {name: {"pressure_hPa": pressure, "truth_mean": truth[name][triggered].mean(axis=0).tolist(),
                   "pred_mean": pred[name][triggered].mean(axis=0).tolist()}
            for name in pred if pred[name].ndim == 2}


def evaluate(models: list, store_path, split: str, out_dir) -> dict:
    """Score every model (run folders or exported .onnx files) on one split and write one report comparing them."""
    store = Store(store_path)
    column_class = store.open_split(split)["COLUMN_CLASS"].values
    results, profile, scatter = {}, {}, {}
    for run in models:
        name = Path(run).name
        if name in results:
            name = str(run)
        model = Predictor(run)
        truth, pred = predict(model, store, split)
        results[name] = score(truth, pred, model.trigger, column_class)
        profile[name] = profiles(truth, pred, model.trigger)
        scatter[name] = {"truth": truth["PRATEC"] * 3600.0, "pred": pred["PRATEC"] * 3600.0}
    title = f"Evaluation on split '{split}' of {store.root}"
    return write_report(out_dir, results, profile, scatter, title)
