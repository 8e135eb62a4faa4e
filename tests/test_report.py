"""The scores and the evaluation report: on columns of two grids, scored by training.evaluate's
own code, then written as JSON, Markdown and PNG plots."""

import json

import numpy as np

from training.evaluate import _part, score
from training.report import PLOTS, write_report

PROFILES = ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN", "RUCUTEN",
            "RVCUTEN", "CLDFRA_DP", "CLDFRA_SH", "QC_CU", "QI_CU")
DT = 30.0


def _columns(rng, n, levels, family):
    """Truth of n columns on a grid of ``levels`` levels: a third deep, a sixth shallow."""
    kind = rng.choice([0, 1, 2], size=n, p=[0.5, 1 / 6, 1 / 3])
    fires = kind > 0
    p = np.linspace(100000.0, 10000.0, levels)[None].repeat(n, 0)
    truth = {name: np.where(fires[:, None], rng.normal(scale=1e-4, size=(n, levels)), 0.0)
             for name in PROFILES}
    truth["CLDFRA_DP"] = np.where((kind == 2)[:, None], 0.3, np.zeros((n, levels)))
    truth["CLDFRA_SH"] = np.where((kind == 1)[:, None], 0.1, np.zeros((n, levels)))
    truth.update(TRIGGER=fires.astype(float), PRATEC=np.where(kind == 2, rng.gamma(2.0, 1e-3, n), 0.0),
                 NCA=np.where(kind == 2, 20 * DT, 0.0), CUTOP=np.full(n, levels - 2.0),
                 CUBOT=np.full(n, 3.0), P_HYD=p, RHO=np.full((n, levels), 1.0),
                 DZ8W=np.full((n, levels), 300.0), QVAPOR=np.full((n, levels), 1e-2))
    return truth, kind, np.full(n, family)


def _predict(rng, truth, kind, skill):
    """A prediction of ``truth``: noisy profiles, the kinds of convection right except for one
    shallow column made deep."""
    pred = {k: v + (1 - skill) * rng.normal(scale=1e-4, size=v.shape) * (v != 0)
            for k, v in truth.items() if k in PROFILES}
    made_deep = np.flatnonzero(kind == 1)[:1]
    nca = truth["NCA"].copy()
    nca[made_deep] = 10 * DT
    pratec = truth["PRATEC"] * (1 + (1 - skill) * rng.normal(size=len(kind)))
    pratec[kind != 2] = 0.0
    pred.update(TRIGGER=truth["TRIGGER"], PRATEC=np.abs(pratec), NCA=nca, CUTOP=truth["CUTOP"],
                CUBOT=truth["CUBOT"])
    return pred


def _parts(rng, skill):
    parts = []
    for levels, family, dx in ((44, 1, 3000.0), (61, 2, 25000.0)):
        truth, kind, fam = _columns(rng, 300, levels, family)
        parts.append(_part(truth, _predict(rng, truth, kind, skill), kind, fam,
                           np.full(300, dx), np.full(300, DT), np.zeros(300))
                     | {"file_id": np.full(300, len(parts))})
    return parts


def test_scores_on_two_grids_and_the_report(tmp_path):
    rng = np.random.default_rng(1234)
    results, profiles, scatter = {}, {}, {}
    for name, skill in (("good", 0.9), ("poor", 0.3)):
        parts = _parts(rng, skill)
        results[name] = score(parts, regimes={0: {1: "wk82"}, 1: {2: "jordan"}})
        profiles[name] = {}
        scatter[name] = {"truth": np.concatenate([p["truth"]["PRATEC"] for p in parts]) * 3600,
                         "pred": np.concatenate([p["pred"]["PRATEC"] for p in parts]) * 3600}

    res = results["good"]
    # Pooled over both grids, and per pressure band.
    bands = res["regression"]["RTHCUTEN"]["triggered"]["by_pressure"]
    assert len(bands["r2"]) == len(bands["pressure_hPa"]) == len(bands["bias"])
    assert res["regression"]["RTHCUTEN"]["triggered"]["pooled"]["r2"] > \
        results["poor"]["regression"]["RTHCUTEN"]["triggered"]["pooled"]["r2"]
    # The kind of convection: one shallow column per grid made deep, nothing else wrong.
    kind = res["kind"]
    assert kind["shallow_made_deep"] == 2 and kind["deep_made_shallow"] == 0
    assert kind["shallow_outputs_raining"] == 0
    assert sum(map(sum, kind["confusion"])) == 600
    # Per regime and per DX.
    assert set(res["groups"]["regime"]) == {"wk82", "jordan"}
    assert set(res["groups"]["dx_km"]) == {"3", "25"}
    assert res["groups"]["regime"]["wk82"]["columns"] == 300
    assert res["physics"]["water_budget_residual_mm_per_h"]["mean_abs"] > 0

    out = tmp_path / "report"
    report = write_report(out, results, profiles, scatter, title="Synthetic evaluation")
    for name in ("report.json", "report.md"):
        assert (out / name).is_file(), name
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
    assert json.loads((out / "report.json").read_text()) == report
    md = (out / "report.md").read_text()
    assert md.startswith("# Synthetic evaluation")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for var in ("RTHCUTEN", "RQVCUTEN", "PRATEC"):
        assert any(row.startswith(f"| {var} |") for row in rows), var
    assert any(row.startswith("| jordan | good |") for row in rows)
    assert any(row.startswith("| 25 | poor |") for row in rows)
    assert "n/a" in md  # no precipitation at 10 mm/h: its ETS is undefined
    for name in PLOTS:
        assert f"({name})" in md
