"""``mlcu train``: a batch training job for the emulator on a training store.

A run folder holds everything needed to rebuild, resume or evaluate the model::

    config.yaml       the settings the run was started with (a restart must match them)
    model.json        contract, normalisation statistics and model settings
    checkpoint.pt     the last finished epoch: weights, optimiser, schedule, early stopping,
                      random state, metrics history (written atomically)
    best.pt           weights of the epoch with the lowest validation loss
    metrics.csv/.json one row per epoch

A job killed at any point and started again with the same command resumes from the last
checkpoint; data order depends only on (seed, epoch), so it ends with the same weights as an
uninterrupted run. Under ``torchrun`` the job runs data-parallel (DDP; gloo on CPU, NCCL on
GPU); rank 0 writes. On a GPU the forward pass runs in bfloat16 autocast.

Loss: the weighted mean over regressed outputs of the regression error (``mse`` or ``mae``) in
normalised units (``variable_weights`` per variable, default 1), over the columns that convect:
for the kernel design those where MSKF or the kernel convects (the trigger, cloud base and top
and NCA are the kernel's, not learned); for the seed design those where MSKF convects, plus the
binary cross-entropy of its learned trigger (weight ``trigger_weight``). Targets zero in all
training data are predicted as zero and left out. For the kernel design each column's error
is counted in units of its output's root-mean-square over the training columns of the same
kind (deep or shallow, ``kind_scales``, written to the run as ``kind_scales.json``): shallow
heating is about 20 times weaker than deep heating, so in units common to both its errors
would hardly count.

``threads`` 0 (the default) means the cores this process may use (its CPU affinity, not the
host's core count) divided by the training processes on this node: torch's own default can
count cores the process may not use and oversubscribe a shared machine. The model is small
(batches of a few hundred columns, 32 hidden units), so where other work shares the cores
``threads: 1`` is faster (``bench/bench_train.py --threads 0 -1 1`` measures it).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from emulator import features as ft
from emulator.contract import Contract
from emulator.model import CumulusLSTM, ModelConfig, count_parameters
from training import metrics
from training.data import ColumnBatches
from training.settings import load_settings
from training.store import Store


@dataclass
class TrainConfig:
    seed: int = 1
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    min_learning_rate: float = 5e-5
    weight_decay: float = 1e-4
    patience: int = 6
    loss: str = "mse"  # mse | mae
    trigger_weight: float = 1.0
    variable_weights: dict = field(default_factory=dict)
    block_size: int = 4096
    train_fraction: float = 1.0  # of the training files (learning curves)
    # Rotate each training column's horizontal wind and momentum tendencies by a random
    # angle: MSKF does not depend on the wind's direction (an exact symmetry).
    rotate_winds: bool = False
    threads: int = 0  # torch CPU threads per process; 0 = this process's cores / local processes
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def load(cls, path=None, sets=()) -> "TrainConfig":
        raw = load_settings(path, sets)
        model = raw.pop("model", {}) or {}
        unknown = (set(raw) - set(cls.__dataclass_fields__)) | {f"model.{k}" for k in set(model) - set(ModelConfig.__dataclass_fields__)}
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        cfg = cls(**raw, model=ModelConfig(**model))
        if cfg.loss not in ("mse", "mae"):
            raise ValueError(f"loss must be mse or mae, got {cfg.loss!r}")
        return cfg


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_model_spec(run_dir: Path, store: Store, model: ModelConfig, init_from=None) -> None:
    """model.json of a run folder: what ``build_model`` needs besides the weights."""
    spec = {"contract": store.contract().to_dict(),
            "stats": json.loads(store.path("stats.json").read_text()), "model": asdict(model),
            "store": str(store.root), "init_from": str(init_from) if init_from else None}
    _atomic_text(Path(run_dir) / "model.json", json.dumps(spec))


def default_threads() -> int:
    """The cores this process may use, shared among the training processes of this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(1, local))


