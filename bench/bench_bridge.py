"""Cost of the Fortran bridge; prints JSON lines.

1. Overhead per call of Python -> f2py -> module_cu_mlcu -> C shim -> runtime -> ONNX Runtime
   and back, against calling the runtime directly from Python on the same arrays, for tiles of
   100, 1000 and 10000 columns. The two paths alternate call by call. The bridge's own cost
   (overhead_us) is the median difference of the two paths on the same memory with a one-column
   tile held by NCA, where the runtime does almost nothing, so that it is not lost in the noise
   of the inference time (and shows that it does not grow with the arrays: nothing is copied);
   overhead_pct relates it to a direct call on the whole tile with every column evaluated.
2. Columns per second of the mini-driver under mpirun -np 2 (several cumulus calls).

    python bench/bench_bridge.py [--model model.onnx] [--threads 1]

Without --model, a model of the default configuration is trained for one epoch on a small
synthetic run in a temporary folder (a minute or two).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "fortran_bridge"))

from emulator.runtime import Runtime  # noqa: E402
from pybridge import FortranScheme  # noqa: E402
from training.replay import wrf_arrays  # noqa: E402
from training.synthetic.generate import GenerateConfig, generate  # noqa: E402
from training.wrfout import open_wrfout  # noqa: E402

TILES = {100: (10, 10), 1000: (40, 25), 10000: (100, 100)}
HALO = 3


def build_model(files, tmp: Path) -> Path:
    from training.export import export
    from training.prepare import PrepareConfig, prepare
    from training.train import TrainConfig, train

    prepare(PrepareConfig.load(None, ["split.validation_fraction=0.3"], input=[str(f) for f in files],
                               out=str(tmp / "store"), scheduler="synchronous"))
    cfg = TrainConfig.load(REPO / "configs" / "train.yaml", ["epochs=1"])
    train(cfg, tmp / "store", tmp / "run", "bench", progress=False)
    export(tmp / "run", tmp / "model.onnx")
    return tmp / "model.onnx"


def tile_arrays(source: dict, ni: int, nj: int):
    """WRF memory (3-point halo) for an ni x nj tile whose columns repeat the source's."""
    nx, ny = source["HFX"].shape
    picks = np.arange(ni * nj) % (nx * ny)
    si, sj = picks % nx, picks // nx
    arrays = {}
    for name, a in source.items():
        cols = a[si, ..., sj]  # (column, ...)
        tile = cols.reshape((nj, ni) + cols.shape[1:]).swapaxes(0, 1)  # (i, j, ...)
        if a.ndim == 3:
            tile = tile.transpose(0, 2, 1)  # (i, k, j)
        big = np.zeros((ni + 2 * HALO,) + tile.shape[1:-1] + (nj + 2 * HALO,), dtype=a.dtype, order="F")
        big[HALO:HALO + ni, ..., HALO:HALO + nj] = tile
        arrays[name] = big
    nz = source["T_PHY"].shape[1] - 1
    bounds = [1, ni + 1, 1, nj + 1, 1, nz + 1, 1 - HALO, ni + HALO, 1 - HALO, nj + HALO, 1, nz + 1,
              1, ni, 1, nj, 1, nz]
    return arrays, bounds


def alternate(calls: dict, arrays: dict, nca: float, repeats: int) -> dict:
    """Seconds per call of each path, calls interleaved; NCA set before every call."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            arrays["NCA"][...] = nca
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def overhead(model: Path, frame, threads: int) -> None:
    rt = Runtime.from_options({"model": str(model), "threads": threads, "n_levels": frame.sizes["bottom_top"]})
    scheme = FortranScheme(model, n_levels=frame.sizes["bottom_top"], threads=threads)
    source = wrf_arrays(frame, rt, "single_call")
    dt, dx = frame.attrs["DT"], frame.attrs["DX"]
    for columns, (ni, nj) in TILES.items():
        arrays, bounds = tile_arrays(source, ni, nj)
        calls = {"direct": lambda: rt.run_tile(arrays, bounds, dt, dx, 0.0, 1),
                 "bridge": lambda: scheme.run_tile(arrays, bounds, dt, dx, 0.0, 1)}
        alternate(calls, arrays, -100.0, 2)  # warm-up
        busy = alternate(calls, arrays, -100.0, max(5, 20000 // columns))
        one = bounds[:12] + [1, 1, 1, 1] + bounds[16:]
        held = alternate({"direct": lambda: rt.run_tile(arrays, one, dt, dx, 0.0, 1),
                          "bridge": lambda: scheme.run_tile(arrays, one, dt, dx, 0.0, 1)},
                         arrays, 1.0e9, 3000)
        own_us = float(np.median(held["bridge"] - held["direct"])) * 1e6
        direct_ms = float(np.median(busy["direct"])) * 1e3
        print(json.dumps({
            "benchmark": "bridge_overhead", "columns": columns, "threads": threads,
            "direct_ms": round(direct_ms, 3), "bridge_ms": round(float(np.median(busy["bridge"])) * 1e3, 3),
            "overhead_us": round(own_us, 1), "overhead_pct": round(100 * own_us / (direct_ms * 1e3), 3),
            "held_column_direct_us": round(float(np.median(held["direct"])) * 1e6, 1),
            "held_column_bridge_us": round(float(np.median(held["bridge"])) * 1e6, 1),
            "targets": {"overhead_pct_at_1000_plus": 5.0, "overhead_us": 50.0}}), flush=True)
    scheme.finalize()


def mini_driver(model: Path, path: Path, threads: int) -> None:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", OMP_NUM_THREADS="1")
    cmd = ["mpirun", "-np", "2", str(REPO / "fortran_bridge" / "build" / "mini_driver"), "--input", str(path),
           "--model", str(model), "--steps", "3", "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"mini-driver failed:\n{out.stdout}\n{out.stderr}")
    summary = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    print(json.dumps({"benchmark": "bridge_mini_driver", "input": path.name, **summary}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported model (.onnx); default: train a small one")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = generate(GenerateConfig(nx=32, ny=32, dx=[9000.0], run_minutes=30), tmp / "w", progress=False)
        model = Path(args.model) if args.model else build_model(files, tmp)
        frame = open_wrfout(files[-1], extras=("QCLOUD", "QRAIN", "QICE", "QSNOW"), chunks=None,
                            time=0).isel(Time=0).load()
        overhead(model, frame, args.threads)
        mini_driver(model, Path(files[-1]), args.threads)


if __name__ == "__main__":
    main()
