"""``mlcu export``: a trained run as one self-describing ONNX file.

The graph takes every contract input in physical units, shape (column, values) for mass and w
levels and (column,) for surface and scalar variables, and returns
every contract output in physical units (TRIGGER as a probability): the feature computation
and normalisation of ``emulator.features`` and the target scales are part of the graph. The
column axis is dynamic.

The model's metadata (``metadata_props``) carries, as JSON strings:

* ``mlcu.format`` / ``mlcu.format_version``: what this file is and which layout of metadata;
* ``mlcu.contract``: the variable contract (names, units, level kinds, level count);
* ``mlcu.stats``: the training store's normalisation and distribution statistics (per input and
  level: count, mean, std, min, max), which the runtime's out-of-distribution check reads;
* ``mlcu.provenance``: training store, run folder, model settings, epochs, validation scores,
  versions, export time, parity errors;
* ``mlcu.trigger_stage``: ``separate`` when TRIGGER depends only on the cheap trigger network
  (the runtime then runs the recurrent core only on columns that convect), ``updraft`` when it
  is the updraft kernel's decision (the runtime runs the network only where the kernel finds
  a cloud), else ``joint``;
* ``mlcu.updraft``: for a model with MSKF's updraft as input (the graph input UPDRAFT, which
  the runtime computes with ``emulator.updraft``), the channel layout it was trained with.

After the export, PyTorch and ONNX Runtime are compared on held-out columns (the validation
split of the training store): the maximum absolute error per output, and the relative error
(absolute error over the output's largest magnitude); for level indices, the fraction of
columns whose index differs. The file is written only if every output passes
(``PARITY_TOLERANCE``).
"""

from __future__ import annotations

import datetime
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from emulator import updraft as kf
from emulator.model import CumulusLSTM
from emulator.runtime import FEATURES_OUTPUT, MODEL_FORMAT, MODEL_FORMAT_VERSION
OPSET = 17
# Maximum |onnx - torch| / max|torch| per output (float32 through 44 recurrent steps).
PARITY_TOLERANCE = 1e-4
# Fraction of columns whose level index (an argmax) may differ: a near-tie can flip.
LEVEL_PARITY_TOLERANCE = 1e-3
PARITY_COLUMNS = 2048


class ExportError(RuntimeError):
    """The export failed or the exported graph does not reproduce the PyTorch model."""


class PhysicalModel(torch.nn.Module):
    """Positional inputs in contract order -> outputs in contract order, in SI units.

    With a separate trigger network the column features are one more output
    (``FEATURES_OUTPUT``): the runtime's trigger stage computes them on every column and hands
    them to the recurrent core for the columns that convect."""

    def __init__(self, model: CumulusLSTM, with_features: bool = False):
        super().__init__()
        self.model = model
        self.inputs = model.contract.input_names + model.extra_inputs
        self.outputs = model.contract.output_names
        self.with_features = with_features

    def forward(self, *inputs):
        named = dict(zip(self.inputs, inputs))
        features = self.model.features(named)
        out = self.model.physical(self.model.heads(features), named)
        return tuple(out[name] for name in self.outputs) + ((features,) if self.with_features else ())


def heldout_columns(store_path, contract, n: int = PARITY_COLUMNS) -> dict:
    """Up to ``n`` columns of the store's validation split (train split if it has none)."""
    from training.data import ColumnBatches
    from training.store import Store

    store = Store(store_path)
    for split in ("validation", "test", "train"):
        if store.shards(split):
            batch = next(iter(ColumnBatches(store, split, contract, n, shuffle=False)))
            return {name: batch[name] for name in contract.input_names}
    raise ExportError(f"{store_path}: no columns to check the exported model on")


def parity(onnx_bytes: bytes, model: CumulusLSTM, inputs: dict) -> dict:
    """Max absolute and relative error per output of ONNX Runtime against PyTorch.

    Level indices (``model.level_targets``) are argmaxes: where two levels' logits tie to
    float32 rounding the two runtimes may pick different levels, and everything derived from
    the index (NCA, the levels above the cloud top) follows. Their entry gives the fraction of
    columns that differ; the other outputs are compared on the columns where all agree."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    wrapper = PhysicalModel(model).eval()
    with torch.no_grad():
        reference = dict(zip(wrapper.outputs, (r.numpy() for r in wrapper(*[inputs[n] for n in wrapper.inputs]))))
    got = dict(zip(wrapper.outputs, session.run(wrapper.outputs, {n: inputs[n].numpy() for n in wrapper.inputs})))
    agree = np.ones(len(reference[wrapper.outputs[0]]), dtype=bool)
    errors = {}
    for name in model.level_targets:
        differs = got[name] != reference[name]
        agree &= ~differs
        errors[name] = {"max_abs": float(np.abs(got[name] - reference[name]).max()),
                        "max_rel": float(differs.mean())}
    for name in wrapper.outputs:
        if name in model.level_targets:
            continue
        ref, value = reference[name][agree].astype(np.float64), got[name][agree].astype(np.float64)
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
        "run": str(run_dir.resolve()),
        "store": spec.get("store"),
        "init_from": spec.get("init_from"),
        "model": spec["model"],
        "config": (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else "",
        "epochs": len(history),
        "best_epoch": best,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
    }


def to_onnx(model: CumulusLSTM) -> bytes:
    """The ONNX graph of a model (no metadata)."""
    wrapper = PhysicalModel(model, with_features=model.separate_trigger).eval()
    names = wrapper.outputs + ([FEATURES_OUTPUT] if wrapper.with_features else [])
    n = model.contract.n_levels
    example = tuple(torch.ones(2, v.size(n)) if v.level in ("mass", "w") else torch.ones(2)
                    for v in model.contract.inputs)
    example += tuple(torch.zeros(2, kf.n_channels(model.updraft_groups), n)
                     for _ in model.extra_inputs)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"mlcu-export-{os.getpid()}.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, example, str(path), input_names=wrapper.inputs,
                              output_names=names, opset_version=OPSET, dynamo=False,
                              dynamic_axes={name: {0: "column"} for name in wrapper.inputs + names})
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
    columns = heldout_columns(store, model.contract)
    if model.extra_inputs:
        columns = kf.with_channels(columns, model.updraft_groups)
    errors = parity(graph.SerializeToString(), model, columns)
    failed = {k: v for k, v in errors.items()
              if not v["max_rel"] <= (LEVEL_PARITY_TOLERANCE if k in model.level_targets else tolerance)}
    if failed:
        raise ExportError(f"ONNX Runtime does not reproduce PyTorch (tolerance {tolerance:g} "
                          f"relative): {json.dumps(failed)}; {out} not written")
    provenance = {**_provenance(run_dir, spec), "parity": errors, "parity_store": str(store)}
    meta = {"mlcu.format": MODEL_FORMAT, "mlcu.format_version": str(MODEL_FORMAT_VERSION),
            "mlcu.contract": model.contract.to_json(), "mlcu.stats": json.dumps(spec["stats"]),
            "mlcu.provenance": json.dumps(provenance),
            "mlcu.trigger_stage": ("updraft" if model.cfg.updraft_trigger else
                                   "separate" if model.separate_trigger else "joint")}
    if model.cfg.updraft_features:
        meta["mlcu.updraft"] = kf.layout(model.updraft_groups)
    onnx.helper.set_model_props(graph, meta)
    graph.producer_name, graph.doc_string = "mlcu", "Machine-learned cumulus scheme for WRF (MSKF emulator)"
    onnx.checker.check_model(graph)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(graph, str(tmp))
    os.replace(tmp, out)
    return errors
