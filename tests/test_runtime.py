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

from emulator import updraft as kf
from emulator.export import ExportError, export
from emulator.runtime import FEATURES_OUTPUT, EmulatorError, Runtime, constrain
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
    inner = wrf_arrays(sub, rt, "single_call")
    arrays = {}
    for name, a in inner.items():
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


def tile_columns(rt, arrays, frame) -> dict:
    """The 120 tile columns of ``arrays`` (as before a call) as the model takes them, W0AVG
    updated as the call updates it."""
    cols = {}
    for name in rt.required_arrays:
        a = inner(arrays[name])
        cols[name] = a.T.ravel() if a.ndim == 2 else a.transpose(2, 0, 1).reshape(120, 45)
        if name != "W" and a.ndim == 3:
            cols[name] = cols[name][:, :44]
    w = cols["W"]
    cols["W0AVG"] = ((cols["W0AVG"] * np.float32(1) + np.float32(0.5) * (w[:, :-1] + w[:, 1:]))
                     / np.float32(2))
    cols["Z_AGL"] = np.cumsum(cols["DZ8W"], axis=1) - 0.5 * cols["DZ8W"]
    cols["DX"] = np.full(120, frame.attrs["DX"], np.float32)
    cols["DT"] = np.full(120, frame.attrs["DT"], np.float32)
    return cols


def run(rt, arrays, bounds, frame, cudt=0.0, stepcu=1):
    return rt.run_tile(arrays, bounds, frame.attrs["DT"], frame.attrs["DX"], cudt, stepcu)


def test_export_metadata_parity_and_dynamic_batch(onnx_model):
    proto = onnx.load(str(onnx_model))
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = json.loads(meta["mlcu.contract"])
    assert contract["n_levels"] == 44
    # The contract's inputs, then MSKF's updraft computed from them (the default model's).
    assert [i.name for i in proto.graph.input] == [v["name"] for v in contract["inputs"]] + [kf.INPUT]
    assert meta["mlcu.updraft"] == kf.layout()
    assert [o.name for o in proto.graph.output] == [v["name"] for v in contract["outputs"]]
    stats = json.loads(meta["mlcu.stats"])
    assert len(stats["inputs"]["T_PHY"]["min"]) == 44
    provenance = json.loads(meta["mlcu.provenance"])
    assert provenance["epochs"] == 2 and provenance["parity"]["TRIGGER"]["max_rel"] <= 1e-4
    rt = runtime(onnx_model)
    for n in (1, 7):
        cols = {v["name"]: np.ones((n, 45 if v["level"] == "w" else 44) if v["level"] in ("mass", "w") else n,
                                   dtype=np.float32) * 300 for v in contract["inputs"]}
        out = rt.predict_columns(cols)
        assert out["RTHCUTEN"].shape == (n, 44) and out["PRATEC"].shape == (n,)


def test_export_failing_parity_writes_nothing(onnx_model, tmp_path):
    run_dir = json.loads({p.key: p.value for p in onnx.load(str(onnx_model)).metadata_props}
                         ["mlcu.provenance"])["run"]
    with pytest.raises(ExportError, match="does not reproduce PyTorch"):
        export(run_dir, tmp_path / "bad.onnx", tolerance=-1.0)
    assert not list(tmp_path.iterdir())


