"""The training store: zarr shards of columns, one per (file, time), and their manifest.

Layout of a store folder::

    job.json                      what the job was started with (inputs, settings, contract)
    shards/<split>/<batch>.zarr   the columns (contract variables and the condensate species)
                                  of a batch of (file, time) units of one split and one grid (a
                                  store may hold several grids: level counts differ between
                                  shards, never within one), packed by level kind (few large
                                  arrays write and read fast): ``mass`` (sample, variable,
                                  level), ``w`` (sample, variable, level_w), ``column``
                                  (sample, variable), ``provenance`` (sample,
                                  FILE_ID/TIME_INDEX/I/J/COLUMN_CLASS/FAMILY); each array
                                  names its variables in its ``variables`` attribute
    batches/<batch>.json          the batch's per-unit counts, dropped columns and failures;
                                  written after its shard
    batches/<batch>.stats.npz     partial normalisation statistics of a train batch
    stats.json                    normalisation statistics over the train split
    report.json                   the job's report
    store.json                    manifest, written last: the store is complete when it exists

Every file and shard is written under a temporary name and renamed into place, so a job killed
at any moment leaves only complete pieces; a batch counts as done when its ``batches/`` record
exists, and a restarted job skips done batches and redoes the rest. Batches are planned from
the sorted inputs, so a restarted job plans the same ones.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from emulator.contract import Contract
from training.columns import SAMPLE_CLASSES, SPECIES
from training.normalization import VariableStats

FORMAT = "mlcu-store"
FORMAT_VERSION = 2  # 2: several grids per store, per-variable statistics, regimes
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")  # fast to write and read
PROVENANCE = ("FILE_ID", "TIME_INDEX", "I", "J", "COLUMN_CLASS", "FAMILY")


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class Store:
    def __init__(self, root):
        self.root = Path(root)

    def path(self, *parts) -> Path:
        return self.root.joinpath(*parts)

    # --- job life cycle ---

    def begin(self, job: dict, overwrite: bool = False) -> bool:
        """Create the store, or resume it when it was started by the same job.

        Returns True when resuming. A store of another job, or of the same job written in
        another store format (by another version of this code), is refused unless ``overwrite``.
        """
        job = dict(job, store_format_version=FORMAT_VERSION)
        job_file = self.path("job.json")
        if self.root.exists() and any(self.root.iterdir()):
            same = job_file.exists() and json.loads(job_file.read_text()) == json.loads(json.dumps(job))
            if same:
                self._remove_partial()
                return True
            if not overwrite:
                raise ValueError(f"{self.root} already holds something else (another job's store, "
                                 "a store of another format version, or other files); use "
                                 "--overwrite or another --out")
            shutil.rmtree(self.root)
        for sub in ("shards", "batches"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        write_json(job_file, job)
        return False

    def _remove_partial(self) -> None:
        for tmp in list(self.root.rglob("*.tmp")):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        self.path("store.json").unlink(missing_ok=True)

    def finish(self, manifest: dict) -> None:
        write_json(self.path("store.json"), dict(manifest, format=FORMAT, version=FORMAT_VERSION))

    # --- batches ---

    def batch_done(self, batch_id: str) -> bool:
        return self.path("batches", f"{batch_id}.json").exists()

    def batch_record(self, batch_id: str) -> dict:
        return json.loads(self.path("batches", f"{batch_id}.json").read_text())

    def batch_statistics(self, batch_id: str) -> dict:
        with np.load(self.path("batches", f"{batch_id}.stats.npz")) as npz:
            states = {}
            for key in npz.files:
                name, field = key.split("/")
                states.setdefault(name, {})[field] = npz[key]
        return {name: VariableStats.from_state(state) for name, state in states.items()}

    def shard_path(self, split: str, batch_id: str) -> Path:
        return self.path("shards", split, f"{batch_id}.zarr")

    def write_batch(self, batch_id: str, split: str, columns: dict, contract: Contract,
                    record: dict, stats: dict | None = None) -> None:
        """Write the shard of ``columns`` (``concat_units``), its partial normalisation
        statistics (``{name: VariableStats}``), then its record."""
        if stats is not None:
            tmp = self.path("batches", f".{batch_id}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                np.savez(fh, **{f"{name}/{key}": value for name, st in stats.items()
                                for key, value in st.state().items()})
            os.replace(tmp, self.path("batches", f"{batch_id}.stats.npz"))
        if len(columns["I"]) > 0:
            final = self.shard_path(split, batch_id)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
            shard = pack(columns, contract)
            encoding = {name: {"compressors": [COMPRESSOR]} for name in shard.data_vars}
            shard.to_zarr(tmp, mode="w", consolidated=False, encoding=encoding)
            try:
                os.rename(tmp, final)
            except OSError:  # written meanwhile by another attempt at the same batch
                shutil.rmtree(tmp)
        write_json(self.path("batches", f"{batch_id}.json"), record)

    # --- reading ---

    def manifest(self) -> dict:
        path = self.path("store.json")
        if not path.exists():
            raise FileNotFoundError(f"{self.root} is not a complete store (no store.json)")
        manifest = json.loads(path.read_text())
        if manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.root}: store format version {manifest.get('version')}; this "
                             f"code reads version {FORMAT_VERSION}: prepare the store again")
        return manifest

    def contract(self) -> Contract:
        """The store's contract, not bound to a level count (shards may differ)."""
        return Contract.from_dict(self.manifest()["contract"])

    def file_info(self, file_id: int) -> dict:
        """What the store knows of an input file: path, cumulus interval CUDT (min), regime
        names."""
        manifest = self.manifest()
        info = (manifest.get("file_info") or [{}] * len(manifest["files"]))[int(file_id)]
        return {"path": manifest["files"][int(file_id)], "cudt": 0.0, "families": ""} | info

    def shards(self, split: str) -> list[Path]:
        return sorted(self.path("shards", split).glob("*.zarr"))

    def open_split(self, split: str) -> xr.Dataset:
        """All columns of a split on one grid as one lazy dataset (dimension ``sample``), one
        variable per contract name plus the provenance fields."""
        shards = self.shards(split)
        if not shards:
            raise ValueError(f"{self.root}: split {split!r} has no columns")
        parts = [open_shard(s) for s in shards]
        levels = {p.sizes.get("level") for p in parts}
        if len(levels) > 1:
            raise ValueError(f"{self.root}: split {split!r} holds several grids ({sorted(levels)} "
                             "levels); read it shard by shard")
        return xr.concat(parts, dim="sample")


