"""The online benchmark's parts that need no WRF: namelists, the members' perturbation, WRF's
log lines, the report. Run with .venv/bin/pytest -q bench/online."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from netCDF4 import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import case as C
import report
import runs


def test_namelist_of_a_restarted_emulator_run(tmp_path):
    full = C.full_case()
    model = tmp_path / "model.onnx"
    text = C.namelist(full, C.CONFIG_BY_NAME["hybrid"], model, full.half_minutes, restart=True)
    assert "restart                  = .true.," in text
    assert "start_hour               = 06," in text and "end_hour                 = 12," in text
    assert "run_hours                = 6," in text
    assert "e_we                     = 65," in text and "e_vert                   = 45," in text
    assert f"mlcu_model               = '{model}'," in text
    assert "mlcu_hybrid              = .true.," in text
    assert "mlcu_ood_policy          = 'fallback'," in text
    assert "restart_interval         = 360," in text
    none = C.namelist(full, C.CONFIG_BY_NAME["none"])
    assert "cu_physics               = 0," in none and "mlcu" not in none
    assert C.quick_case().half_minutes == 120


def _synthetic_wrfinput(path: Path, seed: int = 1) -> None:
    """A small state built as ideal.exe builds em_convrad's: uniform base, +-0.5 K noise in
    the lowest 10 levels, AL from theta, PH integrated hydrostatically, THM moist."""
    nz, ny, nx = 14, 6, 7
    rng = np.random.default_rng(seed)
    pb = np.linspace(1.0e5, 2.0e4, nz)[:, None, None] * np.ones((nz, ny, nx))
    p = np.full((nz, ny, nx), 50.0)
    theta_base = np.linspace(0.0, 60.0, nz)[:, None, None] * np.ones((nz, ny, nx))
    t = theta_base.copy()
    t[:10] += rng.random((10, ny, nx)) - 0.5
    qv = np.linspace(0.018, 0.0, nz)[:, None, None] * np.ones((nz, ny, nx))
    alb = (C.R_D / C.P1000MB) * (theta_base + C.T0) * (pb / C.P1000MB) ** C.CVPM
    alt = (C.R_D / C.P1000MB) * (t + C.T0) * (1 + C.RVOVRD * qv) * ((p + pb) / C.P1000MB) ** C.CVPM
    al = alt - alb
    mu, mub = np.full((ny, nx), 30.0), np.full((ny, nx), 9.5e4)
    dnw = -np.full(nz, 1.0 / nz)
    c1h, c2h = np.ones(nz), np.zeros(nz)
    ph = C.hydrostatic_ph(np.zeros((ny, nx)), al, alb, mu, mub, dnw, c1h, c2h)
    with Dataset(path, "w") as ds:
        for name, size in (("Time", None), ("bottom_top", nz), ("bottom_top_stag", nz + 1),
                           ("south_north", ny), ("west_east", nx)):
            ds.createDimension(name, size)
        three = ("Time", "bottom_top", "south_north", "west_east")
        for name, data in (("T", t), ("THM", C.moist_theta(t, qv)), ("QVAPOR", qv), ("AL", al),
                           ("ALB", alb), ("P", p), ("PB", pb)):
            ds.createVariable(name, "f4", three)[0] = data
        ds.createVariable("PH", "f4", ("Time", "bottom_top_stag", "south_north", "west_east"))[0] = ph
        ds.createVariable("MU", "f4", ("Time", "south_north", "west_east"))[0] = mu
        ds.createVariable("MUB", "f4", ("Time", "south_north", "west_east"))[0] = mub
        for name, data in (("DNW", dnw), ("C1H", c1h), ("C2H", c2h)):
            ds.createVariable(name, "f4", ("Time", "bottom_top"))[0] = data


def test_members_replace_the_perturbation_reproducibly(tmp_path):
    source = tmp_path / "wrfinput_d01"
    _synthetic_wrfinput(source)
    pert = C.measure_perturbation(source)
    assert pert.levels == 10
    assert pert.amplitude_k == pytest.approx(1.0, abs=0.05)
    assert pert.hydrostatic_residual < 0.05 and pert.moist_residual_k < 1e-3

    a, b, c = (tmp_path / n for n in ("a.nc", "b.nc", "c.nc"))
    C.perturbed_member(source, a, 7, pert)
    C.perturbed_member(source, b, 7, pert)
    C.perturbed_member(source, c, 8, pert)
    assert a.read_bytes() == b.read_bytes()
    with Dataset(source) as s, Dataset(a) as m, Dataset(c) as other:
        t0, t1 = np.asarray(s["T"][0], np.float64), np.asarray(m["T"][0], np.float64)
        assert np.array_equal(t0[10:], t1[10:])            # above the perturbation: unchanged
        assert not np.allclose(t0[:10], t1[:10])
        assert not np.allclose(t1[:10], np.asarray(other["T"][0])[:10])
        noise = t1[:10] - t0[:10].mean(axis=(1, 2), keepdims=True)   # about ideal's level mean
        assert np.abs(noise).max() <= 0.5 * pert.amplitude_k + 1e-4
        assert np.abs(t1[:10].mean(axis=(1, 2)) - t0[:10].mean(axis=(1, 2))).max() < 0.3
    member = C.measure_perturbation(a)   # the member is consistent by the same checks
    assert member.levels == 10
    assert member.hydrostatic_residual < 0.05 and member.moist_residual_k < 1e-3


def test_step_times_leave_out_radiation_and_output_steps(tmp_path):
    lines = []
    for step in range(1, 41):
        t = C.START + C.dt.timedelta(seconds=30 * step)
        slow = step == 1 or step % 10 in (0, 1)
        lines.append(f"Timing for main: time {t:%Y-%m-%d_%H:%M:%S} on domain   1:    "
                     f"{5.0 if slow else 0.2 + 0.001 * step:.5f} elapsed seconds")
    (tmp_path / "rsl.error.0000").write_text("\n".join(lines) + "\n")
    timing = runs.step_times(tmp_path, 30.0, 300.0)
    assert timing["steps"] == 40 and timing["plain_steps"] == 32
    assert timing["median_step_s"] < 1.0


def test_counters_are_summed_over_ranks(tmp_path):
    for rank, n in ((0, 10), (1, 20)):
        (tmp_path / f"rsl.error.000{rank}").write_text(
            "some line\n"
            f"mlcu counters: time_s=600 ktau=21 columns={n} evaluated={n} ood=1 fallback=0\n"
            f"mlcu counters: time_s=1200 ktau=41 columns={2 * n} evaluated={2 * n} ood=2 fallback=1\n"
            f"mlcu counters: final time_s=1200 ktau=41 columns={2 * n} evaluated={2 * n} ood=2 fallback=1\n")
    got = runs.counters(tmp_path)
    assert got["ranks"] == 2
    assert got["by_time_s"]["600"] == {"columns": 30, "evaluated": 30, "ood": 2, "fallback": 0}
    assert got["final"]["evaluated"] == 60 and got["final"]["fallback"] == 2


def _summary(rainc: float, deep: float, dt_k: float, counters: dict | None = None) -> dict:
    n, nz = 7, 5
    minutes = np.arange(n) * 10.0
    prof = np.ones((n, nz))
    return {
        "minutes": minutes, "rainc": np.linspace(0, rainc, n), "rainnc": np.linspace(0, 1, n),
        "frac_convecting": np.full(n, 0.3), "frac_deep": np.linspace(0, deep, n),
        "frac_raining": np.linspace(0, deep, n),
        "prof_t": 280.0 + dt_k + prof, "prof_qv": 0.01 * prof, "prof_cloud": 1e-5 * prof,
        "prof_cloud_cu": 0.1 * prof, "prof_p": np.linspace(1e5, 2e4, nz) * prof,
        "rainc_map": np.full((4, 4), rainc, np.float32), "rain_map": np.full((4, 4), rainc + 1, np.float32),
        "nonfinite": {}, "timing": {"median_step_s": 0.3, "mean_step_s": 0.4},
        "counters": {"final": counters or {}, "by_time_s": {}},
    }


def test_report_holds_ensemble_means_members_and_targets(tmp_path):
    quick = C.quick_case(members=2, hours=1.0)
    emu = {"evaluated": 100, "ood": 2, "fallback": 0}
    summaries = {
        "mskf": {"m0": _summary(0.10, 0.02, 0.0), "m1": _summary(0.12, 0.03, 0.1)},
        "mlcu": {"m0": _summary(0.11, 0.025, 0.02, emu), "m1": _summary(0.115, 0.02, 0.05, emu)},
        "hybrid": {"m0": _summary(0.10, 0.02, 0.0, emu | {"fallback": 2}), "m1": None},
        "none": {"m0": _summary(0.0, 0.0, 1.0), "m1": _summary(0.0, 0.0, 1.2)},
    }
    outcomes = {name: {m: SimpleNamespace(completed=s is not None, wall_s=10.0,
                                          reason=None if s else "FATAL")
                       for m, s in per.items()} for name, per in summaries.items()}
    out, checks = report.write(tmp_path, quick, {"model": "m.onnx"}, outcomes, summaries,
                               {"identical": True, "summary": "same"}, {"total": 1.0})
    runs_ = out["runs"]
    assert set(runs_) == {"mskf", "mlcu", "hybrid", "none"}
    assert runs_["mlcu"]["rainc_mm"] == pytest.approx(0.1125)
    assert runs_["mlcu"]["members"]["m0"]["rms_t_k"] == pytest.approx(0.02)
    assert runs_["mlcu"]["ood_fraction"] == pytest.approx(0.02)
    assert runs_["hybrid"]["completed"] is False and runs_["hybrid"]["fallback_fraction"] == 0.02
    assert runs_["mskf"]["deep_fraction_range"][1][-1] == pytest.approx(0.03)
    assert out["paired_differences"]["mlcu"]["rainc_mm"]["m1"] == pytest.approx(-0.005)
    assert out["paired_differences"]["mskf_minus_mskf"]["rainc_mm"] == [pytest.approx(-0.02)]
    names = [t.name for t in checks]
    assert any("completed" in n for n in names) and any("restart" in n for n in names)
    first = checks[0]
    assert first.passed is False and "hybrid/m1" in first.detail
    assert (tmp_path / "report.md").is_file() and (tmp_path / "rain.png").is_file()
    assert "## Targets" in (tmp_path / "report.md").read_text()
