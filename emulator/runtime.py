"""The inference runtime: an exported model run on WRF tile arrays with MSKF's semantics.

One code path for the Fortran bridge, offline replay and the tests. ``Runtime.run_tile`` takes
the arrays a WRF cumulus driver holds, numpy arrays in WRF's Fortran layout (i, k, j) over the
memory bounds (halos included), and fills the outputs of the tile's columns in place:

1. W0AVG is updated on every tile column by MSKF's formula (deterministic, never learned):
   W0AVG = (W0AVG (TST - 1) + w_mass) / TST with TST = 2 STEPCU; with adaptive time steps
   (W0AVG (2 max(CUDT 60, DT) - DT) + w_mass DT) / (2 max(CUDT 60, DT)). As in MSKF it happens
   before the model reads W0AVG (history files hold this updated value, see
   ``training.columns``).
2. Columns with NCA >= DT/2 are held: nothing of theirs is read, computed or written.
3. Every other column is evaluated: its outputs are reset as MSKF resets them (zero
   tendencies, rain and clouds; CUTOP = KTS, CUBOT = KTE + 1; NCA left as it is), its inputs
   are checked (non-finite values, out-of-distribution columns) and the model runs on it
   (after MSKF's updraft, ``emulator.updraft``, for models that take it as input).
4. Columns whose trigger probability is below the threshold keep the reset outputs. For the
   others, the physical constraints (``constrain``) are applied before writing.

Errors are raised as ``EmulatorError`` with the file, variable or column (WRF's global i, j)
they concern, for the caller to end the run cleanly (the Fortran bridge calls
``wrf_error_fatal``).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from emulator import constants as c
from emulator import updraft as kf
from emulator.contract import Contract, ContractError
from emulator.derive import height_above_ground_from_thickness

MODEL_FORMAT = "mlcu-onnx"
MODEL_FORMAT_VERSION = 1
BOUND_NAMES = ("ids", "ide", "jds", "jde", "kds", "kde", "ims", "ime", "jms", "jme", "kms", "kme",
               "its", "ite", "jts", "jte", "kts", "kte")
# Contract inputs the WRF driver does not hold, built from the ones it does (by recipe).
COLUMN_RECIPES = {"height_above_ground": ("DZ8W", height_above_ground_from_thickness)}
# Water tendencies and the species they act on (for the non-negativity constraint).
WATER = {"RQVCUTEN": "QVAPOR", "RQCCUTEN": "QCLOUD", "RQRCUTEN": "QRAIN",
         "RQICUTEN": "QICE", "RQSCUTEN": "QSNOW"}
# The inputs the constraints read: the species, and the layers' mass.
CONSTRAINT_INPUTS = tuple(WATER.values()) + ("RHO", "DZ8W")
CLOUD_RANGES = {"CLDFRA_DP": (0.01, 0.6), "CLDFRA_SH": (0.01, 0.2)}  # MSKF's in-cloud ranges
SAFETY = 0.999  # margin of the vapour limit, for float32 rounding of the stored tendencies
# The column features, an extra output of two-stage models (emulator.export).
FEATURES_OUTPUT = "mlcu_features"
# Outputs the runtime writes besides the model's (MSKF's RAINCV; the physics-fallback flag).
EXTRA_OUTPUTS = ("RAINCV", "FALLBACK")
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                        "PMI_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK")


class EmulatorError(RuntimeError):
    """Bad model, bad arguments or bad input: the message says which and where."""


@dataclass
class Options:
    model: str
    threads: int = 1  # ONNX Runtime threads per process (WRF runs one process per core)
    device: str = "auto"  # auto | cpu | cuda
    nan_policy: str = "fatal"  # fatal | zero
    ood_policy: str = "predict"  # predict | zero | fallback
    ood_tolerance: float = 0.25  # allowed excursion beyond the training range, in ranges
    trigger_threshold: float = 0.5  # (not used when the updraft kernel decides the trigger)
    batch_columns: int = 512  # columns per inference call: bounds memory; the LSTM is faster on few
    n_levels: int | None = None  # the caller's mass levels, checked against the model

    def __post_init__(self):
        choices = {"device": ("auto", "cpu", "cuda"), "nan_policy": ("fatal", "zero"),
                   "ood_policy": ("predict", "zero", "fallback")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise EmulatorError(f"runtime option {name}={getattr(self, name)!r}: "
                                    f"must be one of {allowed}")
        if int(self.threads) < 1 or int(self.batch_columns) < 1:
            raise EmulatorError("runtime options threads and batch_columns must be >= 1")


def local_rank() -> int:
    """This process's rank on its node, from the MPI launcher's or Slurm's environment."""
    for name in LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _visible_gpus() -> int:
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        return len([d for d in devices.split(",") if d.strip()])
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return max(1, listing.stdout.count("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 1


def check_metadata(path, meta: dict) -> None:
    if meta.get("mlcu.format") != MODEL_FORMAT:
        raise EmulatorError(f"{path} is not an mlcu model (no mlcu.format metadata)")
    if meta.get("mlcu.format_version") != str(MODEL_FORMAT_VERSION):
        raise EmulatorError(f"{path}: model format version {meta.get('mlcu.format_version')} is not "
                            f"supported (this runtime reads version {MODEL_FORMAT_VERSION})")


class Runtime:
    def __init__(self, options: Options):
        import onnxruntime as ort

        self.options = options
        path = Path(options.model)
        if not path.is_file():
            raise EmulatorError(f"model file {path} does not exist")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = int(options.threads)
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if options.device == "cuda" and "CUDAExecutionProvider" not in available:
            raise EmulatorError("device=cuda asked for, but ONNX Runtime has no CUDA provider "
                                f"(available: {available}); install onnxruntime-gpu")
        if options.device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            gpu = local_rank() % max(1, _visible_gpus())
            providers = [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), session_options, providers=providers)
        except Exception as err:  # ONNX Runtime raises its own types for damaged files
            raise EmulatorError(f"{path} is not a readable ONNX model: {err}") from None
        self.device = self.session.get_providers()[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        check_metadata(path, meta)
        # Two stages when the trigger has its own network: ONNX Runtime computes every node of
        # a graph whatever outputs are asked for, so the trigger and the profiles get one
        # session each, cut from the same graph. The trigger stage also returns the column
        # features (when the model exports them), which the core then takes as they are.
        self.trigger_session = None
        if meta.get("mlcu.trigger_stage") == "separate":
            import onnx
            import onnx.utils

            proto = onnx.load(str(path))
            names = [i.name for i in proto.graph.input]
            outputs = [o.name for o in proto.graph.output if o.name != FEATURES_OUTPUT]
            staged = [FEATURES_OUTPUT] if len(outputs) < len(proto.graph.output) else []
            cut = onnx.utils.Extractor(proto)
            self.trigger_session = ort.InferenceSession(
                cut.extract_model(names, outputs[:1] + staged).SerializeToString(),
                session_options, providers=providers)
            self.session = ort.InferenceSession(
                cut.extract_model(names + staged, outputs[1:]).SerializeToString(),
                session_options, providers=providers)
        try:
            self.contract = Contract.from_json(meta["mlcu.contract"])
            if options.n_levels is not None:
                self.contract.with_levels(int(options.n_levels))
        except ContractError as err:
            raise EmulatorError(f"{options.model}: {err}") from None
        self.stats = json.loads(meta["mlcu.stats"])
        self.provenance = json.loads(meta.get("mlcu.provenance", "{}"))
        self.n_levels = self.contract.n_levels
        self.trigger = self.contract.outputs[0].name
        self.surface = {v.name for v in self.contract.inputs + self.contract.outputs
                        if v.level in ("surface", "scalar")}
        self.scalars = [v.name for v in self.contract.inputs if v.level == "scalar"]
        self.derived = {v.name: COLUMN_RECIPES[v.recipe] for v in self.contract.inputs
                        if v.recipe in COLUMN_RECIPES}
        graph_inputs = {i.name for session in (self.session, self.trigger_session) if session
                        for i in session.get_inputs()}
        self.updraft = kf.INPUT in graph_inputs
        self.updraft_trigger = meta.get("mlcu.trigger_stage") == "updraft"
        self.updraft_groups = kf.groups_of(meta.get("mlcu.updraft")) if self.updraft else ()
        if self.updraft_groups is None:
            raise EmulatorError(f"{path}: the model's updraft channels ({meta.get('mlcu.updraft')}) "
                                f"are not a layout of this runtime's ({kf.layout()} with any of "
                                f"the groups {list(kf.GROUPS)})")
        self._ood_bounds()

    @classmethod
    def from_options(cls, options: dict) -> "Runtime":
        known = {f.name for f in fields(Options)}
        unknown = set(options) - known
        if unknown:
            raise EmulatorError(f"unknown runtime options {sorted(unknown)}; known: {sorted(known)}")
        return cls(Options(**options))

    # --- what the caller passes -----------------------------------------------------------

    @property
    def required_arrays(self) -> tuple[str, ...]:
        """Input arrays ``run_tile`` reads (contract inputs held by WRF, and the species)."""
        names = [v.name for v in self.contract.inputs
                 if v.level != "scalar" and v.name not in self.derived]
        return tuple(names + [q for q in WATER.values() if q not in names])

    @property
    def output_arrays(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.contract.outputs[1:]) + EXTRA_OUTPUTS

    # --- the model on columns -------------------------------------------------------------

    def _run(self, session, inputs: dict) -> dict:
        n = len(inputs[self.contract.inputs[0].name])
        names = [o.name for o in session.get_outputs()]
        needed = [i.name for i in session.get_inputs()]
        outputs = {name: [] for name in names}
        for start in range(0, n, self.options.batch_columns):
            feed = {k: np.ascontiguousarray(inputs[k][start:start + self.options.batch_columns],
                                            dtype=np.float32) for k in needed}
            for name, value in zip(names, session.run(names, feed)):
                outputs[name].append(value)
        return {k: np.concatenate(v) for k, v in outputs.items()}

    def _two_stages(self, inputs: dict) -> tuple[np.ndarray, dict]:
        """(trigger fired, outputs of the columns that fired): the trigger stage on every
        column, the core on those that fire, one batch at a time."""
        n = len(inputs[self.contract.inputs[0].name])
        core_inputs = [i.name for i in self.session.get_inputs()]
        fired, outputs = [], []
        for start in range(0, n, self.options.batch_columns):
            batch = {k: v[start:start + self.options.batch_columns] for k, v in inputs.items()}
            first = self._run(self.trigger_session, batch)
            fires = first.pop(self.trigger) >= self.options.trigger_threshold
            fired.append(fires)
            if fires.any():
                batch |= first
                outputs.append(self._run(self.session, {k: batch[k][fires] for k in core_inputs}))
        out = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]} if outputs else {}
        return np.concatenate(fired), out

    def predict_columns(self, inputs: dict) -> dict:
        """Raw model outputs (physical units, TRIGGER a probability) of columns given as
        {contract input: (column, values) or (column,)}; no gating, no constraints."""
        if self.updraft:
            inputs = kf.with_channels(inputs, self.updraft_groups)
        if self.trigger_session is None:
            out = self._run(self.session, inputs)
        else:
            first = self._run(self.trigger_session, inputs)
            out = self._run(self.session, inputs | first) | {self.trigger: first[self.trigger]}
        return {name: out[name] for name in self.contract.output_names}

    def _ood_bounds(self):
        # float32, as the inputs: comparing them with float64 bounds would convert every value.
        self.ood_lo, self.ood_hi = {}, {}
        tol = self.options.ood_tolerance
        for v in self.contract.inputs:
            s = self.stats["inputs"][v.name]
            lo, hi = np.asarray(s["min"], np.float64), np.asarray(s["max"], np.float64)
            pad = tol * (hi - lo) + 1e-6 * np.maximum(np.abs(lo), np.abs(hi))
            self.ood_lo[v.name] = (lo - pad).astype(np.float32)
            self.ood_hi[v.name] = (hi + pad).astype(np.float32)

    def out_of_distribution(self, inputs: dict) -> np.ndarray:
        """Columns with any input outside the training range widened by ``ood_tolerance``
        ranges (per variable and level), or not finite."""
        flagged = np.zeros(len(inputs[self.contract.inputs[0].name]), dtype=bool)
        for name in self.contract.input_names:
            x = inputs[name].reshape(len(flagged), -1)
            # (NaN fails both comparisons: one pass finds bad and unusual values alike.)
            flagged |= ~((x >= self.ood_lo[name]) & (x <= self.ood_hi[name])).all(axis=1)
        return flagged

    # --- a WRF tile -----------------------------------------------------------------------

    def run_tile(self, arrays: dict, bounds, dt: float, dx: float, cudt: float, stepcu: int,
                 adapt_step: bool = False) -> dict:
        """Run the scheme on one tile; outputs filled in place. Returns counters."""
        tile = _Tile(arrays, bounds, self.n_levels, self.required_arrays + self.output_arrays + ("NCA",))
        dt, dx, cudt = float(dt), float(dx), float(cudt)
        update_w0avg(tile, stepcu, dt, cudt, adapt_step)
        fallback = tile.view2("FALLBACK")
        fallback[...] = 0

        nca = tile.columns2("NCA")
        evaluate = nca < 0.5 * dt
        counts = {"columns": tile.n_columns, "held": int((~evaluate).sum()),
                  "evaluated": int(evaluate.sum()), "nan": 0, "ood": 0, "fallback": 0,
                  "triggered": 0, "deep": 0, "shallow": 0, "limited": 0}
        cols = np.flatnonzero(evaluate)
        if cols.size == 0:
            return counts
        reset(tile, cols)

        inputs = {}
        for name in self.required_arrays:
            inputs[name] = tile.columns(name, cols, name in self.surface,
                                        self.contract.variable(name).size(self.n_levels)
                                        if name in self.contract.input_names else self.n_levels)
        for name, (source, build) in self.derived.items():
            inputs[name] = build(inputs[source])
        for name, value in (("DX", dx), ("DT", dt)):
            if name in self.scalars:
                inputs[name] = np.full(cols.size, value, dtype=np.float32)

        unusual = self.out_of_distribution(inputs)
        keep = self._finite(inputs, unusual, cols, tile, counts)
        ood = unusual & keep
        counts["ood"] = int(ood.sum())
        if self.options.ood_policy != "predict":
            keep &= ~ood
        if self.options.ood_policy == "fallback":
            tile.write2(fallback, cols[ood], 1)
            counts["fallback"] = counts["ood"]
        if not keep.any():
            return counts
        run = inputs if keep.all() else {k: v[keep] for k, v in inputs.items()}
        if self.updraft_trigger:  # the network only where the updraft kernel finds a cloud
            lev, col = kf.diagnose(run)
            fires = kf.kinds(col) > 0
            needed = [i.name for i in self.session.get_inputs() if i.name != kf.INPUT]
            feed = {k: run[k][fires] for k in needed}
            feed[kf.INPUT] = kf.assemble(lev[fires], col[fires], self.updraft_groups)
            out = self._run(self.session, feed) if fires.any() else {}
        elif self.trigger_session is not None:  # the recurrent core only where it convects
            fires, out = self._two_stages(kf.with_channels(run, self.updraft_groups)
                                          if self.updraft else run)
        else:
            if self.updraft:
                run = kf.with_channels(run, self.updraft_groups)
            out = self._run(self.session, run)
            fires = out[self.trigger] >= self.options.trigger_threshold
            out = {k: v[fires] for k, v in out.items()}
        counts["triggered"] = int(fires.sum())
        if not fires.any():
            return counts
        out, info = constrain(out, {k: run[k][fires] for k in CONSTRAINT_INPUTS}, dt, cudt, self.n_levels)
        for key in ("deep", "shallow", "limited"):
            counts[key] = info[key]
        target = cols[keep][fires]
        for name in self.output_arrays:
            if name == "FALLBACK":
                continue
            tile.write(name, target, out[name], name in self.surface or name == "RAINCV")
        return counts

    def _finite(self, inputs: dict, unusual: np.ndarray, cols: np.ndarray, tile: "_Tile",
                counts: dict) -> np.ndarray:
        """Columns whose inputs are all finite; the NaN policy decides about the others.
        Contract inputs are checked only on the ``unusual`` columns (a non-finite value is
        one), the species the constraints read on every column."""
        keep = np.ones(cols.size, dtype=bool)
        for name in self.required_arrays:
            x = inputs[name].reshape(cols.size, -1)
            suspects = np.flatnonzero(unusual) if name in self.ood_lo else slice(None)
            bad = np.zeros(cols.size, dtype=bool)
            bad[suspects] = ~np.isfinite(x[suspects]).all(axis=1)
            if bad.any() and self.options.nan_policy == "fatal":
                first = int(np.flatnonzero(bad)[0])
                i, j = tile.global_ij(cols[first])
                where = "" if x.shape[1] == 1 else f" level k={int(np.flatnonzero(~np.isfinite(x[first]))[0]) + 1}"
                raise EmulatorError(f"non-finite {name} in column i={i}, j={j}{where} "
                                    f"({int(bad.sum())} such columns in tile i={tile.its}..{tile.ite}, "
                                    f"j={tile.jts}..{tile.jte})")
            keep &= ~bad
        counts["nan"] = int((~keep).sum())
        return keep


