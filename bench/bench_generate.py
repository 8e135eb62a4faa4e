"""Throughput and peak memory of the synthetic data generator; prints one JSON line.

    python bench/bench_generate.py [--nx 32] [--dx 9000] [--run-minutes 60]
"""

import argparse
import json
import resource
import tempfile
import time

from training.synthetic.generate import GenerateConfig, generate, time_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nx", type=int, default=32)
    parser.add_argument("--levels", type=int, default=44)
    parser.add_argument("--dx", type=float, default=9000.0)
    parser.add_argument("--run-minutes", type=float, default=60.0)
    args = parser.parse_args()
    cfg = GenerateConfig(nx=args.nx, ny=args.nx, n_levels=args.levels, dx=[args.dx],
                         run_minutes=args.run_minutes)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        files = generate(cfg, out, progress=False)
        seconds = time.perf_counter() - start
    steps = int(round(args.run_minutes * 60 / time_step(args.dx, cfg.history_interval)))
    column_steps = steps * args.nx * args.nx
    print(json.dumps({
        "benchmark": "generate", "nx": args.nx, "ny": args.nx, "levels": args.levels,
        "dx_m": args.dx, "steps": steps, "files": len(files), "seconds": round(seconds, 3),
        "column_steps_per_s": round(column_steps / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
