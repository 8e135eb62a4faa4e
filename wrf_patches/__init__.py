"""What turns the mlcu bridge into a ``cu_physics`` option of WRF 4.x.

``python -m wrf_patches apply|revert|check WRF_DIR`` places our own code in a WRF source tree
by anchors (WRF identifiers and short patterns), takes it out again byte for byte, or reports
every anchor without changing anything; ``python -m wrf_patches iofields`` prints the history
line that adds the cumulus fields of the variable contract to wrfout. See README.md.
"""

from wrf_patches.engine import PatchError
from wrf_patches.wrf import DEFAULT_CU_ID, apply, check, revert

__all__ = ["PatchError", "DEFAULT_CU_ID", "apply", "check", "revert"]