def test_model_and_contract_mismatches_are_clear(onnx_model, tmp_path):
    with pytest.raises(EmulatorError, match="does not exist"):
        runtime(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(EmulatorError, match="not a readable ONNX model"):
        runtime(tmp_path / "junk.onnx")
    proto = onnx.load(str(onnx_model))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(EmulatorError, match="not an mlcu model"):
        runtime(tmp_path / "bare.onnx")
    with pytest.raises(EmulatorError, match="44 mass levels, the data have 30"):
        runtime(onnx_model, n_levels=30)
    with pytest.raises(EmulatorError, match="nan_policy"):
        runtime(onnx_model, nan_policy="ignore")


@pytest.mark.parametrize("stages", ["joint", "separate"])
def test_tile_matches_the_model_on_columns_and_leaves_halos_alone(onnx_model, onnx_model_two_stage,
                                                                   frame, stages):
    model = onnx_model if stages == "joint" else onnx_model_two_stage
    rt = runtime(model, trigger_threshold=0.0)  # every column convects: all constrained
    assert (rt.trigger_session is not None) == (stages == "separate")
    arrays, bounds = tile_arrays(rt, frame)
    before = {k: v.copy() for k, v in arrays.items()}
    counts = run(rt, arrays, bounds, frame)
    assert counts["evaluated"] == counts["triggered"] == 120 and counts["held"] == 0
    for name, a in arrays.items():  # nothing outside the tile is touched
        outside = np.ones(a.shape, dtype=bool)
        outside[HALO:-HALO, ..., HALO:-HALO] = False
        if a.ndim == 3:
            outside[:, 44:, :] = True
        assert np.array_equal(a[outside], before[name][outside]), name
    # The same columns through the model directly, then the constraints.
    cols = tile_columns(rt, before, frame)
    expected, _ = constrain(rt.predict_columns(cols), cols, frame.attrs["DT"], 0.0, 44)
    got = inner(arrays["RTHCUTEN"])[:, :44, :].transpose(2, 0, 1).reshape(120, 44)
    np.testing.assert_allclose(got, expected["RTHCUTEN"], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(inner(arrays["PRATEC"]).T.ravel(), expected["PRATEC"], rtol=1e-5, atol=1e-12)
    if stages == "separate":  # the two sessions, features handed over, = the whole graph
        import onnxruntime as ort

        assert FEATURES_OUTPUT in [o.name for o in rt.trigger_session.get_outputs()]
        assert FEATURES_OUTPUT in [i.name for i in rt.session.get_inputs()]
        whole = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        names = rt.contract.output_names
        feed = {k: np.ascontiguousarray(cols[k], np.float32) for k in rt.contract.input_names}
        if rt.updraft:
            feed[kf.INPUT] = kf.channels(cols, rt.updraft_groups)
        reference = dict(zip(names, whole.run(names, feed)))
        staged = rt.predict_columns(cols)
        for name in names:
            np.testing.assert_allclose(staged[name], reference[name], rtol=1e-6, atol=1e-12, err_msg=name)


def test_updraft_trigger_runs_the_network_where_the_kernel_finds_a_cloud(onnx_model_updraft, frame):
    rt = runtime(onnx_model_updraft, trigger_threshold=0.0)  # the threshold plays no part
    assert rt.updraft and rt.updraft_trigger and rt.trigger_session is None
    assert rt.updraft_groups == ("downdraft", "tendencies")
    meta = {p.key: p.value for p in onnx.load(str(onnx_model_updraft)).metadata_props}
    assert meta["mlcu.trigger_stage"] == "updraft"
    assert meta["mlcu.updraft"] == kf.layout(rt.updraft_groups)
    arrays, bounds = tile_arrays(rt, frame)
    cols = tile_columns(rt, {k: v.copy() for k, v in arrays.items()}, frame)
    counts = run(rt, arrays, bounds, frame)
    fires = kf.convects(kf.channels(cols))
    assert 0 < counts["triggered"] == fires.sum() < 120
    assert (inner(arrays["CUBOT"]).T.ravel()[~fires] == 45).all()  # reset: CUBOT = KTE + 1
    tendency = inner(arrays["RTHCUTEN"])[:, :44, :].transpose(2, 0, 1).reshape(120, 44)
    assert not tendency[~fires].any() and tendency[fires].any(axis=1).all()
    expected, _ = constrain(rt.predict_columns(cols), cols, frame.attrs["DT"], 0.0, 44)
    np.testing.assert_allclose(tendency[fires], expected["RTHCUTEN"][fires], rtol=1e-5, atol=1e-12)
    # A model made with another channel layout is refused.
    bad = onnx.load(str(onnx_model_updraft))
    for prop in bad.metadata_props:
        if prop.key == "mlcu.updraft":
            prop.value = prop.value.replace("mass_flux", "mass flux")
    path = Path(str(onnx_model_updraft) + ".other.onnx")
    onnx.save(bad, str(path))
    with pytest.raises(EmulatorError, match="updraft channels"):
        runtime(path)


def test_w0avg_update_every_column_and_hold(onnx_model, frame):
    rt = runtime(onnx_model, trigger_threshold=0.0)
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


def test_below_threshold_everything_is_reset(onnx_model, frame):
    rt = runtime(onnx_model, trigger_threshold=1.01)
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


def test_constraints_on_every_triggered_column(onnx_model, frame):
    rt = runtime(onnx_model, trigger_threshold=0.0)
    arrays, bounds = tile_arrays(rt, frame, nx=20, ny=20)
    cudt = 5.0
    counts = run(rt, arrays, bounds, frame, cudt=cudt, stepcu=10)
    assert counts["triggered"] == 400 and counts["deep"] + counts["shallow"] == 400
    col = lambda name: inner(arrays[name])[:, :44].transpose(2, 0, 1).reshape(400, 44).astype(np.float64)  # noqa
    flat = lambda name: inner(arrays[name]).T.ravel().astype(np.float64)  # noqa
    dt = frame.attrs["DT"]
    pratec, nca = flat("PRATEC"), flat("NCA")
    deep = col("CLDFRA_DP").max(axis=1) > 0
    assert np.all(pratec >= 0)
    np.testing.assert_allclose(flat("RAINCV"), pratec * dt, rtol=1e-6)
    assert np.all(pratec[~deep] == 0) and np.all(nca[~deep] == cudt * 60)
    assert np.all(col("CLDFRA_SH")[deep] == 0) and np.all(col("CLDFRA_DP")[~deep] == 0)
    steps = nca[deep] / dt
    assert np.all(steps >= 1) and np.allclose(steps, np.rint(steps))
    for name, hi in (("CLDFRA_DP", 0.6), ("CLDFRA_SH", 0.2)):
        x = col(name)
        assert np.all((x == 0) | ((x >= 0.01 - 1e-7) & (x <= hi + 1e-7))), name
    assert np.all(col("QC_CU") >= 0) and np.all(col("QI_CU") >= 0)
    assert np.all(flat("CUTOP") >= flat("CUBOT")) and np.all(flat("CUBOT") >= 1)
    mass = col("RHO") * col("DZ8W")
    sink = -sum((mass * col(t)).sum(axis=1) for t in ("RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN"))
    scale = np.maximum(np.abs(mass * col("RQVCUTEN")).sum(axis=1), 1e-12)
    assert np.all(np.abs(sink - pratec) <= 1e-4 * scale + 1e-12)
    hold = np.maximum(nca, dt)[:, None]
    for tendency, species in (("RQVCUTEN", "QVAPOR"), ("RQCCUTEN", "QCLOUD"), ("RQRCUTEN", "QRAIN")):
        assert np.all(col(species) + col(tendency) * hold >= -1e-9), tendency


def test_nan_policy(onnx_model, frame):
    rt = runtime(onnx_model, trigger_threshold=0.0)
    arrays, bounds = tile_arrays(rt, frame)
    inner(arrays["QVAPOR"])[4, 7, 2] = np.nan  # i = 5, j = 3, k = 8
    with pytest.raises(EmulatorError, match=r"non-finite QVAPOR in column i=5, j=3 level k=8"):
        run(rt, arrays, bounds, frame)

    clean, bounds = tile_arrays(rt, frame)
    dirty = {k: v.copy() for k, v in clean.items()}
    inner(dirty["T_PHY"])[4, 7, 2] = np.inf
    zero = runtime(onnx_model, trigger_threshold=0.0, nan_policy="zero")
    assert run(zero, dirty, bounds, frame)["nan"] == 1
    run(zero, clean, bounds, frame)
    assert np.all(inner(dirty["RTHCUTEN"])[4, :, 2] == 0)
    other = np.ones(inner(clean["PRATEC"]).shape, dtype=bool)
    other[4, 2] = False
    np.testing.assert_array_equal(inner(dirty["PRATEC"])[other], inner(clean["PRATEC"])[other])


@pytest.mark.parametrize("policy", ["predict", "zero", "fallback"])
def test_out_of_distribution_policy(onnx_model, frame, policy):
    rt = runtime(onnx_model, trigger_threshold=0.0, ood_policy=policy)
    arrays, bounds = tile_arrays(rt, frame)
    inner(arrays["T_PHY"])[3, :, 6] += 80.0  # i = 4, j = 7: far outside any training column
    counts = run(rt, arrays, bounds, frame)
    assert counts["ood"] >= 1
    flag = inner(arrays["FALLBACK"])
    assert flag[3, 6] == (1 if policy == "fallback" else 0)
    assert counts["fallback"] == (counts["ood"] if policy == "fallback" else 0)
    pratec_nonzero = np.any(inner(arrays["RTHCUTEN"])[3, :, 6] != 0)
    assert pratec_nonzero == (policy == "predict")


def _replay(args, n_ranks=1, **kw):
    cmd = [str(BIN / "mlcu"), "replay", *args]
    if n_ranks > 1:
        cmd = ["mpirun", "-n", str(n_ranks), "--oversubscribe", str(BIN / "python"), "-m",
               "training.cli", "replay", *args]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO, **kw)


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


def test_evaluate_reads_the_onnx_model(onnx_model, synthetic_store, tmp_path):
    from training.evaluate import evaluate

    run_dir = json.loads({p.key: p.value for p in onnx.load(str(onnx_model)).metadata_props}
                         ["mlcu.provenance"])["run"]
    report = evaluate([run_dir, onnx_model], synthetic_store, "validation", tmp_path)
    torch_f1 = report["results"]["run"]["trigger"]["f1"]
    onnx_f1 = report["results"]["model.onnx"]["trigger"]["f1"]
    assert torch_f1 == pytest.approx(onnx_f1, abs=1e-3)
