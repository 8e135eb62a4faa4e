import json

import pytest

from emulator.contract import Contract, ContractError, Variable, default_contract
from emulator.derive import RECIPES


def test_json_round_trip_is_lossless():
    contract = default_contract().with_levels(44)
    again = Contract.from_json(contract.to_json())
    assert again == contract
    assert again.to_json() == contract.to_json()
    assert again.n_levels == 44


def test_json_carries_units_levels_and_derivation():
    d = json.loads(default_contract().to_json())
    t = next(v for v in d["inputs"] if v["name"] == "T_PHY")
    assert t["units"] == "K" and t["level"] == "mass"
    assert t["sources"] == ["T", "P", "PB"] and "(T + 300)" in t["formula"]
    w0 = next(v for v in d["inputs"] if v["name"] == "W0AVG")
    assert w0["iofields"] == "w0avg"


def test_default_inputs_cover_what_the_scheme_reads():
    names = default_contract().input_names
    for required in ["T_PHY", "QVAPOR", "P_HYD", "W", "W0AVG", "DZ8W", "RHO", "PI_PHY",
                     "U_PHY", "V_PHY", "HFX", "UST", "PBLH", "ZOL", "XLAND", "DX", "DT"]:
        assert required in names


def test_default_outputs_cover_everything_wrf_takes():
    names = default_contract().output_names
    assert names[0] == "TRIGGER"
    for required in ["RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN",
                     "RUCUTEN", "RVCUTEN", "PRATEC", "NCA", "CUTOP", "CUBOT", "CLDFRA_DP",
                     "CLDFRA_SH", "QC_CU", "QI_CU"]:
        assert required in names


def test_level_count_comes_from_the_data():
    contract = default_contract()
    assert contract.n_levels is None
    bound = contract.with_levels(35)
    assert bound.variable("W").size(35) == 36
    assert bound.variable("RTHCUTEN").size(35) == 35
    assert bound.variable("PRATEC").size(35) == 1
    with pytest.raises(ContractError, match="35 mass levels, the data have 44"):
        bound.with_levels(44)


def test_bad_contracts_are_refused():
    d = json.loads(default_contract().to_json())
    with pytest.raises(ContractError, match="version"):
        Contract.from_dict(dict(d, version=99))
    with pytest.raises(ContractError, match="not a variable contract"):
        Contract.from_dict(dict(d, format="other"))
    d["inputs"][0]["recipe"] = "no_such_recipe"
    with pytest.raises(ContractError, match="unknown recipe"):
        Contract.from_dict(d)
    with pytest.raises(ContractError, match="not valid JSON"):
        Contract.from_json("{")
    with pytest.raises(ContractError, match="level kind"):
        Variable("X", "1", "column", "field", "")
    v = default_contract().inputs[0]
    with pytest.raises(ContractError, match="listed twice"):
        Contract((v, v), ())


def test_every_recipe_names_its_sources():
    for recipe in RECIPES.values():
        assert recipe.sources and recipe.formula
