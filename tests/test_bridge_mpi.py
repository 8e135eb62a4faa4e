"""The mini-driver (Fortran, MPI) under mpirun: outputs independent of the decomposition, equal
to the Python runtime on the same arrays, inputs formed as the Python derivations form them,
MSKF's updraft as the trigger on MSKF's own columns, and clean failures (a message from the
ranks concerned, a non-zero exit, no hang)."""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from netCDF4 import Dataset

from emulator.runtime import Runtime
from training.wrfout import open_wrfout

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "fortran_bridge" / "build" / "mini_driver"
# As root (CI) OpenMPI must be told to run; in containers cross-memory attach is refused.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl_vader_single_copy_mechanism="none", OMP_NUM_THREADS="1")
TIMEOUT = 240


def mini_driver(ranks, *args, threads=1):
    """Run the mini-driver; returns (exit code, stdout + stderr, summary dict or None)."""
    if not MINI.is_file():
        pytest.fail(f"{MINI} is missing: build the bridge with `make bridge`")
    cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", str(MINI), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(ENV, OMP_NUM_THREADS=str(threads)), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"mini-driver hung: {' '.join(cmd)}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, out, json.loads(lines[-1]) if lines else None


def read(path):
    """The fields of the first time, and the global attributes (DX, DT, ...)."""
    with Dataset(path) as ds:
        fields = {name: np.asarray(ds[name][0]) for name in ds.variables if name != "Times"}
        return fields, {k: ds.getncattr(k) for k in ds.ncattrs()}


@pytest.fixture(scope="module")
def history_file(synthetic_files):
    """The synthetic history time with the most columns held by NCA."""
    def held(path):
        with Dataset(path) as ds:
            return int((ds["NCA"][0] >= 0.5 * ds.DT).sum())

    return max(synthetic_files, key=held)


@pytest.fixture(scope="module")
def runs(history_file, onnx_model, tmp_path_factory):
    """The same cumulus call on 1, 2 and 4 ranks (the last with two OpenMP threads per rank)."""
    tmp = tmp_path_factory.mktemp("mini")
    result = {}
    for ranks, tiles, threads in ((1, 1, 1), (2, 2, 1), (4, 3, 2)):
        out = tmp / f"out{ranks}.nc"
        extra = ["--inputs-out", tmp / "inputs.nc"] if ranks == 2 else []
        rc, log, summary = mini_driver(ranks, "--input", history_file, "--model", onnx_model,
                                       "--out", out, "--tiles", tiles, "--hold-from-file",
                                       *extra, threads=threads)
        assert rc == 0, log[-3000:]
        result[ranks] = (read(out)[0], summary)
    result["inputs"] = read(tmp / "inputs.nc")
    return result


def test_outputs_do_not_depend_on_the_decomposition(runs):
    one, summary = runs[1]
    assert summary["held"] > 0 and summary["evaluated"] + summary["held"] == summary["columns"]
    assert set(one) >= {"RTHCUTEN", "RQVCUTEN", "RUCUTEN", "PRATEC", "RAINCV", "NCA", "CUTOP",
                        "CUBOT", "CLDFRA_DP", "QC_CU", "W0AVG", "FALLBACK"}
    for ranks in (2, 4):
        outputs, other = runs[ranks]
        assert (other["ntasks_x"], other["ntasks_y"]) == ((1, 2) if ranks == 2 else (2, 2))
        assert {k: other[k] for k in ("evaluated", "held", "triggered")} == \
            {k: summary[k] for k in ("evaluated", "held", "triggered")}
        for name, value in one.items():
            assert value.tobytes() == outputs[name].tobytes(), f"{name} differs on {ranks} ranks"


