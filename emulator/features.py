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
  1 + ln(25 km / DX) (>= 1).
"""

from __future__ import annotations

import torch
from torch import nn

from emulator import constants as c
from emulator.contract import Contract

SOURCE_DEPTH_PA = 5000.0
N_DERIVED = 4


def _stat(stats: dict, name: str, key: str) -> torch.Tensor:
    return torch.tensor(stats["inputs"][name][key], dtype=torch.float32)


class ColumnFeatures(nn.Module):
    """{input name: (batch, size) tensor in physical units} -> (batch, levels, channels)."""

    def __init__(self, contract: Contract, stats: dict, normalisation: str = "zscore",
                 derived: bool = True):
        super().__init__()
        if normalisation not in ("zscore", "absmax"):
            raise ValueError(f"input normalisation must be zscore or absmax, got {normalisation!r}")
        self.names = contract.input_names
        self.levels = {v.name: v.level for v in contract.inputs}
        self.n_levels = contract.n_levels
        self.derived = derived
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
        return len(self.names) + (N_DERIVED if self.derived else 0)

    def forward(self, inputs: dict) -> torch.Tensor:
        n = self.n_levels
        channels = []
        for name in self.names:
            x = (inputs[name] - getattr(self, f"shift_{name}")) / getattr(self, f"scale_{name}")
            level = self.levels[name]
            if level == "w":
                x = 0.5 * (x[:, :-1] + x[:, 1:])
            elif level in ("surface", "scalar"):
                x = x.reshape(-1, 1).expand(-1, n)
            channels.append(x)
        if self.derived:
            channels += self._physics(inputs)
        return torch.stack(channels, dim=-1)

    def _physics(self, inputs: dict) -> list:
        t, qv, p = inputs["T_PHY"], inputs["QVAPOR"], inputs["P_HYD"]
        es = 1000.0 * c.SVP1 * torch.exp(c.SVP2 * (t - c.SVPT0) / (t - c.SVP3))
        es = torch.minimum(es, 0.5 * p)
        qsat = c.EP2 * es / (p - es)
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
