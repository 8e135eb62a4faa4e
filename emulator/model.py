"""The emulator network: a multi-output bidirectional LSTM over the vertical column.

Levels are the sequence. Features (``emulator.features``) are projected to the hidden size and
run through a stacked bidirectional LSTM; a per-level linear head (a 1x1 convolution over
levels) gives every mass-level output, and a column head on the mean and maximum over levels
gives the column scalars (PRATEC, NCA, CUTOP, CUBOT) and, by default, the trigger logit. With
``trigger_hidden > 0`` the trigger comes instead from a small MLP over the column's features,
which the runtime evaluates first so that the recurrent core runs only where it convects.

Physics the network need not learn (each switched on in the model settings):

* ``level_targets`` (CUBOT, CUTOP): level indices are a choice among levels, so the per-level
  head gives one logit per level for each and the index is the most likely level (learned by
  cross-entropy), rather than a regressed number;
* ``advective_nca``: MSKF holds a deep column's tendencies for NINT(TADVEC / DT) steps, with
  TADVEC = DX / VCONV and VCONV the mean wind speed at the cloud-base (LCL) level and at the
  highest level with pressure >= half the lowest level's. NCA is computed so from the
  predicted CUBOT (= the LCL level) instead of being learned;
* ``updraft_trigger``: TRIGGER is MSKF's own decision, the deep or shallow cloud that its
  updraft finds (``emulator.updraft``, with ``updraft_features``), not a learned one;
* ``closure_factor``: MSKF's theta, vapour and cloud-water tendencies are the drafts' initial
  tendencies (``tendency_features``) scaled by its closure and reshaped by its time
  integration; the column head predicts one factor per variable, and the factor times the
  initial tendency is added to the per-level head's output, which learns the rest;
* ``core_top_margin``: MSKF's outputs are zero above the cloud top, so the recurrent core runs
  only up to the highest CUTOP of the training data plus this many levels, and every level
  output above the predicted CUTOP is zero.

``level_stride`` > 1 makes the recurrent core step over groups of that many levels (their
features side by side in, their outputs side by side out): fewer recurrent steps, the cost
that dominates a column's inference.

Targets are learned in normalised units: each output variable divided by one scale for all
its levels (its standard deviation over triggered training columns, or its absolute maximum
for the seed-baseline configuration), so that pooled errors weigh levels as the pooled scores
do, or z-scored level by level (``zscore``); outputs in ``log_targets`` are learned as
logarithms. ``physical`` turns the network's output back into SI units.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from emulator import constants as c
from emulator import updraft as kf
from emulator.contract import Contract
from emulator.features import ColumnFeatures


LOG_REFERENCE = 1800.0  # s, a typical convective time scale
TRIGGER_LOGIT = 20.0  # a decided trigger: probability 1 - 2e-9
ZSCORE_FLOOR = 0.1


@dataclass
class ModelConfig:
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.0
    input_normalisation: str = "zscore"  # zscore | absmax
    # std: each variable / its pooled std; zscore: per level, (x - mean) / std; absmax
    target_normalisation: str = "std"
    derived_features: bool = True
    # MSKF's trigger test on each candidate source layer as input channels
    # (features.source_layer_trigger).
    trigger_features: bool = False
    # MSKF's trigger and updraft (emulator.updraft) as input channels; the exported model
    # takes them as the input UPDRAFT.
    updraft_features: bool = False
    # TRIGGER is the updraft kernel's decision (a deep or shallow cloud), not learned: MSKF's
    # own trigger, so the runtime runs the network only where the kernel finds a cloud.
    updraft_trigger: bool = False
    # MSKF's downdraft (emulator.updraft) as more input channels (needs updraft_features).
    downdraft_features: bool = False
    # The tendencies the drafts give before MSKF's closure scales them (emulator.updraft), as
    # more input channels (needs updraft_features).
    tendency_features: bool = False
    # RTHCUTEN, RQVCUTEN and RQCCUTEN are a predicted per-column factor times those initial
    # tendencies plus the per-level head's output (needs tendency_features).
    closure_factor: bool = False
    column_hidden: int = 64
    # 0: the trigger comes from the Bi-LSTM's column head. > 0: from a separate MLP with this
    # many hidden units over the column's features, so that the runtime decides the trigger
    # before running the recurrent core, and runs the core only on columns that convect.
    trigger_hidden: int = 0
    # Column outputs learned as ln(x / 1800 s) on the columns where x >= 1 (the convective time
    # scale NCA: it spans two orders of magnitude and its physics is a product of factors).
    log_targets: list = field(default_factory=list)
    # Column outputs that are 1-based mass-level indices, learned as a choice among levels.
    level_targets: list = field(default_factory=list)
    # NCA from the predicted cloud base by MSKF's advective time scale (needs CUBOT in
    # level_targets).
    advective_nca: bool = False
    # None: the recurrent core runs on every level. n: up to the training data's highest
    # CUTOP + n (needs CUTOP in level_targets).
    core_top_margin: int | None = None
    # Levels per recurrent step: with 2 the core steps over pairs of levels (half the steps,
    # each seeing both levels' features and giving both levels' outputs).
    level_stride: int = 1


def target_scale(stats: dict, name: str, how: str) -> float:
    """One scale per output variable from the store's statistics (triggered columns)."""
    s = stats["targets"][name]
    if how == "absmax":
        value = max(max(abs(v) for v in s["max"]), max(abs(v) for v in s["min"]))
    elif how in ("std", "zscore"):
        mean = torch.tensor(s["mean"], dtype=torch.float64)
        second = torch.tensor(s["std"], dtype=torch.float64) ** 2 + mean**2
        value = float((second.mean() - mean.mean() ** 2).clamp(min=0).sqrt())
    else:
        raise ValueError(f"target normalisation must be std, zscore or absmax, got {how!r}")
    return value if value > 0 else 1.0


