"""Inference cost of the emulator on this machine's CPU; prints JSON lines.

* ``peak``: single-thread matrix-multiply throughput (GFLOP/s), the bound for the estimates;
* ``inference``: for each configuration (random weights; the cost does not depend on them):
  parameters, FLOPs per column, the FLOP-bound estimate in us per column, and measured us per
  column for ONNX Runtime and PyTorch eager versus batch size and threads;
* ``runtime_call``: for each trained model given with ``--model``: the full runtime call
  (W0AVG update, input checks, features, trigger, recurrent core on triggered columns,
  constraints) over every column of the oracle files, one 64 x 64 tile per file, one thread;
  in us per column of the fastest of several calls per file (all of it, inside ONNX Runtime,
  and the runtime's own work outside it; also the median call) and as a multiple of WRF's MSKF (about 30 us per column on this machine
  type, single thread, over the same files);
* ``mskf_call``: where the mskf_columns program is built (``make mskf-columns``), WRF's own
  MSKF_CPS on the same tiles, timed the same way (fastest of several calls per file, every
  column evaluated), so that the runtime call is also given as a multiple of the scheme
  measured on this machine at the same time.

    python bench/bench_runtime.py [--model MODEL.onnx ...] [--oracle DIR] [--quick]
"""

import argparse
import glob
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MSKF_US_PER_COLUMN = 30.0
CONFIGS = ("train.yaml", "seed-baseline.yaml", "fast.yaml")


def timed(fn, min_seconds=1.0) -> float:
    fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def peak_gflops() -> float:
    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024**3 / timed(lambda: a @ b) / 1e9


def random_run(config: Path, store, out: Path) -> Path:
    from training.train import TrainConfig, build_model, write_model_spec

    out.mkdir(parents=True, exist_ok=True)
    write_model_spec(out, store, TrainConfig.load(config).model)
    torch.save({"model": build_model(out, weights=None).state_dict()}, out / "best.pt")
    return out


def inference(run: Path, store, peak: float, batches, threads, seconds) -> dict:
    from emulator.export import export
    from emulator.model import count_parameters, flops_per_column
    from emulator.runtime import Runtime
    from training.data import ColumnBatches
    from training.train import build_model

    export(run, run / "model.onnx")
    model = build_model(run)
    columns = next(iter(ColumnBatches(store, "validation", store.contract(), max(batches), shuffle=False)))
    flops = flops_per_column(model)
    row = {"bench": "inference", "config": run.name, "parameters": count_parameters(model),
           "mflop_per_column": flops / 1e6, "flop_bound_us_per_column": flops / (peak * 1e3),
           "onnxruntime_us_per_column": {}, "pytorch_us_per_column": {}}
    for t in threads:
        rt = Runtime.from_options({"model": str(run / "model.onnx"), "threads": t})
        torch.set_num_threads(t)
        for n in batches:
            feed = {k: columns[k][:n].numpy() for k in rt.contract.input_names}
            rt.options.batch_columns = n
            row["onnxruntime_us_per_column"][f"threads={t},batch={n}"] = \
                timed(lambda: rt.predict_columns(feed), seconds) / n * 1e6
            batch = {k: columns[k][:n] for k in rt.contract.input_names}
            with torch.no_grad():
                row["pytorch_us_per_column"][f"threads={t},batch={n}"] = \
                    timed(lambda: model.physical(model(batch), batch), seconds) / n * 1e6
    return row


