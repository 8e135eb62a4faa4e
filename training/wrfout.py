"""The one reader of WRF netCDF history files (wrfout, and files in the same layout).

``open_wrfout`` opens a file lazily with xarray (dask chunks of one time), checks every field
the variable contract needs (presence, WRF dimensions and staggering, units) and returns the
contract's variables, derived by the recipes of ``emulator.derive``. Problems raise
``WrfoutError`` naming the file, the variable and what is wrong, and for fields missing from
history the ``iofields`` line that would add them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from emulator.contract import Contract, Variable, default_contract
from emulator.derive import FIELD, GLOBAL_ATTRIBUTE, GRID_DIMS, RECIPES, Source

_DIMENSIONLESS = {"", "1", "-", "dimensionless"}


class WrfoutError(ValueError):
    """A wrfout file that cannot be used: names the file, the variable and the problem."""

    def __init__(self, path, variable: str | None, problem: str, unreadable: bool = False):
        self.path, self.variable, self.problem = str(path), variable, problem
        self.unreadable = unreadable  # the file itself is absent, corrupt or truncated
        where = f"{self.path}: variable {variable}" if variable else self.path
        super().__init__(f"{where}: {problem}")


def _iofields_hint(name: str, contract: Contract) -> str:
    try:
        registry = contract.variable(name).iofields
    except KeyError:
        registry = ""
    if not registry:
        return ""
    return (f"; it is not in WRF's default history: add it with the line '+:h:0:{registry}' in "
            f"the file named by iofields_filename in &time_control")


def _check_source(ds: xr.Dataset, path, src: Source, contract: Contract) -> None:
    if src.name not in ds.variables:
        raise WrfoutError(path, src.name, "missing" + _iofields_hint(src.name, contract))
    da = ds[src.name]
    expected = GRID_DIMS[src.grid]
    if da.dims != expected:
        raise WrfoutError(path, src.name, f"has dimensions {da.dims}, expected {expected}")
    units = str(da.attrs.get("units", "")).strip()
    if (units.lower() not in _DIMENSIONLESS and src.units.lower() not in _DIMENSIONLESS
            and units != src.units):
        raise WrfoutError(path, src.name, f"has units '{units}', expected '{src.units}'")


def _check_grid(ds: xr.Dataset, path) -> int:
    for dim in ("Time", "bottom_top", "bottom_top_stag", "south_north", "west_east"):
        if dim not in ds.sizes:
            raise WrfoutError(path, None, f"has no '{dim}' dimension: not a WRF history file")
    if ds.sizes["bottom_top_stag"] != ds.sizes["bottom_top"] + 1:
        raise WrfoutError(path, None, f"bottom_top_stag = {ds.sizes['bottom_top_stag']} is not "
                                      f"bottom_top + 1 = {ds.sizes['bottom_top'] + 1}")
    for stag, dim in (("west_east_stag", "west_east"), ("south_north_stag", "south_north")):
        if stag in ds.sizes and ds.sizes[stag] != ds.sizes[dim] + 1:
            raise WrfoutError(path, None, f"{stag} = {ds.sizes[stag]} is not {dim} + 1")
    if "Times" not in ds.variables:
        raise WrfoutError(path, "Times", "missing: not a WRF history file")
    return int(ds.sizes["bottom_top"])


def _global(ds: xr.Dataset, path, name: str) -> float:
    if name not in ds.attrs:
        raise WrfoutError(path, name, "global attribute missing")
    value = np.asarray(ds.attrs[name]).ravel()
    if value.size != 1 or not np.isfinite(value[0]) or value[0] <= 0:
        raise WrfoutError(path, name, f"global attribute is {ds.attrs[name]!r}, expected a positive number")
    return float(value[0])


def _build(ds: xr.Dataset, path, var: Variable, contract: Contract) -> xr.DataArray:
    if var.recipe == FIELD:
        (src,) = var.sources
        _check_source(ds, path, src, contract)
        return ds[var.name]
    recipe = RECIPES[var.recipe]
    if recipe.prefer is not None and recipe.prefer.name in ds.variables:
        _check_source(ds, path, recipe.prefer, contract)
        return ds[recipe.prefer.name]
    for src in recipe.sources:
        _check_source(ds, path, src, contract)
    return recipe.build(ds)


def _times(ds: xr.Dataset) -> np.ndarray:
    raw = ds["Times"].values
    if raw.dtype.kind == "S" and raw.ndim == 2:  # undecoded characters
        raw = np.array([b"".join(row) for row in raw])
    text = [t.decode() if isinstance(t, bytes) else str(t) for t in np.atleast_1d(raw)]
    return np.array([np.datetime64(t.replace("_", "T")) for t in text], dtype="datetime64[s]")


def open_wrfout(path, contract: Contract | None = None, *, outputs: bool = True,
                extras: tuple[str, ...] = (), chunks: dict | None = {"Time": 1},
                time: int | None = None) -> xr.Dataset:
    """Open one WRF history file and return the contract's variables (lazily).

    Variables are dask arrays chunked per time by default; ``chunks=None`` keeps xarray's own
    lazy indexing instead (inside a dask task, where nested dask graphs must be avoided).
    The result has WRF's dimension names, a ``Time`` coordinate decoded from ``Times``, the
    file's DX and DT as attributes, and the contract bound to the file's level count in
    ``attrs['contract']`` (JSON). ``outputs=False`` reads the model inputs only (files without
    cumulus fields); ``extras`` names raw fields passed through when the file has them;
    ``time`` selects one history time (index) before anything is derived, so only that slice
    is ever read.
    """
    contract = contract or default_contract()
    path = Path(path)
    if not path.is_file():
        raise WrfoutError(path, None, "no such file", unreadable=True)
    try:
        ds = xr.open_dataset(path, engine="netcdf4", decode_times=False, decode_coords=False,
                             chunks=chunks)
    except Exception as err:  # netCDF/HDF5 raise assorted types for corrupt files
        raise WrfoutError(path, None, f"cannot be read as netCDF ({type(err).__name__}: {err})",
                          unreadable=True) from None
    n_levels = _check_grid(ds, path)
    bound = contract.with_levels(n_levels)
    wanted = bound.inputs + (bound.outputs if outputs else ())
    if time is not None:
        # One time slice: read every field the recipes use once, up front, rather than
        # lazily again in each recipe that needs it.
        names = {src.name for var in wanted for src in var.sources} | set(extras) | {"Times"}
        names |= {RECIPES[v.recipe].prefer.name for v in wanted
                  if v.recipe in RECIPES and RECIPES[v.recipe].prefer is not None}
        try:
            ds = ds[sorted(n for n in names if n in ds.variables)].isel(Time=[time]).load()
        except (OSError, RuntimeError) as err:  # HDF5 reports corrupt data only when read
            raise WrfoutError(path, None, f"data of time {time} cannot be read ({err})",
                              unreadable=True) from None
    data, attrs = {}, {"source": str(path), "contract": bound.to_json()}
    for var in wanted:
        if var.recipe == GLOBAL_ATTRIBUTE:
            attrs[var.name] = _global(ds, path, var.name)
            continue
        data[var.name] = _build(ds, path, var, bound)
        data[var.name].attrs = {"units": var.units, "description": var.description}
    for name in extras:
        if name in ds.variables:
            data[name] = ds[name]
    attrs["DT"] = _global(ds, path, "DT")
    attrs.update({k: ds.attrs[k] for k in ("CUDT", "STEPCU", "CU_PHYSICS") if k in ds.attrs})
    out = xr.Dataset(data, attrs=attrs)
    return out.assign_coords(Time=("Time", _times(ds)))
