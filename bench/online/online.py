"""The online benchmark: MSKF, the emulator, the emulator in hybrid mode and no cumulus
scheme, run inside WRF from an ensemble of initial states, compared in a report.
Started by bench/online/run; see README.md in this folder."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

from case import (
    CONFIG_BY_NAME,
    CONFIGS,
    MEMBER_SEED,
    START,
    UNCOUPLED_CUMULUS_FIELDS,
    Case,
    CaseError,
    Config,
    full_case,
    history_times,
    measure_perturbation,
    namelist,
    perturbed_member,
    quick_case,
    read_json,
    sha256,
    write_json,
)
from history import compare_histories, summarise
from report import write as write_report
from runs import (
    RUN_ENV,
    Outcome,
    Run,
    RunError,
    execute,
    inputs_of,
    restart_file,
    rsl_tail,
)
from wrfbuild import BuildError, WrfBuild, default_source, ensure_build, log

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_MODEL = REPO / "models" / "mlcu-mskf.onnx"
IDEAL_SUCCESS = "SUCCESS COMPLETE IDEAL INIT"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/online/run",
        description="MSKF, the emulator (cu_physics = 97), its hybrid mode and no cumulus "
                    "scheme inside WRF (em_convrad), from an ensemble of initial states.")
    ap.add_argument("--quick", action="store_true",
                    help="32 x 32 columns, 4 h, 2 members (under 30 min on 2 cores once WRF "
                         "is built)")
    ap.add_argument("--wrf-src", type=Path, default=None,
                    help="WRF source: a tarball holding WRF/ or a directory (default "
                         "../shared/wrf/WRF-4.7.1.tar.gz next to this repository, or "
                         "$MLCU_SHARED/wrf/WRF-4.7.1.tar.gz)")
    ap.add_argument("--work", type=Path, default=REPO.parent / "mlcu-online-work",
                    help="work folder: WORK/WRF (the build), WORK/cases (initial states), "
                         "WORK/runs (default: ../mlcu-online-work next to the repository)")
    ap.add_argument("--out", type=Path, default=None,
                    help="report folder (default WORK/report-<case>)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="exported emulator, .onnx (default models/mlcu-mskf.onnx)")
    ap.add_argument("--members", type=int, default=None,
                    help="initial states (default 3; 2 with --quick)")
    ap.add_argument("--hours", type=float, default=None,
                    help="simulated hours (default 12; 4 with --quick)")
    ap.add_argument("--configs", default=",".join(c.name for c in CONFIGS),
                    help="configurations to run, of " + ", ".join(c.name for c in CONFIGS))
    restart = ap.add_mutually_exclusive_group()
    restart.add_argument("--restart-check", action="store_true",
                         help="only the restart check: the emulator and MSKF runs of member "
                              "m0 and their restarts from half time, compared bit for bit")
    restart.add_argument("--no-restart-check", action="store_true",
                         help="leave the restart check out")
    ap.add_argument("--build-only", action="store_true", help="build WRF, run nothing")
    ap.add_argument("--wait-build", action="store_true",
                    help="wait for another process working in WORK/WRF (a build) to end")
    ap.add_argument("--retry-failed", action="store_true",
                    help="run again runs that failed with the same inputs")
    ap.add_argument("--run-timeout", type=float, default=7200.0,
                    help="seconds one WRF run may take (default 7200)")
    ap.add_argument("--jobs", type=int, default=2, help="make jobs of the WRF build")
    return ap.parse_args(argv)


def make_case(args) -> Case:
    if args.quick:
        case = quick_case(args.members or 2, args.hours or 4.0)
    else:
        case = full_case(args.members or 3, args.hours or 12.0)
    if case.members < 1:
        raise CaseError("--members must be at least 1")
    if case.minutes % case.history_minutes or case.minutes < 2 * case.history_minutes:
        raise CaseError(f"--hours {case.hours:g}: the run must be a multiple of the history "
                        f"interval ({case.history_minutes} min) and at least two of them")
    return case


# ---------------------------------------------------------------------------------------------
# initial states


def link_data(folder: Path, build: WrfBuild) -> None:
    for entry in sorted(build.case_dir.iterdir()):
        if entry.name in ("namelist.input", "wrf.exe", "ideal.exe", "CMakeLists.txt"):
            continue
        path = folder / entry.name
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(entry.resolve())


def ideal_state(case: Case, build: WrfBuild, work: Path) -> tuple[Path, float]:
    """ideal.exe's wrfinput_d01 for the case's grid, made once and kept: ideal.exe seeds its
    perturbation from the operating system, so a new one would be another initial state."""
    folder = work / "cases" / f"convrad-{case.nx}x{case.nx}" / "ideal"
    result = folder / "wrfinput_d01"
    done = read_json(folder / "done.json")
    if done and result.is_file() and done.get("sha256") == sha256(result):
        return result, 0.0
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("rsl.*"):
        old.unlink()
    result.unlink(missing_ok=True)
    (folder / "namelist.input").write_text(namelist(case, None))
    link_data(folder, build)
    exe = folder / "ideal.exe"
    if exe.is_symlink() or exe.exists():
        exe.unlink()
    exe.symlink_to(build.ideal_exe)
    log(f"running ideal.exe for {case.nx} x {case.nx} columns in {folder}")
    start = time.time()
    with open(folder / "mpirun.log", "w") as out:
        rc = subprocess.run(["mpirun", "-np", "1", "./ideal.exe"], cwd=folder, check=False,
                            env=_run_env(), stdout=out, stderr=subprocess.STDOUT).returncode
    rsl = folder / "rsl.error.0000"
    ok = rc == 0 and result.is_file() and rsl.is_file() and IDEAL_SUCCESS in rsl.read_text()
    if not ok:
        raise RunError(f"ideal.exe failed in {folder} (exit {rc}):\n{rsl_tail(folder)}")
    write_json(folder / "done.json", {"sha256": sha256(result), "wall_s": time.time() - start})
    return result, time.time() - start


def _run_env() -> dict:
    return dict(os.environ) | RUN_ENV


def member_states(case: Case, ideal: Path) -> tuple[dict[str, Path], dict]:
    """m0: ideal.exe's state; m1, m2, ...: its perturbation replaced by seeded draws."""
    base = ideal.parent.parent / "members"
    base.mkdir(parents=True, exist_ok=True)
    pert = measure_perturbation(ideal)
    states = {"m0": ideal}
    info = {"m0": {"source": "ideal.exe", "perturbation": pert}}
    source_sha = sha256(ideal)
    for m in range(1, case.members):
        name = f"m{m}"
        path = base / f"wrfinput_d01.{name}"
        meta_path = base / f"{name}.json"
        meta = read_json(meta_path)
        want = {"source_sha256": source_sha, "seed": MEMBER_SEED + m, "levels": pert.levels,
                "amplitude_k": pert.amplitude_k}
        if not (meta and path.is_file() and all(meta.get(k) == v for k, v in want.items())
                and meta.get("sha256") == sha256(path)):
            log(f"initial state {name}: theta perturbation of the lowest {pert.levels} levels "
                f"replaced (uniform, width {pert.amplitude_k:g} K, seed {MEMBER_SEED + m})")
            done = perturbed_member(ideal, path, MEMBER_SEED + m, pert)
            meta = want | done | {"sha256": sha256(path)}
            write_json(meta_path, meta)
        states[name] = path
        info[name] = meta
    return states, info


