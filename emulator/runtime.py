"""The inference runtime: an exported model run on WRF tile arrays with MSKF's semantics.

One code path for the Fortran bridge, offline replay, the evaluation and the tests.
``Runtime.run_tile`` takes the arrays a WRF cumulus driver holds, numpy arrays in WRF's Fortran
layout (i, k, j) over the memory bounds (halos included), and fills the outputs of the tile's
columns in place:

1. W0AVG is updated on every tile column by MSKF's formula (deterministic, never learned):
   W0AVG = (W0AVG (TST - 1) + w_mass) / TST with TST = 2 STEPCU; with adaptive time steps
   (W0AVG (2 max(CUDT 60, DT) - DT) + w_mass DT) / (2 max(CUDT 60, DT)). As in MSKF it happens
   before the model reads W0AVG (history files hold this updated value, see
   ``training.columns``).
2. Columns with NCA >= DT/2 are held: nothing of theirs is read, computed or written.
3. Every other column is evaluated: its outputs are reset as MSKF resets them (zero
   tendencies, rain and clouds; CUTOP = KTS, CUBOT = KTE + 1; NCA left as it is), and
   ``run_columns`` computes it: its inputs are checked (non-finite values; columns outside the
   training distribution, where the network would run), the convection kernel
   (``emulator.updraft``) decides where convection is, deep or shallow, for models of the
   kernel design, and the network runs on the columns that convect. Physical constraints
   (``constrain``) with MSKF's semantics are applied before anything is written.

The model file carries everything the runtime needs (``check_model``): the variable contract
(not bound to a level count: any grid is accepted), the training statistics (scales, ranges),
the design and the kernel's channel layout. Errors are raised as ``EmulatorError`` with the
file, variable or column (WRF's global i, j) they concern, for the caller to end the run
cleanly (the Fortran bridge calls ``wrf_error_fatal``).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from emulator import constants as c
from emulator import features as ft
from emulator import updraft as kf
from emulator.contract import Contract, ContractError
from emulator.derive import height_above_ground_from_thickness

MODEL_FORMAT = "mlcu-onnx"
MODEL_FORMAT_VERSION = 2  # 2: level-agnostic models (dynamic level axis, pooled statistics)
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
# Outputs the runtime writes besides the model's (MSKF's RAINCV; the physics-fallback flag).
EXTRA_OUTPUTS = ("RAINCV", "FALLBACK")
# Column outputs MSKF sets by rule (from the kernel in the kernel design).
RULE_OUTPUTS = ("NCA", "CUTOP", "CUBOT")
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                        "PMI_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK")
# The state the out-of-distribution check compares with the training data (per pressure
# band for profiles), and the least half-width of an accepted range around the training one,
# in the variable's units: so that a range seen narrow in training cannot collapse.
OOD_MIN_WIDTH = {"T_PHY": 2.0, "QVAPOR": 5.0e-4, "U_PHY": 3.0, "V_PHY": 3.0, "W": 0.3,
                 "W0AVG": 0.3, "HFX": 50.0, "UST": 0.1, "PBLH": 200.0, "ZOL": 1.0,
                 "DX": 1000.0}
# A drier column than any seen is still a valid state: vapour is bounded below by 0 only (less
# the round-off of WRF's advection, which leaves values like -1e-20 in dry air).
NO_LOWER_BOUND = {"QVAPOR": -1.0e-8}


class EmulatorError(RuntimeError):
    """Bad model, bad arguments or bad input: the message says which and where."""


@dataclass
class Options:
    model: str
    threads: int = 1  # ONNX Runtime threads per process (WRF runs one process per core)
    device: str = "auto"  # auto | cpu | cuda
    nan_policy: str = "fatal"  # fatal | zero
    ood_policy: str = "predict"  # predict | zero | fallback
    # Accepted excursion beyond the training range, in the variable's pooled standard
    # deviations (at least OOD_MIN_WIDTH).
    ood_tolerance: float = 0.25
    trigger_threshold: float = 0.5  # (models with a learned trigger only)
    batch_columns: int = 512  # columns per inference call: bounds memory; the LSTM is faster on few
    n_levels: int | None = None  # the caller's mass levels (informative: any grid is accepted)

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


def check_model(path, meta: dict) -> dict:
    """The model's metadata, checked: what the runtime needs is there and usable. Returns
    {contract, stats, design, scales, zero_targets, provenance}."""
    if meta.get("mlcu.format") != MODEL_FORMAT:
        raise EmulatorError(f"{path} is not an mlcu model (no mlcu.format metadata)")
    if meta.get("mlcu.format_version") != str(MODEL_FORMAT_VERSION):
        raise EmulatorError(f"{path}: model format version {meta.get('mlcu.format_version')} is not "
                            f"supported (this runtime reads version {MODEL_FORMAT_VERSION})")
    try:
        contract = Contract.from_json(meta["mlcu.contract"])
        stats = json.loads(meta["mlcu.stats"])
        scales = json.loads(meta["mlcu.target_scales"])
        zero = set(json.loads(meta.get("mlcu.zero_targets", "[]")))
        design = meta["mlcu.design"]
    except (KeyError, ValueError, ContractError) as err:
        raise EmulatorError(f"{path}: incomplete or damaged mlcu metadata ({err})") from None
    if design == "kernel" and json.loads(meta.get("mlcu.kernel_layout", "null")) != ft.layout():
        raise EmulatorError(f"{path}: the model was trained on kernel channels "
                            f"{meta.get('mlcu.kernel_layout')}; this runtime computes "
                            f"{json.dumps(ft.layout())}")
    regressed = [v.name for v in contract.outputs[1:]
                 if not (design == "kernel" and v.name in RULE_OUTPUTS)]
    bad = [n for n in regressed if n not in zero and not (np.isfinite(scales.get(n, np.nan))
                                                          and scales.get(n, 0.0) > 0.0)]
    if bad:
        raise EmulatorError(f"{path}: outputs {bad} have a zero or missing scale in the model's "
                            "statistics (a target zero in all training data must be declared "
                            "in mlcu.zero_targets)")
    missing = [v.name for v in contract.inputs if v.name not in stats.get("inputs", {})]
    if missing:
        raise EmulatorError(f"{path}: no training statistics for inputs {missing}")
    return {"contract": contract, "stats": stats, "design": design, "scales": scales,
            "zero_targets": sorted(zero),
            "provenance": json.loads(meta.get("mlcu.provenance", "{}"))}


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
        model = check_model(path, self.session.get_modelmeta().custom_metadata_map)
        self.contract, self.stats = model["contract"], model["stats"]
        self.design, self.provenance = model["design"], model["provenance"]
        self.kernel = self.design == "kernel"
        self.trigger = self.contract.outputs[0].name
        self.surface = {v.name for v in self.contract.inputs + self.contract.outputs
                        if v.level in ("surface", "scalar")}
        self.scalars = [v.name for v in self.contract.inputs if v.level == "scalar"]
        self.derived = {v.name: COLUMN_RECIPES[v.recipe] for v in self.contract.inputs
                        if v.recipe in COLUMN_RECIPES}
        self.graph_inputs = [i.name for i in self.session.get_inputs()]
        self.graph_outputs = [o.name for o in self.session.get_outputs()]
        self._ood_ranges()

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

    def _run(self, inputs: dict) -> dict:
        n = len(inputs["T_PHY"])
        outputs = {name: [] for name in self.graph_outputs}
        for start in range(0, n, self.options.batch_columns):
            feed = {k: np.ascontiguousarray(inputs[k][start:start + self.options.batch_columns],
                                            dtype=np.float32) for k in self.graph_inputs}
            for name, value in zip(self.graph_outputs, self.session.run(self.graph_outputs, feed)):
                outputs[name].append(value)
        return {k: np.concatenate(v) for k, v in outputs.items()}

    def predict_columns(self, inputs: dict) -> dict:
        """Raw model outputs (physical units, TRIGGER a probability) of columns given as
        {contract input: (column, values) or (column,)}: no gating, no constraints."""
        if self.kernel:
            inputs = ft.with_kernel(inputs)
        out = self._run(inputs)
        return {name: out[name] for name in self.contract.output_names}

    def _ood_ranges(self):
        """Accepted ranges of the state, float32 as the inputs: per pressure band for profiles
        (bands without training data take the variable's pooled range), widened by
        ``ood_tolerance`` pooled standard deviations, at least OOD_MIN_WIDTH."""
        self.ood = {}
        tol = self.options.ood_tolerance
        for name, least in OOD_MIN_WIDTH.items():
            if name not in self.contract.input_names:
                continue
            s = self.stats["inputs"][name]
            pad = max(tol * s["std"], least)
            lo, hi = np.float64(s["min"]), np.float64(s["max"])
            if "by_pressure" in s:
                bands = s["by_pressure"]
                seen = np.asarray(bands["count"]) > 0
                lo = np.where(seen, bands["min"], lo)
                hi = np.where(seen, bands["max"], hi)
            lo = np.full_like(np.asarray(lo, np.float64), NO_LOWER_BOUND[name]) \
                if name in NO_LOWER_BOUND else lo - pad
            self.ood[name] = (np.asarray(lo, np.float32), np.asarray(hi + pad, np.float32))
        self.ood_edges = np.asarray(
            next(iter(s["by_pressure"]["edges_pa"] for s in self.stats["inputs"].values()
                      if "by_pressure" in s)), np.float32)

    def out_of_distribution(self, inputs: dict) -> np.ndarray:
        """Columns with any state variable outside its accepted range (``_ood_ranges``), or
        not finite."""
        p = inputs["P_HYD"]
        flagged = np.zeros(len(p), dtype=bool)
        band = np.clip(np.searchsorted(self.ood_edges, p) - 1, 0, len(self.ood_edges) - 2)
        for name, (lo, hi) in self.ood.items():
            x = inputs[name]
            if x.ndim == 2:
                at = band if x.shape[1] == band.shape[1] else np.concatenate([band, band[:, -1:]], 1)
                lo_x, hi_x = lo[at], hi[at]
            else:
                lo_x, hi_x = lo, hi
            # (NaN fails both comparisons: one pass finds bad and unusual values alike.)
            inside = (x >= lo_x) & (x <= hi_x)
            flagged |= ~(inside.all(axis=1) if inside.ndim == 2 else inside)
        return flagged

    def run_columns(self, inputs: dict, dt, cudt, finite: np.ndarray | None = None) -> tuple[dict, dict]:
        """MSKF's outputs of evaluated columns ``inputs`` ({contract input and species:
        (column, values) or (column,)}, DX and DT per column) with time step ``dt`` and
        cumulus interval ``cudt`` (min), scalars or per column: {output: values of every
        column} (reset values where nothing is written; NaN in NCA there: it is left as it
        was) and {"fires", "deep", "ood", "fallback", "finite"} masks and counters.

        Non-finite inputs follow the NaN policy (``finite``), unusual ones the OOD policy;
        the network runs only where the kernel (kernel design) or the learned trigger fires.
        ``finite``: the caller's ``_finite`` of these inputs, when it has it."""
        n = len(inputs["T_PHY"])
        n_levels = inputs["T_PHY"].shape[1]
        dt = np.broadcast_to(np.asarray(dt, np.float64), (n,))
        cudt = np.broadcast_to(np.asarray(cudt, np.float64), (n,))
        finite = self._finite(inputs) if finite is None else finite
        out = reset_outputs(n, n_levels, self.output_arrays)
        info = {"finite": finite, "fires": np.zeros(n, bool), "deep": np.zeros(n, bool),
                "ood": np.zeros(n, bool), "fallback": np.zeros(n, bool)}
        if not finite.any():
            return out, info
        run = inputs if finite.all() else {k: v[finite] for k, v in inputs.items()}
        if self.kernel:  # MSKF's rules first: the network only where the kernel finds a cloud
            lev, col = kf.diagnose(run)
            kind = kf.kinds(col)
            fires = kind > 0
            run = {k: v[fires] for k, v in run.items()}
            run[ft.KERNEL_INPUT] = ft.kernel_channels(lev[fires], col[fires], run)
            if not np.isfinite(run[ft.KERNEL_INPUT]).all():  # never hand WRF a NaN
                raise EmulatorError("the convection kernel gave non-finite values in "
                                    f"{int((~np.isfinite(run[ft.KERNEL_INPUT]).all(axis=(1, 2))).sum())} "
                                    "columns")
            deep = kind[fires] == 2
        else:
            raw = self._run(run)
            fires = raw[self.trigger] >= self.options.trigger_threshold
            run = {k: v[fires] for k, v in run.items()}
            deep = None
        where = np.flatnonzero(finite)[fires]
        ood = self.out_of_distribution(run)
        info["ood"][where] = ood
        info["fallback"][where] = ood & (self.options.ood_policy == "fallback")
        use = np.ones(len(where), bool)
        if self.options.ood_policy != "predict" and ood.any():
            use = ~ood
            where, run = where[use], {k: v[use] for k, v in run.items()}
        if where.size == 0:
            return out, info
        predicted = self._run(run) if self.kernel else {k: v[fires][use] for k, v in raw.items()}
        deep = deep[use] if deep is not None else cloud_fraction_deep(predicted)
        result = constrain(predicted, {k: run[k] for k in CONSTRAINT_INPUTS}, dt[where],
                           cudt[where], deep)
        for name in self.output_arrays:
            if name in result:
                out[name][where] = result[name]
        info["fires"][where] = True
        info["deep"][where] = deep
        return out, info

    def _finite(self, inputs: dict) -> np.ndarray:
        """Columns whose inputs are all finite (the NaN policy decides about the others)."""
        ok = np.ones(len(inputs["T_PHY"]), dtype=bool)
        for name in self.required_arrays:
            x = inputs[name]
            ok &= np.isfinite(x).all(axis=1) if x.ndim == 2 else np.isfinite(x)
        return ok

    # --- a WRF tile -----------------------------------------------------------------------

    def run_tile(self, arrays: dict, bounds, dt: float, dx: float, cudt: float, stepcu: int,
                 adapt_step: bool = False) -> dict:
        """Run the scheme on one tile; outputs filled in place. Returns counters."""
        tile = _Tile(arrays, bounds, self.required_arrays + self.output_arrays + ("NCA",))
        dt, dx, cudt = float(dt), float(dx), float(cudt)
        update_w0avg(tile, stepcu, dt, cudt, adapt_step)
        fallback = tile.view2("FALLBACK")
        fallback[...] = 0

        nca = tile.columns2("NCA")
        evaluate = nca < 0.5 * dt
        counts = {"columns": tile.n_columns, "held": int((~evaluate).sum()),
                  "evaluated": int(evaluate.sum()), "nan": 0, "ood": 0, "fallback": 0,
                  "triggered": 0, "deep": 0, "shallow": 0}
        cols = np.flatnonzero(evaluate)
        if cols.size == 0:
            return counts
        reset(tile, cols)

        inputs = {}
        for name in self.required_arrays:
            size = self.contract.variable(name).size(tile.n_levels) \
                if name in self.contract.input_names else tile.n_levels
            inputs[name] = tile.columns(name, cols, name in self.surface, size)
        for name, (source, build) in self.derived.items():
            inputs[name] = build(inputs[source])
        for name, value in (("DX", dx), ("DT", dt)):
            if name in self.scalars:
                inputs[name] = np.full(cols.size, value, dtype=np.float32)

        finite = self._finite(inputs)
        if not finite.all() and self.options.nan_policy == "fatal":
            raise self._nan_error(inputs, finite, cols, tile)
        out, info = self.run_columns(inputs, dt, cudt, finite)
        counts["nan"] = int((~finite).sum())
        counts["ood"] = int(info["ood"].sum())
        counts["fallback"] = int(info["fallback"].sum())
        tile.write2(fallback, cols[info["fallback"]], 1)
        fired = info["fires"]
        counts["triggered"] = int(fired.sum())
        counts["deep"] = int(info["deep"].sum())
        counts["shallow"] = counts["triggered"] - counts["deep"]
        if not fired.any():
            return counts
        target = cols[fired]
        for name in self.output_arrays:
            if name != "FALLBACK":
                tile.write(name, target, out[name][fired], name in self.surface or name == "RAINCV")
        return counts

    def _nan_error(self, inputs: dict, finite: np.ndarray, cols: np.ndarray,
                   tile: "_Tile") -> EmulatorError:
        first = int(np.flatnonzero(~finite)[0])
        i, j = tile.global_ij(cols[first])
        for name in self.required_arrays:
            x = inputs[name].reshape(len(finite), -1)[first]
            if not np.isfinite(x).all():
                where = "" if x.size == 1 else f" level k={int(np.flatnonzero(~np.isfinite(x))[0]) + 1}"
                return EmulatorError(f"non-finite {name} in column i={i}, j={j}{where} "
                                     f"({int((~finite).sum())} such columns in tile "
                                     f"i={tile.its}..{tile.ite}, j={tile.jts}..{tile.jte})")
        return EmulatorError(f"non-finite input in column i={i}, j={j}")


