"""``mlcu replay``: the runtime over wrfout (or oracle) files, tile by tile, as WRF would run it.

For each history time of each file the WRF arrays are built in WRF's memory layout (i, k, j)
over the whole domain (3-D arrays with kme = kde levels, as WRF allocates them), cut into tiles,
and every tile goes through ``Runtime.run_tile``, the same call the Fortran bridge makes.

What the scheme starts from depends on how the file was written (``pairing``, as in
``mlcu prepare``):

* ``history``: the frame's own NCA and cumulus fields are the scheme's state at this step, so
  held columns keep them, exactly as in WRF;
* ``single_call`` (the MSKF oracle files): the outputs of one call on the stored inputs, made
  with NCA = -100 everywhere, so every column is evaluated.

The outputs go to ``<out>/<file name>`` (WRF names and dimensions, plus FALLBACK), and the
freshly computed columns (``training.columns``) are scored against the file's own cumulus
fields with the evaluation code (``report.md``/``report.json``).

Under ``mpirun -n N`` (mpi4py) rank r runs tiles r, r + N, ...; rank 0 gathers them and writes.
Tiles are independent and always the same, so any number of ranks gives the same result.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import xarray as xr

from emulator.derive import activated
from emulator.runtime import Runtime
from training import evaluate as ev
from training.columns import (PAIRINGS, REGIME_FIELDS, SAMPLE_CLASSES, SPECIES, extract, regime_names,
                              stepcu)
from training.report import write_report
from training.wrfout import open_wrfout


SINGLE_CALL_NCA = -100.0  # what mskf_init leaves in NCA, so every column is evaluated


def _comm():
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def open_attrs(path) -> dict:
    """The global attributes of a netCDF file."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        return {k: nc.getncattr(k) for k in nc.ncattrs()}