class _Tile:
    """Index arithmetic between WRF (i, k, j) memory arrays and the tile's columns.

    Columns are numbered j-major, i fastest (as training flattens (south_north, west_east)).
    """

    def __init__(self, arrays: dict, bounds, n_levels: int, needed):
        if len(bounds) != len(BOUND_NAMES):
            raise EmulatorError(f"bounds: expected the {len(BOUND_NAMES)} WRF dimension arguments "
                                f"{BOUND_NAMES}, got {len(bounds)} values")
        b = dict(zip(BOUND_NAMES, (int(x) for x in bounds)))
        for key, value in b.items():
            setattr(self, key, value)
        if self.kte - self.kts + 1 != n_levels:
            raise EmulatorError(f"the model is for {n_levels} mass levels, WRF passes "
                                f"kts..kte = {self.kts}..{self.kte} ({self.kte - self.kts + 1} levels)")
        if not (self.ims <= self.its <= self.ite <= self.ime and self.jms <= self.jts <= self.jte <= self.jme
                and self.kms <= self.kts and self.kte + 1 <= self.kme):
            raise EmulatorError(f"tile bounds {b} do not lie within the memory bounds")
        missing = [n for n in needed if n not in arrays]
        if missing:
            raise EmulatorError(f"arrays not passed to the runtime: {missing}")
        self.arrays = arrays
        mem3 = (self.ime - self.ims + 1, self.kme - self.kms + 1, self.jme - self.jms + 1)
        mem2 = (mem3[0], mem3[2])
        for name in needed:
            shape = arrays[name].shape
            if shape not in (mem3, mem2):
                raise EmulatorError(f"array {name} has shape {shape}; the memory bounds give "
                                    f"{mem3} (i, k, j) or {mem2} (i, j)")
        self.i0, self.j0, self.k0 = self.its - self.ims, self.jts - self.jms, self.kts - self.kms
        self.ni, self.nj = self.ite - self.its + 1, self.jte - self.jts + 1
        self.n_columns = self.ni * self.nj
        self.n_levels = n_levels

    def view3(self, name: str, n_levels: int) -> np.ndarray:
        """(j, i, k) view of the tile, n_levels levels from kts."""
        a = self.arrays[name]
        return a[self.i0:self.i0 + self.ni, self.k0:self.k0 + n_levels,
                 self.j0:self.j0 + self.nj].transpose(2, 0, 1)

    def view2(self, name: str) -> np.ndarray:
        """(j, i) view of the tile."""
        a = self.arrays[name]
        return a[self.i0:self.i0 + self.ni, self.j0:self.j0 + self.nj].T

    def columns2(self, name: str) -> np.ndarray:
        return self.view2(name).reshape(-1)

    def _select(self, cols: np.ndarray):
        """Index of the (j, i) views for columns ``cols``: plain slices for the whole tile."""
        if cols.size == self.n_columns:  # cols are sorted and unique: every column
            return slice(None), slice(None)
        return np.divmod(cols, self.ni)

    def columns(self, name: str, cols: np.ndarray, surface: bool, size: int) -> np.ndarray:
        view = self.view2(name) if surface else self.view3(name, size)
        # One strided copy of the tile in column order, then the columns asked for.
        tile = np.asarray(view.reshape((self.n_columns,) + view.shape[2:]), dtype=np.float32)
        return tile if cols.size == self.n_columns else tile[cols]

    def write(self, name: str, cols: np.ndarray, values, surface: bool) -> None:
        view = self.view2(name) if surface else self.view3(name, self.n_levels)
        jj, ii = self._select(cols)
        if isinstance(jj, slice) and np.ndim(values):
            values = np.reshape(values, view.shape)
        view[jj, ii] = values

    def write2(self, view: np.ndarray, cols: np.ndarray, value) -> None:
        view[self._select(cols)] = value

    def global_ij(self, col: int) -> tuple[int, int]:
        j, i = divmod(int(col), self.ni)
        return self.its + i, self.jts + j