def concat_units(parts: list, contract: Contract) -> dict:
    """[(file_id, time_index, UnitColumns)] -> {name: (sample, values)} with provenance
    (``contract`` bound to the units' level count)."""
    cols = [c for _, _, c in parts]
    n_levels = contract.n_levels
    out = {v.name: np.concatenate([c.arrays[v.name] for c in cols]) if cols
           else np.zeros((0, v.size(n_levels)), np.float32) for v in contract.inputs + contract.outputs}
    for name in SPECIES:
        out[name] = (np.concatenate([c.arrays[name] for c in cols]) if cols
                     else np.zeros((0, n_levels), np.float32))
    out["FILE_ID"] = np.concatenate([np.full(len(c.i), f) for f, _, c in parts] or [[]])
    out["TIME_INDEX"] = np.concatenate([np.full(len(c.i), t) for _, t, c in parts] or [[]])
    out["I"] = np.concatenate([c.i for c in cols] or [[]])
    out["J"] = np.concatenate([c.j for c in cols] or [[]])
    out["COLUMN_CLASS"] = np.concatenate([c.column_class for c in cols] or [[]])
    out["FAMILY"] = np.concatenate([c.family for c in cols] or [[]])
    return out


def _groups(contract: Contract) -> dict:
    groups = {"mass": [], "w": [], "column": []}
    for var in contract.inputs + contract.outputs:
        groups[var.level if var.level in ("mass", "w") else "column"].append(var.name)
    groups["mass"] += list(SPECIES)
    return groups


def pack(columns: dict, contract: Contract) -> xr.Dataset:
    """Pack per-variable column arrays into the shard layout."""
    data = {}
    dims = {"mass": ("sample", "mass_variable", "level"), "w": ("sample", "w_variable", "level_w"),
            "column": ("sample", "column_variable")}
    for group, names in _groups(contract).items():
        stacked = np.stack([columns[n] if group != "column" else columns[n][:, 0] for n in names], axis=1)
        data[group] = (dims[group], stacked.astype(np.float32), {"variables": names})
    provenance = np.stack([columns[n] for n in PROVENANCE], axis=1).astype(np.int32)
    data["provenance"] = (("sample", "provenance_field"), provenance,
                          {"variables": list(PROVENANCE), "COLUMN_CLASS":
                           ", ".join(f"{k}={c}" for k, c in enumerate(SAMPLE_CLASSES)),
                           "FAMILY": "the column's regime (ORACLE_FAMILY or AUGMENT_REGIME), else -1",
                           "I": "west_east index, 0-based", "J": "south_north index, 0-based"})
    return xr.Dataset(data)


def open_shard(path, rows: slice | None = None) -> xr.Dataset:
    """A shard as one variable per name (the inverse of ``pack``): lazy, or with ``rows`` the
    packed arrays of those rows read once and unpacked in memory."""
    packed = xr.open_zarr(path, consolidated=False)
    if rows is not None:
        packed = packed.isel(sample=rows).load()
    out = {}
    for group, vdim in (("mass", "mass_variable"), ("w", "w_variable"), ("column", "column_variable"),
                        ("provenance", "provenance_field")):
        for k, name in enumerate(packed[group].attrs["variables"]):
            out[name] = packed[group].isel({vdim: k}, drop=True)
    return xr.Dataset(out)
