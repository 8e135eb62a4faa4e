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

    from training.export import export
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
    """A tiny model of the emulator's design (the kernel decides where convection is),
    trained for two epochs on the synthetic store, exported to ONNX."""
    return _tiny_onnx(synthetic_store, tmp_path_factory)


@pytest.fixture(scope="session")
def onnx_model_seed(synthetic_store, tmp_path_factory):
    """The same with the seed paper's design (a learned trigger, no kernel)."""
    return _tiny_onnx(synthetic_store, tmp_path_factory, "model.design=seed", "model.level_stride=1",
                      "loss=mae")


@pytest.fixture(scope="session")
def oracle_store(oracle_files, tmp_path_factory):
    """A store of two oracle files of one grid spacing: *_00 trains, the columns of *_01 are
    shared out between validation and test (configs/prepare_oracle.yaml)."""
    from training.prepare import PrepareConfig, prepare

    files = [str(p) for p in oracle_files if "_05km_" in p.name]
    out = tmp_path_factory.mktemp("oracle_store") / "store"
    prepare(PrepareConfig.load(REPO / "configs" / "prepare_oracle.yaml", input=files, out=str(out),
                               scheduler="synchronous"))
    return out


@pytest.fixture(scope="session")
def onnx_model_oracle(oracle_store, tmp_path_factory):
    """A tiny model of the emulator's design trained on MSKF's own columns."""
    return _tiny_onnx(oracle_store, tmp_path_factory, "epochs=1")