def runtime_call(model: str, files: list, seconds) -> dict:
    from emulator.runtime import Runtime
    from training.replay import wrf_arrays
    from training.wrfout import open_wrfout

    rt = Runtime.from_options({"model": model, "threads": 1})
    # Time inside ONNX Runtime, to tell inference from the runtime's own numpy work.
    session_run, inference = rt._run, [0.0]

    def timed_run(*args):
        start = time.perf_counter()
        result = session_run(*args)
        inference[0] += time.perf_counter() - start
        return result

    rt._run = timed_run
    total, inside, median, columns, counts = 0.0, 0.0, 0.0, 0, {}
    for path in files:
        frame = open_wrfout(path, extras=("QCLOUD", "QRAIN", "QICE", "QSNOW"), chunks=None,
                            time=0).isel(Time=0).load()
        nz, ny, nx = frame.sizes["bottom_top"], frame.sizes["south_north"], frame.sizes["west_east"]
        base = wrf_arrays(frame, rt, "single_call")
        bounds = (1, nx + 1, 1, ny + 1, 1, nz + 1, 1, nx, 1, ny, 1, nz + 1, 1, nx, 1, ny, 1, nz)

        def call():
            arrays = {k: v.copy(order="F") for k, v in base.items()}  # fresh NCA = -100 state
            inference[0] = 0.0
            start = time.perf_counter()
            c = rt.run_tile(arrays, bounds, frame.attrs["DT"], frame.attrs["DX"], 0.0, 1)
            call.elapsed, call.inside, call.counts = time.perf_counter() - start, inference[0], c

        call()  # warm-up
        times = []
        while sum(t for t, _ in times) < seconds or len(times) < 3:
            call()
            times.append((call.elapsed, call.inside))
        # The least disturbed call: this machine shares its cores, and timings of the same
        # call vary by tens of percent.
        best = min(times)
        total, inside, median = total + best[0], inside + best[1], median + np.median([t for t, _ in times])
        columns += nx * ny
        counts = {k: counts.get(k, 0) + v for k, v in call.counts.items()}
    us = total / columns * 1e6
    return {"bench": "runtime_call", "model": model, "files": len(files), "columns": columns,
            "triggered_fraction": counts["triggered"] / max(1, counts["evaluated"]),
            "us_per_column": us, "x_mskf": us / MSKF_US_PER_COLUMN,
            "median_us_per_column": median / columns * 1e6,
            "onnxruntime_us_per_column": inside / columns * 1e6,
            "other_us_per_column": (total - inside) / columns * 1e6,
            "mskf_reference_us_per_column": MSKF_US_PER_COLUMN}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="*", default=[], help="trained .onnx models for the runtime call")
    parser.add_argument("--oracle", default=str(REPO.parent / "shared" / "data" / "mskf_oracle"))
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, shorter timings")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from training.prepare import PrepareConfig, prepare
    from training.store import Store

    files = sorted(glob.glob(os.path.join(args.oracle, "wrfout_oracle_*.nc")))
    if not files:
        raise SystemExit(f"no oracle files in {args.oracle}")
    batches = (256, 4096) if args.quick else (64, 256, 1024, 4096)
    seconds = 0.3 if args.quick else 1.0
    peak = peak_gflops()
    print(json.dumps({"bench": "peak", "threads": 1, "gflops": peak}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig.load(REPO / "configs" / "prepare_oracle.yaml", [], input=files,
                                   out=str(Path(tmp) / "store"), scheduler="synchronous"))
        store = Store(Path(tmp) / "store")
        for name in CONFIGS:
            run = random_run(REPO / "configs" / name, store, Path(tmp) / Path(name).stem)
            print(json.dumps(inference(run, store, peak, batches, (1, 2), seconds)), flush=True)
    mskf_us = mskf_call(files)
    if mskf_us is not None:
        print(json.dumps({"bench": "mskf_call", "files": len(files), "us_per_column": mskf_us}), flush=True)
    for model in args.model:
        result = runtime_call(model, files, seconds)
        if mskf_us is not None:
            result["x_mskf_measured"] = result["us_per_column"] / mskf_us
        print(json.dumps(result), flush=True)


def mskf_call(files: list, repeat: int = 7):
    """us per column of WRF's MSKF_CPS over the files (fastest call per file), or None without
    the mskf_columns program."""
    from training import mskf
    from training.wrfout import open_wrfout

    try:
        mskf.program()
    except mskf.MskfError:
        return None
    total, columns = 0.0, 0
    for path in files:
        frame = open_wrfout(path, chunks=None, time=0, outputs=False)
        inputs = mskf.column_inputs(frame)
        total += mskf.time_mskf(inputs, frame.attrs["DX"], frame.attrs["DT"], repeat=repeat)
        columns += len(inputs["T_PHY"])
    return total / columns * 1e6


if __name__ == "__main__":
    main()
