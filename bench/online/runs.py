"""WRF runs of the online benchmark: each in its own folder, run once, reused while its inputs
are unchanged.

A run folder holds the namelist, links to its initial state (or restart file), to the case's
data files and to wrf.exe, WRF's rsl.* logs and history, and three markers:
``inputs.json`` (written before WRF starts: the hash of everything the run depends on and the
process id), ``done.json`` (after WRF reported success) and ``failed.json`` (after it did not).
A folder with ``inputs.json`` and neither of the others, whose process is gone, held a run
that was killed; it is run again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from case import (
    IOFIELDS,
    START,
    Case,
    Config,
    namelist,
    read_json,
    sha256,
    wrf_date,
    write_json,
)
from wrfbuild import WrfBuild, log

# Reproducible runs: WRF reads some uninitialised memory, so its bits depend on what malloc
# leaves there; a fixed fill makes runs from the same inputs repeat bit for bit.
RUN_ENV = {
    "OMP_NUM_THREADS": "1",
    "MALLOC_PERTURB_": "165",
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
}
SUCCESS = "SUCCESS COMPLETE WRF"
SKIP_DATA = {"namelist.input", "wrf.exe", "ideal.exe", "CMakeLists.txt", "README.convrad",
             "README.namelist"}
WORK_FILES = ("rsl.", "wrfout_", "wrfrst_", "done.json", "failed.json", "summary.", "mpirun.log")


class RunError(RuntimeError):
    """A run could not be prepared or is in use; the message names the folder."""


@dataclass
class Run:
    """One WRF run: a configuration from one initial state (or from a restart file)."""
    case: Case
    member: str
    config: Config
    folder: Path
    wrfinput: Path
    model: Path | None = None
    restart_file: Path | None = None   # a restarted run starts from this file
    start_minutes: int = 0

    @property
    def name(self) -> str:
        return f"{self.member}/{self.folder.name}"

    def namelist_text(self) -> str:
        return namelist(self.case, self.config, self.model, self.start_minutes,
                        restart=self.restart_file is not None)


@dataclass
class Outcome:
    run: Run
    completed: bool
    reused: bool
    wall_s: float
    reason: str = ""
    load: float | None = None   # 5-min load average at the end (2 ranks of WRF make 2)
    cpu_s: float | None = None  # CPU seconds of all ranks (user + system), not slowed by load


def tree_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path).encode() + b"\0" + sha256(path).encode())
    return h.hexdigest()


def runtime_package(repo: Path) -> Path:
    """The emulator package the Python embedded in WRF will import (PYTHONPATH is honoured)."""
    res = subprocess.run([sys.executable, "-c", "import emulator; print(emulator.__file__)"],
                         cwd=repo.parent, env=dict(os.environ), capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise RunError(f"the emulator package cannot be imported by {sys.executable}: "
                       f"{res.stderr.strip().splitlines()[-1:]}")
    return Path(res.stdout.strip()).parent


def runtime_hash(repo: Path) -> str:
    """The emulator runtime's code (Python and compiled kernels), an input of emulator runs."""
    root = runtime_package(repo)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".so")
             and "__pycache__" not in p.parts]
    return tree_hash(files)


def inputs_of(run: Run, build: WrfBuild, repo: Path) -> dict:
    inputs = {
        "namelist": hashlib.sha256(run.namelist_text().encode()).hexdigest(),
        "iofields": hashlib.sha256(IOFIELDS.encode()).hexdigest(),
        "build": build.stamp.get("inputs"),
        "wrf_exe": sha256(build.wrf_exe),
        "wrfinput": sha256(run.wrfinput),
        "env": RUN_ENV,
        "ranks": run.case.ranks,
    }
    if run.restart_file is not None:
        inputs["restart_file"] = sha256(run.restart_file)
    if run.config.emulator:
        inputs["model"] = sha256(run.model)
        inputs["runtime"] = runtime_hash(repo)
        # the embedded interpreter honours PYTHONPATH: another runtime may be imported
        inputs["pythonpath"] = os.environ.get("PYTHONPATH", "")
    inputs["hash"] = hashlib.sha256(repr(sorted(inputs.items())).encode()).hexdigest()
    return inputs


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def state(run: Run, inputs: dict) -> tuple[str, dict]:
    """'done' (reusable), 'failed' (failed with these inputs), 'running' (another process),
    'killed' (started, never finished), 'stale' (other inputs) or 'new'."""
    started = read_json(run.folder / "inputs.json")
    done = read_json(run.folder / "done.json")
    failed = read_json(run.folder / "failed.json")
    if done and done.get("hash") == inputs["hash"] and rsl_success(run.folder):
        return "done", done
    if failed and failed.get("hash") == inputs["hash"]:
        return "failed", failed
    if started and not done and not failed:
        if pid_alive(started.get("pid")) and started.get("host") == os.uname().nodename:
            return "running", started
        return "killed", started
    if started:
        return "stale", started
    return "new", {}


