"""Normalisation statistics, accumulated streaming over the training split.

Per variable and per level: count, mean and standard deviation (sums in float64, Chan's
pairwise update so that partial results merge), minimum, maximum and the fraction of exact
zeros; for targets also robust scales for heavy-tailed tendencies: the median and 99th
percentile of |x| over non-zero values, from a log-spaced histogram of |x|. Inputs are
described over all columns, targets over triggered columns only (TRIGGER itself over all
columns).
"""

from __future__ import annotations

import numpy as np

LOG_MIN, LOG_MAX, BINS = -24.0, 8.0, 640  # log10 |x| histogram: 0.05-decade bins
FORMAT = "mlcu-normalization"
FORMAT_VERSION = 1


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


def accumulate(arrays: dict, contract) -> dict:
    """Statistics of one batch of columns ({name: (column, values)}): inputs over all columns,
    targets over triggered ones."""
    trigger = contract.outputs[0].name
    triggered = arrays[trigger][:, 0] > 0.5
    stats = {}
    for var in contract.inputs + contract.outputs:
        values = arrays[var.name]
        is_target = var in contract.outputs and var.name != trigger
        stats[var.name] = RunningStats(values.shape[1], robust=is_target)
        stats[var.name].update(values[triggered] if is_target else values)
    return stats


def summary(stats: dict, contract) -> dict:
    """The JSON document stored with the store and later embedded in the model."""
    trigger = contract.outputs[0].name
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "split": "train",
        "inputs": {v.name: stats[v.name].to_dict() for v in contract.inputs},
        "targets": {v.name: stats[v.name].to_dict() for v in contract.outputs},
        "targets_over": f"columns with {trigger} = 1 ({trigger} itself over all columns)",
    }
