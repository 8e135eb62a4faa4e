"""Assignment of (file, time) units to train / validation / test splits.

Every unit goes to exactly one split, so no column can appear in two. Two methods:

* ``files`` (default): whole files, or whole cases (``case: directory`` keeps every file of a
  run folder together). The first rule whose pattern (fnmatch on the path) matches decides;
  other cases are placed by a stable hash of their name, ``validation_fraction`` and
  ``test_fraction`` of them outside train. A rule may name several splits
  (``split: [validation, test]``): the file's columns are then shared out among them in
  blocks of ``column_block`` x ``column_block`` columns, each block placed by a stable hash
  of (file name, block), so that neighbouring columns stay together and a split never
  depends on where the data lie.
* ``time_blocks``: history times are cut into blocks of ``block_minutes`` counted from the
  earliest time of the inputs, and blocks go to the splits of ``block_cycle`` in turn.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")


@dataclass
class SplitConfig:
    method: str = "files"
    # [{pattern: "*_00.nc", split: train}, {pattern: "*_01.nc", split: [validation, test]}]
    rules: list = field(default_factory=list)
    case: str = "file"  # file | directory
    validation_fraction: float = 0.2
    test_fraction: float = 0.0
    block_minutes: float = 60.0
    block_cycle: list = field(default_factory=lambda: ["train", "train", "train", "validation"])
    column_block: int = 8  # columns per side of the blocks of a file split by columns

    def __post_init__(self):
        if self.method not in ("files", "time_blocks"):
            raise ValueError(f"split.method must be 'files' or 'time_blocks', got {self.method!r}")
        if self.case not in ("file", "directory"):
            raise ValueError(f"split.case must be 'file' or 'directory', got {self.case!r}")
        for rule in self.rules:
            names = rule.get("split")
            names = names if isinstance(names, list) else [names]
            if set(rule) != {"pattern", "split"} or not names or any(n not in SPLITS for n in names) \
                    or len(set(names)) != len(names):
                raise ValueError(f"split rule {rule!r} needs 'pattern' and a 'split' in {SPLITS} "
                                 "(or a list of different ones)")
        if self.column_block < 1:
            raise ValueError(f"split.column_block must be >= 1, got {self.column_block}")
        if any(s not in SPLITS for s in self.block_cycle) or not self.block_cycle:
            raise ValueError(f"split.block_cycle must list splits from {SPLITS}")
        if not 0 <= self.validation_fraction + self.test_fraction <= 1:
            raise ValueError("split fractions must add up to at most 1")


def _hash_fraction(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def file_split(path: str, cfg: SplitConfig) -> str | list:
    """The split of a file, or the list of splits its columns are shared out among."""
    for rule in cfg.rules:
        if fnmatch.fnmatch(path, rule["pattern"]) or fnmatch.fnmatch(Path(path).name, rule["pattern"]):
            return list(rule["split"]) if isinstance(rule["split"], list) else rule["split"]
    # Keys use the run folder's name, not the full path, so splits do not depend on where
    # the data lie.
    p = Path(path)
    key = p.parent.name if cfg.case == "directory" else f"{p.parent.name}/{p.name}"
    u = _hash_fraction(key)
    if u < cfg.validation_fraction:
        return "validation"
    if u < cfg.validation_fraction + cfg.test_fraction:
        return "test"
    return "train"


def column_splits(path: str, i: np.ndarray, j: np.ndarray, splits: list, block: int) -> np.ndarray:
    """Index into ``splits`` of columns (i, j) (0-based west_east, south_north) of a file split
    by columns: equal shares of blocks of ``block`` x ``block`` columns, by a stable hash of
    the file's name and the block."""
    bi, bj = np.asarray(i) // block, np.asarray(j) // block
    keys = {(a, b): _hash_fraction(f"{Path(path).name}/{a}/{b}")
            for a, b in set(zip(bi.tolist(), bj.tolist()))}
    u = np.array([keys[(a, b)] for a, b in zip(bi.tolist(), bj.tolist())])
    return np.minimum((u * len(splits)).astype(int), len(splits) - 1)


def assign(units: list[dict], cfg: SplitConfig) -> list:
    """Split of each unit ({'path', 'time'} with time a numpy datetime64): a name, or a list of
    names when the unit's columns are shared out among them (``column_splits``)."""
    if cfg.method == "files":
        return [file_split(u["path"], cfg) for u in units]
    times = np.array([u["time"] for u in units], dtype="datetime64[s]")
    start = times.min() if len(times) else None
    block = np.timedelta64(int(round(cfg.block_minutes * 60)), "s")
    return [cfg.block_cycle[int((t - start) // block) % len(cfg.block_cycle)] for t in times]
