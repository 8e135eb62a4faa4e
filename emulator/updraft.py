"""MSKF's trigger, updraft and downdraft for each column (``kf_updraft.f90``), as model input
channels.

The Fortran kernel follows the scheme up to its closure: source-layer search, trigger,
entraining updraft, deep/shallow decision, cloud base and top, time scale (see the file's
header). On the oracle validation files it agrees with WRF's MSKF on the kind of convection in
99.95 % of columns or more and on CUTOP in 99.6 % or more (``tests/test_updraft.py``).

``channels`` turns its output into the network's extra input UPDRAFT, (column, channel, level),
float32, with fixed scales (no statistics): per level the updraft mass flux, entrainment and
detrainment per unit cloud-base mass flux, its virtual-temperature excess (K / 5), condensate
(g/kg), precipitation production (g/kg per unit mass flux), vertical velocity (m/s / 10) and a
cloud mask (LCL to top); per column, repeated on every level, deep and shallow flags, ln(time
scale / 1800 s), dilute buoyant energy (kJ/kg), cloud depth (10 km), LCL height (km),
precipitation efficiency, source-layer depth (100 hPa) and the sub-cloud velocity scale (m/s).
With ``downdraft``, five more: the downdraft's mass flux, entrainment and detrainment per unit
cloud-base updraft mass flux per level, and per column the fraction of the precipitation it
evaporates and the updraft's total precipitation production (kg/kg per unit mass flux x 100).
With ``tendencies``, four more per level: the tendencies of theta, vapour, and detrained
liquid and ice that the drafts give at the start of MSKF's closure (before it scales them),
in the scheme's flux form (K per 1000 s, g/kg per 10,000 s). Up to that scaling and the
nonlinearity of the closure's time integration they are the scheme's own tendency profiles:
on the oracle validation files a per-column scale fits the profiles of RQVCUTEN with R2
0.94-0.95, RQCCUTEN 0.92-0.96, RTHCUTEN 0.60-0.63 and RQICUTEN only 0.28-0.43 (MSKF's ice
tendency is not mainly detrainment).
Every channel is zero in a column without convection. The same function serves training,
export and the runtime.
"""

from __future__ import annotations

import itertools
import json

import numpy as np

# The kernel's output layout (kf_updraft.f90 checks the counts).
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
        from emulator import _kf_updraft
    except ImportError as err:
        raise UpdraftError(f"the updraft extension is not built ({err}); run 'make updraft'") from None
    return _kf_updraft


def diagnose(inputs: dict) -> tuple[np.ndarray, np.ndarray]:
    """The kernel on columns {contract input: (column, level) or (column,)} (DX per column):
    (column, LEVEL_FIELDS, level) and (column, COLUMN_FIELDS) arrays."""
    n = len(inputs["T_PHY"])
    nz = inputs["T_PHY"].shape[1]
    # (column, level) C-ordered is (level, column) Fortran-ordered: passed without a copy.
    levels = [np.ascontiguousarray(inputs[name], dtype=np.float32).T for name in LEVEL_INPUTS]
    surface = [np.ascontiguousarray(np.broadcast_to(inputs[name], (n,)), dtype=np.float32)
               for name in SURFACE_INPUTS]
    if any(x.shape != (nz, n) for x in levels):
        raise UpdraftError(f"the updraft needs {LEVEL_INPUTS} on the same {nz} mass levels")
    lev, col, status = _kernel().updraft_columns(len(LEVEL_FIELDS), len(COLUMN_FIELDS),
                                                 *levels, *surface)
    if status:
        raise UpdraftError("the updraft extension's output layout is not this module's; "
                           "rebuild it with 'make updraft'")
    return lev.T, col.T


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
