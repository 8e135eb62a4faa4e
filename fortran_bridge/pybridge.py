"""Python access to the Fortran bridge through its f2py extension (built by ``make bridge``).

``FortranScheme`` runs ``module_cu_mlcu`` from Python with the calling convention of
``emulator.runtime.Runtime.run_tile``, so tests and benchmarks can send the same arrays both
ways: Python -> f2py -> Fortran (cu_mlcu_driver) -> C shim -> Python runtime, in place.

    from pybridge import FortranScheme        # with fortran_bridge/ on sys.path
    scheme = FortranScheme("model.onnx", n_levels=44)
    scheme.run_tile(arrays, bounds, dt, dx, cudt, stepcu)
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sysconfig
from pathlib import Path

BUILD = Path(__file__).resolve().parent / "build"
EXTENSION = "mlcu_bridge_ext"
# Fortran argument names of cu_mlcu_driver that are not the runtime's (Registry) names.
ALIASES = {"qv": "QVAPOR", "qc": "QCLOUD", "qr": "QRAIN", "qi": "QICE", "qs": "QSNOW"}
N_SCALARS = 22  # the 18 dimension arguments, dt, dx, cudt, stepcu


class BridgeError(RuntimeError):
    """An error reported by the Fortran module (the message mlcu_fatal would print)."""


@functools.lru_cache(maxsize=None)
def load_extension(build: Path = BUILD):
    """The extension, loaded once per process (the runtime behind it is per process too)."""
    path = build / (EXTENSION + sysconfig.get_config_var("EXT_SUFFIX"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build it with `make bridge`")
    spec = importlib.util.spec_from_file_location(EXTENSION, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(status: int, message) -> None:
    if status != 0:
        text = message.decode() if isinstance(message, bytes) else str(message)
        raise BridgeError(text.strip())


class FortranScheme:
    """The Fortran module driven from Python; one per process, like the runtime it embeds."""

    def __init__(self, model, n_levels: int, threads: int = 1, device: str = "auto",
                 nan_policy: str = "fatal", ood_policy: str = "predict", kts: int = 1):
        self.ext = load_extension()
        # The array arguments, in order, read from the extension's own signature.
        signature = re.search(r"mlcu_driver\(([^)]*)\)", self.ext.mlcu_driver.__doc__).group(1)
        self.array_names = [ALIASES.get(a, a.upper()) for a in signature.split(",")[N_SCALARS:]]
        _check(*self.ext.mlcu_init(str(model), threads, device, nan_policy, ood_policy,
                                   kts, kts + n_levels - 1))

    def run_tile(self, arrays: dict, bounds, dt: float, dx: float, cudt: float, stepcu: int) -> None:
        """cu_mlcu_driver on one tile; arrays must be float32 (FALLBACK int32) in Fortran order
        over the memory bounds; they are updated in place."""
        _check(*self.ext.mlcu_driver(*bounds, dt, dx, cudt, stepcu,
                                     *[arrays[name] for name in self.array_names]))

    def counter(self, name: str) -> int:
        """Sum over this process's calls of a runtime counter ("evaluated", "nan", ...)."""
        return int(self.ext.mlcu_counter(name))

    def counters(self) -> dict[str, int]:
        """Every runtime counter summed over this process's calls, read back from the line
        the Fortran module prints (cu_mlcu_counters: "name=value ...")."""
        text = self.ext.mlcu_counters()
        text = (text.decode() if isinstance(text, bytes) else str(text)).strip()
        return {k: int(v) for k, v in (item.split("=", 1) for item in text.split())}

    def finalize(self) -> None:
        _check(*self.ext.mlcu_finalize())
