"""``mlcu``: the command line of the project. Each stage of the data flow is a subcommand."""

from __future__ import annotations

import argparse
import json
import os
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


def _prepare(args) -> int:
    from training.prepare import PrepareConfig, format_report, prepare

    cfg = PrepareConfig.load(args.config, args.set, input=args.input, out=args.out,
                             scheduler=args.scheduler, workers=args.workers,
                             fail_fast=args.fail_fast, overwrite=args.overwrite)
    report = prepare(cfg)
    print(format_report(report))
    print(f"store: {cfg.out} (report.json, stats.json, store.json)")
    return 0


def _train(args) -> int:
    import dataclasses

    import yaml

    from training.train import TrainConfig, train

    cfg = TrainConfig.load(args.config, args.set)
    text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=True)
    last = train(cfg, args.store, args.out, text, init_from=args.init_from, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":
        print(f"run: {args.out} (best.pt, checkpoint.pt, metrics.csv); last epoch: "
              + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)))
    return 0


def _evaluate(args) -> int:
    from training.evaluate import evaluate

    report = evaluate(args.model, args.store, args.split, args.out)
    for name, res in report["results"].items():
        reg = res["regression"]
        r2 = {v: reg[v]["triggered"]["pooled"]["r2"] for v in ("RTHCUTEN", "RQVCUTEN", "PRATEC")}
        f1 = res["trigger"]["f1"]
        print(f"{name}: trigger F1 {f1 if f1 is None else round(f1, 4)}; pooled R2 on triggered "
              "columns " + ", ".join(f"{v} {x if x is None else round(x, 4)}" for v, x in r2.items()))
    print(f"report: {args.out}/report.md")
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

    prep = sub.add_parser(
        "prepare", help="turn wrfout files into a sharded zarr training store",
        description="Read WRF history files (globs or a manifest listing them) lazily with "
                    "xarray and dask, keep the columns the cumulus scheme freshly computed, "
                    "split them by file or time block, and write zarr shards with provenance "
                    "and normalisation statistics. A killed job resumes where it stopped.")
    prep.add_argument("--input", nargs="+", metavar="GLOB",
                      help="wrfout globs, or @FILE / FILE.txt listing one path per line")
    prep.add_argument("--out", help="store folder")
    prep.add_argument("--config", type=Path, help="YAML settings (see configs/prepare.yaml)")
    prep.add_argument("--scheduler", help="'local' (default: a local dask cluster), "
                                          "'synchronous', or a dask scheduler address")
    prep.add_argument("--workers", type=int, help="local worker processes (default: all cores)")
    prep.add_argument("--fail-fast", action="store_true",
                      help="stop at the first unreadable file or failed unit instead of skipping it")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing store")
    prep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override any setting, e.g. --set split.method=time_blocks")
    prep.set_defaults(func=_prepare)

    tr = sub.add_parser(
        "train", help="train the Bi-LSTM emulator on a training store",
        description="Train (or resume, when RUN_DIR holds a run with the same settings) the "
                    "emulator on the train split of a store, validating every epoch. Runs "
                    "data-parallel under torchrun.")
    tr.add_argument("--config", type=Path, help="YAML settings (configs/train.yaml, "
                                                "configs/seed-baseline.yaml)")
    tr.add_argument("--store", required=True, help="training store (mlcu prepare)")
    tr.add_argument("--out", required=True, help="run folder")
    tr.add_argument("--init-from", help="warm start from the best weights of this run folder")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any setting, e.g. --set epochs=5 --set model.hidden=32")
    tr.add_argument("--quiet", action="store_true", help="no progress output")
    tr.set_defaults(func=_train)

    ev = sub.add_parser(
        "evaluate", help="score trained models on a store split and write a report",
        description="Predict a split of a training store with one or more trained models and "
                    "write one report comparing them (Markdown, JSON, PNG plots).")
    ev.add_argument("--model", nargs="+", required=True, metavar="RUN_DIR",
                    help="run folders of mlcu train; several are compared side by side")
    ev.add_argument("--store", required=True, help="training store")
    ev.add_argument("--split", default="validation", help="split to score (default validation)")
    ev.add_argument("--out", required=True, help="report folder")
    ev.set_defaults(func=_evaluate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WrfoutError, ContractError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"mlcu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