def build_model(run_dir: Path, weights: str | None = "best.pt") -> CumulusLSTM:
    """The trained model of a run folder (``weights=None``: freshly initialised)."""
    spec = json.loads((Path(run_dir) / "model.json").read_text())
    model = CumulusLSTM(Contract.from_dict(spec["contract"]), spec["stats"], ModelConfig(**spec["model"]))
    if weights is None:
        return model.eval()
    state = torch.load(Path(run_dir) / weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.eval()


def initial_weights(source) -> tuple[dict, dict]:
    """(state dict, model spec) to start from: a run folder's best weights, or an exported
    model (which carries its training weights, ``training.export``)."""
    source = Path(source)
    if source.suffix == ".onnx":
        from training.export import training_state

        return training_state(source)
    spec = json.loads((source / "model.json").read_text())
    return build_model(source).state_dict(), spec


def convecting(model: CumulusLSTM, batch: dict) -> torch.Tensor:
    """Columns the loss is taken over: where MSKF convects, and for the kernel design also
    where the kernel does (its profiles must be learned to vanish where MSKF does not)."""
    mask = batch[model.trigger] > 0.5
    if model.kernel:
        channels = batch[ft.KERNEL_INPUT]
        mask |= (channels[:, ft.KERNEL_INDEX["deep"], 0] + channels[:, ft.KERNEL_INDEX["shallow"], 0]) > 0
    return mask.float()


def training_batch(model: CumulusLSTM, batch: dict, cfg: "TrainConfig", turns=None, rank: int = 0,
                   world: int = 1) -> dict:
    """A batch as the network learns from it: winds turned (with a generator ``turns``; this
    rank's share of ``world``), and for the kernel design the kernel's channels added and only
    the convecting columns kept (the others take no part in the loss)."""
    if cfg.rotate_winds and turns is not None:
        batch = rotate_winds(batch, turns, rank, world)
    if model.kernel:
        batch = ft.with_kernel(batch)
        keep = convecting(model, batch) > 0
        batch = {k: v[keep] for k, v in batch.items()}
    return batch


KIND_SCALE_FLOOR = 1.0e-3


def kind_scales(store: Store, contract: Contract, files: set | None = None,
                block_size: int = 4096) -> dict:
    """Root-mean-square of each regressed output over the training columns MSKF makes deep
    (NCA > 0) and shallow (triggered, NCA not set): {name: {"deep": rms, "shallow": rms}}."""
    squares, counts = {}, {"deep": 0, "shallow": 0}
    for batch in ColumnBatches(store, "train", contract, 8192, False, block_size=block_size,
                               file_ids=files):
        deep = batch["NCA"].reshape(-1) > 0
        kinds = {"deep": deep, "shallow": (batch["TRIGGER"].reshape(-1) > 0.5) & ~deep}
        for kind, rows in kinds.items():
            counts[kind] += int(rows.sum())
            for v in contract.outputs[1:]:
                x = batch[v.name][rows].double()
                per_column = x.square().mean(dim=1) if x.dim() == 2 else x.square()
                squares.setdefault(v.name, {"deep": 0.0, "shallow": 0.0})[kind] += float(per_column.sum())
    return {name: {k: math.sqrt(total[k] / counts[k]) if counts[k] else 0.0 for k in total}
            for name, total in squares.items()}


def kind_weights(model: CumulusLSTM, scales: dict) -> dict:
    """Loss weights per output and kind: (the output's scale / its scale over that kind)^2,
    1 where the output is zero in that kind's training columns, or so nearly zero (under
    KIND_SCALE_FLOOR of its scale: round-off, such as the ice of warm shallow clouds) that
    errors in its units would be meaningless."""
    weights = {}
    for name in model.level_outputs + model.column_outputs:
        overall = float(model.scale_of(name))
        weights[name] = {kind: (overall / s) ** 2 if s > KIND_SCALE_FLOOR * overall else 1.0
                         for kind, s in scales.get(name, {}).items()}
    return weights


def loss_terms(model: CumulusLSTM, out: dict, batch: dict, cfg: TrainConfig,
               weights: dict | None = None) -> tuple:
    trigger = model.trigger
    if model.kernel:
        loss_trigger = out[trigger].new_zeros(())
    else:
        loss_trigger = torch.nn.functional.binary_cross_entropy_with_logits(out[trigger], batch[trigger])
    # Mean over convecting columns (and levels), written as a weighted sum so that every
    # parameter takes part in every step, as data-parallel training requires.
    mask = convecting(model, batch)
    count = mask.sum()
    if torch.is_grad_enabled() and dist.is_initialized():
        # Data-parallel training averages the ranks' gradients: each rank divides by the ranks'
        # mean count, so that the step is the mean over all ranks' convecting columns.
        count = count.detach().clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    denominator = count.clamp(min=1.0)
    if weights:  # the kernel's kind of each column
        flags = {kind: batch[ft.KERNEL_INPUT][:, ft.KERNEL_INDEX[kind], 0] for kind in ("deep", "shallow")}
    regression = out[trigger].new_zeros(())
    weight_sum = 0.0
    zero = set(model.zero_targets)
    for name in model.level_outputs + model.column_outputs:
        if name in zero:
            continue
        err = out[name] - model.normalised_target(name, batch[name])
        per_column = err.abs() if cfg.loss == "mae" else err.square()
        if per_column.dim() == 2:
            per_column = per_column.mean(dim=1)
        if weights:
            per_column = per_column * (1.0 + sum((weights[name][kind] - 1.0) * flag
                                                 for kind, flag in flags.items()))
        w = cfg.variable_weights.get(name, 1.0)
        regression = regression + w * (per_column * mask).sum() / denominator
        weight_sum += w
    regression = regression / max(weight_sum, 1e-12)
    return cfg.trigger_weight * loss_trigger + regression, loss_trigger, regression


WIND_PAIRS = (("U_PHY", "V_PHY"), ("RUCUTEN", "RVCUTEN"))


def rotate_winds(batch: dict, generator: torch.Generator, rank: int = 0, world: int = 1) -> dict:
    """The batch with every column's (u, v) input and tendency pairs turned by one random angle.
    Under data parallelism the batch is rank ``rank``'s share (every ``world``-th column) of
    the step's columns, which get the angles one process would give them."""
    n = len(next(iter(batch.values())))
    angle = torch.rand(n * world, 1, generator=generator)[rank::world] * (2.0 * math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    out = dict(batch)
    for u, v in WIND_PAIRS:
        if u in batch and v in batch:
            out[u] = cos * batch[u] - sin * batch[v]
            out[v] = sin * batch[u] + cos * batch[v]
    return out


def _select_files(store: Store, fraction: float, seed: int) -> set | None:
    if fraction >= 1.0:
        return None
    files = sorted({fid for b in store.manifest()["batches"] if b["split"] == "train"
                    for fid, _ in b["units"]})
    rng = np.random.default_rng(seed)
    keep = max(1, int(round(fraction * len(files))))
    return set(rng.permutation(files)[:keep].tolist())


@torch.no_grad()
def validate(model: CumulusLSTM, batches, cfg: TrainConfig, weights: dict | None = None) -> dict:
    """Validation loss and headline scores (trigger F1, pooled R2 of main variables on
    triggered columns)."""
    model.eval()
    totals, n = np.zeros(3), 0
    trig_true, trig_pred = [], []
    headline = ("RTHCUTEN", "RQVCUTEN", "PRATEC")
    truth, pred = {k: [] for k in headline}, {k: [] for k in headline}
    for batch in batches:
        batch = training_batch(model, batch, cfg)
        if len(batch[model.trigger]) == 0:
            continue
        out = model(batch)
        b = len(batch[model.trigger])
        totals += b * np.array([float(t) for t in loss_terms(model, out, batch, cfg, weights)])
        n += b
        triggered = batch[model.trigger].numpy() > 0.5
        trig_true.append(triggered)
        trig_pred.append(out[model.trigger].numpy() > 0)
        phys = model.physical(out, batch)
        for name in headline:
            truth[name].append(batch[name].numpy()[triggered].ravel())
            pred[name].append(phys[name].numpy()[triggered].ravel())
    model.train()
    f1 = metrics.trigger_scores(np.concatenate(trig_true), np.concatenate(trig_pred))["f1"]
    scores = {"val_loss": totals[0] / n, "val_trigger_loss": totals[1] / n,
              "val_regression_loss": totals[2] / n, "val_trigger_f1": f1 if f1 is not None else 0.0}
    for name in headline:
        r2 = metrics.regression_scores(np.concatenate(truth[name]), np.concatenate(pred[name]))["pooled"]["r2"]
        scores[f"val_r2_{name}"] = r2 if r2 is not None else float("nan")
    return scores


def train(cfg: TrainConfig, store_path, run_dir, config_text: str, init_from=None,
          progress: bool = True) -> dict:
    """Train (or resume) a run; returns the metrics of the last epoch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    torch.set_num_threads(cfg.threads or default_threads())
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    run_dir, store = Path(run_dir), Store(store_path)
    contract = store.contract()
    if not store.path("stats.json").exists():
        raise ValueError(f"{store.root} has no train split (no stats.json): it can be evaluated "
                         "on, not trained on")
    stats = json.loads(store.path("stats.json").read_text())

    checkpoint = run_dir / "checkpoint.pt"
    if run_dir.exists() and (run_dir / "config.yaml").exists():
        if (run_dir / "config.yaml").read_text() != config_text:
            raise ValueError(f"{run_dir} holds a run with other settings; use another --out")
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_model_spec(run_dir, store, cfg.model, init_from)
        _atomic_text(run_dir / "config.yaml", config_text)
    if world > 1:
        dist.barrier()

    torch.manual_seed(cfg.seed)
    model = CumulusLSTM(contract, stats, cfg.model)
    if init_from is not None:
        state, spec = initial_weights(init_from)
        if Contract.from_dict(spec["contract"]).to_dict()["inputs"] != contract.to_dict()["inputs"]:
            raise ValueError(f"{init_from}: its contract's inputs are not the store's")
        if spec["model"] != asdict(cfg.model):
            raise ValueError(f"{init_from}: its model settings {spec['model']} are not this run's "
                             f"{asdict(cfg.model)}")
        # The weights only: the normalisation of the new store stays (buffers).
        buffers = {name for name, _ in model.named_buffers()}
        model.load_state_dict({k: v for k, v in state.items() if k not in buffers}, strict=False)
    model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.epochs,
                                                          eta_min=cfg.min_learning_rate)
    state = {"epoch": 0, "best": math.inf, "stale": 0, "history": []}
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["rng"])
        state = saved["state"]
    # Buffers hold the fixed normalisation: nothing to broadcast between ranks.
    net = (torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
           if world > 1 else model)

    files = _select_files(store, cfg.train_fraction, cfg.seed)
    train_data = ColumnBatches(store, "train", contract, cfg.batch_size, True, cfg.seed, rank, world,
                               cfg.block_size, files)
    val_data = ColumnBatches(store, "validation", contract, 4096, False, block_size=cfg.block_size)
    weights = None
    if model.kernel:
        saved_scales = run_dir / "kind_scales.json"
        if saved_scales.exists():  # a resumed run keeps the scales it started with
            scales = json.loads(saved_scales.read_text())
        else:
            scales = kind_scales(store, contract, files, cfg.block_size)
            if rank == 0:
                _atomic_text(saved_scales, json.dumps(scales, indent=1))
        weights = kind_weights(model, scales)
    if rank == 0 and state["epoch"] == 0:
        print(f"model: {count_parameters(model)} parameters; train on {store.root}")

    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        train_data.set_epoch(epoch)
        turns = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009)
        started, seen, learned, running = time.perf_counter(), 0, 0, 0.0
        bar = tqdm(train_data, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress or rank != 0, leave=False)
        for batch in bar:
            seen += len(batch[model.trigger])
            batch = training_batch(model, batch, cfg, turns, rank, world)
            if len(batch[model.trigger]) == 0:
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = net(batch)
            loss, _, _ = loss_terms(model, {k: v.float() for k, v in out.items()}, batch, cfg, weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            learned += len(batch[model.trigger])
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite training loss in epoch {epoch + 1}: the "
                                         "inputs or their kernel channels hold NaN or Inf")
            running += value * len(batch[model.trigger])
        schedule.step()
        scores = validate(model, ({k: v.to(device) for k, v in b.items()} for b in val_data), cfg, weights)
        if not math.isfinite(scores["val_loss"]):
            raise FloatingPointError(f"non-finite validation loss in epoch {epoch + 1}")
        row = {"epoch": epoch + 1, "train_loss": running / max(learned, 1),
               "learning_rate": optimiser.param_groups[0]["lr"],
               "samples_per_s": seen * world / (time.perf_counter() - started), **scores}
        state["history"].append(row)
        improved = scores["val_loss"] < state["best"] - 1e-6
        state["best"] = min(state["best"], scores["val_loss"])
        state["stale"] = 0 if improved else state["stale"] + 1
        state["epoch"] = epoch + 1
        if rank == 0:
            if improved:
                _atomic_save({"model": model.state_dict()}, run_dir / "best.pt")
            _write_metrics(run_dir, state["history"])
            _atomic_save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                          "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
                          "state": state}, checkpoint)
            if progress:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()), flush=True)
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()
    return state["history"][-1] if state["history"] else {}


def _write_metrics(run_dir: Path, history: list) -> None:
    _atomic_text(run_dir / "metrics.json", json.dumps(history, indent=1))
    tmp = run_dir / ".metrics.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, run_dir / "metrics.csv")
