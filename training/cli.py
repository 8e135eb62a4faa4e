"""``mlcu``: the command line of the project. Each stage of the data flow is a subcommand."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emulator.contract import ContractError
from training.wrfout import WrfoutError


def _generate(args) -> int:
    from training.summary import format_summary, summarise
    from training.synthetic.generate import GenerateConfig, generate

    cfg = GenerateConfig.from_yaml(args.config, seed=args.seed, nx=args.nx, ny=args.ny,
                                   n_levels=args.levels, dx=args.dx,
                                   run_minutes=args.run_minutes)
    files = generate(cfg, args.out, progress=not args.quiet)
    print(f"wrote {len(files)} wrfout files under {args.out}")
    summary = summarise(files)
    print(format_summary(summary))
    (Path(args.out) / "summary.json").write_text(json.dumps(
        {f"{dx:g}": s for dx, s in summary.items()}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcu", description="Machine-learned cumulus scheme for WRF: data, model, runtime.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate", help="write synthetic WRF history files (the built-in default data)",
        description="Simulate small WRF-like runs for several grid spacings, with convective "
                    "labels from the project's reference scheme, and write them as wrfout files "
                    "(one folder per DX), then print a summary.")
    gen.add_argument("--config", type=Path, help="YAML settings (default: built-in defaults)")
    gen.add_argument("--out", type=Path, required=True, help="output folder")
    gen.add_argument("--seed", type=int, help="random seed (output is deterministic given it)")
    gen.add_argument("--nx", type=int, help="mass points west-east")
    gen.add_argument("--ny", type=int, help="mass points south-north")
    gen.add_argument("--levels", type=int, help="mass levels (bottom_top)")
    gen.add_argument("--dx", type=float, nargs="+", help="grid spacings in metres, one run each")
    gen.add_argument("--run-minutes", type=float, help="simulated minutes per run")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    gen.set_defaults(func=_generate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WrfoutError, ContractError, ValueError, FileNotFoundError) as err:
        print(f"mlcu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
