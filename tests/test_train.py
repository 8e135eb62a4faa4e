"""`mlcu train` and `mlcu evaluate` on a small store: resume, DDP, warm start, report."""

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
def store(synthetic_store):
    return synthetic_store


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


def test_ddp_with_two_processes(store, tmp_path):
    run = tmp_path / "ddp"
    launcher = (str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(BIN / "mlcu"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(train_cmd(store, run, "epochs=2", launcher=launcher), capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((run / "metrics.json").read_text())
    assert len(history) == 2 and history[-1]["val_loss"] < history[0]["train_loss"] * 10
    model = build_model(run)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_warm_start_and_side_by_side_report(store, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert subprocess.run(train_cmd(store, first, "epochs=1"), capture_output=True).returncode == 0
    out = subprocess.run(train_cmd(store, second, "epochs=1") + ["--init-from", str(first)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads((second / "model.json").read_text())["init_from"] == str(first)
    report = evaluate([first, second], store, "validation", tmp_path / "report")
    assert set(report["results"]) == {"first", "second"}
    for name in ("report.md", "report.json", "profiles.png", "r2_per_level.png",
                 "pratec_scatter.png", "trigger_confusion.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    scores = report["results"]["first"]
    assert set(scores["regression"]) >= {"RTHCUTEN", "RQVCUTEN", "PRATEC", "NCA", "CUTOP"}
    assert 0.0 <= scores["trigger"]["accuracy"] <= 1.0
    assert set(scores["profile_error"]) >= {"RTHCUTEN", "RQVCUTEN"} and "PRATEC" not in scores["profile_error"]
    assert "Where the profile error lies" in (tmp_path / "report" / "report.md").read_text()
    cli = subprocess.run([str(BIN / "mlcu"), "evaluate", "--model", str(first), "--store", str(store),
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert cli.returncode == 0 and "trigger F1" in cli.stdout


def test_configs_load_and_bad_settings_are_refused():
    default = TrainConfig.load(REPO / "configs" / "train.yaml")
    seed = TrainConfig.load(REPO / "configs" / "seed-baseline.yaml")
    assert (seed.model.hidden, seed.model.layers, seed.loss) == (32, 3, "mae")
    assert seed.model.input_normalisation == seed.model.target_normalisation == "absmax"
    assert default.model.derived_features and not seed.model.derived_features
    assert TrainConfig.load(None, ["learning_rate=3e-3"]).learning_rate == 0.003
    with pytest.raises(ValueError, match="unknown training settings.*model.size"):
        TrainConfig.load(None, ["model.size=3"])


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
