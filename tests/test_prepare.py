"""`mlcu prepare`: wrfout files -> zarr training store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from training.prepare import PrepareConfig, prepare
from training.store import Store, open_shard

REPO = Path(__file__).resolve().parents[1]
MLCU = str(Path(sys.executable).with_name("mlcu"))


def config(inputs, out, *sets, name="prepare.yaml", **flags):
    flags.setdefault("scheduler", "synchronous")
    return PrepareConfig.load(REPO / "configs" / name, sets, input=[str(p) for p in inputs],
                              out=str(out), **flags)


def sample_keys(store: Store) -> dict:
    keys = {}
    for split in ("train", "validation", "test"):
        for shard in store.shards(split):
            ds = open_shard(shard)
            keys[split] = keys.get(split, set()) | set(zip(
                ds.FILE_ID.values.tolist(), ds.TIME_INDEX.values.tolist(),
                ds.I.values.tolist(), ds.J.values.tolist()))
    return keys


def assert_same_store(a: Path, b: Path):
    sa, sb = Store(a), Store(b)
    for split in ("train", "validation", "test"):
        names_a = [p.name for p in sa.shards(split)]
        assert names_a == [p.name for p in sb.shards(split)]
        for name in names_a:
            da = xr.open_zarr(sa.shard_path(split, name[:-5]), consolidated=False).load()
            db = xr.open_zarr(sb.shard_path(split, name[:-5]), consolidated=False).load()
            assert da.sizes["sample"] > 0
            xr.testing.assert_identical(da, db)
    for name in ("stats.json", "report.json", "store.json"):
        assert (a / name).exists()
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name
    assert sorted(p.name for p in (a / "batches").iterdir()) == sorted(p.name for p in (b / "batches").iterdir())


def test_oracle_store_counts_splits_and_statistics(oracle_files, tmp_path):
    report = prepare(config(oracle_files, tmp_path / "store", name="prepare_oracle.yaml"))
    cols = report["columns"]
    assert report["files"]["read"] == 10
    assert cols["total"]["columns"] == 40960
    assert cols["total"]["kept"] == 40960 - cols["total"]["dropped_nonfinite"]
    assert cols["train"]["columns"] == 20480
    # The columns of *_01.nc shared out between validation and test, about half each.
    assert cols["validation"]["columns"] + cols["test"]["columns"] == 20480
    assert 0.4 < cols["validation"]["columns"] / 20480 < 0.6
    # The oracle README: 32.0 % deep, 8.6 % shallow.
    assert cols["total"]["deep"] == 13098 and cols["total"]["shallow"] == 3522
    store = Store(tmp_path / "store")
    manifest = store.manifest()
    train_files = {f for f in manifest["files"] if f.endswith("_00.nc")}
    for batch in manifest["batches"]:
        for file_id, _ in batch["units"]:
            assert (batch["split"] == "train") == (manifest["files"][file_id] in train_files)
    # Whole blocks of 8 x 8 columns go to one split, and no column to two.
    keys = sample_keys(store)
    assert not keys["validation"] & keys["test"]
    for split in ("validation", "test"):
        blocks = {(f, i // 8, j // 8) for f, _, i, j in keys[split]}
        other = {(f, i // 8, j // 8) for f, _, i, j in keys[{"validation": "test", "test": "validation"}[split]]}
        assert not blocks & other

    # Statistics over the train split only, every level pooled: compare with numpy.
    stats = json.loads((tmp_path / "store" / "stats.json").read_text())
    t, rth_triggered, p = [], [], []
    for path in sorted(train_files):
        raw = xr.open_dataset(path)
        t.append(((raw.T[0] + 300) * raw.PI_PHY[0]).values.ravel())
        p.append((raw.P[0] + raw.PB[0]).values.ravel())
        rth = raw.RTHCUTEN[0].values.reshape(44, -1)
        active = (rth != 0).any(axis=0) | (raw.RQVCUTEN[0].values.reshape(44, -1) != 0).any(axis=0)
        rth_triggered.append(rth[:, active].ravel())
    t, p, rth_triggered = map(np.concatenate, (t, p, rth_triggered))
    assert stats["inputs"]["T_PHY"]["mean"] == pytest.approx(t.mean(), rel=1e-6)
    assert stats["inputs"]["T_PHY"]["std"] == pytest.approx(t.std(), rel=1e-4)
    assert stats["targets"]["RTHCUTEN"]["count"] == rth_triggered.size
    assert stats["targets"]["RTHCUTEN"]["mean"] == pytest.approx(rth_triggered.mean(), rel=1e-5)
    assert 0 < stats["targets"]["RTHCUTEN"]["abs_p50"] < stats["targets"]["RTHCUTEN"]["abs_p99"]
    # Profile ranges per pressure band.
    bands = stats["inputs"]["T_PHY"]["by_pressure"]
    edges = np.array(bands["edges_pa"])
    k = int(np.searchsorted(edges, 85000.0)) - 1
    inside = (p >= edges[k]) & (p < edges[k + 1])
    assert bands["count"][k] == inside.sum()
    assert bands["min"][k] == pytest.approx(t[inside].min()) and bands["max"][k] == pytest.approx(t[inside].max())

    # Provenance leads back to the source column, and to its sounding family.
    train = store.open_split("train")
    k = 1234
    src = xr.open_dataset(manifest["files"][int(train.FILE_ID[k])])
    i, j = int(train.I[k]), int(train.J[k])
    np.testing.assert_array_equal(train.RTHCUTEN[k].values, src.RTHCUTEN[0, :, j, i].values)
    assert float(train.DX[k]) == src.attrs["DX"]
    assert int(train.FAMILY[k]) == int(src.ORACLE_FAMILY[0, j, i])
    assert "wk82" in store.file_info(int(train.FILE_ID[k]))["families"]


def test_real_wrf_history(ideal_files, tmp_path):
    report = prepare(config(ideal_files, tmp_path / "store", "split.validation_fraction=0.3"))
    total = report["columns"]["total"]
    assert report["files"]["read"] == 7 and total["columns"] == 7 * 4096
    assert total["held"] > 500  # deep columns held by NCA from earlier calls
    # Deep columns the last call set: their NCA is MSKF's advective time from the frame's own
    # cloud base and winds, less WRF's countdown (the files have no TIMEC_KF).
    assert 10 <= total["deep"] <= 100 and total["shallow"] > 5000
    assert total["kept"] + total["held"] + total["expired"] + total["not_called"] \
        + total["dropped_nonfinite"] == total["columns"]
    store = Store(tmp_path / "store")
    ds = xr.concat([store.open_split(s) for s in ("train", "validation")], dim="sample")
    assert np.isfinite(ds.ZOL.values).all()
    shallow = ds.COLUMN_CLASS.values == 1
    assert (ds.TRIGGER.values[shallow] == 1).all() and (ds.PRATEC.values[shallow] == 0).all()
    deep = ds.COLUMN_CLASS.values == 2
    steps = ds.NCA.values[deep] / 30.0  # DT
    assert deep.sum() == total["deep"] and np.allclose(steps, np.rint(steps)) and (steps >= 1).all()
    assert (ds.PRATEC.values[deep] > 0).all()


def test_synthetic_store_classes(synthetic_files, tmp_path):
    report = prepare(config(synthetic_files, tmp_path / "store"))
    total = report["columns"]["total"]
    assert total["not_called"] == 2 * 144  # the first history time of each run
    assert total["deep"] > 0 and total["held"] > 0 and total["shallow"] > 0
    assert sum(total[k] for k in ("kept", "held", "expired", "not_called", "dropped_nonfinite")) \
        == total["columns"] == 8 * 144
    ds = xr.concat([Store(tmp_path / "store").open_split(s) for s in ("train", "validation")
                    if Store(tmp_path / "store").shards(s)], dim="sample")
    deep = ds.COLUMN_CLASS.values == 2
    dt = np.where(ds.DX.values[deep] == 3000.0, 15.0, 150.0)
    nca = ds.NCA.values[deep]
    np.testing.assert_allclose(nca / dt, np.rint(nca / dt))  # the value the call set
    assert (ds.PRATEC.values[deep] > 0).all()


@pytest.mark.parametrize("sets", [["split.validation_fraction=0.5"],
                                  ["split.method=time_blocks", "split.block_minutes=10",
                                   "split.block_cycle=[train, validation, test]"]])
def test_no_column_in_two_splits(synthetic_files, tmp_path, sets):
    prepare(config(synthetic_files, tmp_path / "store", *sets))
    keys = sample_keys(Store(tmp_path / "store"))
    assert len(keys) >= 2
    splits = list(keys)
    for a in range(len(splits)):
        for b in range(a + 1, len(splits)):
            assert not keys[splits[a]] & keys[splits[b]]
    if "split.method=time_blocks" in sets:
        for rec in map(json.loads, map(Path.read_text, (tmp_path / "store" / "batches").glob("*.json"))):
            for unit in rec["units"]:
                minutes = int(unit["time"][14:16])
                assert rec["split"] == ["train", "validation", "test"][(minutes // 10) % 3]


def _modified_copy(src, dst, change):
    ds = xr.open_dataset(src, decode_times=False, decode_coords=False).load()
    change(ds)
    ds.to_netcdf(dst)
    return dst


def test_nan_columns_are_dropped_and_located(synthetic_files, tmp_path):
    def poison(ds):
        ds["T"][0, 5, 3, 4] = np.nan
        ds["HFX"][0, 1, 2] = np.inf

    bad = _modified_copy(synthetic_files[2], tmp_path / "wrfout_d01_bad", poison)
    report = prepare(config([bad], tmp_path / "store"))
    assert report["columns"]["total"]["dropped_nonfinite"] == 2
    located = {(d["i"], d["j"]): d["variables"] for d in report["dropped_nonfinite"]}
    assert located[(4, 3)] == ["T_PHY"] and "HFX" in located[(2, 1)]
    assert all(d["path"] == str(bad) for d in report["dropped_nonfinite"])
    assert report["columns"]["total"]["columns"] == 144


def test_corrupt_file_is_skipped_or_stops_the_job(synthetic_files, tmp_path):
    broken = tmp_path / "wrfout_d01_broken"
    broken.write_bytes(Path(synthetic_files[1]).read_bytes()[:3000])
    inputs = [*synthetic_files[:3], broken]
    report = prepare(config(inputs, tmp_path / "store"))
    assert report["files"]["read"] == 3
    assert [s["path"] for s in report["files"]["skipped"]] == [str(broken)]
    assert "cannot be read as netCDF" in report["files"]["skipped"][0]["error"]
    with pytest.raises(ValueError, match="wrfout_d01_broken: cannot be read"):
        prepare(config(inputs, tmp_path / "store2", fail_fast=True))

    # Damaged data with an intact header: found when read, that unit is reported and skipped.
    from training.synthetic.generate import GenerateConfig, generate

    big = generate(GenerateConfig(nx=32, ny=32, dx=[25000.0], run_minutes=10), tmp_path / "big",
                   progress=False)[1]
    damaged = bytearray(big.read_bytes())
    damaged[len(damaged) // 2: len(damaged) // 2 + 20000] = bytes(20000)
    corrupt = tmp_path / "wrfout_d01_corrupt"
    corrupt.write_bytes(bytes(damaged))
    report = prepare(config([synthetic_files[2], corrupt], tmp_path / "store4"))
    assert report["files"]["read"] == 2
    assert report["units"]["done"] == 1 and len(report["units"]["failed"]) == 1
    assert "wrfout_d01_corrupt: data of time 0 cannot be read" in report["units"]["failed"][0]["error"]
    assert report["columns"]["total"]["columns"] == 144
    with pytest.raises(RuntimeError, match="--fail-fast.*wrfout_d01_corrupt"):
        prepare(config([synthetic_files[2], corrupt], tmp_path / "store5", fail_fast=True))
    out = subprocess.run([MLCU, "prepare", "--input", str(broken), str(synthetic_files[0]),
                          "--out", str(tmp_path / "store3"), "--fail-fast",
                          "--scheduler", "synchronous"], capture_output=True, text=True)
    assert out.returncode == 2 and "wrfout_d01_broken" in out.stderr


def test_missing_variable_is_named_and_grids_may_differ(synthetic_files, tmp_path):
    no_w0 = _modified_copy(synthetic_files[1], tmp_path / "wrfout_no_w0avg",
                           lambda ds: ds.__delitem__("W0AVG"))
    with pytest.raises(ValueError) as err:
        prepare(config([synthetic_files[0], no_w0], tmp_path / "store"))
    assert str(no_w0) in str(err.value) and "W0AVG" in str(err.value)
    assert "+:h:0:w0avg" in str(err.value)

    # Runs on another vertical grid go to shards of their own.
    from training.synthetic.generate import GenerateConfig, generate

    short = generate(GenerateConfig(nx=6, ny=6, n_levels=20, dx=[25000.0], run_minutes=30),
                     tmp_path / "short", progress=False)
    report = prepare(config([*synthetic_files[:3], *short], tmp_path / "store2",
                            "split.validation_fraction=0"))
    store = Store(tmp_path / "store2")
    levels = {open_shard(s).sizes["level"] for s in store.shards("train")}
    assert levels == {44, 20}
    assert report["columns"]["train"]["columns"] == 3 * 144 + len(short) * 36
    assert store.contract().n_levels is None


def test_another_jobs_store_is_not_overwritten(synthetic_files, tmp_path):
    prepare(config(synthetic_files[:2], tmp_path / "store"))
    with pytest.raises(ValueError, match="already holds something else"):
        prepare(config(synthetic_files[:3], tmp_path / "store"))
    report = prepare(config(synthetic_files[:3], tmp_path / "store", overwrite=True))
    assert report["units"]["done"] == 3
    # The same job's store in an older format is not resumed: its shards would lack fields.
    job_file = tmp_path / "store" / "job.json"
    job = json.loads(job_file.read_text())
    job_file.write_text(json.dumps(dict(job, store_format_version=job["store_format_version"] - 1)))
    with pytest.raises(ValueError, match="already holds something else"):
        prepare(config(synthetic_files[:3], tmp_path / "store"))
    assert prepare(config(synthetic_files[:3], tmp_path / "store", overwrite=True))["units"]["done"] == 3


def test_resume_after_sigkill_gives_the_same_store(oracle_files, tmp_path):
    args = [MLCU, "prepare", "--config", str(REPO / "configs" / "prepare_oracle.yaml"),
            "--input", *map(str, oracle_files), "--workers", "1", "--set", "shard_columns=4096"]
    ref = tmp_path / "uninterrupted"
    assert subprocess.run(args + ["--out", str(ref)], capture_output=True).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list((killed / "batches").glob("*.json")) if (killed / "batches").exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its dask workers, mid-way
    proc.wait()
    assert not (killed / "store.json").exists(), "the job finished before it was killed"
    assert 3 <= len(list((killed / "batches").glob("*.json"))) < 10

    again = subprocess.run(args + ["--out", str(killed)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert_same_store(ref, killed)


def test_runs_on_a_dask_cluster_by_address(synthetic_files, tmp_path):
    from distributed import LocalCluster

    prepare(config(synthetic_files, tmp_path / "sync"))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        prepare(config(synthetic_files, tmp_path / "cluster", scheduler=cluster.scheduler_address))
    assert_same_store(tmp_path / "sync", tmp_path / "cluster")


def test_cli_with_manifest_and_overrides(synthetic_files, tmp_path):
    manifest = tmp_path / "files.txt"
    manifest.write_text("# my run\n" + "\n".join(str(p) for p in synthetic_files[:4]) + "\n")
    out = subprocess.run([MLCU, "prepare", "--input", f"@{manifest}", "--out", str(tmp_path / "s"),
                          "--config", str(REPO / "configs" / "prepare.yaml"),
                          "--set", "split.method=time_blocks", "--set", "split.block_minutes=20",
                          "--workers", "2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "kept" in out.stdout and "train" in out.stdout
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["files"]["read"] == 4
    assert subprocess.run([MLCU, "prepare", "--help"], capture_output=True).returncode == 0
    bad = subprocess.run([MLCU, "prepare", "--input", "/nonexistent/wrfout*", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no files match" in bad.stderr
