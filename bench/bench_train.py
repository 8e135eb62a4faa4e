"""Training throughput of the default configuration on this machine's CPU; prints one JSON line.

A small synthetic store is prepared in a temporary folder; the benchmark times training steps
(forward, backward, optimiser) of the default model on it, after one warm-up epoch.

    python bench/bench_train.py [--config configs/train.yaml] [--threads 0]
"""

import argparse
import dataclasses
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
from training.train import TrainConfig, loss_terms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "train.yaml"))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    cfg = TrainConfig.load(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(GenerateConfig(nx=32, ny=32, dx=[9000.0], run_minutes=60), Path(tmp) / "w",
                         progress=False)
        prepare(PrepareConfig.load(None, ["split.validation_fraction=0"], input=[str(f) for f in files],
                                   out=str(Path(tmp) / "store"), scheduler="synchronous"))
        store = Store(Path(tmp) / "store")
        stats = json.loads(store.path("stats.json").read_text())
        model = CumulusLSTM(store.contract(), stats, cfg.model)
        optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
        batches = list(ColumnBatches(store, "train", store.contract(), cfg.batch_size))
        timings = []
        for _ in range(2):  # warm-up epoch, then the timed one
            start, seen = time.perf_counter(), 0
            for batch in batches:
                loss, _, _ = loss_terms(model, model(batch), batch, cfg)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                seen += len(batch[model.trigger])
            timings.append(seen / (time.perf_counter() - start))
        # Inference cost per column on one thread (PyTorch eager; the ONNX runtime is separate).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        model.eval()
        with torch.no_grad():
            batch = batches[0]
            model(batch)
            start = time.perf_counter()
            for _ in range(5):
                model(batch)
            us_per_column = (time.perf_counter() - start) / 5 / len(batch[model.trigger]) * 1e6
        torch.set_num_threads(threads)
    print(json.dumps({"benchmark": "train", "config": Path(args.config).name,
                      "parameters": count_parameters(model), "flops_per_column": flops_per_column(model),
                      "inference_us_per_column_1_thread": round(us_per_column, 1),
                      "batch_size": cfg.batch_size,
                      "threads": torch.get_num_threads(), "samples_per_s": round(timings[-1], 1),
                      "model": dataclasses.asdict(cfg.model)}))


if __name__ == "__main__":
    main()