def update_w0avg(tile: _Tile, stepcu: int, dt: float, cudt: float, adapt_step: bool) -> None:
    """MSKF's running mean of w at mass levels, on every column of the tile, in the array's
    precision."""
    w = tile.view3("W", tile.n_levels + 1)
    w0avg = tile.view3("W0AVG", tile.n_levels)
    kind = w0avg.dtype.type
    if adapt_step:
        den = 2.0 * max(cudt * 60.0, dt)
        old_weight, new_weight = den - dt, dt
    else:
        den = 2.0 * max(1, int(stepcu))
        old_weight, new_weight = den - 1.0, 1.0
    w0 = kind(0.5) * (w[:, :, :-1] + w[:, :, 1:])
    w0avg[...] = (w0avg * kind(old_weight) + w0 * kind(new_weight)) / kind(den)


def reset(tile: _Tile, cols: np.ndarray) -> None:
    """An evaluated column's outputs as MSKF sets them before its column physics."""
    for name in tile.arrays:
        if name.endswith("CUTEN") or name in CLOUD_RANGES or name in ("QC_CU", "QI_CU"):
            tile.write(name, cols, 0.0, False)
    for name in ("PRATEC", "RAINCV"):
        tile.write(name, cols, 0.0, True)
    tile.write("CUTOP", cols, float(tile.kts), True)
    tile.write("CUBOT", cols, float(tile.kte + 1), True)


