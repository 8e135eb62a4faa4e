"""ONNX export and the runtime's MSKF semantics on WRF-shaped tiles of the oracle files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import xarray as xr

from emulator import features as ft
from emulator import updraft as kf
from emulator.runtime import EmulatorError, Runtime, constrain
from training.export import ExportError, export
from training.replay import wrf_arrays
from training.wrfout import open_wrfout

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HALO = 3


@pytest.fixture(scope="module")
def frame(oracle_files):
    path = [p for p in oracle_files if p.name.endswith("05km_01.nc")][0]
    return open_wrfout(path, extras=("QCLOUD", "QRAIN", "QICE", "QSNOW"), chunks=None,
                       time=0).isel(Time=0).load()


def runtime(model, **options):
    return Runtime.from_options({"model": str(model), **options})


def tile_arrays(rt, frame, nx=12, ny=10):
    """WRF memory arrays with halos around a nx x ny patch of the oracle file, every column
    evaluated (NCA = -100); returns (arrays, bounds)."""
    sub = frame.isel(west_east=slice(0, nx), south_north=slice(0, ny))
    inner_arrays = wrf_arrays(sub, rt, "single_call")
    arrays = {}
    for name, a in inner_arrays.items():
        shape = (nx + 2 * HALO,) + a.shape[1:-1] + (ny + 2 * HALO,)
        big = np.full(shape, -999, dtype=a.dtype, order="F")
        big[HALO:HALO + nx, ..., HALO:HALO + ny] = a
        arrays[name] = big
    nz = frame.sizes["bottom_top"]
    bounds = (1, nx + 1, 1, ny + 1, 1, nz + 1,
              1 - HALO, nx + HALO, 1 - HALO, ny + HALO, 1, nz + 1,
              1, nx, 1, ny, 1, nz)
    return arrays, bounds


def inner(a):
    return a[HALO:-HALO, ..., HALO:-HALO]


def tile_columns(rt, arrays, frame, n=120) -> dict:
    """The tile columns of ``arrays`` (as before a call) as the model takes them, W0AVG
    updated as the call updates it."""
    cols = {}
    for name in rt.required_arrays:
        a = inner(arrays[name])
        cols[name] = a.T.ravel() if a.ndim == 2 else a.transpose(2, 0, 1).reshape(n, 45)
        if name != "W" and a.ndim == 3:
            cols[name] = cols[name][:, :44]
    w = cols["W"]
    cols["W0AVG"] = ((cols["W0AVG"] * np.float32(1) + np.float32(0.5) * (w[:, :-1] + w[:, 1:]))
                     / np.float32(2))
    cols["Z_AGL"] = np.cumsum(cols["DZ8W"], axis=1) - 0.5 * cols["DZ8W"]
    cols["DX"] = np.full(n, frame.attrs["DX"], np.float32)
    cols["DT"] = np.full(n, frame.attrs["DT"], np.float32)
    return cols


def profile(arrays, name, n=120):
    return inner(arrays[name])[:, :44, :].transpose(2, 0, 1).reshape(n, 44)


def flat(arrays, name):
    return inner(arrays[name]).T.ravel()


def run(rt, arrays, bounds, frame, cudt=0.0, stepcu=1):
    return rt.run_tile(arrays, bounds, frame.attrs["DT"], frame.attrs["DX"], cudt, stepcu)


def regrid(cols: dict, levels: np.ndarray) -> dict:
    """The columns on a coarser grid: the mass levels ``levels`` of theirs (and the full levels
    around them), layer thickness summed: a different level count and distribution."""
    out = dict(cols)
    edges = np.concatenate([levels, [cols["T_PHY"].shape[1]]])
    for name, x in cols.items():
        if np.ndim(x) == 2 and x.shape[1] == 44:
            out[name] = x[:, levels]
    out["W"] = cols["W"][:, edges]
    out["DZ8W"] = np.add.reduceat(cols["DZ8W"], levels, axis=1)
    out["Z_AGL"] = np.cumsum(out["DZ8W"], axis=1) - 0.5 * out["DZ8W"]
    return out


def test_export_metadata_parity_and_any_grid(onnx_model, frame):
    proto = onnx.load(str(onnx_model))
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = json.loads(meta["mlcu.contract"])
    assert contract["n_levels"] is None  # level-agnostic
    assert meta["mlcu.design"] == "kernel" and json.loads(meta["mlcu.kernel_layout"]) == ft.layout()
    graph_inputs = [i.name for i in proto.graph.input]
    assert graph_inputs[-1] == ft.KERNEL_INPUT
    assert set(graph_inputs[:-1]) <= {v["name"] for v in contract["inputs"]}
    assert [o.name for o in proto.graph.output] == [v["name"] for v in contract["outputs"]]
    stats = json.loads(meta["mlcu.stats"])
    assert isinstance(stats["inputs"]["T_PHY"]["min"], float) and "by_pressure" in stats["inputs"]["T_PHY"]
    provenance = json.loads(meta["mlcu.provenance"])
    assert provenance["epochs"] == 2 and provenance["parity"]["RTHCUTEN"]["max_rel"] <= 1e-4
    scales = json.loads(meta["mlcu.target_scales"])
    assert scales["RTHCUTEN"] > 0

    # One model, any grid: the same columns on 44 levels and on 30 and 23 of them.
    rt = runtime(onnx_model)
    arrays, _ = tile_arrays(rt, frame)
    cols = tile_columns(rt, arrays, frame)
    for levels in (np.arange(44), np.r_[0:16, 16:44:2], np.r_[0:10, 10:44:3]):
        grid = regrid(cols, levels)
        out = rt.predict_columns(grid)
        assert out["RTHCUTEN"].shape == (120, len(levels)) and out["PRATEC"].shape == (120,)
        kind = kf.kinds(kf.diagnose(grid)[1])
        assert ((out["TRIGGER"] > 0.5) == (kind > 0)).all()


def test_export_failing_parity_writes_nothing(onnx_model, tmp_path):
    run_dir = onnx_model.parent / "run"  # the fixture exports next to its run folder
    provenance = json.loads({p.key: p.value for p in onnx.load(str(onnx_model)).metadata_props}
                            ["mlcu.provenance"])
    assert provenance["run"] == run_dir.name and "/" not in provenance["store"]
    with pytest.raises(ExportError, match="does not reproduce PyTorch"):
        export(run_dir, tmp_path / "bad.onnx", tolerance=-1.0)
    assert not list(tmp_path.iterdir())


def _with_meta(model, path, **changes):
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key](prop.value)
    onnx.save(proto, str(path))
    return path


def test_bad_models_are_refused_with_the_file_named(onnx_model, tmp_path):
    with pytest.raises(EmulatorError, match="does not exist"):
        runtime(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(EmulatorError, match="junk.onnx is not a readable ONNX model"):
        runtime(tmp_path / "junk.onnx")
    proto = onnx.load(str(onnx_model))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(EmulatorError, match="bare.onnx is not an mlcu model"):
        runtime(tmp_path / "bare.onnx")
    with pytest.raises(EmulatorError, match="nan_policy"):
        runtime(onnx_model, nan_policy="ignore")
    # A target without a scale (zero in all data, but not declared so) is refused.
    zero = _with_meta(onnx_model, tmp_path / "zero.onnx", **{
        "mlcu.target_scales": lambda v: json.dumps(json.loads(v) | {"RQVCUTEN": 0.0})})
    with pytest.raises(EmulatorError, match=r"zero.onnx: outputs \['RQVCUTEN'\] have a zero or missing scale"):
        runtime(zero)
    other = _with_meta(onnx_model, tmp_path / "other.onnx",
                       **{"mlcu.kernel_layout": lambda v: v.replace("mass_flux", "mass flux")})
    with pytest.raises(EmulatorError, match="other.onnx: the model was trained on kernel channels"):
        runtime(other)


def test_the_network_runs_where_the_kernel_finds_a_cloud(onnx_model, frame):
    rt = runtime(onnx_model, trigger_threshold=1.01)  # the threshold plays no part
    arrays, bounds = tile_arrays(rt, frame)
    before = {k: v.copy() for k, v in arrays.items()}
    cols = tile_columns(rt, before, frame)
    counts = run(rt, arrays, bounds, frame)
    kind = kf.kinds(kf.diagnose(cols)[1])
    fires = kind > 0
    assert counts["evaluated"] == 120 and counts["held"] == 0
    assert 0 < counts["triggered"] == fires.sum() < 120
    assert counts["deep"] == (kind == 2).sum() and counts["shallow"] == (kind == 1).sum()
    for name, a in arrays.items():  # nothing outside the tile is touched
        outside = np.ones(a.shape, dtype=bool)
        outside[HALO:-HALO, ..., HALO:-HALO] = False
        if a.ndim == 3:
            outside[:, 44:, :] = True
        assert np.array_equal(a[outside], before[name][outside]), name
    # Columns without a cloud keep MSKF's reset values; the others are the model's outputs
    # made consistent by the constraints, deep or shallow as the kernel says.
    tendency = profile(arrays, "RTHCUTEN")
    assert (flat(arrays, "CUBOT")[~fires] == 45).all() and (flat(arrays, "CUTOP")[~fires] == 1).all()
    assert not tendency[~fires].any() and tendency[fires].any(axis=1).all()
    raw = rt.predict_columns(cols)
    expected = constrain({k: v[fires] for k, v in raw.items()}, {k: cols[k][fires] for k in
                         ("QVAPOR", "QCLOUD", "QRAIN", "QICE", "QSNOW", "RHO", "DZ8W")},
                         frame.attrs["DT"], 0.0, kind[fires] == 2)
    np.testing.assert_allclose(tendency[fires], expected["RTHCUTEN"], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(flat(arrays, "PRATEC")[fires], expected["PRATEC"], rtol=1e-5, atol=1e-12)
    # The kernel's cloud base and top, and nothing above the top.
    col = kf.diagnose(cols)[1]
    top = col[:, kf.COLUMN_FIELDS.index("top_level")]
    np.testing.assert_array_equal(flat(arrays, "CUTOP")[fires], top[fires])
    np.testing.assert_array_equal(flat(arrays, "CUBOT")[fires], col[fires, kf.COLUMN_FIELDS.index("lcl_level")])
    above = np.arange(1, 45)[None, :] > top[:, None]
    assert not tendency[fires][above[fires]].any()


def test_shallow_and_deep_follow_the_kernel_on_every_oracle_file(onnx_model, oracle_files):
    """MSKF's semantics from the kernel's decision: no shallow column made deep, shallow ones
    hold for CUDT, do not rain and have no deep cloud, deep ones no shallow cloud."""
    rt = runtime(onnx_model)
    for path in oracle_files:
        frame = open_wrfout(path, extras=("QCLOUD", "QRAIN", "QICE", "QSNOW"), chunks=None,
                            time=0).isel(Time=0).load()
        arrays, bounds = tile_arrays(rt, frame, nx=32, ny=32)
        cols = tile_columns(rt, arrays, frame, n=1024)
        kind = kf.kinds(kf.diagnose(cols)[1])
        cudt = 5.0
        run(rt, arrays, bounds, frame, cudt=cudt, stepcu=10)
        shallow, deep = kind == 1, kind == 2
        nca, pratec = flat(arrays, "NCA"), flat(arrays, "PRATEC")
        assert (nca[shallow] == cudt * 60).all() and (pratec[shallow] == 0).all(), path.name
        steps = nca[deep] / frame.attrs["DT"]
        assert (steps >= 1).all() and np.allclose(steps, np.rint(steps)), path.name
        assert not profile(arrays, "CLDFRA_DP", 1024)[shallow].any(), path.name
        assert not profile(arrays, "CLDFRA_SH", 1024)[deep].any(), path.name


def test_w0avg_update_every_column_and_hold(onnx_model, frame):
    rt = runtime(onnx_model)
    arrays, bounds = tile_arrays(rt, frame)
    dt = frame.attrs["DT"]
    held = inner(arrays["NCA"])
    held[::2, :] = 3 * dt  # every other i row is held (NCA >= DT/2)
    held[1::4, :] = 0.49 * dt  # just below the hold: evaluated
    for name in ("RTHCUTEN", "PRATEC", "CUTOP", "QC_CU"):
        inner(arrays[name])[...] = 7.0  # what an earlier call left
    w, w0 = inner(arrays["W"]).copy(), inner(arrays["W0AVG"]).copy()
    counts = run(rt, arrays, bounds, frame, stepcu=3)
    assert counts["held"] == 6 * 10 and counts["evaluated"] == 60
    tst = np.float32(6)
    expected = (w0[:, :44] * (tst - 1) + np.float32(0.5) * (w[:, :44] + w[:, 1:45])) / tst
    np.testing.assert_array_equal(inner(arrays["W0AVG"])[:, :44], expected)
    for name in ("RTHCUTEN", "PRATEC", "CUTOP", "QC_CU"):
        values = inner(arrays[name])
        values = values[:, :44] if values.ndim == 3 else values
        assert np.all(values[::2] == 7.0), f"{name} of held columns changed"
        assert not np.any(values[1::2] == 7.0), f"{name} of evaluated columns not recomputed"
    assert np.all(inner(arrays["NCA"])[::2] == 3 * dt)


def test_a_column_without_a_cloud_is_reset(onnx_model_seed, frame):
    rt = runtime(onnx_model_seed, trigger_threshold=1.01)  # the learned trigger never fires
    arrays, bounds = tile_arrays(rt, frame)
    for name in rt.output_arrays:
        inner(arrays[name])[...] = 5
    counts = run(rt, arrays, bounds, frame)
    assert counts["triggered"] == 0
    for name in rt.output_arrays:
        values = inner(arrays[name])[:, :44] if arrays[name].ndim == 3 else inner(arrays[name])
        if name == "CUTOP":
            assert np.all(values == 1)
        elif name == "CUBOT":
            assert np.all(values == 45)
        elif name == "NCA":
            assert np.all(values == 5)  # MSKF leaves NCA of columns that do not convect
        else:
            assert np.all(values == 0), name


@pytest.mark.parametrize("design", ["kernel", "seed"])
def test_constraints_on_every_convecting_column(onnx_model, onnx_model_seed, frame, design):
    rt = runtime(onnx_model if design == "kernel" else onnx_model_seed, trigger_threshold=0.0)
    arrays, bounds = tile_arrays(rt, frame, nx=20, ny=20)
    cudt = 5.0
    counts = run(rt, arrays, bounds, frame, cudt=cudt, stepcu=10)
    fired = flat(arrays, "CUBOT") <= 44
    assert counts["triggered"] == fired.sum() > 0 and counts["deep"] + counts["shallow"] == fired.sum()
    col = lambda name: profile(arrays, name, 400).astype(np.float64)[fired]  # noqa
    one = lambda name: flat(arrays, name).astype(np.float64)[fired]  # noqa
    dt = frame.attrs["DT"]
    pratec, nca = one("PRATEC"), one("NCA")
    # Deep: a deep cloud, or for the seed design's columns without one, a hold other than CUDT.
    deep = (col("CLDFRA_DP").max(axis=1) > 0) | (nca != cudt * 60)
    assert deep.sum() == counts["deep"]
    assert np.all(pratec >= 0)
    np.testing.assert_allclose(one("RAINCV"), pratec * dt, rtol=1e-6)
    assert np.all(pratec[~deep] == 0)
    assert np.all(col("CLDFRA_SH")[deep] == 0) and np.all(col("CLDFRA_DP")[~deep] == 0)
    steps = nca[deep] / dt
    assert np.all(steps >= 1) and np.allclose(steps, np.rint(steps))
    for name, hi in (("CLDFRA_DP", 0.6), ("CLDFRA_SH", 0.2)):
        x = col(name)
        assert np.all((x == 0) | ((x >= 0.01 - 1e-7) & (x <= hi + 1e-7))), name
    assert np.all(col("QC_CU") >= 0) and np.all(col("QI_CU") >= 0)
    assert np.all(one("CUTOP") >= one("CUBOT")) and np.all(one("CUBOT") >= 1)
    mass = col("RHO") * col("DZ8W")
    sink = -sum((mass * col(t)).sum(axis=1) for t in ("RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN"))
    scale = np.maximum(np.abs(mass * col("RQVCUTEN")).sum(axis=1), 1e-12)
    assert np.all(np.abs(sink - pratec) <= 1e-4 * scale + 1e-12)
    hold = np.maximum(nca, dt)[:, None]
    for tendency, species in (("RQVCUTEN", "QVAPOR"), ("RQCCUTEN", "QCLOUD"), ("RQRCUTEN", "QRAIN")):
        assert np.all(col(species) + col(tendency) * hold >= -1e-9), tendency


def test_nan_policy(onnx_model, frame):
    rt = runtime(onnx_model)
    arrays, bounds = tile_arrays(rt, frame)
    inner(arrays["QVAPOR"])[4, 7, 2] = np.nan  # i = 5, j = 3, k = 8
    with pytest.raises(EmulatorError, match=r"non-finite QVAPOR in column i=5, j=3 level k=8"):
        run(rt, arrays, bounds, frame)

    clean, bounds = tile_arrays(rt, frame)
    dirty = {k: v.copy() for k, v in clean.items()}
    inner(dirty["T_PHY"])[4, 7, 2] = np.inf
    zero = runtime(onnx_model, nan_policy="zero")
    assert run(zero, dirty, bounds, frame)["nan"] == 1
    run(zero, clean, bounds, frame)
    assert np.all(inner(dirty["RTHCUTEN"])[4, :, 2] == 0)
    other = np.ones(inner(clean["PRATEC"]).shape, dtype=bool)
    other[4, 2] = False
    np.testing.assert_array_equal(inner(dirty["PRATEC"])[other], inner(clean["PRATEC"])[other])


@pytest.mark.parametrize("policy", ["predict", "zero", "fallback"])
def test_out_of_distribution_policy(onnx_model_oracle, frame, policy):
    rt = runtime(onnx_model_oracle, ood_policy=policy)
    arrays, bounds = tile_arrays(rt, frame)
    cols = tile_columns(rt, arrays, frame)
    kind = kf.kinds(kf.diagnose(cols)[1])
    flagged = rt.out_of_distribution(cols) & (kind > 0)
    assert flagged.sum() <= 1  # columns like the training ones are not flagged
    j, i = divmod(int(np.flatnonzero((kind > 0) & ~flagged)[0]), 12)
    inner(arrays["U_PHY"])[i, :, j] += 300.0  # a convecting column far outside any training one
    counts = run(rt, arrays, bounds, frame)
    assert counts["ood"] == flagged.sum() + 1
    flag = inner(arrays["FALLBACK"])
    assert flag[i, j] == (1 if policy == "fallback" else 0)
    assert counts["fallback"] == (counts["ood"] if policy == "fallback" else 0) == flag.sum()
    assert np.any(inner(arrays["RTHCUTEN"])[i, :, j] != 0) == (policy == "predict")


def test_out_of_distribution_ranges_do_not_collapse(onnx_model_oracle, frame):
    """Ranges seen narrow in training keep a least width; vapour has no lower bound; columns
    like the training ones and a drier copy of them are not flagged."""
    rt = runtime(onnx_model_oracle)
    lo, hi = rt.ood["QVAPOR"]
    assert (lo < 0).all() and (lo > -1e-7).all() and (hi > 0).all()
    lo_t, hi_t = rt.ood["T_PHY"]
    assert (hi_t - lo_t >= 4.0 - 1e-3).all()
    arrays, _ = tile_arrays(rt, frame)
    cols = tile_columns(rt, arrays, frame)
    usual = rt.out_of_distribution(cols)
    assert usual.mean() < 0.05
    dry = dict(cols, QVAPOR=cols["QVAPOR"] * 0.0)
    assert (rt.out_of_distribution(dry) == usual).all()


def _replay(args, n_ranks=1, **kw):
    cmd = [str(BIN / "mlcu"), "replay", *args]
    if n_ranks > 1:
        cmd = ["mpirun", "-n", str(n_ranks), "--oversubscribe", str(BIN / "python"), "-m",
               "training.cli", "replay", *args]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO, **kw)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")
def test_replay_on_oracle_file_one_and_two_ranks_identical(onnx_model, oracle_files, tmp_path):
    path = [p for p in oracle_files if p.name.endswith("25km_01.nc")][0]
    args = ["--model", str(onnx_model), "--input", str(path), "--pairing", "single_call",
            "--tile", "20", "24"]
    one = _replay(args + ["--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    assert "trigger F1" in one.stdout
    two = _replay(args + ["--out", str(tmp_path / "two")], n_ranks=2)
    assert two.returncode == 0, two.stderr
    a = xr.open_dataset(tmp_path / "one" / path.name)
    b = xr.open_dataset(tmp_path / "two" / path.name)
    assert set(a.data_vars) >= {"RTHCUTEN", "PRATEC", "RAINCV", "NCA", "W0AVG", "FALLBACK"}
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    report = json.loads((tmp_path / "one" / "report.json").read_text())
    result = report["results"]["model.onnx"]
    assert result["runtime_counts"]["evaluated"] == 4096
    assert result["columns_scored"]["deep"] + result["columns_scored"]["shallow"] > 1000


def test_replay_history_files_keep_held_columns(onnx_model, ideal_files, tmp_path):
    out = _replay(["--model", str(onnx_model), "--input", str(ideal_files[-1]), "--out", str(tmp_path)])
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    counts = report["results"]["model.onnx"]["runtime_counts"]
    src = xr.open_dataset(ideal_files[-1])
    held = (src["NCA"].values >= 0.5 * src.attrs["DT"])
    assert counts["held"] == int(held.sum())
    got = xr.open_dataset(tmp_path / ideal_files[-1].name)
    np.testing.assert_array_equal(got["RTHCUTEN"].values.transpose(0, 2, 3, 1)[held],
                                  src["RTHCUTEN"].values.transpose(0, 2, 3, 1)[held])


def test_evaluate_and_replay_score_the_same_columns_the_same(onnx_model_oracle, oracle_files, tmp_path):
    """One scoring path: mlcu evaluate on a store of an oracle file gives the numbers mlcu
    replay gives on that file; --raw scores the network without the runtime's work."""
    from training.evaluate import evaluate
    from training.prepare import PrepareConfig, prepare

    path = [p for p in oracle_files if p.name.endswith("09km_01.nc")][0]
    train = [p for p in oracle_files if p.name.endswith("09km_00.nc")][0]
    store = tmp_path / "store"
    prepare(PrepareConfig.load(REPO / "configs" / "prepare_oracle.yaml",
                               ["split.rules=[{pattern: '*_00.nc', split: train}, "
                                "{pattern: '*_01.nc', split: validation}]"],
                               input=[str(path), str(train)], out=str(store), scheduler="synchronous"))
    evaluated = evaluate([onnx_model_oracle], store, "validation", tmp_path / "evaluate")
    replayed = _replay(["--model", str(onnx_model_oracle), "--input", str(path), "--pairing", "single_call",
                        "--out", str(tmp_path / "replay")])
    assert replayed.returncode == 0, replayed.stderr
    a = evaluated["results"]["model.onnx"]
    b = json.loads((tmp_path / "replay" / "report.json").read_text())["results"]["model.onnx"]
    for name in ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "PRATEC", "CLDFRA_DP"):
        for key in ("r2", "bias", "n"):
            assert a["regression"][name]["triggered"]["pooled"][key] == pytest.approx(
                b["regression"][name]["triggered"]["pooled"][key], rel=1e-6, abs=1e-30), (name, key)
    for section in ("trigger", "kind", "nca", "cloud_levels"):
        assert a[section] == b[section], section
    # counts equal, scores to rounding (ONNX Runtime rounds a row by its place in the batch)
    for kind, groups in a["groups"].items():
        for group, scores in groups.items():
            other = b["groups"][kind][group]
            assert scores.keys() == other.keys(), group
            for key, value in scores.items():
                expected = pytest.approx(other[key], rel=1e-6, abs=1e-12) if other[key] else other[key]
                assert value == expected, (group, key)
    raw = evaluate([onnx_model_oracle], store, "validation", tmp_path / "raw", raw=True)["results"]["model.onnx"]
    assert raw["physics"]["water_budget_residual_mm_per_h"]["mean_abs"] > \
        1e3 * a["physics"]["water_budget_residual_mm_per_h"]["mean_abs"]
    assert a["physics"]["water_budget_residual_mm_per_h"]["max_abs"] < 1e-6
