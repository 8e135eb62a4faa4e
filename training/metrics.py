"""Evaluation scores for the emulator: regression, trigger, precipitation, NCA and physics checks.

Pure numpy. Every score is returned as plain Python numbers (JSON-serialisable); a score whose
denominator is zero is ``None``.
"""

from __future__ import annotations

import numpy as np

WATER_TENDENCIES = ("RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN")


def _ratio(num, den):
    return float(num / den) if den else None


def _scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    """R2, RMSE, MAE and bias of flat float64 arrays; all None when empty."""
    if truth.size == 0:
        return {"r2": None, "rmse": None, "mae": None, "bias": None}
    err = pred - truth
    sst = float(np.sum((truth - truth.mean()) ** 2))
    return {"r2": 1.0 - float(np.sum(err ** 2)) / sst if sst > 0 else None,
            "rmse": float(np.sqrt(np.mean(err ** 2))),
            "mae": float(np.mean(np.abs(err))),
            "bias": float(np.mean(err))}


def regression_scores(truth, pred, mask=None) -> dict:
    """Per-level and pooled R2, RMSE, MAE and bias (pred - truth) of (N,) or (N, L) arrays.

    ``mask`` (N,) selects columns. R2 = 1 - SSE/SST with SST around the mean of the selected
    truth; it is None where SST = 0. Units are those of the inputs.
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if truth.shape != pred.shape or truth.ndim not in (1, 2):
        raise ValueError(f"truth {truth.shape} and pred {pred.shape} must be equal (N,) or (N, L)")
    if truth.ndim == 1:
        truth, pred = truth[:, None], pred[:, None]
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != truth.shape[:1]:
            raise ValueError(f"mask {mask.shape} must have shape ({truth.shape[0]},)")
        truth, pred = truth[mask], pred[mask]
    levels = [_scores(truth[:, k], pred[:, k]) for k in range(truth.shape[1])]
    per_level = {key: [s[key] for s in levels] for key in ("r2", "rmse", "mae", "bias")}
    return {"per_level": per_level,
            "pooled": {**_scores(truth.ravel(), pred.ravel()), "n": int(truth.size)}}


def _contingency(truth, pred):
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and pred {pred.shape} differ")
    hits = int(np.sum(truth & pred))
    misses = int(np.sum(truth & ~pred))
    false_alarms = int(np.sum(~truth & pred))
    return hits, misses, false_alarms, int(truth.size) - hits - misses - false_alarms


def trigger_scores(truth, pred) -> dict:
    """Accuracy, precision, recall, F1, CSI and confusion [[tn, fp], [fn, tp]] of boolean (N,)."""
    tp, fn, fp, tn = _contingency(truth, pred)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (_ratio(2 * precision * recall, precision + recall)
          if precision is not None and recall is not None else None)
    return {"accuracy": _ratio(tp + tn, tp + tn + fp + fn), "precision": precision,
            "recall": recall, "f1": f1, "csi": _ratio(tp, tp + fn + fp),
            "confusion": [[tn, fp], [fn, tp]]}


def equitable_threat_scores(truth, pred, thresholds) -> dict:
    """ETS of precipitation rates (N,) in mm/h for each threshold in mm/h (event: rate >= threshold).

    Returns {str(threshold): ets or None}.
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    out = {}
    for threshold in thresholds:
        hits, misses, false_alarms, _ = _contingency(truth >= threshold, pred >= threshold)
        random = (hits + misses) * (hits + false_alarms) / truth.size if truth.size else 0.0
        out[str(threshold)] = _ratio(hits - random, hits + misses + false_alarms - random)
    return out


def nca_step_errors(truth, pred, dt) -> dict:
    """Errors of NCA (N,) in s counted in time steps dt (s, scalar or (N,)).

    Returns the mean absolute error in steps, the fraction within one step and the count.
    """
    err = (np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)) \
        / np.asarray(dt, dtype=np.float64)
    abs_err = np.abs(np.atleast_1d(err))
    n = int(abs_err.size)
    return {"mean_abs_steps": float(abs_err.mean()) if n else None,
            "within_one_step_fraction": float(np.mean(abs_err <= 1.0 + 1e-6)) if n else None,
            "n": n}


def level_index_scores(truth, pred) -> dict:
    """Agreement of 1-based level indices (N,): fraction exact, fraction within one level, count."""
    diff = np.abs(np.rint(np.asarray(pred, dtype=np.float64)) - np.asarray(truth, dtype=np.float64))
    n = int(diff.size)
    return {"exact_fraction": float(np.mean(diff == 0)) if n else None,
            "within_one_fraction": float(np.mean(diff <= 1)) if n else None, "n": n}


