"""Model features from the contract inputs, in PyTorch (so they travel inside the exported model).

The network sees the column as a sequence of mass levels. Each level gets:

* every mass-level input, normalised per level with the training statistics (z-score, or
  division by the absolute maximum for the seed-baseline configuration); W, on full levels,
  is normalised per full level and averaged to mass levels;
* every surface or domain input (HFX, UST, PBLH, ZOL, XLAND, DX), normalised and repeated on
  every level;
* with ``derived`` features on, quantities that carry convective physics across regimes rather
  than raw values that only interpolate within the training climate: relative humidity,
  saturation deficit (g/kg / 10), the buoyancy proxy theta_e(source) - theta_es(level) of a
  parcel from the lowest 50 hPa (K / 10), and the scale-awareness factor
  1 + ln(25 km / DX) (>= 1);
* with ``trigger`` features on, MSKF's own trigger test on each candidate updraft source layer
  (``source_layer_trigger``): where a parcel from that layer would pass it, at which level
  the first that passes has its LCL (MSKF's cloud base, CUBOT), and that parcel's buoyancy;
* with ``updraft`` features on, MSKF's whole trigger and updraft, and with ``updraft_groups``
  its downdraft or the drafts' initial tendencies too (``emulator.updraft``, a compiled
  kernel outside the graph): the exported model takes them as one more input, UPDRAFT, which
  the runtime computes; in PyTorch they are computed when not given.
"""

from __future__ import annotations

import torch
from torch import nn

from emulator import constants as c
from emulator import updraft as kf
from emulator.contract import Contract

SOURCE_DEPTH_PA = 5000.0
N_DERIVED = 4
N_TRIGGER = 4
# MSKF's updraft source layers: at least 50 hPa deep, their bases 15 hPa apart from the lowest
# level up to 300 hPa above it.
SOURCE_DEPTH_MIN_PA = 5000.0
SOURCE_SPACING_PA = 1500.0
SOURCE_SEARCH_PA = 30000.0
EXCESS_SCALE_K = 5.0
LCL_SEARCH_LEVELS = 12


def _stat(stats: dict, name: str, key: str) -> torch.Tensor:
    return torch.tensor(stats["inputs"][name][key], dtype=torch.float32)


class ColumnFeatures(nn.Module):
    """{input name: (batch, size) tensor in physical units} -> (batch, channels, levels)."""

    def __init__(self, contract: Contract, stats: dict, normalisation: str = "zscore",
                 derived: bool = True, trigger: bool = False, updraft: bool = False,
                 updraft_groups: tuple = ()):
        super().__init__()
        if normalisation not in ("zscore", "absmax"):
            raise ValueError(f"input normalisation must be zscore or absmax, got {normalisation!r}")
        self.names = contract.input_names
        self.levels = {v.name: v.level for v in contract.inputs}
        self.n_levels = contract.n_levels
        self.derived = derived
        self.trigger = trigger
        self.updraft = updraft
        self.updraft_groups = tuple(updraft_groups)
        # Levels that can be within 300 hPa of the lowest one in the training data.
        p_max, p_min = _stat(stats, "P_HYD", "max"), _stat(stats, "P_HYD", "min")
        self.source_levels = int((p_max >= p_min[0] - SOURCE_SEARCH_PA).sum()) + 1
        for name in self.names:
            if normalisation == "zscore":
                shift, scale = _stat(stats, name, "mean"), _stat(stats, name, "std")
            else:
                absmax = torch.maximum(_stat(stats, name, "max").abs(), _stat(stats, name, "min").abs())
                shift, scale = torch.zeros_like(absmax), absmax.max().expand_as(absmax).clone()
            scale = torch.where(scale > 1e-12 * scale.abs().max().clamp(min=1e-30), scale,
                                torch.ones_like(scale))
            self.register_buffer(f"shift_{name}", shift)
            self.register_buffer(f"scale_{name}", scale)

    @property
    def channels(self) -> int:
        return (len(self.names) + (N_DERIVED if self.derived else 0) + (N_TRIGGER if self.trigger else 0)
                + (kf.n_channels(self.updraft_groups) if self.updraft else 0))

    def forward(self, inputs: dict) -> torch.Tensor:
        """(batch, channels, levels): channel-major, so that stacking copies whole rows."""
        n = self.n_levels
        raw, shift, scale = [], [], []
        for name in self.names:
            s, c = getattr(self, f"shift_{name}"), getattr(self, f"scale_{name}")
            x = inputs[name]
            level = self.levels[name]
            if level == "w":  # normalised on its full levels, then averaged to mass levels
                x = (x - s) / c
                x, s, c = 0.5 * (x[:, :-1] + x[:, 1:]), torch.zeros_like(s[1:]), torch.ones_like(c[1:])
            elif level in ("surface", "scalar"):
                x, s, c = x.reshape(-1, 1).expand(-1, n), s.expand(n), c.expand(n)
            raw.append(x)
            shift.append(s)
            scale.append(c)
        # All channels normalised by one subtraction and one division (in the exported graph,
        # few large operations cost less than many small ones).
        x = (torch.stack(raw, dim=1) - torch.stack(shift)) / torch.stack(scale)
        extra = []
        if self.derived:
            extra += self._physics(inputs)
        if self.trigger:
            extra += source_layer_trigger(inputs, self.source_levels)
        parts = [x] + ([torch.stack(extra, dim=1)] if extra else [])
        if self.updraft:
            if kf.INPUT not in inputs:
                inputs = kf.with_channels(inputs, self.updraft_groups)
            parts.append(inputs[kf.INPUT])
        return torch.cat(parts, dim=1) if len(parts) > 1 else x

    def _physics(self, inputs: dict) -> list:
        t, qv, p = inputs["T_PHY"], inputs["QVAPOR"], inputs["P_HYD"]
        qsat = _qsat(t, p)
        rh = (qv / qsat).clamp(0.0, 1.5)
        deficit = (qsat - qv) * 100.0  # g/kg / 10
        theta = t / inputs["PI_PHY"]
        theta_e = theta * torch.exp(c.XLV * qv / (c.CP * t))
        theta_es = theta * torch.exp(c.XLV * qsat / (c.CP * t))
        source = (p >= p[:, :1] - SOURCE_DEPTH_PA).float()
        theta_e_src = (theta_e * source).sum(1, keepdim=True) / source.sum(1, keepdim=True)
        buoyancy = (theta_e_src - theta_es) / 10.0
        dx = inputs["DX"].reshape(-1, 1)
        scale_factor = (1.0 + torch.log(25000.0 / dx)).clamp(min=1.0).expand(-1, self.n_levels)
        return [rh, deficit, buoyancy, scale_factor]