class _Tile:
    """Index arithmetic between WRF (i, k, j) memory arrays and the tile's columns.

    Columns are numbered j-major, i fastest (as training flattens (south_north, west_east)).
    """

    def __init__(self, arrays: dict, bounds, needed):
        if len(bounds) != len(BOUND_NAMES):
            raise EmulatorError(f"bounds: expected the {len(BOUND_NAMES)} WRF dimension arguments "
                                f"{BOUND_NAMES}, got {len(bounds)} values")
        b = dict(zip(BOUND_NAMES, (int(x) for x in bounds)))
        for key, value in b.items():
            setattr(self, key, value)
        if self.kte - self.kts + 1 < 2:
            raise EmulatorError(f"kts..kte = {self.kts}..{self.kte}: a column needs 2 levels or more")
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
        self.n_levels = self.kte - self.kts + 1

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
    """MSKF's running mean of w at mass levels, on every column of the tile, in place."""
    w0avg = tile.view3("W0AVG", tile.n_levels)
    w0avg[...] = running_w0avg(w0avg, tile.view3("W", tile.n_levels + 1), stepcu, dt, cudt, adapt_step)


def running_w0avg(w0avg: np.ndarray, w: np.ndarray, stepcu: int, dt: float, cudt: float,
                  adapt_step: bool) -> np.ndarray:
    """W0AVG after one call of MSKF, in the array's precision: ``w0avg`` at mass levels and
    ``w`` at full levels on the last axis."""
    kind = w0avg.dtype.type
    if adapt_step:
        den = 2.0 * max(cudt * 60.0, dt)
        old_weight, new_weight = den - dt, dt
    else:
        den = 2.0 * max(1, int(stepcu))
        old_weight, new_weight = den - 1.0, 1.0
    w0 = kind(0.5) * (w[..., :-1] + w[..., 1:])
    return (w0avg * kind(old_weight) + w0 * kind(new_weight)) / kind(den)


