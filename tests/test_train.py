"""`mlcu train` and `mlcu evaluate` on a small store of MSKF's own columns: learning, resume,
DDP, warm starts (from a run and from an exported model), report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.evaluate import evaluate
from training.train import TrainConfig, build_model

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["epochs=3", "batch_size=64", "threads=1", "model.hidden=8", "model.layers=1",
        "model.column_hidden=8", "block_size=256", "patience=10"]


@pytest.fixture(scope="module")
def store(oracle_store):
    return oracle_store


def train_cmd(store, out, *sets, launcher=(str(BIN / "mlcu"),)):
    args = [*launcher, "train", "--config", str(REPO / "configs" / "train.yaml"),
            "--store", str(store), "--out", str(out), "--quiet"]
    for s in TINY + list(sets):
        args += ["--set", s]
    return args


def weights(run):
    return torch.load(Path(run) / "checkpoint.pt", weights_only=False)["model"]


def test_training_resumes_after_sigkill_to_the_same_weights(store, tmp_path):
    ref = tmp_path / "ref"
    assert subprocess.run(train_cmd(store, ref), capture_output=True).returncode == 0
    history = json.loads((ref / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert (ref / "metrics.csv").read_text().startswith("epoch,train_loss")
    # It learns: on MSKF's columns the losses fall in three epochs (measured with these
    # settings: train 1.57 -> 0.56, validation 0.570 -> 0.517, validation R2 of RQVCUTEN
    # 0.753 -> 0.808; the losses count shallow columns' errors in their own, smaller units).
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < 0.95 * history[0]["val_loss"]
    assert history[-1]["val_r2_RQVCUTEN"] > history[0]["val_r2_RQVCUTEN"] + 0.03

    run = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(store, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epochs_done = len(json.loads((run / "metrics.json").read_text()))
    assert epochs_done < 3, "the run finished before it was killed"
    assert subprocess.run(train_cmd(store, run), capture_output=True).returncode == 0
    for name, value in weights(ref).items():
        assert torch.equal(value, weights(run)[name]), name

    other = subprocess.run(train_cmd(store, run, "learning_rate=0.1"), capture_output=True, text=True)
    assert other.returncode == 2 and "other settings" in other.stderr


def test_ddp_with_two_processes_trains_as_one(store, tmp_path):
    """Two data-parallel processes see the same columns per step as one process, with the same
    wind rotations and the same mean over the step's convecting columns: the same training up
    to the order of sums (measured: validation loss 0.47960 against 0.47959; with each rank's
    own rotations and its own mean, 0.4914 against 0.4796)."""
    run, single = tmp_path / "ddp", tmp_path / "single"
    launcher = (str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(BIN / "mlcu"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(train_cmd(store, run, "epochs=2", launcher=launcher), capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert subprocess.run(train_cmd(store, single, "epochs=2"), capture_output=True).returncode == 0
    ddp, one = (json.loads((r / "metrics.json").read_text()) for r in (run, single))
    assert len(ddp) == 2 and ddp[-1]["val_loss"] < 0.95 * ddp[0]["val_loss"]
    assert ddp[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=1e-3)
    assert build_model(run).state_dict().keys() == build_model(single).state_dict().keys()


def test_warm_start_and_side_by_side_report(store, tmp_path):
    first, second, shipped = tmp_path / "first", tmp_path / "second", tmp_path / "shipped"
    assert subprocess.run(train_cmd(store, first, "epochs=2"), capture_output=True).returncode == 0
    out = subprocess.run(train_cmd(store, second, "epochs=1", "learning_rate=1e-4") +
                         ["--init-from", str(first)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads((second / "model.json").read_text())["init_from"] == str(first)
    # Warm started: after one more epoch at a small learning rate, where the first run ended.
    losses = [json.loads((r / "metrics.json").read_text())[-1]["val_loss"] for r in (first, second)]
    assert losses[1] < 1.05 * losses[0]
    # From an exported model: it carries its weights (a shipped model can be retrained).
    from training.export import export

    export(first, tmp_path / "first.onnx")
    out = subprocess.run(train_cmd(store, shipped, "epochs=1", "learning_rate=1e-4") +
                         ["--init-from", str(tmp_path / "first.onnx")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    started = json.loads((shipped / "metrics.json").read_text())[-1]["val_loss"]
    assert started == pytest.approx(losses[1], rel=1e-3)
    bad = subprocess.run(train_cmd(store, tmp_path / "bad", "epochs=1", "model.hidden=9") +
                         ["--init-from", str(tmp_path / "first.onnx")], capture_output=True, text=True)
    assert bad.returncode == 2 and "model settings" in bad.stderr

    report = evaluate([first, second], store, "test", tmp_path / "report")
    assert set(report["results"]) == {"first", "second"}
    for name in ("report.md", "report.json", "profiles.png", "r2_per_level.png",
                 "bias_per_level.png", "pratec_scatter.png", "kind_confusion.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    scores = report["results"]["first"]
    assert set(scores["regression"]) >= {"RTHCUTEN", "RQVCUTEN", "PRATEC", "NCA", "CUTOP"}
    # The kernel's trigger and kinds are MSKF's on its own columns.
    assert scores["trigger"]["f1"] > 0.99 and scores["kind"]["agreement"] > 0.99
    assert scores["kind"]["shallow_outputs_raining"] == 0
    assert set(scores["profile_error"]) >= {"RTHCUTEN", "RQVCUTEN"} and "PRATEC" not in scores["profile_error"]
    assert set(scores["groups"]["regime"]) >= {"wk82", "jordan", "cont"}
    assert "Where the profile error lies" in (tmp_path / "report" / "report.md").read_text()
    cli = subprocess.run([str(BIN / "mlcu"), "evaluate", "--model", str(first), "--store", str(store),
                          "--split", "test", "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert cli.returncode == 0 and "trigger F1" in cli.stdout


def test_configs_load_and_bad_settings_are_refused():
    default = TrainConfig.load(REPO / "configs" / "train.yaml")
    seed = TrainConfig.load(REPO / "configs" / "seed-baseline.yaml")
    assert (seed.model.hidden, seed.model.layers, seed.loss, seed.model.design) == (32, 3, "mae", "seed")
    assert default.model.design == "kernel" and default.threads == 0 and default.model.overlap
    assert TrainConfig.load(None, ["learning_rate=3e-3"]).learning_rate == 0.003
    with pytest.raises(ValueError, match="unknown training settings.*model.size"):
        TrainConfig.load(None, ["model.size=3"])


def test_default_threads_share_the_cores_among_local_processes(monkeypatch):
    from training.train import default_threads

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))
    assert default_threads() == 1


def test_batches_cover_each_column_once_and_subsets_by_file(store):
    from emulator.contract import Contract
    from training.data import ColumnBatches
    from training.store import Store

    st = Store(store)
    contract = Contract.from_dict(st.manifest()["contract"])
    ds = st.open_split("train")
    seen = [tuple(x) for b in ColumnBatches(st, "train", contract, 50, block_size=100)
            for x in zip(b["DX"].tolist(), b["HFX"].tolist(), b["T_PHY"][:, 0].tolist())]
    assert len(seen) == ds.sizes["sample"] == len(set(seen))
    two_ranks = [len(b["HFX"]) for r in (0, 1)
                 for b in ColumnBatches(st, "train", contract, 50, rank=r, world_size=2, block_size=100)]
    assert abs(sum(two_ranks) - ds.sizes["sample"]) <= 2 * len(ColumnBatches(st, "train", contract, 50, block_size=100).blocks)
    one_file = int(ds["FILE_ID"].values[0])
    subset = ColumnBatches(st, "train", contract, 50, block_size=100, file_ids={one_file})
    assert sum(len(b["HFX"]) for b in subset) == int((ds["FILE_ID"].values == one_file).sum())