def source_layer_trigger(inputs: dict, bases: int) -> list:
    """MSKF's trigger test on every candidate updraft source layer, as four level channels.

    For each candidate base level (the lowest level, then every 15 hPa up to 300 hPa above it;
    only the lowest ``bases`` levels are searched) the layer is deepened to at least 50 hPa
    and mixed (mass-weighted T, q, z, p); its LCL temperature (dew point by the Bolton-type fit
    MSKF uses) and height follow, and the test value is T_LCL + dT_LCL - T_env(LCL), with
    dT_LCL = 4.64 (w_LCL - w_KLCL)^0.33 from W0AVG at the LCL (scaled by DX / 25 km at
    DX >= 25 km). MSKF takes the first layer that passes, unless its cloud is too shallow, and
    its LCL level is the cloud base.

    Channels: the test value (K / 5, within -2..2) at each candidate base level, -2 elsewhere;
    1 at the LCL level of the first layer that passes (0 everywhere if none does); 1 at the
    LCL level of every layer that passes (MSKF's cloud base is one of them); the buoyancy
    proxy theta_e(first layer that passes, or the lowest) - theta_es(level), K / 10, within
    -5..5.
    """
    t, q, p = inputs["T_PHY"], inputs["QVAPOR"], inputs["P_HYD"]
    z, w0 = inputs["Z_AGL"], inputs["W0AVG"]
    dx = inputs["DX"].reshape(-1, 1)
    theta_es = _theta_es(t, p)
    # Bases among the lowest m levels; their layers and LCLs among the lowest n (MSKF's LCLs
    # lie within a few km of the surface).
    full = p.shape[1]
    m = min(bases, full)
    n = min(m + LCL_SEARCH_LEVELS, full)
    t, q, p, z, w0 = t[:, :n], q[:, :n], p[:, :n], z[:, :n], w0[:, :n]
    dp = inputs["RHO"][:, :n] * c.G * inputs["DZ8W"][:, :n]
    below = torch.cumsum(dp, dim=1) - dp  # pressure depth under each level's layer

    # Candidate bases: sequential 15 hPa spacing within 300 hPa of the lowest level.
    candidate = [torch.ones_like(p[:, 0], dtype=torch.bool)]
    next_p = p[:, 0] - SOURCE_SPACING_PA
    for k in range(1, m):
        take = (p[:, k] < next_p) & (p[:, k] >= p[:, 0] - SOURCE_SEARCH_PA)
        candidate.append(take)
        next_p = torch.where(take, next_p - SOURCE_SPACING_PA, next_p)
    candidate = torch.stack(candidate, dim=1)  # (batch, base level)

    # The layer from base k takes levels k.. until it is 50 hPa deep; its mass-weighted means
    # are differences of running sums. end: one past its last level.
    end = _count(below.unsqueeze(1) <= (below[:, :m] + SOURCE_DEPTH_MIN_PA).unsqueeze(2)).clamp(max=n)
    # (In double precision: the differences of float32 running sums lose the 0.01 K that
    # decide marginal triggers.)
    sums = torch.cumsum(torch.stack([dp * t, dp * q, dp * z, dp * p, dp], dim=2).double(), dim=1)
    sums = torch.nn.functional.pad(sums, (0, 0, 1, 0))  # (batch, level + 1, 5), zero first
    # (The five sums at each layer's end, gathered from the flattened (level, sum) axes: an
    # index built by broadcasting in float32 costs ONNX Runtime less than an expanded int64 one.)
    flat = (end.unsqueeze(2) * 5.0 + torch.arange(5.0, device=p.device)).flatten(1).long()
    layer = sums.flatten(1).gather(1, flat).view(-1, m, 5) - sums[:, :m]
    tmix, qmix, zmix, pmix = ((layer[:, :, i] / layer[:, :, 4]).float() for i in range(4))
    emix = (qmix * pmix / (c.EP2 + qmix)).clamp(min=1e-3)
    tlog = torch.log(emix / (1000.0 * c.SVP1))
    tdew = (c.SVP2 * c.SVPT0 - c.SVP3 * tlog) / (c.SVP2 - tlog)
    tlcl = tdew - (0.212 + 1.571e-3 * (tdew - 273.16) - 4.36e-4 * (tmix - 273.16)) * (tmix - tdew)
    tlcl = torch.minimum(tlcl, tmix)
    zlcl = zmix + (tmix - tlcl) * c.CP / c.G

    # LCL level: the first level whose height reaches the LCL (at or above the base, since the
    # LCL is above the layer's mean height).
    klcl = _count(z.unsqueeze(1) < zlcl.unsqueeze(2)).long()
    valid = klcl < n
    klcl = klcl.clamp(1, n - 1)
    under = klcl - 1

    def at(x, k):
        return x.gather(1, k)

    frac = (zlcl - at(z, under)) / (at(z, klcl) - at(z, under))
    tenv = at(t, under) + (at(t, klcl) - at(t, under)) * frac
    wlcl = at(w0, under) + (at(w0, klcl) - at(w0, under)) * frac
    wlcl = torch.where(dx >= 25000.0, wlcl * dx / 25000.0, wlcl)
    threshold = torch.where(zlcl < 2000.0, 0.02 * zlcl / 2000.0, torch.full_like(zlcl, 0.02))
    wkl = wlcl - threshold
    dtlcl = torch.where(wkl < 1e-4, torch.zeros_like(wkl), 4.64 * wkl.clamp(min=1e-4) ** 0.33)
    excess = tlcl + dtlcl - tenv

    usable = candidate & valid
    test = torch.where(usable, (excess / EXCESS_SCALE_K).clamp(-2.0, 2.0), torch.full_like(excess, -2.0))
    test = torch.nn.functional.pad(test, (0, full - m), value=-2.0)
    passes = (usable & (excess >= 0)).float()
    first = passes.argmax(dim=1, keepdim=True)  # the lowest layer when none passes
    base = at(klcl, first)
    column = torch.arange(full, device=p.device)
    cloud_base = (column.view(1, full) == base).float() * passes.amax(dim=1, keepdim=True)
    lcls = (torch.zeros_like(inputs["P_HYD"]).scatter_add(1, klcl, passes) > 0).float()
    theta_e = (at(tmix, first) * (c.P1000MB / at(pmix, first)) ** c.RCP
               * torch.exp(c.XLV * at(qmix, first) / (c.CP * at(tlcl, first))))
    buoyancy = ((theta_e - theta_es) / 10.0).clamp(-5.0, 5.0)
    return [test, cloud_base, lcls, buoyancy]


def _count(condition: torch.Tensor) -> torch.Tensor:
    """How many entries along the last axis hold. (In float32, exact for these few levels:
    ONNX Runtime sums int64 several times more slowly.)"""
    return condition.float().sum(dim=-1)


def _qsat(t, p):
    """Saturation mixing ratio (kg kg-1), Bolton's formula (``derive.saturation_mixing_ratio``
    in torch, so that it is part of the exported graph)."""
    es = torch.minimum(1000.0 * c.SVP1 * torch.exp(c.SVP2 * (t - c.SVPT0) / (t - c.SVP3)), 0.5 * p)
    return c.EP2 * es / (p - es)


def _theta_es(t, p):
    """Saturated equivalent potential temperature (K) of temperature t at pressure p."""
    return t * (c.P1000MB / p) ** c.RCP * torch.exp(c.XLV * _qsat(t, p) / (c.CP * t))
