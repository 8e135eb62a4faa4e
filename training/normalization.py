"""Statistics of a training split, accumulated streaming, shard by shard.

They do not depend on the vertical grid: every variable is described over all its values, all
levels pooled (count, mean, standard deviation with sums in float64 and Chan's pairwise update
so that partial results merge, minimum, maximum, fraction of exact zeros; for targets also the
median and 99th percentile of |x| over non-zero values from a log-spaced histogram). Profile
inputs are also described per pressure band (count, minimum, maximum): the ranges the
runtime's out-of-distribution check compares a column with, on any grid. Inputs are described
over all columns, targets over triggered columns only (TRIGGER itself over all columns).
"""

from __future__ import annotations

import numpy as np

LOG_MIN, LOG_MAX, BINS = -24.0, 8.0, 640  # log10 |x| histogram: 0.05-decade bins
# Pressure bands of the profile ranges: 48 bands equal in log-pressure, 5 to 1100 hPa.
PRESSURE_EDGES_PA = np.geomspace(500.0, 110000.0, 49)
FORMAT = "mlcu-normalization"
FORMAT_VERSION = 2


class RunningStats:
    """Streaming statistics of a (sample, level) array, per level. The |x| histogram (robust
    scales) is kept when ``robust`` is set: for the heavy-tailed targets."""

    def __init__(self, n_levels: int, robust: bool = True):
        self.robust = robust
        self.count = np.zeros(n_levels)
        self.mean = np.zeros(n_levels)
        self.m2 = np.zeros(n_levels)
        self.min = np.full(n_levels, np.inf)
        self.max = np.full(n_levels, -np.inf)
        self.zeros = np.zeros(n_levels)
        self.hist = np.zeros((n_levels, BINS)) if robust else None

    def update(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(axis=0, dtype=np.float64)
        m2_b = np.square(x - mean_b.astype(x.dtype)).sum(axis=0, dtype=np.float64)
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2_b + delta**2 * self.count * n / total
        self.count = total
        self.min = np.minimum(self.min, x.min(axis=0))
        self.max = np.maximum(self.max, x.max(axis=0))
        a = np.abs(x)
        nonzero = a > 0
        self.zeros += (~nonzero).sum(axis=0)
        if not self.robust:
            return
        logs = np.log10(a[nonzero])
        idx = np.clip(((logs - LOG_MIN) / (LOG_MAX - LOG_MIN) * BINS).astype(int), 0, BINS - 1)
        level = np.broadcast_to(np.arange(x.shape[1]), x.shape)[nonzero]
        self.hist += np.bincount(level * BINS + idx, minlength=self.hist.size).reshape(self.hist.shape)

    def merge(self, other: "RunningStats") -> None:
        """Add another accumulator's data (Chan et al.'s pairwise update)."""
        total = self.count + other.count
        safe = np.maximum(total, 1)
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.count / safe
        self.m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / safe
        self.count = total
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        self.zeros += other.zeros
        if self.robust:
            self.hist += other.hist

    def state(self) -> dict:
        keys = ("count", "mean", "m2", "min", "max", "zeros") + (("hist",) if self.robust else ())
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_state(cls, state: dict) -> "RunningStats":
        stats = cls(len(state["count"]), robust="hist" in state)
        for key, value in state.items():
            setattr(stats, key, np.array(value))
        return stats

    def _abs_quantile(self, q: float) -> np.ndarray:
        centres = 10 ** (LOG_MIN + (np.arange(BINS) + 0.5) * (LOG_MAX - LOG_MIN) / BINS)
        out = np.zeros(self.hist.shape[0])
        for k, h in enumerate(self.hist):
            if h.sum() > 0:
                out[k] = centres[np.searchsorted(np.cumsum(h), q * h.sum())]
        return out

    def to_dict(self) -> dict:
        count = np.maximum(self.count, 1)
        robust = {"abs_p50": self._abs_quantile(0.5).tolist(),
                  "abs_p99": self._abs_quantile(0.99).tolist()} if self.robust else {}
        return robust | {
            "count": self.count.astype(int).tolist(),
            "mean": self.mean.tolist(),
            "std": np.sqrt(self.m2 / count).tolist(),
            "min": np.where(self.count > 0, self.min, 0.0).tolist(),
            "max": np.where(self.count > 0, self.max, 0.0).tolist(),
            "zero_fraction": (self.zeros / count).tolist(),
        }


def pressure_band(p: np.ndarray) -> np.ndarray:
    """Index of the pressure band (PRESSURE_EDGES_PA) of each pressure (Pa), clipped to the
    outermost bands."""
    return np.clip(np.searchsorted(PRESSURE_EDGES_PA, p) - 1, 0, len(PRESSURE_EDGES_PA) - 2)


def _level_pressure(values: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The pressure of each value of a profile: mass levels their own; full levels that of
    the mass level above (the top one that of the highest mass level)."""
    if values.shape[1] == p.shape[1]:
        return p
    return np.concatenate([p, p[:, -1:]], axis=1)


class PressureRanges:
    """Count, minimum and maximum of a profile variable per pressure band."""

    def __init__(self):
        n = len(PRESSURE_EDGES_PA) - 1
        self.count = np.zeros(n)
        self.min = np.full(n, np.inf)
        self.max = np.full(n, -np.inf)

    def update(self, values: np.ndarray, p: np.ndarray) -> None:
        band = pressure_band(_level_pressure(values, p)).ravel()
        x = values.ravel().astype(np.float64)
        self.count += np.bincount(band, minlength=self.count.size)
        np.minimum.at(self.min, band, x)
        np.maximum.at(self.max, band, x)

    def merge(self, other: "PressureRanges") -> None:
        self.count += other.count
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    def state(self) -> dict:
        return {"band_count": self.count, "band_min": self.min, "band_max": self.max}

    @classmethod
    def from_state(cls, state: dict) -> "PressureRanges":
        ranges = cls()
        ranges.count, ranges.min, ranges.max = (np.array(state[k]) for k in
                                                ("band_count", "band_min", "band_max"))
        return ranges

    def to_dict(self) -> dict:
        seen = self.count > 0
        return {"edges_pa": PRESSURE_EDGES_PA.tolist(), "count": self.count.astype(int).tolist(),
                "min": np.where(seen, self.min, 0.0).tolist(),
                "max": np.where(seen, self.max, 0.0).tolist()}


class VariableStats:
    """A variable's pooled statistics, and for a profile input its pressure-band ranges."""

    def __init__(self, robust: bool, profile: bool):
        self.pooled = RunningStats(1, robust)
        self.bands = PressureRanges() if profile else None

    def update(self, values: np.ndarray, p: np.ndarray | None = None) -> None:
        self.pooled.update(values.reshape(-1, 1))
        if self.bands is not None:
            self.bands.update(values, p)

    def merge(self, other: "VariableStats") -> None:
        self.pooled.merge(other.pooled)
        if self.bands is not None:
            self.bands.merge(other.bands)

    def state(self) -> dict:
        return self.pooled.state() | (self.bands.state() if self.bands is not None else {})

    @classmethod
    def from_state(cls, state: dict) -> "VariableStats":
        stats = cls(robust="hist" in state, profile="band_count" in state)
        stats.pooled = RunningStats.from_state({k: v for k, v in state.items()
                                                if not k.startswith("band_")})
        if stats.bands is not None:
            stats.bands = PressureRanges.from_state(state)
        return stats

    def to_dict(self) -> dict:
        out = {k: v[0] for k, v in self.pooled.to_dict().items()}
        if self.bands is not None:
            out["by_pressure"] = self.bands.to_dict()
        return out


def accumulate(arrays: dict, contract) -> dict:
    """Statistics of one batch of columns ({name: (column, values)}): inputs over all columns,
    targets over triggered ones."""
    trigger = contract.outputs[0].name
    triggered = arrays[trigger][:, 0] > 0.5
    p = arrays["P_HYD"]
    stats = {}
    for var in contract.inputs + contract.outputs:
        values = arrays[var.name]
        is_target = var in contract.outputs and var.name != trigger
        profile = not is_target and var.level in ("mass", "w") and var.name != "P_HYD"
        stats[var.name] = VariableStats(robust=is_target, profile=profile)
        if is_target:
            stats[var.name].update(values[triggered])
        else:
            stats[var.name].update(values, p)
    return stats


def summary(stats: dict, contract) -> dict:
    """The JSON document stored with the store and later embedded in the model."""
    trigger = contract.outputs[0].name
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "split": "train",
        "inputs": {v.name: stats[v.name].to_dict() for v in contract.inputs},
        "targets": {v.name: stats[v.name].to_dict() for v in contract.outputs},
        "targets_over": f"columns with {trigger} = 1 ({trigger} itself over all columns)",
        "levels_pooled": "every statistic is over all levels of all grids; profile inputs also "
                         "per pressure band (by_pressure)",
    }
