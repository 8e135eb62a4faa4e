"""MSKF's trigger, updraft, downdraft and the drafts' initial tendencies for each column (the
convection kernel, ``emulator/kernel/``: Fortran written for this project from the published
Kain-Fritsch descriptions and black-box measurements of WRF's MSKF, ``kernel/README.md``), as
model input channels.

The kernel follows the scheme up to its closure: the candidate source layers and the W0AVG
trigger, the entraining and detraining updraft with buoyancy sorting, deep or shallow cloud
or none, cloud base (CUBOT) and top (CUTOP), the taper of the mass flux above the
equilibrium level, the time scales, the precipitation efficiency, the downdraft of a deep
cloud and the initial tendencies. Its agreement with WRF's MSKF (kind of convection, cloud
base and top, time scale, shapes of the drafts' mass exchange) is in ``kernel/README.md`` and
``tests/test_kernel.py``.

``diagnose`` returns the kernel's fields, zero where a column does not convect: per level
(LEVEL_FIELDS) the updraft mass flux, entrainment and detrainment per layer, per unit
cloud-base updraft mass flux (the source layer's entry is entrainment), the updraft's
virtual-temperature excess over its environment (K), its condensate (kg/kg), the
precipitation it forms per layer (kg/kg per unit mass flux), its vertical velocity (m/s), a
cloud mask (LCL level to top), the downdraft's mass flux (downward, negative), entrainment
and detrainment per layer (same units as the updraft's), and the tendencies of potential
temperature, vapour, and detrained liquid and ice that the drafts give before the closure
scales them (per unit cloud-base mass flux in kg m-2 s-1: K s-1 and kg kg-1 s-1 per
kg m-2 s-1); per column (COLUMN_FIELDS) the kind (0 none, 1 shallow, 2 deep), the LCL level
(CUBOT, 1-based), top level (CUTOP), equilibrium-temperature level, source-layer base level,
LCL height (m), cloud depth (m), minimum depth of a deep cloud (m), dilute buoyant energy
(J/kg), convective time scale and advective time (s), the surface layer's velocity scale
(m/s), precipitation efficiency, source-layer depth (Pa), downdraft source and lowest
levels, total precipitation formed and evaporated by the downdraft (kg/kg per unit mass
flux).

``channels`` turns them into the network's extra input UPDRAFT, (column, channel, level),
float32, with fixed scales (no statistics): per level the updraft mass flux, entrainment and
detrainment, its virtual-temperature excess (K / 5), condensate (g/kg), precipitation
production (g/kg per unit mass flux), vertical velocity (m/s / 10) and the cloud mask; per
column, repeated on every level, deep and shallow flags, ln(time scale / 1800 s), dilute
buoyant energy (kJ/kg), cloud depth (10 km), LCL height (km), precipitation efficiency,
source-layer depth (100 hPa) and the surface layer's velocity scale (m/s). With
``downdraft``, five more: the downdraft's mass flux, entrainment and detrainment per level,
and per column the fraction of the precipitation it evaporates and the updraft's total
precipitation production (x 100). With ``tendencies``, four more per level: the initial
tendencies of theta, vapour, and detrained liquid and ice (x 1e3, 1e7, 1e7, 1e7). Every
channel is zero in a column without convection. The same function serves training, export
and the runtime.
"""

from __future__ import annotations

import itertools
import json

import numpy as np

# The kernel's output layout (kernel/driver.f90 checks the counts).
LEVEL_FIELDS = ("mass_flux", "entrainment", "detrainment", "buoyancy", "condensate",
                "precipitation", "velocity", "in_cloud", "downdraft_mass_flux",
                "downdraft_entrainment", "downdraft_detrainment", "heating", "moistening",
                "detrained_liquid", "detrained_ice")
COLUMN_FIELDS = ("kind", "lcl_level", "top_level", "equilibrium_level", "source_level",
                 "lcl_height", "cloud_depth", "min_cloud_depth", "buoyant_energy", "time_scale",
                 "advective_time", "subcloud_velocity", "precipitation_efficiency",
                 "source_depth", "downdraft_source_level", "downdraft_base_level",
                 "precipitation_production", "evaporation")
