"""``mlcu export``: a trained run as one self-describing ONNX file.

The graph takes every contract input in physical units, shape (column, values) for mass and w
levels and (column,) for surface and scalar variables (and, for the kernel design, the
kernel's channels UPDRAFT, (column, channel, level), which the runtime computes), and returns
every contract output in physical units (TRIGGER as a probability): the feature computation and
the target scales are part of the graph. The column and level axes are dynamic: one file
serves any vertical grid.

The model's metadata (``metadata_props``) carries, as JSON strings, what the runtime checks
and reads (``emulator.runtime.check_model``):

* ``mlcu.format`` / ``mlcu.format_version``: what this file is and which layout of metadata;
* ``mlcu.contract``: the variable contract (names, units, level kinds), not bound to a level
  count;
* ``mlcu.stats``: the training store's statistics (pooled per variable, and per pressure band
  for profile inputs), which the runtime's out-of-distribution check reads;
* ``mlcu.design``: ``kernel`` or ``seed`` (``emulator.model``); ``mlcu.kernel_layout``: the
  kernel channels the model was trained with;
* ``mlcu.target_scales``: each regressed output's scale; ``mlcu.zero_targets``: outputs zero in
  all training data, which the model predicts as exactly zero;
* ``mlcu.provenance``: the names of the training store and run folder, model settings, epochs, validation scores,
  versions, export time, parity errors;
* ``mlcu.training_state``: the PyTorch weights and model settings (base64 of ``torch.save``),
  so that ``mlcu train --init-from MODEL.onnx`` retrains from the shipped file itself.

After the export, PyTorch and ONNX Runtime are compared on held-out columns (the validation
split of the training store, on each of its grids): the maximum absolute error per output and
the relative error (absolute error over the output's largest magnitude). The file is written
only if every output agrees within ``PARITY_TOLERANCE``.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from emulator import features as ft
from emulator.model import CumulusLSTM
from emulator.runtime import MODEL_FORMAT, MODEL_FORMAT_VERSION
from training.data import ColumnBatches
from training.store import Store

OPSET = 17
# Maximum |onnx - torch| / max|torch| per output (float32 through the recurrent steps).
PARITY_TOLERANCE = 1e-4
PARITY_COLUMNS = 1024


class ExportError(RuntimeError):
    """The export failed or the exported graph does not reproduce the PyTorch model."""


class PhysicalModel(torch.nn.Module):
    """Positional inputs in contract order (then UPDRAFT) -> outputs in contract order, SI units."""

    def __init__(self, model: CumulusLSTM):
        super().__init__()
        self.model = model
        self.inputs = model.contract.input_names + model.extra_inputs
        self.outputs = model.contract.output_names

    def forward(self, *inputs):
        named = dict(zip(self.inputs, inputs))
        out = self.model.physical(self.model(named), named)
        return tuple(out[name] for name in self.outputs)


def heldout_columns(store_path, n: int = PARITY_COLUMNS) -> list[dict]:
    """Up to ``n`` columns of the store's validation split (test, then train if it has none),
    from each grid (level count) it holds."""
    store = Store(store_path)
    contract = store.contract()
    for split in ("validation", "test", "train"):
        shards = store.shards(split)
        if not shards:
            continue
        by_grid = {}
        for shard in shards:
            data = ColumnBatches(store, split, contract, n, shuffle=False, shards=[shard])
            batch = next(iter(data))
            by_grid.setdefault(batch["T_PHY"].shape[1], batch)
        return [{name: b[name] for name in contract.input_names} for b in by_grid.values()]
    raise ExportError(f"{store_path}: no columns to check the exported model on")


def parity(onnx_bytes: bytes, model: CumulusLSTM, inputs: dict) -> dict:
    """Max absolute and relative error per output of ONNX Runtime against PyTorch."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    wrapper = PhysicalModel(model).eval()
    with torch.no_grad():
        reference = dict(zip(wrapper.outputs, (r.numpy() for r in wrapper(*[inputs[n] for n in wrapper.inputs]))))
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = dict(zip(wrapper.outputs, session.run(wrapper.outputs, feed)))
    errors = {}
    for name in wrapper.outputs:
        ref, value = reference[name].astype(np.float64), got[name].astype(np.float64)
        if not np.isfinite(value).all():
            errors[name] = {"max_abs": float("inf"), "max_rel": float("inf")}
            continue
        diff = np.abs(value - ref).max(initial=0.0)
        # (The trigger is a probability: its errors are absolute.)
        scale = 1.0 if name == model.trigger else float(np.abs(ref).max(initial=0.0))
        errors[name] = {"max_abs": float(diff),
                        "max_rel": float(diff / scale) if scale > 0 else float(diff > 0)}
    return errors


