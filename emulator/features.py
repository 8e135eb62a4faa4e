"""What the network sees of a column, on any vertical grid.

The column is a sequence of mass levels, as many as the grid has. Every channel is a physical
quantity in fixed physical units, the same on every grid and level (no per-level statistics):
position in the column comes from pressure, height and layer depth, not from the level index.

``physical_channels`` (in PyTorch, part of the exported graph), per level:

* position: ln(p / 1000 hPa), height above ground (10 km), the layer's pressure depth
  (100 hPa);
* thermodynamics: potential temperature ((theta - 300 K) / 20 K), relative humidity, vapour
  (g/kg / 10), saturation deficit (g/kg / 10), and the buoyancy proxy
  theta_e(lowest 50 hPa) - theta_es(level) (K / 10);
* motion: u, v (m/s / 20), W0AVG and w at the level (m/s);
* the column's surface values on every level: HFX (300 W/m2), UST (0.5 m/s), PBLH (km), z/L,
  land (1) or water (0), ln(DX / 10 km) and MSKF's scale factor 1 + ln(25 km / DX) (>= 1).

``kernel_channels`` (numpy, computed by the runtime and given to the graph as the input
``UPDRAFT``): the convection kernel's results (``emulator.updraft``), per level the updraft's
mass flux, entrainment and detrainment (per 100 hPa of layer, so that they do not depend on
the layer depth), buoyancy, condensate, precipitation production, vertical velocity, the
in-cloud mask, the downdraft's mass flux, entrainment and detrainment, and the drafts' initial
tendencies of theta, vapour, detrained liquid and ice (a deep cloud's per unit cloud-base mass
flux, the network learning its closure; a shallow cloud's after MSKF's shallow closure, which
the kernel's time scale and source layer give); per column (on every level) deep and
shallow flags, ln(time scale / 1800 s), buoyant energy, cloud depth, LCL height, precipitation
efficiency, source-layer depth, sub-cloud velocity, the fraction of the precipitation the
downdraft evaporates and the precipitation production. Every kernel channel is zero in a
column without convection.

``seed_channels``: the seed paper's inputs, every contract input divided by its largest
magnitude in the training data (one number per variable).
"""

from __future__ import annotations

import numpy as np
import torch

from emulator import constants as c
from emulator import updraft as kf

SOURCE_DEPTH_PA = 5000.0  # the lowest 50 hPa: the buoyancy proxy's parcel
N_PHYSICAL = 19
# The kernel's level fields as channels: (field, scale, per 100 hPa of layer depth).
KERNEL_LEVEL = (
    ("mass_flux", 1.0, False), ("entrainment", 1.0, True), ("detrainment", 1.0, True),
    ("buoyancy", 0.2, False), ("condensate", 1.0e3, False), ("precipitation", 1.0e3, True),
    ("velocity", 0.1, False), ("in_cloud", 1.0, False),
    ("downdraft_mass_flux", 1.0, False), ("downdraft_entrainment", 1.0, True),
    ("downdraft_detrainment", 1.0, True),
    ("heating", 1.0e3, False), ("moistening", 1.0e7, False),
    ("detrained_liquid", 1.0e7, False), ("detrained_ice", 1.0e7, False),
)
KERNEL_COLUMN = ("deep", "shallow", "ln_time_scale", "buoyant_energy", "cloud_depth",
                 "lcl_height", "precipitation_efficiency", "source_depth", "subcloud_velocity",
                 "evaporated_fraction", "precipitation_production")
N_KERNEL = len(KERNEL_LEVEL) + len(KERNEL_COLUMN)
KERNEL_INDEX = {name: k for k, (name, _, _) in enumerate(KERNEL_LEVEL)} | {
    name: len(KERNEL_LEVEL) + k for k, name in enumerate(KERNEL_COLUMN)}
# The initial tendencies and the contract outputs whose profiles they give, up to MSKF's
# closure (a factor per column) and the reshaping by its time integration.
CLOSURE = {"RTHCUTEN": "heating", "RQVCUTEN": "moistening", "RQCCUTEN": "detrained_liquid"}
KERNEL_INPUT = "UPDRAFT"
# MSKF's shallow closure: the share of the source layer's mass the cloud base passes per
# convective time scale (measured on the oracle's shallow columns: 0.242, 10-90 %
# 0.215-0.249; kernel/README.md step 14), the tendency channels it scales, and the flux
# (kg m-2 s-1) they are expressed for.
SHALLOW_EXCHANGE = 0.25
SHALLOW_CLOSED = ("heating", "moistening", "detrained_liquid", "detrained_ice")
REFERENCE_FLUX = 0.01
REFERENCE_TIME = 1800.0  # s
# The version changes with the channels or with the kernel physics behind them, so that a
# model trained on other channels is refused (3: a shallow cloud's taper, time scale and
# closure, kernel/README.md step 14).
LAYOUT_VERSION = 3


def layout() -> dict:
    """The UPDRAFT channels, as exported models record them."""
    return {"version": LAYOUT_VERSION, "level": [[n, s, d] for n, s, d in KERNEL_LEVEL],
            "column": list(KERNEL_COLUMN)}


def layer_depth(rho, dz8w):
    """Pressure depth (Pa) of each layer, hydrostatic: rho g dz."""
    return rho * c.G * dz8w


