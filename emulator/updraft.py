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
flux). ``emulator.features.kernel_channels`` turns them into the network's input UPDRAFT.
"""

from __future__ import annotations

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
# Contract inputs the kernel reads, in its argument order.
LEVEL_INPUTS = ("T_PHY", "QVAPOR", "P_HYD", "RHO", "DZ8W", "W0AVG", "U_PHY", "V_PHY")
SURFACE_INPUTS = ("HFX", "UST", "PBLH", "ZOL", "DX")


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
    deep, and within 10 % where both are shallow (it sets MSKF's shallow closure); the shapes
    of the drafts' mass exchange (each column divided by its sum, pooled R2, where both are
    deep and have the draft) and whether both have a downdraft; the initial
    tendencies scaled by the best factor per column against MSKF's tendencies (pooled R2).
    The updraft's shapes and the tendencies are scored also where both are shallow
    (``*_shallow_shape_r2``, ``*_shallow_fit_r2``).
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
    shallow = (kind == 1) & (truth == 1)
    ratio = col[shallow, COLUMN_FIELDS.index("time_scale")] / np.maximum(reference["TIMEC_KF"][shallow], 1.0)
    out["timec_shallow"] = float((np.abs(ratio - 1.0) <= 0.1).mean()) if shallow.any() else 1.0
    for field, name in SHAPES:
        for rows, label in ((deep, ""), (shallow, "_shallow")):
            if label and name.startswith("D"):  # a shallow cloud has no downdraft
                continue
            a = lev[rows, LEVEL_FIELDS.index(field)].astype(np.float64)
            b = reference[name][rows].astype(np.float64)
            has_a, has_b = np.abs(a).sum(axis=1) > 0, np.abs(b).sum(axis=1) > 0
            use = has_a & has_b
            a = a[use] / a[use].sum(axis=1, keepdims=True)
            b = b[use] / b[use].sum(axis=1, keepdims=True)
            out[f"{name}{label}_shape_r2"] = _r2(a, b)
            out[f"{name}{label}_columns"] = int(use.sum())
            out[f"{name}{label}_presence"] = float((has_a == has_b).mean()) if len(has_a) else 1.0
    for field, name in PROFILES:
        truth_profile = reference[name].astype(np.float64)
        fires = np.abs(truth_profile).sum(axis=1) > 0
        for rows, label in ((kind > 0, ""), (shallow, "_shallow")):
            use = rows & fires
            a, b = lev[use, LEVEL_FIELDS.index(field)].astype(np.float64), truth_profile[use]
            fit = (a * b).sum(axis=1, keepdims=True) / np.maximum((a * a).sum(axis=1, keepdims=True), 1e-30)
            out[f"{name}{label}_fit_r2"] = _r2(fit * a, b)
    return out


def _r2(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled R2 of a against b (rows are columns)."""
    if not len(b):
        return 1.0
    return float(1.0 - ((a - b) ** 2).sum() / max(((b - b.mean(axis=0)) ** 2).sum(), 1e-300))


def kinds(col: np.ndarray) -> np.ndarray:
    """The kind of convection (0 none, 1 shallow, 2 deep) of each column, from ``diagnose``."""
    return col[:, COLUMN_FIELDS.index("kind")]