# ---------------------------------------------------------------------------------------------
# runs


def run_folder(work: Path, case: Case, member: str, name: str) -> Path:
    return work / "runs" / case.name / member / name


def step_file(folder: Path, minutes_after_start: float) -> Path:
    t = START + dt.timedelta(minutes=minutes_after_start)
    return folder / f"custep_d01_{t:%Y-%m-%d_%H:%M:%S}"


def restart_one(case: Case, build: WrfBuild, work: Path, states: dict, model: Path | None,
                parent: Outcome | None, config: Config, args) -> tuple[dict, float]:
    """The run of ``config`` from m0 restarted from its own half-time restart file, compared
    with the run itself, bit for bit: the state at the restart time; what the scheme wrote in
    the first step after it (computed from that state: exact if the scheme keeps no state
    outside the restart file; the R*CUTEN tendencies are left out, since WRF rescales them
    with the column mass at the end of the step, which carries WRF's own restart error); and
    the history at every later time they share."""
    if parent is None or not parent.completed:
        return {"identical": None, "summary": f"{config.name}: the run of m0 did not complete; "
                                              "no restart check"}, 0.0
    half = case.half_minutes
    rst = restart_file(parent.run.folder, half)
    if not rst.is_file():
        return {"identical": False, "summary": f"{config.name}: {rst} was not written"}, 0.0
    run = Run(case, "m0", config, run_folder(work, case, "m0", f"{config.name}-restart"),
              states["m0"], model if config.emulator else None, rst, half)
    outcome = execute(run, build, REPO, args.run_timeout, args.retry_failed)
    if not outcome.completed:
        return {"identical": False, "summary": f"{config.name}: the restarted run failed: "
                                               f"{outcome.reason}"}, outcome.wall_s
    a, b = parent.run.folder, run.folder
    at_restart = compare_histories(step_file(a, half), step_file(b, half))
    step = half + case.time_step / 60.0
    first_step = compare_histories(step_file(a, step), step_file(b, step),
                                   [f.upper() for f in UNCOUPLED_CUMULUS_FIELDS])
    dynamics = compare_histories(step_file(a, step), step_file(b, step))
    verdicts = []
    for t in history_times(case, half + case.history_minutes):
        name = f"wrfout_d01_{t:%Y-%m-%d_%H:%M:%S}"
        verdicts.append((name, compare_histories(a / name, b / name)))
    end_name, end = verdicts[-1]
    same = sum(v["identical"] for _, v in verdicts)

    def names(result):
        return ", ".join(f"{d['variable']} ({d['detail']})" for d in result["differ"][:6])

    text = (f"{config.name}: restarted at {half / 60:g} h from its own restart file. State at "
            f"the restart time: {'identical' if at_restart['identical'] else 'DIFFERENT: ' + names(at_restart)}"
            f" ({at_restart['variables']} variables). What the scheme wrote in the first step "
            f"(NCA, PRATEC, RAINCV, W0AVG, CUTOP, CUBOT, cloud fields): "
            f"{'identical' if first_step['identical'] else 'DIFFERENT: ' + names(first_step)}"
            f" ({first_step['variables']} variables)"
            + ("" if dynamics["identical"] else f"; the dynamics after that step already differ: "
               f"{names(dynamics)}")
            + f". History: {same}/{len(verdicts)} later times bitwise identical; the end "
            f"({end_name}): {'identical' if end['identical'] else 'DIFFERENT'}"
            + ("" if end["identical"] else f" ({names(end)})") + ".")
    log("restart check: " + text)
    return {"identical": end["identical"], "state_identical": at_restart["identical"],
            "first_step_cumulus_identical": first_step["identical"],
            "first_step_dynamics_identical": dynamics["identical"],
            "identical_all_times": same == len(verdicts), "times": len(verdicts),
            "summary": text, "differ_end": end["differ"][:20]}, outcome.wall_s