# The channels: the updraft's level fields (scaled), then its column channels, then the
# optional groups, in GROUPS order: the downdraft's level fields and column channels; the
# drafts' initial tendencies (K per 1000 s, g/kg per 10,000 s).
LEVEL_SCALES = (1.0, 1.0, 1.0, 0.2, 1.0e3, 1.0e3, 0.1, 1.0)
N_UPDRAFT_LEVEL = len(LEVEL_SCALES)
COLUMN_CHANNELS = ("deep", "shallow", "ln_time_scale", "buoyant_energy", "cloud_depth",
                   "lcl_height", "precipitation_efficiency", "source_depth", "subcloud_velocity")
DOWNDRAFT_LEVEL = ("downdraft_mass_flux", "downdraft_entrainment", "downdraft_detrainment")
DOWNDRAFT_COLUMN_CHANNELS = ("evaporated_fraction", "precipitation_production")
TENDENCY_SCALES = {"heating": 1.0e3, "moistening": 1.0e7, "detrained_liquid": 1.0e7,
                   "detrained_ice": 1.0e7}
# The contract outputs whose profiles the initial tendencies give, up to MSKF's closure.
TENDENCY_OUTPUTS = {"heating": "RTHCUTEN", "moistening": "RQVCUTEN", "detrained_liquid": "RQCCUTEN"}
GROUPS = {"downdraft": DOWNDRAFT_LEVEL + DOWNDRAFT_COLUMN_CHANNELS,
          "tendencies": tuple(TENDENCY_SCALES)}
CHANNELS = N_UPDRAFT_LEVEL + len(COLUMN_CHANNELS)
DEEP, SHALLOW = N_UPDRAFT_LEVEL, N_UPDRAFT_LEVEL + 1  # the flags among the channels
INPUT = "UPDRAFT"  # the model input these channels form
# Contract inputs the kernel reads, in its argument order.
LEVEL_INPUTS = ("T_PHY", "QVAPOR", "P_HYD", "RHO", "DZ8W", "W0AVG", "U_PHY", "V_PHY")
SURFACE_INPUTS = ("HFX", "UST", "PBLH", "ZOL", "DX")
REFERENCE_TIME = 1800.0  # s


class UpdraftError(RuntimeError):
    pass


def _kernel():
    try:
        from emulator import _kernel
    except ImportError as err:
        raise UpdraftError(f"the kernel extension is not built ({err}); run 'make kernel'") from None
    return _kernel


def diagnose(inputs: dict, kernel=None) -> tuple[np.ndarray, np.ndarray]:
    """The kernel on columns {contract input: (column, level) or (column,)} (DX per column):
    (column, LEVEL_FIELDS, level) and (column, COLUMN_FIELDS) arrays, float32. ``kernel``: an
    extension module with the same entry point (the tests' checking build), default the
    built one."""
    n = len(inputs["T_PHY"])
    nz = inputs["T_PHY"].shape[1]
    # (column, level) Fortran-ordered: the column index runs fastest, as the kernel loops.
    levels = [np.asfortranarray(inputs[name], dtype=np.float32) for name in LEVEL_INPUTS]
    surface = [np.ascontiguousarray(np.broadcast_to(inputs[name], (n,)), dtype=np.float32)
               for name in SURFACE_INPUTS]
    if any(x.shape != (n, nz) for x in levels):
        raise UpdraftError(f"the updraft needs {LEVEL_INPUTS} on the same {nz} mass levels")
    lev, col, status = (kernel or _kernel()).convection_columns(len(LEVEL_FIELDS), len(COLUMN_FIELDS),
                                                               *levels, *surface)
    if status:
        raise UpdraftError("the kernel extension's output layout is not this module's; "
                           "rebuild it with 'make kernel'")
    return lev, col


# MSKF outputs the agreement compares with (its convective hold caps the time scale at a day)
AGREEMENT_OUTPUTS = ("CUTOP", "CUBOT", "TIMEC_KF", "UER_KF", "UDR_KF", "DER_KF", "DDR_KF",
                     "RTHCUTEN", "RQVCUTEN", "RQCCUTEN")
