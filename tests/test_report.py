"""The evaluation report: files written, valid PNGs, JSON round trip and Markdown tables."""

import json

import numpy as np

from training.metrics import (equitable_threat_scores, negative_water_fraction,
                              nca_step_errors, regression_scores, trigger_scores,
                              water_budget_residual)
from training.report import write_report

VARIABLES = ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN")
PNGS = ("profiles.png", "r2_per_level.png", "pratec_scatter.png", "trigger_confusion.png")
N, L, DT = 200, 12, 60.0


def _model(rng, truth, skill):
    """Scores, mean profiles and PRATEC scatter of a noisy prediction of truth."""
    trig_t = truth["trigger"]
    trig_p = np.where(rng.random(N) < skill, trig_t, ~trig_t)
    regression, profiles, pred = {}, {}, {}
    for var in VARIABLES:
        t = truth[var]
        pred[var] = t + (1 - skill) * rng.normal(scale=t.std(), size=t.shape)
        regression[var] = {"triggered": regression_scores(t, pred[var], trig_t),
                           "all": regression_scores(t, pred[var])}
        profiles[var] = {"pressure_hPa": np.linspace(1000.0, 100.0, L),
                         "truth_mean": t[trig_t].mean(axis=0),
                         "pred_mean": pred[var][trig_t].mean(axis=0)}
    rain_t = truth["pratec"] * 3600.0
    rain_p = np.clip(rain_t + (1 - skill) * rng.normal(scale=2.0, size=N), 0.0, None)
    residual = water_budget_residual({"RQVCUTEN": pred["RQVCUTEN"], "RQCCUTEN": pred["RQCCUTEN"]},
                                     truth["rho"], truth["dz"], rain_p / 3600.0) * 3600.0
    rain_scores = regression_scores(rain_t, rain_p)["pooled"]
    results = {
        "regression": regression,
        "trigger": trigger_scores(trig_t, trig_p),
        "precipitation": {"r2": rain_scores["r2"], "bias_mm_per_h": rain_scores["bias"],
                          "ets": equitable_threat_scores(rain_t, rain_p, [0.1, 1.0, 50.0])},
        "nca": nca_step_errors(truth["nca"], truth["nca"] + DT * rng.integers(-2, 3, N), DT),
        "physics": {"water_budget_residual_mm_per_h": {
                        "mean_abs": np.abs(residual).mean(),
                        "p99_abs": np.percentile(np.abs(residual), 99)},
                    "negative_water_fraction": negative_water_fraction(
                        truth["qv"], pred["RQVCUTEN"], truth["nca"])},
    }
    return results, profiles, {"truth": rain_t, "pred": rain_p}


def _synthetic(rng):
    trigger = rng.random(N) < 0.4
    truth = {var: np.where(trigger[:, None], rng.normal(scale=1e-4, size=(N, L)), 0.0)
             for var in VARIABLES}
    truth["RQCCUTEN"][:, -1] = 0.0  # constant top level: R2 undefined, shown as n/a
    truth.update(trigger=trigger,
                 pratec=np.where(trigger, rng.gamma(2.0, 1e-3, N), 0.0),
                 nca=np.where(trigger, 1800.0, 0.0), qv=rng.uniform(1e-4, 2e-2, (N, L)),
                 rho=np.linspace(1.2, 0.2, L)[None].repeat(N, 0), dz=np.full((N, L), 500.0))
    return truth


def test_write_report(tmp_path):
    rng = np.random.default_rng(1234)
    truth = _synthetic(rng)
    results, profiles, scatter = {}, {}, {}
    for name, skill in (("mlp-small", 0.9), ("mlp-large", 0.6)):
        results[name], profiles[name], scatter[name] = _model(rng, truth, skill)

    out = tmp_path / "report"
    report = write_report(out, results, profiles, scatter, title="Synthetic evaluation")

    for name in ("report.json", "report.md") + PNGS:
        assert (out / name).is_file(), name
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name

    loaded = json.loads((out / "report.json").read_text())
    assert loaded == report
    assert set(loaded["results"]) == set(loaded["profiles"]) == {"mlp-small", "mlp-large"}
    r2 = loaded["results"]["mlp-large"]["regression"]["RQCCUTEN"]["triggered"]["per_level"]["r2"]
    assert r2[-1] is None and all(isinstance(v, float) for v in r2[:-1])
    assert len(loaded["profiles"]["mlp-small"]["RTHCUTEN"]["pressure_hPa"]) == L

    md = (out / "report.md").read_text()
    assert md.startswith("# Synthetic evaluation")
    assert "mlp-small" in md and "mlp-large" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for var in VARIABLES:
        assert any(row.startswith(f"| {var} |") for row in rows), var
    assert "n/a" in md  # the ETS at 50 mm/h has no events
    for name in PNGS:
        assert f"({name})" in md