def restart_check(case: Case, build: WrfBuild, work: Path, states: dict, model: Path | None,
                  outcomes: dict, args) -> tuple[dict, dict]:
    """The emulator's restart check, with the same check for MSKF as the control: it tells
    what WRF's own restart does in this configuration."""
    walls, checks = {}, {}
    for name in ("mlcu", "mskf"):
        if name not in outcomes:
            continue
        checks[name], walls[f"m0/{name}-restart"] = restart_one(
            case, build, work, states, model if name == "mlcu" else None,
            outcomes[name].get("m0"), CONFIG_BY_NAME[name], args)
    emu = checks["mlcu"]
    controls = [c for n, c in checks.items() if n != "mlcu"]
    wrf_exact = all(c.get("identical") for c in controls) if controls else None
    cumulus_exact = bool(emu.get("state_identical") and emu.get("first_step_cumulus_identical"))
    if emu.get("identical"):
        verdict, passed = "bit for bit at the end", True
    elif cumulus_exact and controls and wrf_exact is False:
        verdict, passed = ("the emulator restarts exactly (state and first-step cumulus fields "
                           "bit for bit); the end differs as WRF's own restart does without "
                           "the emulator (controls below)"), True
    else:
        verdict, passed = "NOT exact", False if emu.get("identical") is not None else None
    result = {"identical": passed, "summary": f"{verdict}", "verdict": verdict,
              "wrf_restart_exact": wrf_exact, "details": [c["summary"] for c in checks.values()],
              "configs": checks}
    return result, walls


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run_benchmark(args)
    except (BuildError, CaseError, RunError) as err:
        print(f"[online] ERROR: {err}", file=sys.stderr, flush=True)
        return 2


