"""The variable contract: every model input and output, defined once.

For each variable: its WRF name, SI units, level kind and how it is derived from wrfout fields
(a recipe of ``emulator.derive``). The contract serialises to JSON so that it travels inside the
exported model; training, the runtime, the Fortran bridge and the tests all read it from there.

The number of vertical levels is not a constant: a contract is bound to the level count of the
data it is used with (``Contract.with_levels``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from emulator.derive import FIELD, GLOBAL_ATTRIBUTE, RECIPES, Source

FORMAT = "mlcu-contract"
FORMAT_VERSION = 1

# Level kinds: per mass level, per full (w, staggered) level, one value per column, or one
# value per domain (a global attribute of the file).
LEVEL_KINDS = ("mass", "w", "surface", "scalar")


class ContractError(ValueError):
    """A contract that is malformed or does not fit the data or model it is used with."""


@dataclass(frozen=True)
class Variable:
    """One model input or output.

    ``iofields`` is the Registry name to list in an iofields file when the field is not in
    WRF's default history stream (empty when it is there by default).
    """

    name: str
    units: str
    level: str
    recipe: str
    description: str
    iofields: str = ""

    def __post_init__(self):
        if self.level not in LEVEL_KINDS:
            raise ContractError(f"{self.name}: level kind {self.level!r} not one of {LEVEL_KINDS}")
        if self.recipe not in RECIPES and self.recipe not in (FIELD, GLOBAL_ATTRIBUTE):
            raise ContractError(f"{self.name}: unknown recipe {self.recipe!r}")
        if (self.recipe == GLOBAL_ATTRIBUTE) != (self.level == "scalar"):
            raise ContractError(f"{self.name}: only scalar variables come from global attributes")

    def size(self, n_levels: int) -> int:
        """Values per column: n_levels on mass levels, n_levels + 1 on w levels, else 1."""
        return {"mass": n_levels, "w": n_levels + 1}.get(self.level, 1)

    @property
    def sources(self) -> tuple[Source, ...]:
        """The wrfout fields this variable is built from (required ones)."""
        if self.recipe == FIELD:
            grid = "surface" if self.level == "surface" else self.level
            return (Source(self.name, grid, self.units),)
        if self.recipe == GLOBAL_ATTRIBUTE:
            return ()
        return RECIPES[self.recipe].sources

    @property
    def formula(self) -> str:
        if self.recipe == FIELD:
            return f"wrfout field {self.name}"
        if self.recipe == GLOBAL_ATTRIBUTE:
            return f"global attribute {self.name} of the file"
        return RECIPES[self.recipe].formula


@dataclass(frozen=True)
class Contract:
    inputs: tuple[Variable, ...]
    outputs: tuple[Variable, ...]
    n_levels: int | None = None
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        names = [v.name for v in self.inputs] + [v.name for v in self.outputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ContractError(f"variables listed twice in the contract: {dupes}")
        if self.n_levels is not None and (not isinstance(self.n_levels, int) or self.n_levels < 2):
            raise ContractError(f"level count must be an integer >= 2, got {self.n_levels!r}")

    def with_levels(self, n_levels: int) -> "Contract":
        """This contract bound to data with ``n_levels`` mass levels."""
        if self.n_levels is not None and self.n_levels != n_levels:
            raise ContractError(
                f"the contract is for {self.n_levels} mass levels, the data have {n_levels}"
            )
        return replace(self, n_levels=int(n_levels))

    def variable(self, name: str) -> Variable:
        for v in self.inputs + self.outputs:
            if v.name == name:
                return v
        raise KeyError(f"{name} is not in the contract")

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def to_dict(self) -> dict:
        def describe(v: Variable) -> dict:
            d = asdict(v)
            d["formula"] = v.formula
            d["sources"] = [s.name for s in v.sources]
            return d

        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "n_levels": self.n_levels,
            "inputs": [describe(v) for v in self.inputs],
            "outputs": [describe(v) for v in self.outputs],
            "metadata": self.metadata,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Contract":
        if d.get("format") != FORMAT:
            raise ContractError(f"not a variable contract (format {d.get('format')!r})")
        if d.get("version") != FORMAT_VERSION:
            raise ContractError(
                f"contract format version {d.get('version')} is not supported "
                f"(this code reads version {FORMAT_VERSION})"
            )
        fields = ("name", "units", "level", "recipe", "description", "iofields")

        def load(items):
            return tuple(Variable(**{k: item[k] for k in fields if k in item}) for item in items)

        return cls(load(d["inputs"]), load(d["outputs"]), d.get("n_levels"), d.get("metadata", {}))

    @classmethod
    def from_json(cls, text: str) -> "Contract":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ContractError(f"contract is not valid JSON: {err}") from None
        return cls.from_dict(d)


def _tendency(name, units, what, iofields):
    return Variable(name, units, "mass", FIELD,
                    f"{what} tendency of the cumulus scheme, per second, not coupled with mu",
                    iofields)


def default_contract() -> Contract:
    """The default inputs (what MSKF reads, DX and DT among them) and outputs (all WRF takes
    from MSKF)."""
    inputs = (
        Variable("U_PHY", "m s-1", "mass", "destagger_x", "x-wind at mass points"),
        Variable("V_PHY", "m s-1", "mass", "destagger_y", "y-wind at mass points"),
        Variable("W", "m s-1", "w", FIELD, "vertical velocity on full levels"),
        Variable("W0AVG", "m s-1", "mass", FIELD,
                 "running mean of vertical velocity (updated by the scheme every call)", "w0avg"),
        Variable("T_PHY", "K", "mass", "temperature", "temperature"),
        Variable("QVAPOR", "kg kg-1", "mass", FIELD, "water vapour mixing ratio"),
        Variable("P_HYD", "Pa", "mass", "hydrostatic_pressure",
                 "hydrostatic pressure (the scheme's Pcps)"),
        Variable("PI_PHY", "1", "mass", "exner", "Exner function of full pressure"),
        Variable("RHO", "kg m-3", "mass", "density", "moist air density"),
        Variable("DZ8W", "m", "mass", "layer_thickness", "thickness of the layer between full levels"),
        Variable("Z_AGL", "m", "mass", "height_above_ground", "height of mass levels above ground"),
        Variable("HFX", "W m-2", "surface", FIELD, "upward surface sensible heat flux"),
        Variable("UST", "m s-1", "surface", FIELD, "friction velocity"),
        Variable("PBLH", "m", "surface", FIELD, "planetary boundary layer height"),
        Variable("ZOL", "1", "surface", "obukhov_zol", "surface-layer stability z/L"),
        Variable("XLAND", "1", "surface", FIELD, "land mask: 1 land, 2 water"),
        Variable("DX", "m", "scalar", GLOBAL_ATTRIBUTE, "horizontal grid spacing (scale awareness)"),
        Variable("DT", "s", "scalar", GLOBAL_ATTRIBUTE, "model time step (NCA is whole steps)"),
    )
    outputs = (
        Variable("TRIGGER", "1", "surface", "activated", "1 where the scheme is active in the column"),
        _tendency("RTHCUTEN", "K s-1", "potential temperature", "rthcuten"),
        _tendency("RQVCUTEN", "kg kg-1 s-1", "water vapour", "rqvcuten"),
        _tendency("RQCCUTEN", "kg kg-1 s-1", "cloud water", "rqccuten"),
        _tendency("RQRCUTEN", "kg kg-1 s-1", "rain water", "rqrcuten"),
        _tendency("RQICUTEN", "kg kg-1 s-1", "cloud ice", "rqicuten"),
        _tendency("RQSCUTEN", "kg kg-1 s-1", "snow", "rqscuten"),
        _tendency("RUCUTEN", "m s-2", "x-wind (at mass points)", "rucuten"),
        _tendency("RVCUTEN", "m s-2", "y-wind (at mass points)", "rvcuten"),
        Variable("PRATEC", "mm s-1", "surface", FIELD, "convective precipitation rate", "pratec"),
        Variable("NCA", "s", "surface", FIELD,
                 "convective time scale: hold time of the column's tendencies", "nca"),
        Variable("CUTOP", "1", "surface", FIELD, "cloud-top mass level index (1-based)", "cutop"),
        Variable("CUBOT", "1", "surface", FIELD, "cloud-base mass level index (1-based)", "cubot"),
        Variable("CLDFRA_DP", "1", "mass", FIELD, "deep convective cloud fraction", "cldfra_dp"),
        Variable("CLDFRA_SH", "1", "mass", FIELD, "shallow convective cloud fraction", "cldfra_sh"),
        Variable("QC_CU", "kg kg-1", "mass", FIELD, "convective cloud water mixing ratio", "qc_cu"),
        Variable("QI_CU", "kg kg-1", "mass", FIELD, "convective cloud ice mixing ratio", "qi_cu"),
    )
    return Contract(inputs, outputs)
