"""Inference cost of the emulator on this machine's CPU; prints JSON lines.

* ``peak``: single-thread matrix-multiply throughput (GFLOP/s), the bound for the estimates;
* ``inference``: for each configuration (random weights; the cost does not depend on them):
  parameters, FLOPs per column, the FLOP-bound estimate in us per column, and measured us per
  column for ONNX Runtime and PyTorch eager versus batch size and threads;
* ``runtime_call``: for each trained model given with ``--model``: the full runtime call
  (W0AVG update, input checks, the convection kernel, the network on the columns that
  convect, constraints) over every column of the oracle files (and with ``--ideal`` of the
  ``wrf_ideal`` run's history times), one tile per file or time, one thread, every column
  evaluated; in us per column of the fastest of several calls per file (all of it, inside
  ONNX Runtime, in the convection kernel and its channels, and the runtime's other work; also
  the median call) and as a multiple of WRF's MSKF (about 30 us per column on this machine
  type, single thread, over the oracle files);
* ``mskf_call``: where the mskf_columns program is built (``make mskf-columns``), WRF's own
  MSKF_CPS on the same tiles (every column evaluated), timed in the same rounds as the runtime
  calls, file by file in turn, so that the ratio ``x_mskf_measured`` compares calls made under
  the same load.

    python bench/bench_runtime.py [--model MODEL.onnx ...] [--oracle DIR] [--quick] [--calls-only]
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
CONFIGS = ("train.yaml", "seed-baseline.yaml")


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
    from emulator import features as ft
    from emulator.model import count_parameters, flops_per_column
    from emulator.runtime import Runtime
    from training.data import ColumnBatches
    from training.export import export
    from training.train import build_model

    export(run, run / "model.onnx")
    model = build_model(run)
    columns = next(iter(ColumnBatches(store, "validation", store.contract(), max(batches), shuffle=False)))
    if model.kernel:  # the network's own cost: its kernel channels computed once, beforehand
        columns = ft.with_kernel(columns)
    flops = flops_per_column(model, columns["T_PHY"].shape[1])
    row = {"bench": "inference", "config": run.name, "parameters": count_parameters(model),
           "mflop_per_column": flops / 1e6, "flop_bound_us_per_column": flops / (peak * 1e3),
           "onnxruntime_us_per_column": {}, "pytorch_us_per_column": {}}
    for t in threads:
        rt = Runtime.from_options({"model": str(run / "model.onnx"), "threads": t})
        torch.set_num_threads(t)
        for n in batches:
            feed = {k: columns[k][:n].numpy() for k in rt.graph_inputs}
            rt.options.batch_columns = n
            row["onnxruntime_us_per_column"][f"threads={t},batch={n}"] = \
                timed(lambda: rt._run(feed), seconds) / n * 1e6
            batch = {k: columns[k][:n] for k in rt.contract.input_names + model.extra_inputs}
            with torch.no_grad():
                row["pytorch_us_per_column"][f"threads={t},batch={n}"] = \
                    timed(lambda: model.physical(model(batch), batch), seconds) / n * 1e6
    return row


class RuntimeCall:
    """The full runtime call of one model on the oracle files, one 64 x 64 tile per file, one
    thread; ``time(i)`` times file i a few times and keeps, per file, the least disturbed call
    (this machine shares its cores, and timings of the same call vary by tens of percent)."""

    def __init__(self, model: str, frames: list):
        from emulator.runtime import Runtime
        from training.replay import wrf_arrays

        self.model = model
        self.rt = Runtime.from_options({"model": model, "threads": 1})
        # Time inside ONNX Runtime, to tell inference from the runtime's own numpy work.
        session_run, self.inside = self.rt._run, 0.0

        def timed_run(*args):
            start = time.perf_counter()
            result = session_run(*args)
            self.inside += time.perf_counter() - start
            return result

        self.rt._run = timed_run
        # Time in the convection kernel and in assembling its channels, likewise.
        from emulator import features, updraft

        self.kernel = 0.0

        def timed(fn):
            def call(*args):
                start = time.perf_counter()
                result = fn(*args)
                self.kernel += time.perf_counter() - start
                return result
            return call

        updraft.diagnose = timed(updraft.diagnose)
        features.kernel_channels = timed(features.kernel_channels)
        self.tiles = []
        for frame in frames:
            nz, ny, nx = frame.sizes["bottom_top"], frame.sizes["south_north"], frame.sizes["west_east"]
            bounds = (1, nx + 1, 1, ny + 1, 1, nz + 1, 1, nx, 1, ny, 1, nz + 1, 1, nx, 1, ny, 1, nz)
            self.tiles.append((wrf_arrays(frame, self.rt, "single_call"), bounds, frame.attrs["DT"],
                               frame.attrs["DX"], nx * ny))
        self.best = [None] * len(frames)  # (seconds, inside ONNX Runtime, in the kernel)
        self.all = [[] for _ in frames]
        self.counts = [None] * len(frames)

    def time(self, i: int, calls: int = 3) -> None:
        base, bounds, dt, dx, _ = self.tiles[i]
        for _ in range(calls):
            arrays = {k: v.copy(order="F") for k, v in base.items()}  # fresh NCA = -100 state
            self.inside = self.kernel = 0.0
            start = time.perf_counter()
            self.counts[i] = self.rt.run_tile(arrays, bounds, dt, dx, 0.0, 1)
            elapsed = (time.perf_counter() - start, self.inside, self.kernel)
            self.all[i].append(elapsed[0])
            self.best[i] = min(self.best[i] or elapsed, elapsed)

    def result(self) -> dict:
        columns = sum(t[-1] for t in self.tiles)
        total, inside, kernel = (sum(b[k] for b in self.best) for k in (0, 1, 2))
        counts = {k: sum(c[k] for c in self.counts) for k in ("triggered", "evaluated")}
        us = total / columns * 1e6
        return {"bench": "runtime_call", "model": self.model, "files": len(self.tiles), "columns": columns,
                "triggered_fraction": counts["triggered"] / max(1, counts["evaluated"]),
                "us_per_column": us, "x_mskf": us / MSKF_US_PER_COLUMN,
                "median_us_per_column": sum(np.median(a) for a in self.all) / columns * 1e6,
                "onnxruntime_us_per_column": inside / columns * 1e6,
                "kernel_us_per_column": kernel / columns * 1e6,
                "other_us_per_column": (total - inside - kernel) / columns * 1e6,
                "mskf_reference_us_per_column": MSKF_US_PER_COLUMN}


def side_by_side(models: list, files: list, rounds: int, label: str = "oracle") -> list:
    """``runtime_call`` rows for the models and, where the mskf_columns program is built
    (``make mskf-columns``), an ``mskf_call`` row for WRF's own MSKF_CPS on the same tiles
    (every column evaluated). Rounds alternate file by file between MSKF and the models, so
    that all are timed under the same load; each keeps its fastest call per file."""
    from training import mskf
    from training.wrfout import open_wrfout

    frames = [open_wrfout(path, extras=("QCLOUD", "QRAIN", "QICE", "QSNOW"), chunks=None,
                          time=0).isel(Time=0).load() for path in files]
    for frame in frames:  # every column evaluated, as in a single call from a fresh start
        frame.attrs.update(CUDT=0.0, STEPCU=1)
    calls = [RuntimeCall(model, frames) for model in models]
    try:
        mskf.program()
        scheme = [(mskf.column_inputs(open_wrfout(path, chunks=None, time=0, outputs=False)),
                   frame.attrs["DX"], frame.attrs["DT"]) for path, frame in zip(files, frames)]
    except mskf.MskfError:
        scheme = None
    mskf_best = [np.inf] * len(files)
    for _ in range(rounds):
        for i in range(len(files)):
            if scheme:
                mskf_best[i] = min(mskf_best[i], mskf.time_mskf(*scheme[i], repeat=3))
            for call in calls:
                call.time(i)
    rows = [call.result() | {"tiles": label} for call in calls]
    if scheme:
        mskf_us = sum(mskf_best) / sum(len(s[0]["T_PHY"]) for s in scheme) * 1e6
        for row in rows:
            row["x_mskf_measured"] = row["us_per_column"] / mskf_us
        rows.insert(0, {"bench": "mskf_call", "tiles": label, "files": len(files), "us_per_column": mskf_us})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="*", default=[], help="trained .onnx models for the runtime call")
    parser.add_argument("--oracle", default=str(REPO.parent / "shared" / "data" / "mskf_oracle"))
    parser.add_argument("--ideal", nargs="?", const=str(REPO.parent / "shared" / "data" / "wrf_ideal"),
                        default=None, help="also time the runtime calls on the history times of "
                                           "this WRF run (default: the shared wrf_ideal run)")
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, shorter timings")
    parser.add_argument("--calls-only", action="store_true",
                        help="only the runtime calls of --model and MSKF's (no inference sweeps)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from training.prepare import PrepareConfig, prepare
    from training.store import Store

    files = sorted(glob.glob(os.path.join(args.oracle, "wrfout_oracle_*.nc")))
    if not files:
        raise SystemExit(f"no oracle files in {args.oracle}")
    if not args.calls_only:
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
    for row in side_by_side(args.model, files, rounds=2 if args.quick else 4):
        print(json.dumps(row), flush=True)
    if args.ideal:
        history = sorted(glob.glob(os.path.join(args.ideal, "wrfout_d01_*")))
        for row in side_by_side(args.model, history, rounds=2 if args.quick else 4, label="wrf_ideal"):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