def kernel_channels(lev: np.ndarray, col: np.ndarray, inputs: dict) -> np.ndarray:
    """(column, N_KERNEL, level) float32 channels from the kernel's output (``kf.diagnose``)
    of columns ``inputs``."""
    n, _, nz = lev.shape
    out = np.empty((n, N_KERNEL, nz), np.float32)
    field = {name: col[:, i] for i, name in enumerate(kf.COLUMN_FIELDS)}
    convects = field["kind"] > 0
    per_100hpa = 1.0e4 / layer_depth(np.asarray(inputs["RHO"], np.float32),
                                     np.asarray(inputs["DZ8W"], np.float32))
    for k, (name, scale, per_depth) in enumerate(KERNEL_LEVEL):
        np.multiply(lev[:, kf.LEVEL_FIELDS.index(name)], scale, out=out[:, k])
        if per_depth:
            out[:, k] *= per_100hpa
    # A shallow cloud's tendencies after MSKF's closure (Kain 2004: the cloud-base mass flux
    # carries a fixed share of the source layer's mass per time scale), so that the network's
    # factor for them is near one (kernel/README.md step 14).
    shallow = field["kind"] == 1
    base_flux = SHALLOW_EXCHANGE * field["source_depth"] / (c.G * np.maximum(field["time_scale"], 1.0))
    closure = np.where(shallow, base_flux / REFERENCE_FLUX, 1.0).astype(np.float32)
    for name in SHALLOW_CLOSED:
        out[:, KERNEL_INDEX[name]] *= closure[:, None]
    production = field["precipitation_production"]
    time_scale = np.where(convects, field["time_scale"], REFERENCE_TIME)
    values = [field["kind"] == 2, field["kind"] == 1, np.log(time_scale / REFERENCE_TIME),
              field["buoyant_energy"] / 1.0e3, field["cloud_depth"] / 1.0e4,
              field["lcl_height"] / 1.0e3, field["precipitation_efficiency"],
              field["source_depth"] / 1.0e4, field["subcloud_velocity"],
              field["evaporation"] / np.maximum(production, 1e-12), production * 1.0e2]
    block = np.stack(values, axis=1) * convects[:, None]
    out[:, len(KERNEL_LEVEL):] = block[:, :, None]
    return out


def with_kernel(inputs: dict) -> dict:
    """``inputs`` with the UPDRAFT channels added: numpy arrays, or torch tensors (the kernel
    runs on the CPU; the channels go to the inputs' device, without gradient)."""
    first = inputs["T_PHY"]
    if hasattr(first, "numpy"):  # torch
        names = set(kf.LEVEL_INPUTS + kf.SURFACE_INPUTS) | {"RHO", "DZ8W"}
        arrays = {k: inputs[k].detach().cpu().numpy() for k in names}
        channels = kernel_channels(*kf.diagnose(arrays), arrays)
        return inputs | {KERNEL_INPUT: torch.from_numpy(channels).to(first.device)}
    return inputs | {KERNEL_INPUT: kernel_channels(*kf.diagnose(inputs), inputs)}


def _qsat(t, p):
    """Saturation mixing ratio (kg kg-1), Bolton's formula (``derive.saturation_mixing_ratio``
    in torch, so that it is part of the exported graph)."""
    es = torch.minimum(1000.0 * c.SVP1 * torch.exp(c.SVP2 * (t - c.SVPT0) / (t - c.SVP3)), 0.5 * p)
    return c.EP2 * es / (p - es)


def _surface(inputs: dict, name: str) -> torch.Tensor:
    return inputs[name].reshape(-1, 1)


def physical_channels(inputs: dict) -> torch.Tensor:
    """(column, N_PHYSICAL, level) from the contract inputs in SI units."""
    t, qv, p = inputs["T_PHY"], inputs["QVAPOR"], inputs["P_HYD"]
    n = t.shape[1]
    qsat = _qsat(t, p)
    theta = t / inputs["PI_PHY"]
    theta_e = theta * torch.exp(c.XLV * qv / (c.CP * t))
    theta_es = theta * torch.exp(c.XLV * qsat / (c.CP * t))
    source = (p >= p[:, :1] - SOURCE_DEPTH_PA).float()
    theta_e_source = (theta_e * source).sum(1, keepdim=True) / source.sum(1, keepdim=True)
    w = inputs["W"]
    dx = _surface(inputs, "DX")
    levels = [
        torch.log(p / c.P1000MB), inputs["Z_AGL"] / 1.0e4,
        layer_depth(inputs["RHO"], inputs["DZ8W"]) / 1.0e4,
        (theta - 300.0) / 20.0, (qv / qsat).clamp(0.0, 1.5), qv * 100.0, (qsat - qv) * 100.0,
        ((theta_e_source - theta_es) / 10.0).clamp(-5.0, 5.0),
        inputs["U_PHY"] / 20.0, inputs["V_PHY"] / 20.0, inputs["W0AVG"], 0.5 * (w[:, :-1] + w[:, 1:]),
    ]
    surface = [
        _surface(inputs, "HFX") / 300.0, _surface(inputs, "UST") / 0.5,
        _surface(inputs, "PBLH") / 1000.0, _surface(inputs, "ZOL").clamp(-10.0, 10.0) / 2.0,
        (_surface(inputs, "XLAND") < 1.5).float(), torch.log(dx / 1.0e4),
        (1.0 + torch.log(25000.0 / dx)).clamp(min=1.0),
    ]
    channels = levels + [s.expand(-1, n) for s in surface]
    return torch.stack(channels, dim=1)


def seed_channels(inputs: dict, names: list, absmax: torch.Tensor) -> torch.Tensor:
    """(column, len(names), level): each contract input over its largest training magnitude;
    full-level inputs averaged to mass levels, column values repeated on every level."""
    n = inputs["T_PHY"].shape[1]
    channels = []
    for k, name in enumerate(names):
        x = inputs[name]
        if x.dim() == 1:
            x = x.reshape(-1, 1).expand(-1, n)
        elif x.shape[1] == n + 1:
            x = 0.5 * (x[:, :-1] + x[:, 1:])
        channels.append(x / absmax[k])
    return torch.stack(channels, dim=1)