def profile_error_split(truth, pred, top_truth, top_pred) -> dict:
    """Where the squared error of a profile output (N, L) lies, over columns that both the truth
    and the model trigger. Each argument may also be a list of such arrays, one per grid (their
    level counts differ): the sums run over all of them.

    ``amplitude_fraction``: the part of the error that the best amplitude per column would
    remove (each predicted profile scaled by its least-squares factor); the rest is error of
    shape. ``cloud_top_off_fraction``: the part in columns whose cloud top level (1-based, (N,))
    is wrong. None when there is no error.
    """
    if not isinstance(truth, list):
        truth, pred, top_truth, top_pred = [truth], [pred], [top_truth], [top_pred]
    sse = shape_sse = top_sse = 0.0
    n = 0
    for t, p, tt, tp in zip(truth, pred, top_truth, top_pred):
        t = np.asarray(t, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        if t.shape != p.shape or t.ndim != 2:
            raise ValueError(f"truth {t.shape} and pred {p.shape} must be equal (N, L)")
        column_sse = np.sum((p - t) ** 2, axis=1)
        power = np.sum(p * p, axis=1)
        scale = np.divide(np.sum(p * t, axis=1), power, out=np.ones_like(power), where=power > 0)
        top_off = np.rint(np.asarray(tp, dtype=np.float64)) != np.rint(np.asarray(tt, dtype=np.float64))
        sse += float(column_sse.sum())
        shape_sse += float(np.sum((scale[:, None] * p - t) ** 2))
        top_sse += float(column_sse[top_off].sum())
        n += int(t.shape[0])
    return {"amplitude_fraction": _ratio(sse - shape_sse, sse),
            "cloud_top_off_fraction": _ratio(top_sse, sse), "n": n}


def water_budget_residual(tendencies: dict, rho, dz, pratec) -> np.ndarray:
    """Column water budget residual (N,) in mm s-1.

    -sum_k(sum of water tendencies [kg kg-1 s-1] * rho [kg m-3] * dz [m]) - pratec [mm s-1];
    zero when the water the scheme removes from the column equals the surface precipitation.
    """
    unknown = set(tendencies) - set(WATER_TENDENCIES)
    if unknown:
        raise ValueError(f"not water tendencies: {sorted(unknown)}")
    mass = np.asarray(rho, dtype=np.float64) * np.asarray(dz, dtype=np.float64)
    total = sum((np.asarray(t, dtype=np.float64) for t in tendencies.values()),
                np.zeros_like(mass))
    return -np.sum(total * mass, axis=1) - np.asarray(pratec, dtype=np.float64)


def negative_water_fraction(q, tendency, hold_seconds) -> float:
    """Fraction of columns where q + tendency * hold_seconds is negative at any level.

    q (N, L) in kg kg-1, tendency (N, L) in kg kg-1 s-1, hold_seconds (N,) or scalar in s.
    0 when there are no columns.
    """
    q = np.asarray(q, dtype=np.float64)
    hold = np.broadcast_to(np.asarray(hold_seconds, dtype=np.float64), q.shape[:1])
    after = q + np.asarray(tendency, dtype=np.float64) * hold[:, None]
    return float(np.mean(np.any(after < 0.0, axis=1))) if q.shape[0] else 0.0


def pooled_and_banded(truth: list, pred: list, pressure: list, masks: list, edges) -> dict:
    """R2, RMSE, MAE and bias of profile outputs given as parts of one grid each ((N_g, L_g)
    arrays, ``masks`` selecting columns): pooled over all levels and columns, and per pressure
    band (``edges``, Pa, ascending) for profiles on any grids."""
    t = np.concatenate([np.asarray(a, np.float64)[m].ravel() for a, m in zip(truth, masks)])
    p = np.concatenate([np.asarray(a, np.float64)[m].ravel() for a, m in zip(pred, masks)])
    where = np.concatenate([np.asarray(a)[m].ravel() for a, m in zip(pressure, masks)])
    band = np.clip(np.searchsorted(edges, where) - 1, 0, len(edges) - 2)
    bands = [_scores(t[band == b], p[band == b]) | {"n": int(np.sum(band == b))}
             for b in range(len(edges) - 1)]
    centres = np.sqrt(np.asarray(edges[:-1]) * np.asarray(edges[1:])) / 100.0
    return {"pooled": {**_scores(t, p), "n": int(t.size)},
            "by_pressure": {"pressure_hPa": centres.tolist(),
                            **{key: [b[key] for b in bands] for key in ("r2", "bias", "rmse", "n")}}}


def output_class(trigger, nca, dt, cudt) -> np.ndarray:
    """The kind of convection (0 none, 1 shallow, 2 deep) of columns as the scheme left them:
    shallow convection holds for exactly CUDT minutes (NCA = CUDT 60 s), deep convection for a
    whole number of steps (NCA >= DT)."""
    trigger = np.asarray(trigger, bool)
    shallow_hold = np.asarray(cudt, np.float64) * 60.0
    nca = np.nan_to_num(np.asarray(nca, np.float64), nan=-1.0)
    deep = trigger & (np.abs(nca - shallow_hold) >= 0.5) & (nca >= 0.5 * np.asarray(dt, np.float64))
    return np.where(trigger, np.where(deep, 2, 1), 0).astype(np.int8)


KINDS = ("none", "shallow", "deep")


def kind_scores(truth_class, pred_class, pred_pratec, pred_cldfra_dp_max, pred_cldfra_sh_max) -> dict:
    """Agreement of the kind of convection (0 none, 1 shallow, 2 deep) and MSKF's semantics of
    the outputs: the confusion matrix (rows truth, columns output), the fraction agreeing,
    truly shallow columns that came out deep, and outputs that break the semantics (shallow
    columns that rain or carry a deep cloud, deep ones with a shallow cloud): the last three
    are zero by construction of the runtime."""
    truth_class, pred_class = np.asarray(truth_class), np.asarray(pred_class)
    confusion = [[int(np.sum((truth_class == a) & (pred_class == b))) for b in range(3)] for a in range(3)]
    shallow, deep = pred_class == 1, pred_class == 2
    return {"confusion": confusion, "kinds": list(KINDS),
            "agreement": _ratio(int(np.sum(truth_class == pred_class)), truth_class.size),
            "shallow_made_deep": int(np.sum((truth_class == 1) & deep)),
            "deep_made_shallow": int(np.sum((truth_class == 2) & shallow)),
            "shallow_outputs_raining": int(np.sum(shallow & (np.asarray(pred_pratec) > 0))),
            "shallow_outputs_with_deep_cloud": int(np.sum(shallow & (np.asarray(pred_cldfra_dp_max) > 0))),
            "deep_outputs_with_shallow_cloud": int(np.sum(deep & (np.asarray(pred_cldfra_sh_max) > 0)))}
