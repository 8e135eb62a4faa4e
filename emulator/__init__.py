"""Machine-learned cumulus emulator: variable contract, physical derivations, model and runtime."""

from emulator.contract import Contract, Variable, default_contract

__all__ = ["Contract", "Variable", "default_contract"]
