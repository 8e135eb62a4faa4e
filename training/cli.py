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


def _augment(args) -> int:
    from training.augment import AugmentConfig, augment

    cfg = AugmentConfig.load(args.config, args.set, input=args.input, out=args.out,
                             scheduler=args.scheduler, workers=args.workers)
    files = augment(cfg, args.mskf)
    print(f"{len(files)} files labelled by MSKF under {cfg.out}")
    return 0


def _sensitivity(args) -> int:
    import glob

    from training.mskf import SENSITIVITY_OUTPUTS, sensitivity

    files = sorted(f for pattern in args.input for f in glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {args.input}")
    result = sensitivity(files, args.eps, args.seed, args.mskf)
    for eps, scores in result.items():
        print(f"eps {eps}: trigger F1 {scores['trigger']['f1']:.4f}; R2 " + ", ".join(
            f"{k} {scores[k]['r2']:.4f}" for k in SENSITIVITY_OUTPUTS))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
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


def _headline(name: str, res: dict) -> str:
    """One line of a model's main scores from an evaluation report."""
    r2 = {v: res["regression"][v]["triggered"]["pooled"]["r2"] for v in ("RTHCUTEN", "RQVCUTEN", "PRATEC")}
    f1 = res["trigger"]["f1"]
    return (f"{name}: trigger F1 {f1 if f1 is None else round(f1, 4)}; pooled R2 on triggered "
            "columns " + ", ".join(f"{v} {x if x is None else round(x, 4)}" for v, x in r2.items()))


def _evaluate(args) -> int:
    from training.evaluate import evaluate

    report = evaluate(args.model, args.store, args.split, args.out, raw=args.raw)
    for name, res in report["results"].items():
        print(_headline(name, res))
    print(f"report: {args.out}/report.md")
    return 0


def _export(args) -> int:
    from training.export import PARITY_TOLERANCE, export

    errors = export(args.run, args.out, store=args.store, tolerance=args.tolerance or PARITY_TOLERANCE)
    worst = max(errors, key=lambda k: errors[k]["max_rel"])
    print(f"parity with PyTorch on held-out columns: worst output {worst}, max abs "
          f"{errors[worst]['max_abs']:.3g}, max rel {errors[worst]['max_rel']:.3g}")
    print(f"model: {args.out}")
    return 0


def _replay(args) -> int:
    from training.replay import replay

    options = {"threads": args.threads, "device": args.device, "nan_policy": args.nan_policy,
               "ood_policy": args.ood_policy}
    report = replay(args.model, args.input, args.out, args.pairing, tuple(args.tile), options)
    if report is not None:
        for name, res in report["results"].items():
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in res["runtime_counts"].items()))
            print(_headline(name, res))
        print(f"outputs and report: {args.out}")
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

    au = sub.add_parser(
        "augment", help="new training columns: perturbed states labelled by WRF's own MSKF",
        description="Perturb the columns of WRF history (or oracle) files and compute MSKF's "
                    "outputs for them with the scheme itself (the mskf_columns program, built "
                    "from a WRF source tree by 'make mskf-columns WRF_SRC=...'), writing "
                    "wrfout-like files for 'mlcu prepare' with pairing single_call. Files "
                    "already written are kept, so a killed job is rerun as it was.")
    au.add_argument("--input", nargs="+", metavar="GLOB", help="wrfout files to perturb (training files only)")
    au.add_argument("--out", help="output folder")
    au.add_argument("--config", type=Path, help="YAML settings (see configs/augment.yaml)")
    au.add_argument("--mskf", help="the mskf_columns program (default: $MLCU_MSKF_COLUMNS, "
                                   "else training/mskf_columns/build/mskf_columns)")
    au.add_argument("--scheduler", help="'local' (default: a local dask cluster), "
                                        "'synchronous', or a dask scheduler address")
    au.add_argument("--workers", type=int, help="local worker processes (default: all cores)")
    au.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any setting, e.g. --set copies=8")
    au.set_defaults(func=_augment)

    se = sub.add_parser(
        "sensitivity", help="how far WRF's own MSKF moves when its inputs move by round-off",
        description="Run MSKF (the mskf_columns program) on every column of single-call files "
                    "as they are and with each temperature moved by a relative EPS, and score "
                    "the moved outputs against the unmoved ones as 'mlcu evaluate' scores a "
                    "model: the ceiling of any emulator's scores on those columns.")
    se.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                    help="single-call files (the MSKF oracle, or 'mlcu augment' output)")
    se.add_argument("--eps", nargs="+", type=float, default=[1e-6, 1e-5],
                    help="relative perturbations of T_PHY (default: 1e-6 1e-5, about 0.0003 "
                         "and 0.003 K)")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--mskf", help="the mskf_columns program (default: $MLCU_MSKF_COLUMNS, "
                                   "else training/mskf_columns/build/mskf_columns)")
    se.add_argument("--out", help="write the scores as JSON here")
    se.set_defaults(func=_sensitivity)

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
        description="Run a split of a training store through the runtime with one or more "
                    "trained models (what WRF receives: the kernel's trigger, the constraints, "
                    "MSKF's semantics) and write one report comparing them (Markdown, JSON, PNG "
                    "plots).")
    ev.add_argument("--model", nargs="+", required=True, metavar="RUN_DIR_OR_ONNX",
                    help="run folders of mlcu train or exported .onnx models; several are "
                         "compared side by side")
    ev.add_argument("--store", required=True, help="training store")
    ev.add_argument("--split", default="validation", help="split to score (default validation)")
    ev.add_argument("--raw", action="store_true",
                    help="score the unconstrained network (its outputs gated by its trigger) "
                         "instead of what the runtime writes")
    ev.add_argument("--out", required=True, help="report folder")
    ev.set_defaults(func=_evaluate)

    ex = sub.add_parser(
        "export", help="export a trained run to one self-describing ONNX model",
        description="Write the run's best weights as ONNX with physical-unit inputs and "
                    "outputs, the variable contract, statistics and provenance in its metadata, "
                    "after checking it against PyTorch on held-out columns (nothing is written "
                    "if the check fails).")
    ex.add_argument("--run", required=True, help="run folder of mlcu train")
    ex.add_argument("--out", required=True, help="ONNX file to write")
    ex.add_argument("--store", help="store for the parity check (default: the run's training store)")
    ex.add_argument("--tolerance", type=float, help="max relative error per output (default 1e-4)")
    ex.set_defaults(func=_export)

    rp = sub.add_parser(
        "replay", help="run the WRF runtime over wrfout files tile by tile and score it",
        description="Run the inference runtime over WRF history (or oracle) files exactly as "
                    "WRF calls it, tile by tile with MSKF's semantics, write the outputs as "
                    "netCDF and compare them with the files' own cumulus fields. Runs under "
                    "mpirun (mpi4py), each rank taking a share of the tiles.")
    rp.add_argument("--model", required=True, help="exported model (.onnx)")
    rp.add_argument("--input", nargs="+", required=True, metavar="GLOB", help="wrfout files")
    rp.add_argument("--out", required=True, help="output folder (netCDF per file, report)")
    rp.add_argument("--pairing", default="history", choices=("history", "single_call"),
                    help="history: WRF history files (held columns keep the file's state); "
                         "single_call: one call with every column evaluated (oracle files)")
    rp.add_argument("--tile", type=int, nargs=2, default=(16, 16), metavar=("NI", "NJ"),
                    help="tile size in columns (default 16 16)")
    rp.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per process")
    rp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    rp.add_argument("--nan-policy", default="fatal", choices=("fatal", "zero"))
    rp.add_argument("--ood-policy", default="predict", choices=("predict", "zero", "fallback"))
    rp.set_defaults(func=_replay)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WrfoutError, ContractError, ValueError, FileNotFoundError, RuntimeError) as err:
        # RuntimeError covers the export's parity failure and the runtime's errors.
        print(f"mlcu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
