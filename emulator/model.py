"""The emulator network: a multi-output bidirectional LSTM over the vertical column.

Levels are the sequence, as many as the grid has (``emulator.features``: every channel is in
fixed physical units, so one network serves any level count, eta distribution and model top).
The per-level channels are projected to the hidden size and run through a bidirectional LSTM;
a per-level head gives every mass-level output, and a column head on the mean and maximum over
levels gives the column values. With ``level_stride`` > 1 the recurrent core steps over groups
of that many neighbouring levels (a strided projection in, a transposed one out): fewer
recurrent steps, the cost that dominates a column's inference. With ``overlap`` the
projections reach half a group into each neighbour, so that neighbouring groups share levels.

Two designs (``design``):

* ``kernel`` (the shipped one): the convection kernel (``emulator.updraft``, MSKF's trigger,
  updraft and downdraft written for this project) decides what MSKF decides by rule, and the
  network learns the rest. TRIGGER is the kernel's cloud (deep or shallow); CUBOT and CUTOP
  are its cloud base (LCL) and top; NCA is MSKF's advective time scale from that cloud base
  (``advective_time``); every level output above the cloud top is zero, the cloud fields
  (cloud fractions, QC_CU, QI_CU) below the cloud base (the deep cloud fraction below the
  level under it), and the ice outputs (RQICUTEN, QI_CU) at levels warmer than freezing.
  RTHCUTEN, RQVCUTEN and RQCCUTEN are the kernel's initial tendencies scaled by a factor per
  column that the column head predicts (MSKF's closure scales fixed profiles), plus the
  per-level head's output (the reshaping by MSKF's time integration); the other profiles and
  PRATEC are the heads' outputs.
* ``seed``: the seed paper's design (Zhong, Yu & Li, GMD 2024) for comparison: the contract
  inputs over their largest training magnitudes, a learned trigger, every output regressed.

Targets are learned in normalised units: each output divided by one scale for all its levels
(its root-mean-square over triggered training columns; its largest magnitude for ``seed``).
A target that is zero in every training column has no scale: it is predicted as exactly zero.
``physical`` turns the network's output back into SI units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from emulator import constants as c
from emulator import features as ft
from emulator.contract import Contract

TRIGGER_LOGIT = 20.0  # a decided trigger: probability 1 - 2e-9
DESIGNS = ("kernel", "seed")
# Column outputs MSKF sets by rule: the kernel design takes them from the kernel.
RULE_OUTPUTS = ("NCA", "CUTOP", "CUBOT")
# Cloud ice: none where the air is above freezing (the Kain-Fritsch updraft freezes its condensate
# between -5 and -25 C, Kain & Fritsch 1993; in the oracle test columns under 0.01 % of
# |RQICUTEN| and of QI_CU lies at levels warmer than 0 C).
FROZEN_OUTPUTS = ("RQICUTEN", "QI_CU")
# The cumulus cloud that radiation sees lies in the cloud, from its base (the LCL level) to its
# top, and a deep cloud's fraction from the level under its base: in the oracle files none of
# CLDFRA_SH, under 0.01 % of QC_CU and QI_CU and 0.16 % of CLDFRA_DP lie lower (0.73 % of
# CLDFRA_DP at the level under CUBOT). {output: levels under the base it may fill}
CLOUD_OUTPUTS = {"CLDFRA_DP": 1, "CLDFRA_SH": 0, "QC_CU": 0, "QI_CU": 0}


@dataclass
class ModelConfig:
    design: str = "kernel"  # kernel | seed
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0
    column_hidden: int = 32
    # Levels per recurrent step: with 2 the core steps over pairs of levels (half the steps).
    level_stride: int = 2
    # Projections over 2 x level_stride levels (half a group of overlap on each side), so that
    # neighbouring groups share levels: without it profiles can alternate from group to group.
    overlap: bool = True

    def __post_init__(self):
        if self.design not in DESIGNS:
            raise ValueError(f"model.design must be one of {DESIGNS}, got {self.design!r}")
        if self.level_stride < 1 or self.hidden < 1 or self.layers < 1:
            raise ValueError("model.level_stride, hidden and layers must be >= 1")


def target_scale(stats: dict, name: str, design: str) -> float:
    """One scale per output variable from the store's statistics (triggered columns): the
    root-mean-square (kernel design) or the largest magnitude (seed); 0 for a target that is
    zero in every training column."""
    s = stats["targets"][name]
    if design == "seed":
        return float(max(abs(s["min"]), abs(s["max"])))
    if max(abs(s["min"]), abs(s["max"])) == 0.0:
        return 0.0
    return float(math.sqrt(s["std"] ** 2 + s["mean"] ** 2))


class CumulusLSTM(nn.Module):
    def __init__(self, contract: Contract, stats: dict, cfg: ModelConfig):
        super().__init__()
        self.contract = contract
        self.cfg = cfg
        self.kernel = cfg.design == "kernel"
        self.trigger = contract.outputs[0].name
        self.level_outputs = [v.name for v in contract.outputs if v.level == "mass"]
        columns = [v.name for v in contract.outputs[1:] if v.level != "mass"]
        # Column outputs the column head regresses.
        self.column_outputs = [n for n in columns if not (self.kernel and n in RULE_OUTPUTS)]
        self.closure = [(self.level_outputs.index(name), ft.KERNEL_INDEX[channel])
                        for name, channel in ft.CLOSURE.items()] if self.kernel else []
        self.stride = cfg.level_stride
        self.input_names = contract.input_names
        if self.kernel:
            channels = ft.N_PHYSICAL + ft.N_KERNEL
        else:
            channels = len(self.input_names)
            absmax = [max(abs(stats["inputs"][n]["min"]), abs(stats["inputs"][n]["max"])) or 1.0
                      for n in self.input_names]
            self.register_buffer("input_absmax", torch.tensor(absmax, dtype=torch.float32))
        self.channels = channels
        h = cfg.hidden
        k, pad = (2 * self.stride, self.stride // 2) if cfg.overlap and self.stride > 1 else (self.stride, 0)
        self.project = nn.Conv1d(channels, h, kernel_size=k, stride=self.stride, padding=pad)
        self.lstm = nn.LSTM(h, h, num_layers=cfg.layers, bidirectional=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.level_head = nn.ConvTranspose1d(2 * h, len(self.level_outputs), kernel_size=k,
                                             stride=self.stride, padding=pad)
        learned_trigger = int(not self.kernel)
        self.column_head = nn.Sequential(
            nn.Linear(4 * h, cfg.column_hidden), nn.GELU(),
            nn.Linear(cfg.column_hidden, learned_trigger + len(self.column_outputs) + len(self.closure)))
        names = self.level_outputs + self.column_outputs
        scales = [target_scale(stats, n, cfg.design) for n in names]
        self.register_buffer("target_scale", torch.tensor([s or 1.0 for s in scales]))
        # Targets zero in all training data are predicted as exactly zero.
        self.register_buffer("target_live", torch.tensor([float(s > 0) for s in scales]))

    @property
    def extra_inputs(self) -> list:
        """Model inputs besides the contract's (computed from them outside the graph)."""
        return [ft.KERNEL_INPUT] if self.kernel else []

    @property
    def zero_targets(self) -> list:
        names = self.level_outputs + self.column_outputs
        return [n for n, live in zip(names, self.target_live.tolist()) if not live]

    def features(self, inputs: dict) -> torch.Tensor:
        """(column, channels, level) from the inputs in SI units (and UPDRAFT)."""
        if not self.kernel:
            return ft.seed_channels(inputs, self.input_names, self.input_absmax)
        if ft.KERNEL_INPUT not in inputs:
            inputs = ft.with_kernel(inputs)
        return torch.cat([ft.physical_channels(inputs), inputs[ft.KERNEL_INPUT]], dim=1)

    def forward(self, inputs: dict) -> dict:
        """Normalised outputs: the trigger logit and every regressed target over its scale."""
        x = self.features(inputs)
        n_levels = x.shape[2]
        # Pad the top so that the last group of levels is whole (its outputs are cut off).
        core = nn.functional.pad(x, (0, self.stride - 1)) if self.stride > 1 else x
        projected = torch.tanh(self.project(core))  # (column, hidden, steps)
        h, _ = self.lstm(projected.permute(2, 0, 1))  # (steps, column, 2 hidden)
        per_level = self.level_head(h.permute(1, 2, 0))[:, :, :n_levels]
        pooled = torch.cat([h.mean(dim=0), h.max(dim=0).values], dim=-1)
        column = self.column_head(pooled)
        out = {}
        if self.kernel:
            flags = x[:, ft.N_PHYSICAL + ft.KERNEL_INDEX["deep"], 0] + \
                x[:, ft.N_PHYSICAL + ft.KERNEL_INDEX["shallow"], 0]
            out[self.trigger] = (2.0 * flags - 1.0) * TRIGGER_LOGIT
            factors = column[:, len(self.column_outputs):]
            column = column[:, :len(self.column_outputs)]
            in_cloud = x[:, ft.N_PHYSICAL + ft.KERNEL_INDEX["in_cloud"]]
            # Outputs are zero above the cloud top: the levels under the highest in-cloud one.
            levels = torch.cumsum(torch.ones_like(in_cloud), dim=1)
            top = (in_cloud * levels).max(dim=1, keepdim=True).values
            below_top = (levels <= top).float()
            freezing = (inputs["T_PHY"] <= c.SVPT0).float()
            cloud = {0: in_cloud, 1: torch.maximum(in_cloud, nn.functional.pad(in_cloud[:, 1:], (0, 1)))}
        else:
            out[self.trigger], column = column[:, 0], column[:, 1:]
        live = self.target_live
        for k, name in enumerate(self.level_outputs):
            value = per_level[:, k]
            for j, (output, channel) in enumerate(self.closure):
                if output == k:
                    value = value + factors[:, j:j + 1] * x[:, ft.N_PHYSICAL + channel]
            if self.kernel:
                value = value * below_top
                if name in FROZEN_OUTPUTS:
                    value = value * freezing
                if name in CLOUD_OUTPUTS:
                    value = value * cloud[CLOUD_OUTPUTS[name]]
            out[name] = value * live[k]
        for k, name in enumerate(self.column_outputs):
            out[name] = column[:, k] * live[len(self.level_outputs) + k]
        return out

    def scale_of(self, name: str) -> torch.Tensor:
        return self.target_scale[(self.level_outputs + self.column_outputs).index(name)]

    def normalised_target(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return value / self.scale_of(name)

    def physical(self, normalised: dict, inputs: dict) -> dict:
        """Outputs in SI units; the trigger as a probability."""
        out = {self.trigger: torch.sigmoid(normalised[self.trigger])}
        for name in self.level_outputs + self.column_outputs:
            out[name] = normalised[name] * self.scale_of(name)
        if self.kernel:
            in_cloud = inputs[ft.KERNEL_INPUT][:, ft.KERNEL_INDEX["in_cloud"]]
            levels = torch.cumsum(torch.ones_like(in_cloud), dim=1)  # 1, 2, ..., n
            above = levels[:, -1:] + 1.0  # n + 1: MSKF's cloud base of a column without one
            cloud = in_cloud.max(dim=1).values
            # The cloud base (LCL) and top: the lowest and highest in-cloud levels (1-based);
            # MSKF's values for a column without convection.
            lowest = above[:, 0] - (in_cloud * (above - levels)).max(dim=1).values
            out["CUBOT"] = torch.where(cloud > 0, lowest, above[:, 0])
            out["CUTOP"] = torch.where(cloud > 0, (in_cloud * levels).max(dim=1).values,
                                       torch.ones_like(cloud))
            out["NCA"] = advective_time(inputs, out["CUBOT"]) * cloud
        return out


def advective_time(inputs: dict, cloud_base: torch.Tensor) -> torch.Tensor:
    """MSKF's advective time scale TADVEC = DX / VCONV (s) of columns whose LCL is the 1-based
    level ``cloud_base``: VCONV is the mean of the wind speeds at the LCL and at the highest
    level whose pressure is at least half the lowest level's."""
    u, v, p = inputs["U_PHY"], inputs["V_PHY"], inputs["P_HYD"]
    speed = torch.sqrt(u * u + v * v)
    mid = (p >= 0.5 * p[:, :1]).sum(dim=1, keepdim=True) - 1
    base = (cloud_base.long() - 1).clamp(0, p.shape[1] - 1).unsqueeze(1)
    vconv = 0.5 * (speed.gather(1, base) + speed.gather(1, mid))[:, 0]
    # A calm column would hold forever; WRF's counter is real, so cap at a day.
    return torch.clamp(inputs["DX"].reshape(-1) / vconv.clamp(min=1e-3), max=c.MAX_HOLD)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_column(model: CumulusLSTM, n_levels: int) -> int:
    """Multiply-adds x 2 of one column's forward pass on ``n_levels`` levels (matrix
    products only)."""
    steps, h, cfg = -(-n_levels // model.stride), model.cfg.hidden, model.cfg
    s = model.project.kernel_size[0]  # levels each step projects
    flops = 2 * steps * model.channels * s * h  # projection
    for layer in range(cfg.layers):
        inp = h if layer == 0 else 2 * h
        flops += 2 * 2 * steps * 4 * h * (inp + h)  # two directions, four gates
    flops += 2 * steps * 2 * h * len(model.level_outputs) * s
    n_column = len(model.column_outputs) + len(model.closure) + int(not model.kernel)
    flops += 2 * (4 * h * cfg.column_hidden + cfg.column_hidden * n_column)
    return flops
