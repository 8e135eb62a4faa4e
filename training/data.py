"""Mini-batches of columns from a training store, read block by block (never the whole split).

Every batch comes from one block of one shard, so its columns share one grid (a store may hold
several level counts, never within a shard). The split's shards are cut into blocks of
``block_size`` columns. Each epoch the block order is
shuffled with (seed, epoch) and within a loaded block the columns are shuffled again, so the
sequence of batches depends only on the seed, the epoch and the rank, and a resumed run sees
the same data as an uninterrupted one. Under data parallelism every rank reads every block
and takes every ``world_size``-th of its shuffled columns (the same number on every rank, a
remainder of fewer than ``world_size`` columns left out), in batches of
``batch_size / world_size``: all ranks run the same number of steps on disjoint columns and
one step sees ``batch_size`` columns, as in a single process.
"""

from __future__ import annotations

import numpy as np
import torch
import zarr
from torch.utils.data import IterableDataset

from emulator.contract import Contract
from training.columns import SPECIES
from training.store import PROVENANCE, Store, open_shard


class ColumnBatches(IterableDataset):
    def __init__(self, store: Store, split: str, contract: Contract, batch_size: int,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 block_size: int = 4096, file_ids: set | None = None, shards: list | None = None):
        self.names = contract.input_names + contract.output_names + list(SPECIES) + list(PROVENANCE)
        self.columnar = {v.name for v in contract.inputs + contract.outputs
                         if v.level in ("surface", "scalar")} | set(PROVENANCE)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.file_ids = file_ids
        self.epoch = 0
        self.blocks = []
        for shard in store.shards(split) if shards is None else shards:
            n = zarr.open_array(shard / "provenance", mode="r").shape[0]
            self.blocks += [(shard, start, min(start + block_size, n)) for start in range(0, n, block_size)]
        if not self.blocks:
            raise ValueError(f"{store.root}: split {split!r} has no columns")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, shard, start, stop) -> dict:
        ds = open_shard(shard, slice(start, stop))
        keep = slice(None)
        if self.file_ids is not None:
            keep = np.isin(ds["FILE_ID"].values, list(self.file_ids))
        out = {}
        for name in self.names:
            values = ds[name].values[keep]
            shape = (len(values),) if name in self.columnar else (len(values), -1)
            if not values.size:
                shape = (0,) + values.shape[1:]
            out[name] = torch.from_numpy(np.ascontiguousarray(values.reshape(shape)))
        return out

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))
        per_rank = max(1, self.batch_size // self.world_size)
        for b in order:
            block = self._load(*self.blocks[b])
            n = len(next(iter(block.values())))
            if n == 0:  # every column of the block belongs to files left out
                continue
            rows = torch.from_numpy(rng.permutation(n)) if self.shuffle else torch.arange(n)
            mine = rows[self.rank::self.world_size][: n // self.world_size]
            for start in range(0, len(mine), per_rank):
                idx = mine[start:start + per_rank]
                yield {name: values[idx] for name, values in block.items()}