def reset(tile: _Tile, cols: np.ndarray) -> None:
    """An evaluated column's outputs as MSKF sets them before its column physics."""
    for name in tile.arrays:
        if name.endswith("CUTEN") or name in CLOUD_RANGES or name in ("QC_CU", "QI_CU"):
            tile.write(name, cols, 0.0, False)
    for name in ("PRATEC", "RAINCV"):
        tile.write(name, cols, 0.0, True)
    tile.write("CUTOP", cols, float(tile.kts), True)
    tile.write("CUBOT", cols, float(tile.kte + 1), True)


def reset_outputs(n: int, n_levels: int, names) -> dict:
    """``reset`` for ``run_columns``: outputs of n columns as MSKF sets them before its column
    physics (levels 1-based from the bottom); NCA, which stays as it was, NaN."""
    out = {}
    for name in names:
        if name in ("PRATEC", "RAINCV"):
            out[name] = np.zeros(n)
        elif name == "CUTOP":
            out[name] = np.ones(n)
        elif name == "CUBOT":
            out[name] = np.full(n, n_levels + 1.0)
        elif name == "NCA":
            out[name] = np.full(n, np.nan)
        elif name == "FALLBACK":
            continue
        else:
            out[name] = np.zeros((n, n_levels), np.float32)
    return out