MAX_HOLD = 86400.0
SHAPES = (("entrainment", "UER_KF"), ("detrainment", "UDR_KF"),
          ("downdraft_entrainment", "DER_KF"), ("downdraft_detrainment", "DDR_KF"))
PROFILES = (("moistening", "RQVCUTEN"), ("detrained_liquid", "RQCCUTEN"), ("heating", "RTHCUTEN"))


def mskf_kind(reference: dict) -> np.ndarray:
    """MSKF's kind of convection from its outputs: 2 deep (NCA > 0), 1 shallow (a cloud top
    set), 0 none (the oracle files' ORACLE_TRIGGER)."""
    return np.where(reference["NCA"] > 0, 2, np.where(reference["CUTOP"] > 1, 1, 0))


def agreement(lev: np.ndarray, col: np.ndarray, reference: dict, dt) -> dict:
    """How the kernel's fields (``diagnose``) agree with WRF's MSKF outputs ``reference``
    ({wrfout name: (column,) or (column, level)}, with NCA) on the same columns at time step
    ``dt`` (s, scalar or per column): kind of convection; CUBOT and CUTOP where both convect;
    the time scale rounded to whole steps against TIMEC_KF, within one step, where both are
    deep; the shapes of the drafts' mass exchange (each column divided by its sum, pooled
    R2, where both have the draft) and whether both have a downdraft; the initial
    tendencies scaled by the best factor per column against MSKF's tendencies (pooled R2).
    Counts are included so that results of several files combine."""
    kind, truth = col[:, COLUMN_FIELDS.index("kind")], mskf_kind(reference)
    both = (kind > 0) & (truth > 0)
    deep = (kind == 2) & (truth == 2)
    dt = np.broadcast_to(np.asarray(dt, dtype=np.float64), kind.shape)
    timec = np.minimum(np.rint(col[:, COLUMN_FIELDS.index("time_scale")] / dt) * dt, MAX_HOLD)
    out = {"columns": int(len(kind)), "kind": float((kind == truth).mean()),
           "both": int(both.sum()), "deep": int(deep.sum()),
           "cubot": float((col[both, COLUMN_FIELDS.index("lcl_level")] == reference["CUBOT"][both]).mean()),
           "cutop": float((col[both, COLUMN_FIELDS.index("top_level")] == reference["CUTOP"][both]).mean()),
           "timec": float((np.abs(timec - reference["TIMEC_KF"])[deep] <= dt[deep] + 1e-3).mean())}
    for field, name in SHAPES:
        a = lev[deep, LEVEL_FIELDS.index(field)].astype(np.float64)
        b = reference[name][deep].astype(np.float64)
        has_a, has_b = np.abs(a).sum(axis=1) > 0, np.abs(b).sum(axis=1) > 0
        use = has_a & has_b
        a = a[use] / a[use].sum(axis=1, keepdims=True)
        b = b[use] / b[use].sum(axis=1, keepdims=True)
        out[f"{name}_shape_r2"] = _r2(a, b)
        out[f"{name}_columns"] = int(use.sum())
        out[f"{name}_presence"] = float((has_a == has_b).mean()) if len(has_a) else 1.0
    for field, name in PROFILES:
        b = reference[name].astype(np.float64)
        use = (kind > 0) & (np.abs(b).sum(axis=1) > 0)
        a, b = lev[use, LEVEL_FIELDS.index(field)].astype(np.float64), b[use]
        fit = (a * b).sum(axis=1, keepdims=True) / np.maximum((a * a).sum(axis=1, keepdims=True), 1e-30)
        out[f"{name}_fit_r2"] = _r2(fit * a, b)
    return out


