"""Command line: python -m wrf_patches apply|revert|check WRF_DIR, python -m wrf_patches iofields."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wrf_patches import wrf
from wrf_patches.engine import PatchError


def iofields_line(contract_file: str | None = None, extra: list[str] | None = None) -> str:
    """The iofields line adding to wrfout (stream h, 0) every contract variable that is not in
    WRF's default history, plus ``extra`` Registry names."""
    from emulator.contract import Contract, default_contract

    contract = (Contract.from_json(Path(contract_file).read_text()) if contract_file
                else default_contract())
    names: list[str] = []
    for var in contract.inputs + contract.outputs:
        if var.iofields and var.iofields not in names:
            names.append(var.iofields)
    for name in extra or []:
        for item in name.split(","):
            item = item.strip().lower()
            if item and item not in names:
                names.append(item)
    return "+:h:0:" + ",".join(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wrf_patches",
        description="Add the mlcu emulator to a WRF 4.x source tree as a cumulus option.")
    sub = parser.add_subparsers(dest="command", required=True)

    def tree_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("wrf_dir", type=Path, help="the WRF source tree (the folder of ./compile)")
        p.add_argument("--force", action="store_true",
                       help="apply/check: try a WRF version not in the supported list; "
                            "revert: remove an added file even if it was edited")
        return p

    for name, help_text in (("apply", "place the patches (idempotent)"),
                            ("check", "dry run: report every anchor found or missing")):
        p = tree_command(name, help_text)
        p.add_argument("--cu-id", type=int, default=None,
                       help=f"cu_physics value of the new option (default {wrf.DEFAULT_CU_ID}, "
                            "or the one applied before)")
        p.add_argument("--bridge-dir", type=Path, default=None,
                       help="build folder of the mlcu Fortran bridge (default: "
                            "fortran_bridge/build of this repository); its wrf_flags.txt "
                            "gives the flags")
        p.add_argument("--include-flags", default=None,
                       help="compile flags for the bridge module, e.g. '-I/path/build'")
        p.add_argument("--link-flags", default=None,
                       help="link flags, e.g. '-L/path/build -lmlcu_bridge -lpython3.11'")
    tree_command("revert", "remove the patches, restoring the original files")

    p = sub.add_parser("iofields", help="print the iofields line for retraining data",
                       description="Print the iofields line that adds the cumulus fields of "
                                   "the variable contract to wrfout (iofields_filename in "
                                   "&time_control).")
    p.add_argument("--contract", default=None,
                   help="a contract JSON file (default: the contract of this repository)")
    p.add_argument("--extra", action="append", default=[],
                   help="more Registry names to add, e.g. timec_kf,raincv")

    args = parser.parse_args(argv)
    try:
        if args.command == "iofields":
            print(iofields_line(args.contract, args.extra))
            return 0
        if args.command == "revert":
            print(wrf.revert(args.wrf_dir, force=args.force))
            return 0
        flags = None
        if args.wrf_dir.is_dir():
            flags = wrf.resolve_flags(args.wrf_dir, args.bridge_dir, args.include_flags,
                                      args.link_flags, run_make=args.command == "apply")
        if args.command == "check":
            report = wrf.check(args.wrf_dir, args.cu_id, flags, force=args.force)
            print(report)
            return 0 if report.ok else 1
        cu_id = args.cu_id
        if cu_id is None:
            cu_id = int(wrf.read_manifest(args.wrf_dir).get("cu_id", wrf.DEFAULT_CU_ID)) \
                if args.wrf_dir.is_dir() else wrf.DEFAULT_CU_ID
        print(wrf.apply(args.wrf_dir, cu_id, flags, force=args.force))
        return 0
    except PatchError as err:
        print(f"wrf_patches: {args.command} refused: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