def level_zscores(stats: dict, name: str) -> tuple:
    """Per-level mean and standard deviation of a mass-level output (triggered columns), the
    deviation floored at ZSCORE_FLOOR x the variable's pooled one: levels where convection
    hardly acts must not dominate the loss."""
    s = stats["targets"][name]
    floor = ZSCORE_FLOOR * target_scale(stats, name, "std")
    std = torch.tensor(s["std"], dtype=torch.float64).clamp(min=floor)
    return torch.tensor(s["mean"], dtype=torch.float32), std.float()


class CumulusLSTM(nn.Module):
    def __init__(self, contract: Contract, stats: dict, cfg: ModelConfig):
        super().__init__()
        self.contract = contract
        self.cfg = cfg
        self.trigger = contract.outputs[0].name
        self.level_outputs = [v.name for v in contract.outputs if v.level == "mass"]
        columns = [v.name for v in contract.outputs[1:] if v.level != "mass"]
        self.level_targets = list(cfg.level_targets)
        self.derived = ["NCA"] if cfg.advective_nca else []
        # Column outputs the column head regresses.
        self.column_outputs = [n for n in columns if n not in self.level_targets + self.derived]
        for name, needs in (("level_targets", set(self.level_targets) - set(columns)),
                            ("log_targets", set(cfg.log_targets) - set(self.column_outputs))):
            if needs:
                raise ValueError(f"model.{name} {sorted(needs)} are not regressed column outputs "
                                 f"of the contract ({columns})")
        if cfg.advective_nca and "CUBOT" not in self.level_targets:
            raise ValueError("model.advective_nca needs CUBOT in model.level_targets")
        if cfg.core_top_margin is not None and "CUTOP" not in self.level_targets:
            raise ValueError("model.core_top_margin needs CUTOP in model.level_targets")
        self.log_targets = set(cfg.log_targets)
        if cfg.level_stride < 1:
            raise ValueError(f"model.level_stride must be >= 1, got {cfg.level_stride}")
        self.stride = cfg.level_stride
        self.n_core = contract.n_levels if cfg.core_top_margin is None else min(
            contract.n_levels, int(max(stats["targets"]["CUTOP"]["max"])) + cfg.core_top_margin)
        self.core_steps = -(-self.n_core // self.stride)  # the last may reach past the core

        self.features = ColumnFeatures(contract, stats, cfg.input_normalisation, cfg.derived_features,
                                       cfg.trigger_features, cfg.updraft_features,
                                       self.updraft_groups)
        self.project = nn.Linear(self.features.channels * self.stride, cfg.hidden)
        self.lstm = nn.LSTM(cfg.hidden, cfg.hidden, num_layers=cfg.layers,
                            bidirectional=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.level_head = nn.Linear(2 * cfg.hidden,
                                    (len(self.level_outputs) + len(self.level_targets)) * self.stride)
        for option in ("updraft_trigger", "downdraft_features", "tendency_features"):
            if getattr(cfg, option) and not cfg.updraft_features:
                raise ValueError(f"model.{option} needs model.updraft_features")
        if cfg.closure_factor and not cfg.tendency_features:
            raise ValueError("model.closure_factor needs model.tendency_features")
        # (output index, channel index among the features, channel scale) of the outputs the
        # closure factor scales: the tendency channels are the features' last ones.
        first = self.features.channels - len(kf.GROUPS["tendencies"])
        self.closure_targets = [
            (self.level_outputs.index(name), first + kf.GROUPS["tendencies"].index(channel),
             kf.TENDENCY_SCALES[channel])
            for channel, name in kf.TENDENCY_OUTPUTS.items()] if cfg.closure_factor else []
        self.separate_trigger = cfg.trigger_hidden > 0 and not cfg.updraft_trigger
        learned_trigger = not (self.separate_trigger or cfg.updraft_trigger)
        self.column_head = nn.Sequential(
            nn.Linear(4 * cfg.hidden, cfg.column_hidden), nn.GELU(),
            nn.Linear(cfg.column_hidden, len(self.column_outputs) + int(learned_trigger)
                      + len(self.closure_targets)))
        if self.separate_trigger:
            self.trigger_net = nn.Sequential(
                nn.Linear(contract.n_levels * self.features.channels, cfg.trigger_hidden), nn.GELU(),
                nn.Linear(cfg.trigger_hidden, 1))
        scales = [target_scale(stats, n, cfg.target_normalisation)
                  for n in self.level_outputs + self.column_outputs]
        self.register_buffer("target_scale", torch.tensor(scales, dtype=torch.float32))
        if cfg.target_normalisation == "zscore":
            shift, scale = zip(*(level_zscores(stats, n) for n in self.level_outputs))
            self.register_buffer("target_level_shift", torch.stack(shift))
            self.register_buffer("target_level_scale", torch.stack(scale))

    @property
    def updraft_groups(self) -> tuple:
        """The optional groups of UPDRAFT channels (emulator.updraft.GROUPS) this model takes."""
        return tuple(g for g, on in (("downdraft", self.cfg.downdraft_features),
                                     ("tendencies", self.cfg.tendency_features)) if on)

    @property
    def extra_inputs(self) -> list:
        """Model inputs besides the contract's (computed from them outside the graph)."""
        return [kf.INPUT] if self.cfg.updraft_features else []

    def forward(self, inputs: dict) -> dict:
        """Normalised outputs: the trigger logit, every regressed target divided by its scale
        and, for each level target, one logit per level of the core (batch, n_core)."""
        return self.heads(self.features(inputs))

    def heads(self, x: torch.Tensor) -> dict:
        """``forward`` from the features (batch, channels, levels)."""
        core = x[:, :, :self.n_core]
        steps, width = self.core_steps, self.core_steps * self.stride
        if width > self.n_core:
            core = nn.functional.pad(core, (0, width - self.n_core))
        if self.stride > 1:  # (batch, channels x stride, steps): a step's levels side by side
            core = core.reshape(-1, core.shape[1], steps, self.stride).transpose(2, 3)
            core = core.reshape(-1, core.shape[1] * self.stride, steps)
        # Steps first for the recurrent core: (steps, batch, hidden).
        projected = torch.matmul(self.project.weight, core) + self.project.bias[:, None]
        h, _ = self.lstm(torch.tanh(projected.permute(2, 0, 1)))
        per_level = self.level_head(h)  # (steps, batch, variables x stride)
        if self.stride > 1:
            variables = per_level.shape[2] // self.stride
            per_level = per_level.reshape(steps, -1, variables, self.stride).permute(2, 1, 0, 3)
            per_level = per_level.reshape(variables, -1, width)[:, :, :self.n_core]
        else:
            per_level = per_level.permute(2, 1, 0)  # (variables, batch, core levels)
        # (The maximum as a chain of element-wise maxima: ONNX Runtime reduces over a leading
        # axis slowly.)
        pooled = torch.cat([h.mean(dim=0), functools.reduce(torch.maximum, h.unbind(0))], dim=-1)
        column = self.column_head(pooled)
        if self.closure_targets:  # the factors times the initial tendencies, normalised
            factors, column = column[:, -len(self.closure_targets):], column[:, :-len(self.closure_targets)]
            per_level = list(per_level.unbind(0))
            for j, (k, channel, channel_scale) in enumerate(self.closure_targets):
                scaled = factors[:, j:j + 1] * x[:, channel, :self.n_core] / channel_scale
                per_level[k] = per_level[k] + scaled / self.level_scale(k)[:self.n_core]
        if self.cfg.updraft_trigger:  # the kernel's flags, as saturated logits
            first = self.features.channels - kf.n_channels(self.updraft_groups)
            flags = x[:, first + kf.DEEP, 0] + x[:, first + kf.SHALLOW, 0]
            out = {self.trigger: (2.0 * flags - 1.0) * TRIGGER_LOGIT}
        elif self.separate_trigger:
            out = {self.trigger: self.trigger_net(x.flatten(1))[:, 0]}
        else:
            out, column = {self.trigger: column[:, 0]}, column[:, 1:]
        above = self.contract.n_levels - self.n_core
        for k, name in enumerate(self.level_outputs):
            # Nothing is learned above the core: the training data are zero there.
            out[name] = nn.functional.pad(per_level[k], (0, above))
        for k, name in enumerate(self.level_targets):
            out[name] = per_level[len(self.level_outputs) + k]
        for k, name in enumerate(self.column_outputs):
            out[name] = column[:, k]
        return out

    def level_scale(self, k: int) -> torch.Tensor:
        """The scale of level output k per level (physical = normalised x scale + shift)."""
        if self.cfg.target_normalisation == "zscore":
            return self.target_level_scale[k]
        return self.scale_of(self.level_outputs[k]).expand(self.contract.n_levels)

    def scale_of(self, name: str) -> torch.Tensor:
        names = self.level_outputs + self.column_outputs
        return self.target_scale[names.index(name)]

    def normalised_target(self, name: str, value: torch.Tensor) -> tuple:
        """A target in the network's units, and the columns it is learned on (None: all).
        Level targets become 0-based class indices within the core."""
        if name in self.level_targets:
            return (value.round().long() - 1).clamp(0, self.n_core - 1), None
        if name in self.log_targets:
            return torch.log(value.clamp(min=1.0) / LOG_REFERENCE), value >= 1.0
        if self.cfg.target_normalisation == "zscore" and name in self.level_outputs:
            k = self.level_outputs.index(name)
            return (value - self.target_level_shift[k]) / self.target_level_scale[k], None
        return value / self.scale_of(name), None

    def physical(self, normalised: dict, inputs: dict) -> dict:
        """Outputs in SI units; the trigger as a probability."""
        out = {self.trigger: torch.sigmoid(normalised[self.trigger])}
        for name in self.level_outputs + self.column_outputs:
            value = normalised[name]
            if name in self.log_targets:
                out[name] = torch.exp(value) * LOG_REFERENCE
            elif self.cfg.target_normalisation == "zscore" and name in self.level_outputs:
                k = self.level_outputs.index(name)
                out[name] = value * self.target_level_scale[k] + self.target_level_shift[k]
            else:
                out[name] = value * self.scale_of(name)
        for name in self.level_targets:
            out[name] = (normalised[name].argmax(dim=1) + 1).float()
        if "CUTOP" in self.level_targets:
            levels = torch.arange(1, self.contract.n_levels + 1, device=out["CUTOP"].device)
            below_top = (levels.unsqueeze(0) <= out["CUTOP"].unsqueeze(1)).float()
            for name in self.level_outputs:
                out[name] = out[name] * below_top
        if self.cfg.advective_nca:
            out["NCA"] = advective_time(inputs, out["CUBOT"])
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


def flops_per_column(model: CumulusLSTM) -> int:
    """Multiply-adds x 2 of one column's forward pass (matrix products only)."""
    n, s, h, cfg = model.core_steps, model.stride, model.cfg.hidden, model.cfg
    flops = 2 * n * model.features.channels * s * h  # projection
    for layer in range(cfg.layers):
        inp = h if layer == 0 else 2 * h
        flops += 2 * 2 * n * 4 * h * (inp + h)  # two directions, four gates
    flops += 2 * n * 2 * h * (len(model.level_outputs) + len(model.level_targets)) * s
    flops += 2 * (4 * h * cfg.column_hidden + cfg.column_hidden * (1 + len(model.column_outputs)))
    return flops + trigger_flops_per_column(model)


def trigger_flops_per_column(model: CumulusLSTM) -> int:
    """Multiply-adds x 2 of the separate trigger stage (0 without one)."""
    cfg = model.cfg
    if not cfg.trigger_hidden:
        return 0
    return 2 * (model.contract.n_levels * model.features.channels * cfg.trigger_hidden + cfg.trigger_hidden)