def cloud_fraction_deep(out: dict) -> np.ndarray:
    """Deep or shallow, for models without the kernel: deep where the column's largest deep
    cloud fraction is at least its largest shallow one (MSKF fills exactly one of the two) and
    is a cloud (>= 0.005)."""
    deepest = out["CLDFRA_DP"].max(axis=1)
    return (deepest >= out["CLDFRA_SH"].max(axis=1)) & (deepest >= 0.5 * CLOUD_RANGES["CLDFRA_DP"][0])


def constrain(out: dict, inputs: dict, dt, cudt, deep: np.ndarray) -> dict:
    """Triggered columns' predictions made physically consistent, as the scheme would leave them;
    ``deep`` says which convect deep (the kernel's decision), the others are shallow; ``dt``
    and ``cudt`` (min) are scalars or per column.

    * Shallow convection gives no rain, no deep cloud, and holds for CUDT minutes
      (NCA = CUDT 60 s); deep convection has no shallow cloud and holds for a whole number of
      steps NCA = max(1, rint(NCA / DT)) DT, at most a day.
    * Cloud fractions: values below 0.005 are no cloud, others clipped into MSKF's in-cloud
      ranges (deep 0.01-0.6, shallow 0.01-0.2). QC_CU, QI_CU >= 0.
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
    n_levels = out["RTHCUTEN"].shape[1]
    dt = np.broadcast_to(np.asarray(dt, np.float64), deep.shape)
    cudt = np.broadcast_to(np.asarray(cudt, np.float64), deep.shape)
    shallow = ~deep
    # Column values and the water budget in double precision; the other profiles as the
    # model gives them.
    res = {name: value.astype(np.float64) if name in WATER or value.ndim == 1 else value
           for name, value in out.items()}
    for name, (lo, hi) in CLOUD_RANGES.items():
        x = np.where(res[name] < 0.5 * lo, 0.0, np.clip(res[name], lo, hi))
        x[shallow if name == "CLDFRA_DP" else deep] = 0.0
        res[name] = x
    for name in ("QC_CU", "QI_CU"):
        res[name] = np.maximum(res[name], 0.0)

    steps = np.maximum(1.0, np.rint(res["NCA"] / dt))
    steps = np.minimum(steps, np.floor(c.MAX_HOLD / dt))
    res["NCA"] = np.where(deep, steps * dt, cudt * 60.0)
    res["PRATEC"] = np.where(deep, np.maximum(res["PRATEC"], 0.0), 0.0)

    # Each species' tendency limited level by level so that q + tendency x hold >= 0.
    hold = np.maximum(res["NCA"], dt)[:, None]
    floors = {}
    for tendency, species in WATER.items():
        if tendency in res:
            floors[tendency] = -SAFETY * np.maximum(inputs[species].astype(np.float64), 0.0) / hold
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
    return res