def _provenance(run_dir: Path, spec: dict) -> dict:
    import onnxruntime as ort

    history = []
    if (run_dir / "metrics.json").exists():
        history = json.loads((run_dir / "metrics.json").read_text())
    best = min(history, key=lambda row: row.get("val_loss", np.inf)) if history else {}
    return {
        # names, not paths: a path of the training machine means nothing where the model runs
        "run": run_dir.resolve().name,
        "store": Path(spec["store"]).name if spec.get("store") else None,
        "init_from": Path(spec["init_from"]).name if spec.get("init_from") else None,
        "model": spec["model"],
        "config": (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else "",
        "epochs": len(history),
        "best_epoch": best,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
    }


def training_state(path) -> tuple[dict, dict]:
    """(state dict, model spec {contract, model}) carried by an exported model."""
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "mlcu.training_state" not in meta:
        raise ExportError(f"{path}: no training weights in the model's metadata")
    saved = torch.load(io.BytesIO(base64.b64decode(meta["mlcu.training_state"])),
                       map_location="cpu", weights_only=True)
    return saved["model"], {"contract": json.loads(meta["mlcu.contract"]),
                            "model": json.loads(saved["config"])}


def _training_state(model: CumulusLSTM) -> str:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "config": json.dumps(asdict(model.cfg))}, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def to_onnx(model: CumulusLSTM) -> bytes:
    """The ONNX graph of a model (no metadata), with dynamic column and level axes."""
    wrapper = PhysicalModel(model).eval()
    contract = model.contract
    n = 8  # any level count: the axis is dynamic
    example, axes = [], {}
    for v in contract.inputs:
        if v.level in ("mass", "w"):
            example.append(torch.ones(2, v.size(n)))
            axes[v.name] = {0: "column", 1: "level" if v.level == "mass" else "level_w"}
        else:
            example.append(torch.ones(2))
            axes[v.name] = {0: "column"}
    for name in model.extra_inputs:
        example.append(torch.zeros(2, ft.N_KERNEL, n))
        axes[name] = {0: "column", 2: "level"}
    for v in contract.outputs:
        axes[v.name] = {0: "column", 1: "level"} if v.level == "mass" else {0: "column"}
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"mlcu-export-{os.getpid()}.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(example), str(path), input_names=wrapper.inputs,
                              output_names=wrapper.outputs, opset_version=OPSET, dynamo=False,
                              dynamic_axes=axes)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def export(run_dir, out, store=None, weights: str = "best.pt",
           tolerance: float = PARITY_TOLERANCE) -> dict:
    """Export a run folder to ``out``; returns the parity errors. Nothing is written on failure."""
    from training.train import build_model

    run_dir, out = Path(run_dir), Path(out)
    spec = json.loads((run_dir / "model.json").read_text())
    model = build_model(run_dir, weights)
    store = store or spec.get("store")
    if not store or not Path(store).exists():
        raise ExportError(f"the training store of {run_dir} ({store}) is not there; give --store "
                          "to check the exported model on held-out columns")
    graph = onnx.load_from_string(to_onnx(model))
    errors = {}
    for columns in heldout_columns(store):
        if model.kernel:
            columns = ft.with_kernel(columns)
        for name, err in parity(graph.SerializeToString(), model, columns).items():
            worst = errors.setdefault(name, err)
            errors[name] = {k: max(worst[k], err[k]) for k in err}
    failed = {k: v for k, v in errors.items() if not v["max_rel"] <= tolerance}
    if failed:
        raise ExportError(f"ONNX Runtime does not reproduce PyTorch (tolerance {tolerance:g} "
                          f"relative): {json.dumps(failed)}; {out} not written")
    provenance = {**_provenance(run_dir, spec), "parity": errors, "parity_store": Path(store).name}
    names = model.level_outputs + model.column_outputs
    scales = {n: float(model.scale_of(n)) * float(live)
              for n, live in zip(names, model.target_live.tolist())}
    meta = {"mlcu.format": MODEL_FORMAT, "mlcu.format_version": str(MODEL_FORMAT_VERSION),
            "mlcu.contract": model.contract.to_json(), "mlcu.stats": json.dumps(spec["stats"]),
            "mlcu.design": model.cfg.design, "mlcu.target_scales": json.dumps(scales),
            "mlcu.zero_targets": json.dumps(model.zero_targets),
            "mlcu.provenance": json.dumps(provenance),
            "mlcu.training_state": _training_state(model)}
    if model.kernel:
        meta["mlcu.kernel_layout"] = json.dumps(ft.layout())
    onnx.helper.set_model_props(graph, meta)
    graph.producer_name, graph.doc_string = "mlcu", "Machine-learned cumulus scheme for WRF (MSKF emulator)"
    onnx.checker.check_model(graph)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(graph, str(tmp))
    os.replace(tmp, out)
    return errors