def tiles(nx: int, ny: int, tile: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(its, ite, jts, jte), 1-based, of tiles of at most tile[0] x tile[1] columns."""
    tx, ty = tile
    return [(i, min(i + tx - 1, nx), j, min(j + ty - 1, ny))
            for j in range(1, ny + 1, ty) for i in range(1, nx + 1, tx)]


def wrf_arrays(frame: xr.Dataset, runtime: Runtime, pairing: str) -> dict:
    """The domain's arrays in WRF layout: 3-D (i, k, j) with kde levels, 2-D (i, j), Fortran order."""
    nz, ny, nx = frame.sizes["bottom_top"], frame.sizes["south_north"], frame.sizes["west_east"]

    def wrf3(values) -> np.ndarray:
        out = np.zeros((nx, nz + 1, ny), dtype=np.float32, order="F")
        values = np.asarray(values, dtype=np.float32)  # (level, south_north, west_east)
        out[:, : values.shape[0], :] = values.transpose(2, 0, 1)
        return out

    def wrf2(values) -> np.ndarray:
        return np.asfortranarray(np.asarray(values, dtype=np.float32).T)

    arrays = {}
    for name in runtime.required_arrays:
        if name in frame:
            data = frame[name].values
        elif name in SPECIES:
            data = np.zeros((nz, ny, nx), dtype=np.float32)  # a file without the species
        else:
            raise KeyError(f"{frame.attrs.get('source')}: no {name} for the runtime")
        arrays[name] = wrf2(data) if data.ndim == 2 else wrf3(data)
    for name in runtime.output_arrays:
        if name == "FALLBACK":
            arrays[name] = np.zeros((nx, ny), dtype=np.int32, order="F")
        elif pairing == "history" and name in frame:
            arrays[name] = wrf2(frame[name].values) if frame[name].ndim == 2 else wrf3(frame[name].values)
        else:
            surface = name in runtime.surface or name == "RAINCV"
            arrays[name] = wrf2(np.zeros((ny, nx))) if surface else wrf3(np.zeros((nz, ny, nx)))
    if pairing == "single_call":
        arrays["NCA"][...] = SINGLE_CALL_NCA
    return arrays


def run_frame(runtime: Runtime, frame: xr.Dataset, pairing: str, tile: tuple[int, int],
              comm=None) -> tuple[dict, dict]:
    """Run every tile of one time; returns (arrays after the call, summed counters) on rank 0."""
    nz, ny, nx = frame.sizes["bottom_top"], frame.sizes["south_north"], frame.sizes["west_east"]
    arrays = wrf_arrays(frame, runtime, pairing)
    attrs = frame.attrs
    dt = float(attrs["DT"])
    cudt = float(np.asarray(attrs.get("CUDT", 0.0)).ravel()[0])
    steps = stepcu(attrs)
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
    mine = tiles(nx, ny, tile)[rank::size]
    done, counts = [], {}
    for its, ite, jts, jte in mine:
        bounds = (1, nx + 1, 1, ny + 1, 1, nz + 1, 1, nx, 1, ny, 1, nz + 1, its, ite, jts, jte, 1, nz)
        c = runtime.run_tile(arrays, bounds, dt, float(attrs["DX"]), cudt, steps)
        counts = {k: counts.get(k, 0) + v for k, v in c.items()}
        done.append(((its, ite, jts, jte),
                     {k: a[its - 1:ite, ..., jts - 1:jte].copy() for k, a in arrays.items()}))
    if comm is None:
        return arrays, counts
    gathered = comm.gather((done, counts), root=0)
    if rank != 0:
        return {}, {}
    total = {}
    for parts, c in gathered:
        total = {k: total.get(k, 0) + v for k, v in c.items()}
        for (its, ite, jts, jte), values in parts:
            for k, a in values.items():
                arrays[k][its - 1:ite, ..., jts - 1:jte] = a
    return arrays, total


def to_dataset(arrays: dict, frame: xr.Dataset, runtime: Runtime) -> xr.Dataset:
    """The outputs as a wrfout-like dataset (Time, bottom_top, south_north, west_east)."""
    nz = frame.sizes["bottom_top"]
    data = {}
    for name in runtime.output_arrays + ("W0AVG",):
        a = arrays[name]
        if a.ndim == 3:
            data[name] = (("Time", "bottom_top", "south_north", "west_east"), a[:, :nz, :].transpose(1, 2, 0)[None])
        else:
            data[name] = (("Time", "south_north", "west_east"), a.T[None])
        try:
            var = runtime.contract.variable(name)
            units, description = var.units, var.description
        except KeyError:
            units, description = {"RAINCV": ("mm", "convective precipitation of the time step"),
                                  "FALLBACK": ("1", "1 where the column is flagged for the physics scheme")}.get(
                name, ("", ""))
        data[name] += ({"units": units, "description": description},)
    ds = xr.Dataset(data, attrs={"DX": frame.attrs["DX"], "DT": frame.attrs["DT"],
                                 "TITLE": "mlcu replay: emulator outputs", "SOURCE": str(frame.attrs["source"])})
    return ds


def predictions(arrays: dict, runtime: Runtime, i: np.ndarray, j: np.ndarray, n_levels: int) -> dict:
    """Columns (i, j) (0-based) of the outputs, in the (column, levels) form of the scores;
    TRIGGER as the scheme's activity, as ``training.evaluate`` reads it."""
    pred = {}
    for name in runtime.contract.output_names[1:]:
        a = arrays[name]
        pred[name] = a[i, j] if a.ndim == 2 else a[i, :n_levels, j]
    pred[runtime.trigger] = activated(pred["RTHCUTEN"], pred["RQVCUTEN"], 1)
    return pred


def replay(model, inputs: list, out_dir, pairing: str = "history", tile=(16, 16),
           options: dict | None = None) -> dict | None:
    """Replay files; returns the report (rank 0) or None (other ranks)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    paths = sorted({p for pattern in inputs for p in (glob.glob(pattern) or [pattern])})
    comm = _comm()
    rank = comm.Get_rank() if comm else 0
    out_dir = Path(out_dir)
    runtime, counts = None, {}
    parts, regimes, file_names = [], {}, {}
    for file_id, path in enumerate(paths):
        file_names[file_id] = Path(path).name
        written = []
        n_times = open_wrfout(path, outputs=False).sizes["Time"]
        for t in range(n_times):
            frame = open_wrfout(path, runtime.contract if runtime else None,
                                extras=SPECIES + ("TIMEC_KF", "ITIMESTEP") + tuple(REGIME_FIELDS), chunks=None,
                                time=t).isel(Time=0).load()
            if runtime is None:
                runtime = Runtime.from_options({**(options or {}), "model": str(model),
                                                "n_levels": frame.sizes["bottom_top"]})
            arrays, c = run_frame(runtime, frame, pairing, tuple(tile), comm)
            if rank != 0:
                continue
            counts = {k: counts.get(k, 0) + v for k, v in c.items()}
            written.append(to_dataset(arrays, frame, runtime))
            nz = frame.sizes["bottom_top"]
            cols = extract(frame, runtime.contract.with_levels(nz), stepcu(frame.attrs), pairing)
            truth = {k: (v[:, 0] if v.shape[1] == 1 else v) for k, v in cols.arrays.items()}
            n = len(cols.i)
            cudt = float(np.asarray(frame.attrs.get("CUDT", 0.0)).ravel()[0])
            parts.append(ev._part(truth, predictions(arrays, runtime, cols.i, cols.j, nz),
                                  cols.column_class, cols.family, np.full(n, frame.attrs["DX"]),
                                  np.full(n, frame.attrs["DT"]), np.full(n, cudt))
                         | {"file_id": np.full(n, file_id)})
            regimes[file_id] = ev.family_names(regime_names(open_attrs(path)))
        if rank == 0 and written:
            out_dir.mkdir(parents=True, exist_ok=True)
            xr.concat(written, "Time").to_netcdf(out_dir / Path(path).name)
    if rank != 0:
        return None
    if not parts:
        raise ValueError(f"no input files matched {inputs}")
    name = Path(model).name
    results = {name: ev.score(parts, runtime.trigger, regimes, file_names)}
    results[name]["runtime_counts"] = counts
    results[name]["out_of_distribution"] = {
        "columns": counts.get("evaluated", 0), "flagged": counts.get("ood", 0),
        "fraction_of_columns": counts.get("ood", 0) / max(counts.get("evaluated", 0), 1),
        "fraction_of_convecting": (counts.get("ood", 0) / counts["triggered"]
                                   if counts.get("triggered") else None)}
    column_class = np.concatenate([p["class"] for p in parts])
    results[name]["columns_scored"] = {c: int(np.sum(column_class == k)) for k, c in enumerate(SAMPLE_CLASSES)}
    rain = {side: np.concatenate([p[side]["PRATEC"] for p in parts]) * 3600.0 for side in ("truth", "pred")}
    report = write_report(out_dir, results, {name: ev.profiles(parts, runtime.trigger)}, {name: rain},
                          f"Replay of {len(paths)} file(s) with {model} (pairing {pairing})")
    return report
