"""The emulator network: a multi-output bidirectional LSTM over the vertical column.

Levels are the sequence. Features (``emulator.features``) are projected to the hidden size and
run through a stacked bidirectional LSTM; a per-level linear head (a 1x1 convolution over
levels) gives every mass-level output, and a column head on the mean and maximum over levels
gives the column scalars (PRATEC, NCA, CUTOP, CUBOT) and, by default, the trigger logit. With
``trigger_hidden > 0`` the trigger comes instead from a small MLP over the column's features,
which the runtime evaluates first so that the recurrent core runs only where it convects.

Targets are learned in normalised units: each output variable divided by one scale for all
its levels (its standard deviation over triggered training columns, or its absolute maximum
for the seed-baseline configuration), so that pooled errors weigh levels as the pooled scores
do; outputs in ``log_targets`` (NCA) are learned as logarithms. ``physical`` turns the
network's output back into SI units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from emulator.contract import Contract
from emulator.features import ColumnFeatures


LOG_REFERENCE = 1800.0  # s, a typical convective time scale


@dataclass
class ModelConfig:
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.0
    input_normalisation: str = "zscore"  # zscore | absmax
    target_normalisation: str = "std"  # std | absmax
    derived_features: bool = True
    column_hidden: int = 64
    # 0: the trigger comes from the Bi-LSTM's column head. > 0: from a separate MLP with this
    # many hidden units over the column's features, so that the runtime decides the trigger
    # before running the recurrent core, and runs the core only on columns that convect.
    trigger_hidden: int = 0
    # Column outputs learned as ln(x / 1800 s) on the columns where x >= 1 (the convective time
    # scale NCA: it spans two orders of magnitude and its physics is a product of factors).
    log_targets: list = field(default_factory=list)


def target_scale(stats: dict, name: str, how: str) -> float:
    """One scale per output variable from the store's statistics (triggered columns)."""
    s = stats["targets"][name]
    if how == "absmax":
        value = max(max(abs(v) for v in s["max"]), max(abs(v) for v in s["min"]))
    elif how == "std":
        mean = torch.tensor(s["mean"], dtype=torch.float64)
        second = torch.tensor(s["std"], dtype=torch.float64) ** 2 + mean**2
        value = float((second.mean() - mean.mean() ** 2).clamp(min=0).sqrt())
    else:
        raise ValueError(f"target normalisation must be std or absmax, got {how!r}")
    return value if value > 0 else 1.0


class CumulusLSTM(nn.Module):
    def __init__(self, contract: Contract, stats: dict, cfg: ModelConfig):
        super().__init__()
        self.contract = contract
        self.cfg = cfg
        self.trigger = contract.outputs[0].name
        self.level_outputs = [v.name for v in contract.outputs if v.level == "mass"]
        self.column_outputs = [v.name for v in contract.outputs[1:] if v.level != "mass"]
        self.features = ColumnFeatures(contract, stats, cfg.input_normalisation, cfg.derived_features)
        self.project = nn.Linear(self.features.channels, cfg.hidden)
        self.lstm = nn.LSTM(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            bidirectional=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.level_head = nn.Linear(2 * cfg.hidden, len(self.level_outputs))
        self.separate_trigger = cfg.trigger_hidden > 0
        self.column_head = nn.Sequential(
            nn.Linear(4 * cfg.hidden, cfg.column_hidden), nn.GELU(),
            nn.Linear(cfg.column_hidden, len(self.column_outputs) + (0 if self.separate_trigger else 1)))
        if self.separate_trigger:
            self.trigger_net = nn.Sequential(
                nn.Linear(contract.n_levels * self.features.channels, cfg.trigger_hidden), nn.GELU(),
                nn.Linear(cfg.trigger_hidden, 1))
        scales = [target_scale(stats, n, cfg.target_normalisation)
                  for n in self.level_outputs + self.column_outputs]
        self.register_buffer("target_scale", torch.tensor(scales, dtype=torch.float32))
        unknown = set(cfg.log_targets) - set(self.column_outputs)
        if unknown:
            raise ValueError(f"log_targets {sorted(unknown)} are not column outputs {self.column_outputs}")
        self.log_targets = set(cfg.log_targets)

    def forward(self, inputs: dict) -> dict:
        """Normalised outputs: the trigger logit and every target divided by its scale."""
        x = self.features(inputs)
        h, _ = self.lstm(torch.tanh(self.project(x)))
        per_level = self.level_head(h)  # (batch, levels, variables)
        pooled = torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1)
        column = self.column_head(pooled)
        if self.separate_trigger:
            out = {self.trigger: self.trigger_net(x.flatten(1))[:, 0]}
        else:
            out, column = {self.trigger: column[:, 0]}, column[:, 1:]
        for k, name in enumerate(self.level_outputs):
            out[name] = per_level[:, :, k]
        for k, name in enumerate(self.column_outputs):
            out[name] = column[:, k]
        return out

    def scale_of(self, name: str) -> torch.Tensor:
        names = self.level_outputs + self.column_outputs
        return self.target_scale[names.index(name)]

    def normalised_target(self, name: str, value: torch.Tensor) -> tuple:
        """A target in the network's units, and the columns it is learned on (None: all)."""
        if name in self.log_targets:
            return torch.log(value.clamp(min=1.0) / LOG_REFERENCE), value >= 1.0
        return value / self.scale_of(name), None

    def physical(self, normalised: dict) -> dict:
        """Outputs in SI units; the trigger as a probability."""
        out = {self.trigger: torch.sigmoid(normalised[self.trigger])}
        for name, value in normalised.items():
            if name in self.log_targets:
                out[name] = torch.exp(value) * LOG_REFERENCE
            elif name != self.trigger:
                out[name] = value * self.scale_of(name)
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_column(model: CumulusLSTM) -> int:
    """Multiply-adds x 2 of one column's forward pass (matrix products only)."""
    n, h, cfg = model.contract.n_levels, model.cfg.hidden, model.cfg
    flops = 2 * n * model.features.channels * h  # projection
    for layer in range(cfg.layers):
        inp = h if layer == 0 else 2 * h
        flops += 2 * 2 * n * 4 * h * (inp + h)  # two directions, four gates
    flops += 2 * n * 2 * h * len(model.level_outputs)
    flops += 2 * (4 * h * cfg.column_hidden + cfg.column_hidden * (1 + len(model.column_outputs)))
    return flops + trigger_flops_per_column(model)


def trigger_flops_per_column(model: CumulusLSTM) -> int:
    """Multiply-adds x 2 of the separate trigger stage (0 without one)."""
    cfg = model.cfg
    if not cfg.trigger_hidden:
        return 0
    return 2 * (model.contract.n_levels * model.features.channels * cfg.trigger_hidden + cfg.trigger_hidden)