def test_outputs_equal_the_python_runtime_on_the_same_arrays(runs, onnx_model):
    inputs, attrs = runs["inputs"]
    nz, ny, nx = inputs["T_PHY"].shape
    arrays = {}
    for name, value in inputs.items():  # (k, j, i) -> WRF memory (i, k, j) with kde levels
        if value.ndim == 3:
            arrays[name] = np.zeros((nx, nz + 1, ny), np.float32, order="F")
            arrays[name][:, :value.shape[0], :] = value.transpose(2, 0, 1)
        else:
            arrays[name] = np.asfortranarray(value.T.astype(np.float32))
    arrays["FALLBACK"] = np.zeros((nx, ny), np.int32, order="F")
    rt = Runtime.from_options({"model": str(onnx_model), "n_levels": nz})
    counts = rt.run_tile(arrays, (1, nx + 1, 1, ny + 1, 1, nz + 1, 1, nx, 1, ny, 1, nz + 1,
                                  1, nx, 1, ny, 1, nz), attrs["DT"], attrs["DX"], attrs["CUDT"],
                         attrs["STEPCU"])
    fortran, summary = runs[2]
    assert counts["held"] == summary["held"] and counts["triggered"] == summary["triggered"]
    for name, value in fortran.items():
        mine = arrays[name][:, :nz, :].transpose(1, 2, 0) if value.ndim == 3 else arrays[name].T
        np.testing.assert_allclose(value, mine, rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.parametrize("kind", ["oracle", "ideal"])
def test_inputs_are_formed_as_the_python_derivations(kind, oracle_files, ideal_files, onnx_model,
                                                     tmp_path):
    """MSKF oracle files (no P_HYD) and real WRF output (no RHO, PI_PHY, ZOL) give the arrays
    that training.wrfout derives."""
    path = oracle_files[0] if kind == "oracle" else ideal_files[0]
    rc, log, _ = mini_driver(2, "--input", path, "--model", onnx_model,
                             "--inputs-out", tmp_path / "inputs.nc")
    assert rc == 0, log[-3000:]
    fortran, attrs = read(tmp_path / "inputs.nc")
    frame = open_wrfout(path, outputs=False, chunks=None, time=0).isel(Time=0).load()
    assert (attrs["DX"], attrs["DT"]) == (frame.attrs["DX"], frame.attrs["DT"])
    names = [v for v in ("U_PHY", "V_PHY", "W", "T_PHY", "QVAPOR", "P_HYD", "PI_PHY", "RHO",
                         "DZ8W", "W0AVG", "HFX", "UST", "PBLH", "ZOL", "XLAND") if v in frame]
    assert len(names) >= 14
    for name in names:
        expected = frame[name].values
        tolerance = 1e-6 if name != "ZOL" else 1e-4
        np.testing.assert_allclose(fortran[name], expected, rtol=tolerance,
                                   atol=tolerance * float(np.abs(expected).max()), err_msg=name)


@pytest.mark.parametrize("case", ["missing model", "NaN column"])
def test_failures_end_the_job_with_a_message(case, history_file, onnx_model, tmp_path):
    model, extra, expected, ranks_reporting = onnx_model, [], "", [0, 1]
    if case == "missing model":
        model, expected = tmp_path / "none.onnx", r"model file .*none.onnx does not exist"
    else:  # column (3, 10) lies in the upper patch (rank 1) of the 1 x 2 decomposition
        extra, ranks_reporting = ["--nan-column", 3, 10], [1]
        expected = "non-finite T_PHY in column i=3, j=10"
    rc, log, summary = mini_driver(2, "--input", history_file, "--model", model, *extra)
    assert rc != 0 and summary is None, log[-3000:]
    for rank in ranks_reporting:
        assert re.search(rf"mlcu FATAL \(rank {rank}\): .*{expected}", log), log[-3000:]


def test_kernel_model_on_mskf_columns(oracle_files, onnx_model, tmp_path):
    """A model of the emulator's design (the kernel, MSKF's trigger and updraft, decides where
    convection is) on MSKF's own columns: it convects where MSKF did, and 1 and 2 ranks make
    the same decisions (bitwise: the kernel's results do not depend on the column order) and
    the same tendencies to a few units in the last place (ONNX Runtime's CPU matrix kernels
    round a row differently depending on its place in the batch, which the decomposition
    changes)."""
    path = next(p for p in oracle_files if p.name.endswith("09km_01.nc"))
    runs = {}
    for ranks in (1, 2):
        rc, log, summary = mini_driver(ranks, "--input", path, "--model", onnx_model,
                                       "--out", tmp_path / f"out{ranks}.nc", "--tiles", ranks)
        assert rc == 0, log[-3000:]
        runs[ranks] = (read(tmp_path / f"out{ranks}.nc")[0], summary)
    with Dataset(path) as ds:
        convected = int((np.asarray(ds["ORACLE_TRIGGER"][0]) > 0).sum())
    (one, summary), (two, other) = runs[1], runs[2]
    assert summary["evaluated"] == summary["columns"] == 4096
    # the kernel's trigger agrees with MSKF's on 99.6 % of the oracle columns
    assert abs(summary["triggered"] - convected) <= 0.005 * summary["columns"]
    assert other["triggered"] == summary["triggered"]
    # Tendencies exactly in the columns the kernel finds a cloud in.
    assert (np.abs(one["RTHCUTEN"]).sum(axis=0) > 0).sum() == summary["triggered"]
    for name, value in one.items():
        if name in ("NCA", "CUTOP", "CUBOT") or value.dtype.kind in "iu":
            assert value.tobytes() == two[name].tobytes(), f"{name} differs on 2 ranks"
        else:
            assert ((value != 0) == (two[name] != 0)).all() or name in ("PRATEC", "RAINCV"), name
            np.testing.assert_allclose(two[name], value, rtol=0,
                                       atol=1e-5 * float(np.abs(value).max()) + 1e-12, err_msg=name)
