"""Shared fixtures: the reference data in ../shared (read in place, never copied) and small
synthetic runs generated once per test session."""

import os
from pathlib import Path

import pytest

from training.synthetic.generate import GenerateConfig, generate

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MLCU_SHARED", REPO.parent / "shared"))


def _missing(what: str) -> None:
    """Fails in CI (MLCU_REQUIRE_SHARED), where everything must be there; skips elsewhere."""
    if os.environ.get("MLCU_REQUIRE_SHARED"):
        pytest.fail(what)
    pytest.skip(what)


def _shared(sub: str, pattern: str) -> list[Path]:
    files = sorted((SHARED / "data" / sub).glob(pattern))
    if not files:
        _missing(f"reference data not present: {SHARED / 'data' / sub}/{pattern}")
    return files


@pytest.fixture(scope="session")
def oracle_files():
    return _shared("mskf_oracle", "wrfout_oracle_*.nc")


@pytest.fixture(scope="session")
def ideal_files():
    return _shared("wrf_ideal", "wrfout_d01_*")


@pytest.fixture(scope="session")
def mskf_program():
    """WRF's own MSKF_CPS as a standalone program (make mskf-columns WRF_SRC=...; .ci/run
    builds it from the shared WRF source and sets MLCU_MSKF_COLUMNS)."""
    from training import mskf

    try:
        return mskf.program()
    except mskf.MskfError as err:
        _missing(str(err))


SMALL = dict(nx=12, ny=12, dx=[3000.0, 25000.0], run_minutes=30.0)


@pytest.fixture(scope="session")
def synthetic_files(tmp_path_factory):
    """Two small runs (3 and 25 km), four history times each."""
    cfg = GenerateConfig.from_yaml(REPO / "configs" / "generate.yaml", **SMALL)
    return generate(cfg, tmp_path_factory.mktemp("synthetic"), progress=False)


@pytest.fixture(scope="session")
def synthetic_store(synthetic_files, tmp_path_factory):
    """A training store of the small synthetic runs."""
    from training.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("synthetic_store") / "store"
    prepare(PrepareConfig.load(REPO / "configs" / "prepare.yaml", ["split.validation_fraction=0.4"],
                               input=[str(p) for p in synthetic_files], out=str(out),
                               scheduler="synchronous"))
    return out


def _tiny_onnx(store, tmp_path_factory, *sets):
    import yaml

    from emulator.export import export
    from training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = TrainConfig.load(REPO / "configs" / "train.yaml",
                           ["epochs=2", "batch_size=64", "threads=1", "model.hidden=8",
                            "model.layers=1", "model.column_hidden=8", "block_size=256", *sets])
    train(cfg, store, run, yaml.safe_dump({"tiny": True}), progress=False)
    model = run.parent / "model.onnx"
    export(run, model)
    return model


@pytest.fixture(scope="session")
def onnx_model(synthetic_store, tmp_path_factory):
    """A tiny model trained for two epochs on the synthetic store, exported to ONNX."""
    return _tiny_onnx(synthetic_store, tmp_path_factory)


@pytest.fixture(scope="session")
def onnx_model_two_stage(synthetic_store, tmp_path_factory):
    """The same with a separate trigger network (the runtime's two-stage path)."""
    return _tiny_onnx(synthetic_store, tmp_path_factory, "model.trigger_hidden=8")


@pytest.fixture(scope="session")
def onnx_model_updraft(synthetic_store, tmp_path_factory):
    """The same with MSKF's updraft, downdraft and the drafts' initial tendencies as input,
    scaled by a closure factor, and the updraft as the trigger (the runtime's updraft path)."""
    return _tiny_onnx(synthetic_store, tmp_path_factory, "model.updraft_features=true",
                      "model.updraft_trigger=true", "model.trigger_hidden=0",
                      "model.downdraft_features=true", "model.tendency_features=true",
                      "model.closure_factor=true")