def constrain(out: dict, inputs: dict, dt: float, cudt: float, n_levels: int) -> tuple[dict, dict]:
    """Triggered columns' predictions made physically consistent, as the scheme would leave them.

    * Deep or shallow: deep where the column's largest deep cloud fraction is at least its
      largest shallow one (MSKF fills exactly one of the two) and is a cloud (>= 0.005). Shallow convection gives no
      rain and holds for CUDT minutes (NCA = CUDT 60 s); deep convection holds for a whole
      number of steps NCA = max(1, rint(NCA / DT)) DT, at most a day.
    * Cloud fractions: the other kind zeroed; values below 0.005 are no cloud, others clipped
      into MSKF's in-cloud ranges (deep 0.01-0.6, shallow 0.01-0.2). QC_CU, QI_CU >= 0.
    * No species driven negative over the hold (NCA, at least DT): every water tendency is
      limited level by level to -0.999 q / hold. (MSKF never drives a species negative; the
      model's errors do at dry upper levels, where a whole-column scaling would wreck the rest
      of the profile.)
    * Column water budget: the vertically integrated water tendencies must remove exactly the
      water that rains out, sum_k rho dz (sum of species tendencies) = -PRATEC. The predicted
      rain is kept and the residual taken out of (or given back to) the vapour tendency,
      spread over levels in proportion to rho dz |RQVCUTEN| (where convection acts), within
      the vapour's limit. Water the vapour cannot take out within it is taken from the column's
      positive (condensate-producing or moistening) tendencies, scaled down together; rain that
      still cannot be supplied is not produced. PRATEC >= 0 and the budget is closed; shallow
      convection (PRATEC = 0) ends with no net water change.
    * CUTOP, CUBOT: whole level indices within 1..levels, CUTOP >= CUBOT.
    """
    # Column values and the water budget in double precision; the other profiles as the
    # model gives them.
    res = {name: value.astype(np.float64) if name in WATER or value.ndim == 1 else value
           for name, value in out.items()}
    deepest = res["CLDFRA_DP"].max(axis=1)
    deep = (deepest >= res["CLDFRA_SH"].max(axis=1)) & (deepest >= 0.5 * CLOUD_RANGES["CLDFRA_DP"][0])
    shallow = ~deep
    for name, (lo, hi) in CLOUD_RANGES.items():
        x = np.where(res[name] < 0.5 * lo, 0.0, np.clip(res[name], lo, hi))
        other = shallow if name == "CLDFRA_DP" else deep
        x[other] = 0.0
        res[name] = x
    for name in ("QC_CU", "QI_CU"):
        res[name] = np.maximum(res[name], 0.0)

    steps = np.maximum(1.0, np.rint(res["NCA"] / dt))
    steps = np.minimum(steps, np.floor(c.MAX_HOLD / dt))
    res["NCA"] = np.where(deep, steps * dt, cudt * 60.0)
    res["PRATEC"] = np.where(deep, np.maximum(res["PRATEC"], 0.0), 0.0)

    # Each species' tendency limited level by level so that q + tendency x hold >= 0.
    hold = np.maximum(res["NCA"], dt)[:, None]
    floors, limited = {}, np.zeros(len(deep), dtype=bool)
    for tendency, species in WATER.items():
        if tendency in res:
            floors[tendency] = -SAFETY * np.maximum(inputs[species].astype(np.float64), 0.0) / hold
            limited |= (res[tendency] < floors[tendency]).any(axis=1)
            res[tendency] = np.maximum(res[tendency], floors[tendency])

    # Close the water budget on the vapour tendency, where it acts and within its limit.
    mass = inputs["RHO"].astype(np.float64) * inputs["DZ8W"].astype(np.float64)  # kg m-2
    rqv = res["RQVCUTEN"]
    sink = -sum((mass * res[t]).sum(axis=1) for t in WATER if t in res)
    residual = res["PRATEC"] - sink  # > 0: more vapour must go; < 0: less
    drying = residual > 0
    weight = mass * np.where(drying[:, None], np.minimum(np.abs(rqv), rqv - floors["RQVCUTEN"]),
                             np.abs(rqv))
    none = weight.sum(axis=1) <= 0
    weight[none & ~drying] = mass[none & ~drying]
    capacity = weight.sum(axis=1)
    residual = np.where(drying, np.minimum(residual, capacity), residual)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(capacity[:, None] > 0, weight / (capacity[:, None] * mass), 0.0)
    res["RQVCUTEN"] = rqv - residual[:, None] * share
    # Water still created beyond what the vapour could give up: the column's positive water
    # tendencies are reduced until none is left; rain beyond that is not produced.
    water = [t for t in WATER if t in res]
    sink = -sum((mass * res[t]).sum(axis=1) for t in water)
    excess = np.maximum(res["PRATEC"] - sink, 0.0)
    gains = sum((mass * np.maximum(res[t], 0.0)).sum(axis=1) for t in water)
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.where(excess > 0, np.clip(1.0 - excess / gains, 0.0, 1.0), 1.0)[:, None]
    for t in water:
        res[t] = np.where(res[t] > 0, res[t] * keep, res[t])
    res["PRATEC"] = np.maximum(-sum((mass * res[t]).sum(axis=1) for t in water), 0.0)
    res["PRATEC"][shallow] = 0.0  # exactly: its budget residual is round-off
    res["RAINCV"] = res["PRATEC"] * dt

    bottom = np.clip(np.rint(res["CUBOT"]), 1, n_levels)
    res["CUBOT"] = bottom
    res["CUTOP"] = np.maximum(np.clip(np.rint(res["CUTOP"]), 1, n_levels), bottom)
    info = {"deep": int(deep.sum()), "shallow": int(shallow.sum()), "limited": int(limited.sum())}
    return res, info