def run_benchmark(args) -> int:
    t_start = time.time()
    work = args.work.resolve()
    case = make_case(args)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIG_BY_NAME]
    if unknown:
        raise CaseError(f"unknown configurations {unknown}; known: {list(CONFIG_BY_NAME)}")
    if args.restart_check:
        names = ["mlcu", "mskf"]   # the emulator, and MSKF as the control
    configs = tuple(CONFIG_BY_NAME[n] for n in names)
    model = None
    if any(c.emulator for c in configs) and not args.build_only:
        model = args.model.resolve()
        if not model.is_file():
            raise CaseError(f"model {model} not found: pass --model (an .onnx file of mlcu "
                            "export, for example data/run/model.onnx after make demo)")
    out = (args.out or work / f"report-{case.name}").resolve()
    walls = {}

    source = (args.wrf_src or default_source(REPO)).resolve()
    build = ensure_build(REPO, work, source, args.jobs, args.wait_build)
    walls["build"] = build.seconds
    log(f"WRF: {build.wrf_exe} ({build.action}, stamp {build.stamp.get('finished', '?')})")
    if args.build_only:
        return 0

    ideal, walls["ideal"] = ideal_state(case, build, work)
    states, state_info = member_states(case, ideal)
    pert = state_info["m0"]["perturbation"]
    log(f"ideal.exe perturbation: lowest {pert.levels} levels, uniform of width "
        f"{pert.amplitude_k:g} K (max |dev| {pert.max_abs_k:.3f} K); the file's PH and THM "
        f"agree with the rebalancing to {pert.hydrostatic_residual:.2g} m2/s2 and "
        f"{pert.moist_residual_k:.2g} K")

    members = ["m0"] if args.restart_check else case.member_names()
    outcomes: dict[str, dict[str, Outcome]] = {c.name: {} for c in configs}
    for member in members:
        for config in configs:
            run = Run(case, member, config, run_folder(work, case, member, config.name),
                      states[member], model if config.emulator else None)
            outcome = execute(run, build, REPO, args.run_timeout, args.retry_failed)
            outcomes[config.name][member] = outcome
            walls[f"{member}/{config.name}"] = outcome.wall_s

    restart = None
    if not args.no_restart_check and "mlcu" in outcomes:
        restart, restart_walls = restart_check(case, build, work, states, model, outcomes, args)
        walls |= restart_walls

    if args.restart_check:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "restart-check.json", restart or {})
        for line in (restart or {}).get("details", []):
            print("  " + line)
        print(f"restart check: {(restart or {}).get('verdict', 'not run')}")
        return 0 if restart and restart.get("identical") else 1

    t_analysis = time.time()
    summaries: dict[str, dict] = {c.name: {} for c in configs}
    times = history_times(case)
    for name, per_member in outcomes.items():
        for member, outcome in per_member.items():
            if not outcome.completed:
                summaries[name][member] = None
                continue
            inputs = inputs_of(outcome.run, build, REPO)
            summaries[name][member] = summarise(outcome.run.folder, times, case.time_step,
                                                60.0 * case.radt_minutes, inputs["hash"])
    walls["analysis"] = time.time() - t_analysis
    walls["total"] = time.time() - t_start
    meta = {"model": str(model) if model else None,
            "model_sha256": sha256(model) if model else None,
            "wrf": str(build.root), "build_action": build.action, "build_stamp": build.stamp,
            "members": state_info, "run_env": RUN_ENV, "work": str(work),
            "perturbation": f"lowest {pert.levels} levels, uniform of width "
                            f"{pert.amplitude_k:g} K, seeds {MEMBER_SEED}+m"}
    _, checks = write_report(out, case, meta, outcomes, summaries, restart, walls)
    print()
    print(f"online benchmark ({case.name}): {out / 'report.md'}")
    for t in checks:
        print("  " + t.line())
    failed = [f"{n}/{m}" for n, per in outcomes.items() for m, o in per.items() if not o.completed]
    if failed:
        print(f"[online] runs that did not complete: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
