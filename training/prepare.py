"""``mlcu prepare``: wrfout files -> a sharded zarr training store.

Runs on dask.distributed: a local cluster with one single-threaded worker process per core by
default (netCDF/HDF5 is not thread-safe), or any running dask scheduler by address, so the
same command scales from a laptop to a dask-jobqueue cluster. Work is a cheap scan task per
file (times and grid), then one task per batch of (file, time) units of one split (about
``shard_columns`` columns, one zarr shard): the task reads one time slice at a time lazily, so
memory stays flat in the number of files. Every file is checked against the variable contract
when it is read (the first one before any work starts, to fail fast on a missing iofields
field). The main process keeps only small per-unit records; normalisation statistics are then
accumulated shard by shard.

See ``training.columns`` for the pairing of inputs and targets and the column classes, and
``training.store`` for the store layout and how a killed job resumes.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import netCDF4
import numpy as np
from tqdm import tqdm

from emulator.contract import Contract, default_contract
from training.columns import (EXPIRED, HELD, NOT_CALLED, PAIRINGS, REGIME_FIELDS, SAMPLE_CLASSES,
                              SPECIES, extract, regime_names, stepcu)
from training.normalization import accumulate, summary
from training.splits import SPLITS, SplitConfig, assign, column_splits
from training.settings import checked_settings
from training.store import Store, concat_units, write_json
from training.wrfout import WrfoutError, open_wrfout

COUNT_KEYS = ("columns", "kept") + SAMPLE_CLASSES + (HELD, EXPIRED, NOT_CALLED, "dropped_nonfinite")
PAIRING_TEXT = {
    "history": "same frame: the state of history time t with the cumulus fields of time t, for "
               "the columns the scheme computed at its last call; held, expired and not-yet-"
               "called columns are counted, not used",
    "single_call": "exact: each file holds one call's inputs and outputs, every column evaluated",
}


@dataclass
class PrepareConfig:
    input: list = field(default_factory=list)
    out: str | None = None
    scheduler: str = "local"  # local | synchronous | address of a dask scheduler
    workers: int | None = None  # local workers; default: all cores
    fail_fast: bool = False
    overwrite: bool = False
    pairing: str = "history"  # history | single_call (see training.columns)
    shard_columns: int = 16384  # columns per shard (a batch of whole units)
    split: SplitConfig = field(default_factory=SplitConfig)

    @classmethod
    def load(cls, path=None, sets=(), **flags) -> "PrepareConfig":
        """Settings from a YAML file, then ``key=value`` overrides (dotted keys), then flags."""
        raw = checked_settings(cls, path, sets, flags, "prepare")
        split = raw.pop("split", {}) or {}
        unknown = set(split) - set(SplitConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown split settings {sorted(unknown)}")
        cfg = cls(**raw, split=SplitConfig(**split))
        if not cfg.input:
            raise ValueError("no input: give --input GLOB [GLOB ...] or input: in the config")
        if not cfg.out:
            raise ValueError("no output store: give --out STORE")
        if isinstance(cfg.input, str):
            cfg.input = [cfg.input]
        if cfg.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {cfg.pairing!r}")
        return cfg


def expand_inputs(items: list[str]) -> list[str]:
    """Globs and manifest files (``@list.txt``, or a .txt/.list file: one path per line,
    '#' comments, relative to the manifest) -> sorted unique absolute paths."""
    paths = []
    for item in items:
        manifest = item[1:] if item.startswith("@") else item
        if item.startswith("@") or (manifest.endswith((".txt", ".list")) and os.path.isfile(manifest)):
            base = Path(manifest).parent
            lines = Path(manifest).read_text().splitlines()
            entries = [ln.split("#")[0].strip() for ln in lines]
            paths += [str(base / e) if not os.path.isabs(e) else e for e in entries if e]
            continue
        matches = glob.glob(item)
        if not matches:
            raise ValueError(f"no files match {item!r}")
        paths += matches
    return sorted({os.path.abspath(p) for p in paths})


# --- tasks (run on dask workers) ---------------------------------------------------------


def scan_file(path: str) -> dict:
    """Times and grid of one file (cheap: netCDF header and Times only), or why it is unreadable."""
    try:
        with netCDF4.Dataset(path) as nc:
            dims = {name: len(dim) for name, dim in nc.dimensions.items()}
            if "Times" not in nc.variables or "bottom_top" not in dims:
                return {"path": path, "error": f"{path}: not a WRF history file (no Times or "
                                               f"bottom_top)", "unreadable": False}
            times = [b"".join(row).decode() for row in np.atleast_2d(nc["Times"][:].data)]
            attrs = {k: nc.getncattr(k) for k in ("DT", "STEPCU", "CUDT") if k in nc.ncattrs()}
            families = regime_names({k: nc.getncattr(k) for k in REGIME_FIELDS.values()
                                     if k in nc.ncattrs()})
    except OSError as err:
        return {"path": path, "error": f"{path}: cannot be read as netCDF ({err})", "unreadable": True}
    if "DT" not in attrs:
        return {"path": path, "error": f"{path}: variable DT: global attribute missing",
                "unreadable": False}
    cudt = float(np.asarray(attrs.get("CUDT", 0.0)).ravel()[0])
    return {"path": path, "times": [t.replace("_", "T") for t in times],
            "n_levels": dims["bottom_top"], "columns": dims["south_north"] * dims["west_east"],
            "stepcu": stepcu(attrs), "cudt": cudt, "families": families}


def process_batch(batch: dict, store_root: str, contract_json: str, pairing: str,
                  fail_fast: bool) -> dict:
    """Extract the training columns of a batch of (file, time) units, all on one grid, into
    one shard."""
    store = Store(store_root)
    if store.batch_done(batch["id"]):
        return store.batch_record(batch["id"])
    contract = Contract.from_json(contract_json).with_levels(batch["n_levels"])
    parts, records = [], []
    for unit in batch["units"]:
        try:
            frame = open_wrfout(unit["path"], contract, extras=("TIMEC_KF", "ITIMESTEP") + tuple(REGIME_FIELDS) + SPECIES,
                                chunks=None, time=unit["time_index"]).isel(Time=0).load()
        except (WrfoutError, OSError, RuntimeError) as err:
            if fail_fast or (isinstance(err, WrfoutError) and not err.unreadable):
                raise
            records.append(dict(unit, error=f"{unit['path']} (time {unit['time_index']}): {err}"))
            continue
        share = None
        if unit.get("shared_by"):  # a file whose columns are shared out among splits
            def share(i, j, unit=unit):
                splits = unit["shared_by"]
                return column_splits(unit["path"], i, j, splits, unit["column_block"]) \
                    == splits.index(batch["split"])
        cols = extract(frame, contract, unit["stepcu"], pairing, share)
        parts.append((unit["file_id"], unit["time_index"], cols))
        records.append(dict(unit, counts=cols.counts,
                            dropped=[dict(d, path=unit["path"], time=unit["time"]) for d in cols.dropped]))
    record = {"id": batch["id"], "split": batch["split"], "units": records}
    columns = concat_units(parts, contract)
    stats = accumulate(columns, contract) if batch["split"] == "train" else None
    store.write_batch(batch["id"], batch["split"], columns, contract, record, stats)
    return record


# --- execution ---------------------------------------------------------------------------


class Runner:
    """Map a task over items on dask.distributed (or in-process), results as they finish."""

    def __init__(self, client=None):
        self.client = client

    def map(self, fn, items, desc, **kwargs):
        bar = tqdm(total=len(items), desc=desc, unit="task", disable=None, file=sys.stderr)
        if self.client is None:
            for item in items:
                try:
                    yield item, fn(item, **kwargs)
                except Exception as err:  # reported per item by the caller
                    yield item, err
                bar.update()
        else:
            from distributed import as_completed

            futures = self.client.map(fn, items, pure=False, **kwargs)
            index = {f.key: i for i, f in enumerate(futures)}
            for fut in as_completed(futures):
                try:
                    result = fut.result()
                except Exception as err:
                    result = err
                bar.update()
                yield items[index[fut.key]], result
                fut.release()
        bar.close()


@contextmanager
def runner(scheduler: str, workers: int | None):
    if scheduler == "synchronous":
        yield Runner()
        return
    from distributed import Client, LocalCluster

    if scheduler == "local":
        n = workers or os.cpu_count() or 1
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            yield Runner(client)
    else:
        with Client(scheduler) as client:
            yield Runner(client)


# --- the job ---------------------------------------------------------------------------


def _plan(scans: list[dict], split_cfg: SplitConfig, shard_columns: int) -> list[dict]:
    """Units (file, time) in input order, their splits, and batches of consecutive units of
    one split and one grid (level count) holding about ``shard_columns`` columns. A unit
    whose columns are shared out among several splits goes to a batch of each, which keeps
    its share."""
    units = []
    for file_id, scan in enumerate(scans):
        if "error" in scan:
            continue
        for t, time in enumerate(scan["times"]):
            units.append({"file_id": file_id, "path": scan["path"], "time_index": t, "time": time,
                          "stepcu": scan["stepcu"], "columns": scan["columns"],
                          "n_levels": scan["n_levels"]})
    splits = assign([{"path": u["path"], "time": np.datetime64(u["time"])} for u in units], split_cfg)
    batches, filled = {}, {}
    for unit, split in zip(units, splits):
        for name in split if isinstance(split, list) else [split]:
            share = len(split) if isinstance(split, list) else 1
            if isinstance(split, list):
                unit = dict(unit, shared_by=split, column_block=split_cfg.column_block)
            key = (name, unit["n_levels"])
            groups = batches.setdefault(key, [[]])
            if groups[-1] and filled[key] + unit["columns"] / share > shard_columns:
                groups.append([])
                filled[key] = 0
            groups[-1].append(unit)
            filled[key] = filled.get(key, 0) + unit["columns"] / share
    out = []
    for split in SPLITS:
        for n_levels in sorted(n for s, n in batches if s == split):
            for k, group in enumerate(batches[(split, n_levels)]):
                out.append({"id": f"{split}-L{n_levels:03d}-{k:05d}", "split": split,
                            "n_levels": n_levels, "units": group})
    return out


def _check_scans(scans: list[dict], fail_fast: bool) -> list[dict]:
    invalid = [s for s in scans if "error" in s and not s["unreadable"]]
    unreadable = [s for s in scans if "error" in s and s["unreadable"]]
    if invalid or (fail_fast and unreadable):
        raise ValueError("input files are not usable WRF history files:\n  "
                         + "\n  ".join(s["error"] for s in invalid + unreadable))
    if not any("error" not in s for s in scans):
        raise ValueError("none of the input files can be read")
    return [{"path": s["path"], "error": s["error"]} for s in unreadable]


def _statistics(store: Store, contract: Contract, batches: list[dict]) -> dict | None:
    """Normalisation statistics over the train split: the batches' partial statistics merged
    in plan order (so a resumed job gets the same numbers); None for a store without one (to
    evaluate on)."""
    total = None
    for batch in batches:
        if batch["split"] != "train":
            continue
        part = store.batch_statistics(batch["id"])
        if total is None:
            total = part
        else:
            for name, st in part.items():
                total[name].merge(st)
    return summary(total, contract) if total is not None else None


def prepare(cfg: PrepareConfig, contract: Contract | None = None) -> dict:
    """Run a prepare job; returns its report (also in the store's report.json and store.json)."""
    contract = contract or default_contract()
    files = expand_inputs(cfg.input)
    store = Store(cfg.out)
    job_settings = {k: v for k, v in asdict(cfg).items()
                    if k not in ("out", "scheduler", "workers", "fail_fast", "overwrite")}
    with runner(cfg.scheduler, cfg.workers) as run:
        scans = [None] * len(files)
        order = {p: i for i, p in enumerate(files)}
        for path, scan in run.map(scan_file, files, "scan"):
            if isinstance(scan, Exception):
                scan = {"path": path, "error": f"{path}: {scan}", "unreadable": True}
            scans[order[path]] = scan
        skipped = _check_scans(scans, cfg.fail_fast)
        first = next(s for s in scans if "error" not in s)
        open_wrfout(first["path"], contract)  # fail fast on a missing variable (reads no data)
        batches = _plan(scans, cfg.split, cfg.shard_columns)
        job = {"files": files, "settings": job_settings, "contract": contract.to_dict()}
        store.begin(job, overwrite=cfg.overwrite)
        records, invalid = {}, []
        for batch, result in run.map(process_batch, batches, "prepare", store_root=str(store.root),
                                     contract_json=contract.to_json(), pairing=cfg.pairing,
                                     fail_fast=cfg.fail_fast):
            if isinstance(result, Exception):
                if cfg.fail_fast:
                    raise RuntimeError(f"prepare stopped (--fail-fast): {result}") from result
                invalid.append(str(result))
            else:
                records[batch["id"]] = result
        if invalid:
            raise ValueError("input files do not fit the variable contract:\n  " + "\n  ".join(invalid))

    stats = _statistics(store, contract, batches)
    if stats is not None:
        write_json(store.path("stats.json"), stats)
    report = _report(files, skipped, [records[b["id"]] for b in batches], cfg.pairing)
    # What the evaluation needs of each file besides its columns: the cumulus interval (the
    # hold of shallow convection) and the names of its regimes.
    file_info = [{"cudt": s.get("cudt", 0.0), "families": s.get("families", ""),
                  "n_levels": s.get("n_levels")} for s in scans]
    manifest = {"contract": contract.to_dict(), "files": files, "file_info": file_info,
                "pairing": cfg.pairing,
                "batches": [{"id": b["id"], "split": b["split"], "n_levels": b["n_levels"],
                             "units": [[u["file_id"], u["time_index"]] for u in b["units"]]}
                            for b in batches],
                "normalization": "stats.json" if stats is not None else None, "report": report}
    write_json(store.path("report.json"), report)
    store.finish(manifest)
    return report


def _report(files, skipped, batch_records, pairing) -> dict:
    per_split = {s: dict.fromkeys(COUNT_KEYS, 0) for s in SPLITS}
    failed, dropped = [], []
    for rec in batch_records:
        for unit in rec["units"]:
            if "error" in unit:
                failed.append({"path": unit["path"], "time_index": unit["time_index"],
                               "error": unit["error"]})
                continue
            for key in COUNT_KEYS:
                per_split[rec["split"]][key] += unit["counts"][key]
            dropped += unit["dropped"]
    total = {k: sum(per_split[s][k] for s in SPLITS) for k in COUNT_KEYS}
    n_units = sum(len(rec["units"]) for rec in batch_records)
    return {
        "files": {"input": len(files), "read": len(files) - len(skipped), "skipped": skipped},
        "units": {"total": n_units, "done": n_units - len(failed), "failed": failed},
        "columns": dict(per_split, total=total),
        "dropped_nonfinite": dropped,
        "pairing": PAIRING_TEXT[pairing],
    }


def format_report(report: dict) -> str:
    f, u = report["files"], report["units"]
    lines = [f"files: {f['input']} given, {f['read']} read, {len(f['skipped'])} skipped; "
             f"units (file x time): {u['done']} done, {len(u['failed'])} failed"]
    for s in f["skipped"]:
        lines.append(f"  skipped: {s['error']}")
    for s in u["failed"]:
        lines.append(f"  failed: {s['error']}")
    header = ["split", *COUNT_KEYS]
    lines.append("  ".join(f"{h:>11}" for h in header))
    for split, counts in report["columns"].items():
        if counts["columns"]:
            lines.append("  ".join([f"{split:>11}"] + [f"{counts[k]:>11d}" for k in COUNT_KEYS]))
    for d in report["dropped_nonfinite"][:20]:
        lines.append(f"  dropped (NaN/Inf in {', '.join(d['variables'])}): {d['path']} "
                     f"time {d['time']} i={d['i']} j={d['j']}")
    extra = len(report["dropped_nonfinite"]) - 20
    if extra > 0:
        lines.append(f"  ... and {extra} more dropped columns (all listed in report.json)")
    return "\n".join(lines)
