"""Training throughput of a configuration on this machine's CPU; prints one JSON line per
thread setting.

The MSKF oracle files (when present, else a small synthetic run) are prepared into a store in a
temporary folder; the benchmark times training steps (the batch as training makes it, forward,
backward, optimiser) after a warm-up pass, for each ``--threads`` setting: 0 is the training
job's default (this process's cores divided by the local training processes), -1 torch's own
default (what the training job used before it set threads), N that many threads.
``samples_per_s`` counts the columns read, as ``mlcu train`` reports it.

    python bench/bench_train.py [--config configs/train.yaml] [--threads 0 -1 1]
"""

import argparse
import dataclasses
import glob
import json
import tempfile
import time
from pathlib import Path

import torch

from emulator.model import CumulusLSTM, count_parameters, flops_per_column
from training.data import ColumnBatches
from training.prepare import PrepareConfig, prepare
from training.store import Store
from training.synthetic.generate import GenerateConfig, generate
from training.train import TrainConfig, default_threads, loss_terms, training_batch

REPO = Path(__file__).resolve().parents[1]
TORCH_DEFAULT = torch.get_num_threads()


def throughput(model, cfg, batches, threads: int, seconds: float = 20.0) -> float:
    """Columns read per second over training steps on ``batches``, after a warm-up."""
    torch.set_num_threads(TORCH_DEFAULT if threads < 0 else threads or default_threads())
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    turns = torch.Generator().manual_seed(0)
    start, seen, step = time.perf_counter(), 0, 0
    for warm in (True, False):
        start, seen = time.perf_counter(), 0
        for batch in batches:
            seen += len(batch[model.trigger])
            batch = training_batch(model, batch, cfg, turns)
            if len(batch[model.trigger]):
                loss, _, _ = loss_terms(model, model(batch), batch, cfg)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            step += 1
            if (warm and step >= 5) or time.perf_counter() - start > seconds:
                break
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "train.yaml"))
    parser.add_argument("--threads", type=int, nargs="+", default=[0, -1])
    parser.add_argument("--oracle", default=str(REPO.parent / "shared" / "data" / "mskf_oracle"))
    args = parser.parse_args()
    cfg = TrainConfig.load(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        files = sorted(glob.glob(str(Path(args.oracle) / "wrfout_oracle_*_00.nc")))[:2]
        settings = ["pairing=single_call"] if files else []
        if not files:
            files = generate(GenerateConfig(nx=32, ny=32, dx=[9000.0], run_minutes=60), Path(tmp) / "w",
                             progress=False)
        prepare(PrepareConfig.load(None, ["split.validation_fraction=0", *settings],
                                   input=[str(f) for f in files], out=str(Path(tmp) / "store"),
                                   scheduler="synchronous"))
        store = Store(Path(tmp) / "store")
        stats = json.loads(store.path("stats.json").read_text())
        torch.manual_seed(cfg.seed)
        model = CumulusLSTM(store.contract(), stats, cfg.model)
        batches = list(ColumnBatches(store, "train", store.contract(), cfg.batch_size, seed=cfg.seed))
        levels = batches[0]["T_PHY"].shape[1]
        for threads in args.threads:
            rate = throughput(model, cfg, batches, threads)
            print(json.dumps({"benchmark": "train", "config": Path(args.config).name,
                              "data": "oracle" if settings else "synthetic",
                              "threads_setting": threads, "threads": torch.get_num_threads(),
                              "samples_per_s": round(rate, 1), "batch_size": cfg.batch_size,
                              "parameters": count_parameters(model),
                              "flops_per_column": flops_per_column(model, levels),
                              "model": dataclasses.asdict(cfg.model)}), flush=True)


if __name__ == "__main__":
    main()
