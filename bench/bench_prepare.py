"""Throughput and memory of `mlcu prepare`; prints one JSON line per measurement.

Inputs are synthetic WRF runs (96 x 96 columns, 44 levels, three history files each): 1x is
one run, 8x eight runs. For each size: the raw netCDF read throughput of the same files (every
variable read with netCDF4, sequentially, one process) and prepare's throughput on a local
dask cluster (default: all cores), their ratio, and the peak resident memory of the whole
process tree (main process and dask workers, sampled every 50 ms).

    python bench/bench_prepare.py [--workers N]
"""

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import netCDF4
import psutil

from training.prepare import PrepareConfig, prepare
from training.synthetic.generate import GenerateConfig, generate

DXS = [15000.0, 16000.0, 18000.0, 20000.0, 21000.0, 22000.0, 24000.0, 25000.0]
NX = 96


class PeakRSS:
    """Peak summed RSS of this process and all its descendants."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def raw_read_seconds(files):
    start = time.perf_counter()
    for path in files:
        with netCDF4.Dataset(path) as nc:
            for var in nc.variables.values():
                var[:]
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = GenerateConfig(nx=NX, ny=NX, dx=DXS, run_minutes=20.0)
        files = generate(cfg, tmp / "wrfout", progress=False)
        runs = {}
        for path in files:
            runs.setdefault(path.parent.name, []).append(str(path))
        run_names = sorted(runs)
        for size in (1, 8):
            inputs = [f for name in run_names[:size] for f in runs[name]]
            raw = raw_read_seconds(inputs)
            columns = len(inputs) * NX * NX
            pcfg = PrepareConfig.load(None, (), input=inputs, out=str(tmp / f"store{size}"),
                                      workers=args.workers)
            with PeakRSS() as rss:
                start = time.perf_counter()
                report = prepare(pcfg)
                seconds = time.perf_counter() - start
            assert report["columns"]["total"]["columns"] == columns
            print(json.dumps({
                "benchmark": "prepare", "input_multiple": size, "files": len(inputs),
                "columns": columns, "workers": args.workers or psutil.cpu_count(),
                "raw_read_columns_per_s": round(columns / raw),
                "prepare_columns_per_s": round(columns / seconds),
                "ratio": round(raw / seconds, 3), "prepare_seconds": round(seconds, 2),
                "peak_rss_mib": round(rss.peak / 2**20, 1),
            }), flush=True)


if __name__ == "__main__":
    main()