def rsl_success(folder: Path) -> bool:
    rsl = folder / "rsl.error.0000"
    try:
        return SUCCESS in rsl.read_text(errors="replace")
    except OSError:
        return False


def prepare_folder(run: Run, build: WrfBuild) -> None:
    folder = run.folder
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name.startswith(WORK_FILES):
            entry.unlink()
    (folder / "namelist.input").write_text(run.namelist_text())
    (folder / "cu_fields.txt").write_text(IOFIELDS)
    links = {"wrf.exe": build.wrf_exe, "wrfinput_d01": run.wrfinput}
    for entry in sorted(build.case_dir.iterdir()):
        if entry.name not in SKIP_DATA:
            links[entry.name] = entry.resolve()
    if run.restart_file is not None:
        links[run.restart_file.name] = run.restart_file
    for name, target in links.items():
        if not Path(target).exists():
            raise RunError(f"{run.folder}: {name} -> {target} does not exist")
        path = folder / name
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(Path(target).resolve())


def execute(run: Run, build: WrfBuild, repo: Path, timeout_s: float,
            retry_failed: bool = False) -> Outcome:
    """Runs WRF in the run's folder unless a finished run with the same inputs is there."""
    inputs = inputs_of(run, build, repo)
    status, info = state(run, inputs)
    if status == "done":
        log(f"{run.case.name} {run.name}: done before ({info.get('wall_s', 0):.0f} s), reused")
        return Outcome(run, True, True, float(info.get("wall_s", 0.0)), load=info.get("load5"),
                       cpu_s=info.get("cpu_s"))
    if status == "failed" and not retry_failed:
        log(f"{run.case.name} {run.name}: failed before with these inputs ({info.get('reason')}); "
            "--retry-failed runs it again")
        return Outcome(run, False, True, float(info.get("wall_s", 0.0)), info.get("reason", ""))
    if status == "running":
        raise RunError(f"{run.folder}: a run is in progress there (pid {info.get('pid')})")
    if status == "killed":
        log(f"{run.case.name} {run.name}: an earlier attempt did not finish (killed?); running again")
    elif status == "stale":
        log(f"{run.case.name} {run.name}: inputs changed; running again")

    prepare_folder(run, build)
    env = dict(os.environ) | RUN_ENV
    cmd = ["mpirun", "-np", str(run.case.ranks), "./wrf.exe"]
    start = time.time()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    log(f"{run.case.name} {run.name}: running WRF ({' '.join(cmd)}) in {run.folder}")
    with open(run.folder / "mpirun.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=run.folder, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        write_json(run.folder / "inputs.json", inputs | {
            "pid": proc.pid, "host": os.uname().nodename,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        try:
            rc = proc.wait(timeout=timeout_s)
            reason = ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, reason = -1, f"stopped after the time limit of {timeout_s:.0f} s"
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = round((after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime), 1)
    if rc == 0 and rsl_success(run.folder):
        # other work on the machine slows WRF down: the load says how much
        load5 = round(os.getloadavg()[1], 2)
        write_json(run.folder / "done.json", {"hash": inputs["hash"], "wall_s": round(wall, 1),
                                              "load5": load5, "cpu_s": cpu,
                                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        log(f"{run.case.name} {run.name}: completed in {wall:.0f} s (load average {load5:g})")
        return Outcome(run, True, False, wall, load=load5, cpu_s=cpu)
    reason = reason or failure_reason(run.folder, rc)
    write_json(run.folder / "failed.json", {"hash": inputs["hash"], "wall_s": round(wall, 1),
                                            "rc": rc, "reason": reason,
                                            "tail": rsl_tail(run.folder)})
    log(f"{run.case.name} {run.name}: FAILED after {wall:.0f} s: {reason}\n"
        f"{rsl_tail(run.folder)}\n  (logs: {run.folder}/rsl.error.*, mpirun.log)")
    return Outcome(run, False, False, wall, reason)


def rsl_tail(folder: Path, lines: int = 12) -> str:
    rsl = folder / "rsl.error.0000"
    if not rsl.is_file():
        rsl = folder / "mpirun.log"
    try:
        text = rsl.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + x for x in text[-lines:])


def failure_reason(folder: Path, rc: int) -> str:
    """The FATAL message of WRF when there is one, else the exit status."""
    for rsl in sorted(folder.glob("rsl.error.*")):
        text = rsl.read_text(errors="replace").splitlines()
        for i, line in enumerate(text):
            if "FATAL CALLED" in line:
                detail = [x.strip() for x in text[i + 1:i + 4] if x.strip() and "----" not in x]
                return f"{rsl.name}: " + " ".join(detail)[:400]
    if not (folder / "rsl.error.0000").is_file():
        return f"mpirun exited with {rc} before WRF wrote rsl.error.0000 (see mpirun.log)"
    return f"exit status {rc}; no {SUCCESS!r} in rsl.error.0000"


# ---------------------------------------------------------------------------------------------
# what WRF printed


TIMING = re.compile(r"Timing for main(?: \(dt=\s*[\d.]+\))?: time (\S+) on domain\s+1:\s+([\d.]+) "
                    r"elapsed seconds")
COUNTERS = re.compile(r"^mlcu counters:( final)? time_s=(\d+) ktau=(\d+)(.*)$")


def step_times(folder: Path, dt_s: float, radt_s: float) -> dict:
    """Wall time per step from rank 0's 'Timing for main' lines. Plain steps leave out the
    first step and every step that can hold radiation or history output: those ending on a
    multiple of the radiation interval or one step after it (output is written at the start
    of the step after a history time, and history times are multiples of it here)."""
    text = (folder / "rsl.error.0000").read_text(errors="replace")
    steps, plain = [], []
    for stamp, seconds in TIMING.findall(text):
        t = dt.datetime.strptime(stamp, "%Y-%m-%d_%H:%M:%S")
        end_s = (t - START).total_seconds()
        steps.append(float(seconds))
        phase = round(end_s % radt_s, 3)
        if len(steps) > 1 and phase not in (0.0, round(dt_s % radt_s, 3)):
            plain.append(float(seconds))
    return {"steps": len(steps), "plain_steps": len(plain),
            "total_step_s": float(sum(steps)),
            "median_step_s": float(sorted(plain)[len(plain) // 2]) if plain else None,
            "mean_step_s": float(sum(steps) / len(steps)) if steps else None}


def counters(folder: Path) -> dict:
    """The emulator's counters: for each history time, the sums over ranks of each rank's
    running totals (lines 'mlcu counters: time_s=... name=value ...'); 'final' holds the
    totals at the end of the run."""
    per_time: dict[int, dict[str, int]] = {}
    final: dict[str, int] = {}
    ranks = 0
    for rsl in sorted(folder.glob("rsl.error.*")):
        seen = False
        for line in rsl.read_text(errors="replace").splitlines():
            m = COUNTERS.match(line.strip())
            if not m:
                continue
            seen = True
            values = {k: int(v) for k, v in (item.split("=", 1) for item in m.group(4).split())}
            target = final if m.group(1) else per_time.setdefault(int(m.group(2)), {})
            for k, v in values.items():
                target[k] = target.get(k, 0) + v
        ranks += seen
    return {"ranks": ranks, "by_time_s": {str(k): v for k, v in sorted(per_time.items())},
            "final": final}


def history_files(folder: Path, times: list[dt.datetime]) -> list[Path]:
    files = [folder / f"wrfout_d01_{wrf_date(t)}" for t in times]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise RunError(f"{folder}: history files missing: {', '.join(missing[:3])}"
                       f"{' ...' if len(missing) > 3 else ''}")
    return files


def restart_file(folder: Path, minutes: int) -> Path:
    return folder / f"wrfrst_d01_{wrf_date(START + dt.timedelta(minutes=minutes))}"


def clean_history(folder: Path) -> None:
    for p in folder.glob("wrfout_d01_*"):
        p.unlink()
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