def _r2(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled R2 of a against b (rows are columns)."""
    if not len(b):
        return 1.0
    return float(1.0 - ((a - b) ** 2).sum() / max(((b - b.mean(axis=0)) ** 2).sum(), 1e-300))


def _groups(groups) -> tuple:
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise UpdraftError(f"unknown channel groups {sorted(unknown)}; known: {list(GROUPS)}")
    return tuple(g for g in GROUPS if g in groups)


def n_channels(groups=()) -> int:
    return CHANNELS + sum(len(GROUPS[g]) for g in _groups(groups))


def channels(inputs: dict, groups=()) -> np.ndarray:
    """The UPDRAFT model input of columns ``inputs``: (column, n_channels(groups), level),
    float32, with the optional channel ``groups`` (names in GROUPS)."""
    return assemble(*diagnose(inputs), groups)


def assemble(lev: np.ndarray, col: np.ndarray, groups=()) -> np.ndarray:
    """The UPDRAFT channels from the kernel's output (``diagnose``), written block by block
    into one array (the runtime's cost: no intermediate copies)."""
    groups = _groups(groups)
    n, nz = lev.shape[0], lev.shape[2]
    out = np.empty((n, n_channels(groups), nz), np.float32)
    field = {name: col[:, i] for i, name in enumerate(COLUMN_FIELDS)}
    kind = field["kind"]
    convects = kind > 0
    at = 0

    def put_levels(names, scales):  # the kernel's level fields (zero where nothing convects)
        nonlocal at
        for name, scale in zip(names, scales):
            np.multiply(lev[:, LEVEL_FIELDS.index(name)], scale, out=out[:, at])
            at += 1

    def put_columns(values):  # per-column values on every level, zero where nothing convects
        nonlocal at
        block = np.stack(values, axis=1) * convects[:, None]
        out[:, at:at + len(values)] = block[:, :, None]
        at += len(values)

    time_scale = np.log(np.where(convects, field["time_scale"], REFERENCE_TIME) / REFERENCE_TIME)
    put_levels(LEVEL_FIELDS[:N_UPDRAFT_LEVEL], LEVEL_SCALES)
    put_columns([kind == 2, kind == 1, time_scale, field["buoyant_energy"] / 1.0e3,
                 field["cloud_depth"] / 1.0e4, field["lcl_height"] / 1.0e3,
                 field["precipitation_efficiency"], field["source_depth"] / 1.0e4,
                 field["subcloud_velocity"]])
    for group in groups:
        if group == "downdraft":
            production = field["precipitation_production"]
            put_levels(DOWNDRAFT_LEVEL, (1.0,) * len(DOWNDRAFT_LEVEL))
            put_columns([field["evaporation"] / np.maximum(production, 1e-12), production * 1.0e2])
        else:
            put_levels(TENDENCY_SCALES, TENDENCY_SCALES.values())
    return out


def convects(channels: np.ndarray) -> np.ndarray:
    """Columns where the kernel finds a deep or shallow cloud, from their UPDRAFT channels."""
    return (channels[:, DEEP, 0] + channels[:, SHALLOW, 0]) > 0


def kinds(col: np.ndarray) -> np.ndarray:
    """The kind of convection (0 none, 1 shallow, 2 deep) of each column, from ``diagnose``."""
    return col[:, COLUMN_FIELDS.index("kind")]


def layout(groups=()) -> str:
    """The channel layout, as exported models record it (JSON)."""
    names = list(LEVEL_FIELDS[:N_UPDRAFT_LEVEL]) + list(COLUMN_CHANNELS)
    for group in _groups(groups):
        names += list(GROUPS[group])
    scales = {"level_scales": LEVEL_SCALES}
    if "tendencies" in groups:
        scales["tendency_scales"] = list(TENDENCY_SCALES.values())
    return json.dumps({"channels": names} | scales)


def groups_of(recorded: str | None) -> tuple | None:
    """The channel groups of a recorded layout, None if it is not one this module makes."""
    for n in range(len(GROUPS) + 1):
        for groups in itertools.combinations(GROUPS, n):
            if recorded == layout(groups):
                return groups
    return None


def with_channels(inputs: dict, groups=()) -> dict:
    """``inputs`` with the UPDRAFT input added: numpy arrays, or torch tensors (the kernel runs
    on the CPU; the channels go to the inputs' device, without gradient)."""
    first = inputs["T_PHY"]
    if hasattr(first, "numpy"):  # torch
        import torch

        arrays = {k: inputs[k].detach().cpu().numpy() for k in LEVEL_INPUTS + SURFACE_INPUTS}
        return inputs | {INPUT: torch.from_numpy(channels(arrays, groups)).to(first.device)}
    return inputs | {INPUT: channels(inputs, groups)}
