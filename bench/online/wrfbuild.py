"""WRF for the online benchmark: unpacked, patched with the mlcu option and built once.

WORK/WRF is a WRF source tree configured for GNU dmpar and built for em_convrad. The build is
reused as long as its inputs are unchanged: the bridge (library and Fortran module of
fortran_bridge/build) and the patches (everything in wrf_patches/). A stamp in WORK/WRF records
the hashes of those inputs; when they differ (or no stamp is there, as for a tree built by
hand), the patches are applied again and WRF is compiled again: incrementally, unless the
patched Registry differs from the one of the last build (WRF's make does not track the code the
Registry generates), in which case the tree is cleaned (./clean) and built in full.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from case import read_json, write_json

STAMP = ".mlcu_bench_build.json"
CONFIGURE_ANSWERS = "34\n1\n"      # GNU (gfortran/gcc) dmpar, basic nesting
TARGET = "em_convrad"
TOOLS = {"tcsh": "tcsh", "m4": "m4", "perl": "perl", "make": "make", "mpif90": "libopenmpi-dev",
         "mpirun": "openmpi-bin", "nf-config": "libnetcdff-dev", "gfortran": "gfortran",
         "cpp": "cpp"}


class BuildError(RuntimeError):
    """The WRF build cannot be made or used; the message says why and where the log is."""


@dataclass
class WrfBuild:
    root: Path             # WORK/WRF
    wrf_exe: Path
    ideal_exe: Path
    case_dir: Path         # test/em_convrad: the case's data files
    stamp: dict
    seconds: float = 0.0   # time spent building in this call (0: reused)
    action: str = "reused"


def log(message: str) -> None:
    print(f"[online] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# inputs and stamp


def hash_files(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def bridge_hash(repo: Path) -> str:
    build = repo / "fortran_bridge" / "build"
    files = [build / "libmlcu_bridge.a"] + sorted((build / "include").glob("*.mod"))
    missing = [str(p) for p in files if not p.is_file()]
    if missing or len(files) < 2:
        raise BuildError(f"the bridge is not built ({', '.join(missing) or 'no .mod file'}): "
                         f"run make bridge in {repo}")
    return hash_files(files, repo)


def patches_hash(repo: Path) -> str:
    root = repo / "wrf_patches"
    files = [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return hash_files(files, repo)


# ---------------------------------------------------------------------------------------------
# environment


def check_tools() -> None:
    missing = {tool: pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None}
    if missing:
        raise BuildError("missing build tools: " + ", ".join(missing) + "; install with: "
                         "apt-get install " + " ".join(sorted(set(missing.values()))))


def _nf_config(flag: str) -> str:
    return subprocess.run(["nf-config", flag], capture_output=True, text=True,
                          check=True).stdout.strip()


def netcdf_prefix(work: Path) -> Path:
    """A single netCDF prefix with include/, lib/ and bin/, as WRF's configure wants: NETCDF
    when set, the prefix of nf-config when it has all three, else symlinks in WORK/netcdf to
    where the distribution put them (Debian splits them)."""
    given = os.environ.get("NETCDF")
    if given:
        prefix = Path(given)
        if not (prefix / "include" / "netcdf.inc").is_file():
            raise BuildError(f"NETCDF={given}: no include/netcdf.inc there (netCDF-Fortran)")
        return prefix
    prefix = Path(_nf_config("--prefix"))
    include = Path(_nf_config("--includedir"))
    if (prefix / "include" / "netcdf.inc").is_file() and list((prefix / "lib").glob("libnetcdff*")):
        return prefix
    libdir = next((Path(tok[2:]) for tok in _nf_config("--flibs").split()
                   if tok.startswith("-L") and list(Path(tok[2:]).glob("libnetcdff*"))), None)
    if libdir is None:
        raise BuildError("cannot find libnetcdff from nf-config --flibs; set NETCDF to a "
                         "prefix with include/, lib/ and bin/")
    link = work / "netcdf"
    link.mkdir(parents=True, exist_ok=True)
    for name, target in (("include", include), ("lib", libdir),
                         ("bin", Path(shutil.which("nf-config")).parent)):
        entry = link / name
        if entry.is_symlink() and Path(os.readlink(entry)) != target:
            entry.unlink()
        if not entry.exists():
            entry.symlink_to(target)
    return link


def configured_netcdf(root: Path) -> Path | None:
    """The netCDF prefix an existing configure.wrf was made with, if it is still there."""
    try:
        for line in (root / "configure.wrf").read_text(errors="replace").splitlines():
            if line.startswith("NETCDFPATH"):
                path = Path(line.split("=", 1)[1].strip())
                return path if (path / "include" / "netcdf.inc").is_file() else None
    except OSError:
        pass
    return None


def build_env(work: Path) -> dict:
    env = dict(os.environ)
    env["NETCDF"] = str(configured_netcdf(work / "WRF") or netcdf_prefix(work))
    env.pop("NETCDF4", None)
    env["WRF_EM_CORE"] = "1"
    env["WRF_NMM_CORE"] = "0"
    return env


def processes_in(folder: Path) -> list[tuple[int, str]]:
    """Processes whose working directory is in ``folder`` (a build already running there)."""
    found, me = [], os.getpid()
    folder = folder.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            if cwd == folder or folder in cwd.parents:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                found.append((int(entry.name), cmd))
        except OSError:
            continue
    return found


# ---------------------------------------------------------------------------------------------
# steps


def default_source(repo: Path) -> Path:
    shared = os.environ.get("MLCU_SHARED")
    base = Path(shared) if shared else repo.parent / "shared"
    return base / "wrf" / "WRF-4.7.1.tar.gz"


def unpack(source: Path, work: Path) -> Path:
    """WORK/WRF from a tarball (holding WRF/) or a copy of a source directory."""
    root = work / "WRF"
    if not source.exists():
        raise BuildError(f"WRF source {source} not found: pass --wrf-src (a tarball holding "
                         "WRF/ or a WRF source directory), or set MLCU_SHARED")
    work.mkdir(parents=True, exist_ok=True)
    partial = work / "WRF.partial"
    if partial.exists():
        shutil.rmtree(partial)
    log(f"unpacking {source} into {root}")
    if source.is_dir():
        shutil.copytree(source, partial, symlinks=True)
        partial.rename(root)
    else:
        with tarfile.open(source) as tar:
            tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if tops != {"WRF"}:
                raise BuildError(f"{source}: expected one top folder WRF/, found {sorted(tops)}")
            tar.extractall(partial, filter="tar")
        (partial / "WRF").rename(root)
        partial.rmdir()
    return root


def run_logged(cmd: list[str] | str, cwd: Path, env: dict, log_path: Path,
               stdin: str | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False,
                              input=stdin, text=True, shell=isinstance(cmd, str))
    return proc.returncode


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [x for x in text if " Error " in x or "Error:" in x or "error:" in x][-10:]
    part = "\n".join(text[-lines:])
    if errors:
        part = "first error lines:\n" + "\n".join(errors) + "\n...\nlast lines:\n" + part
    return part


def configure(root: Path, env: dict, logs: Path) -> None:
    log_path = logs / "configure.log"
    log("configuring WRF: GNU dmpar (printf '34\\n1\\n' | ./configure)")
    rc = run_logged(["./configure"], root, env, log_path, stdin=CONFIGURE_ANSWERS)
    if rc != 0 or not (root / "configure.wrf").is_file():
        raise BuildError(f"./configure failed (exit {rc}):\n{tail(log_path)}\nfull log: {log_path}")


def apply_patches(repo: Path, root: Path, logs: Path) -> None:
    log_path = logs / "wrf_patches_apply.log"
    rc = run_logged([sys.executable, "-m", "wrf_patches", "apply", str(root)], repo,
                    dict(os.environ), log_path)
    if rc != 0:
        raise BuildError(f"applying the patches failed:\n{tail(log_path)}\nfull log: {log_path}")


def compile_wrf(root: Path, env: dict, logs: Path, jobs: int) -> tuple[float, Path]:
    """./compile em_convrad. WRF's make ignores errors and a failed link leaves the old
    executables, so they are removed first and their presence is the test of success."""
    exes = [root / "main" / "wrf.exe", root / "main" / "ideal.exe"]
    for exe in exes:
        exe.unlink(missing_ok=True)
    log_path = logs / f"compile-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log(f"compiling WRF ({TARGET}, -j {jobs}); log: {log_path}")
    start = time.time()
    run_logged(["./compile", "-j", str(jobs), TARGET], root, env, log_path)
    seconds = time.time() - start
    missing = [str(e.relative_to(root)) for e in exes if not e.is_file()]
    if missing:
        raise BuildError(f"the WRF build failed after {seconds:.0f} s ({', '.join(missing)} not "
                         f"built):\n{tail(log_path)}\nfull log: {log_path}")
    return seconds, log_path


def wait_for_other_builds(root: Path, wait: bool, poll_s: float = 60.0) -> None:
    while True:
        busy = processes_in(root)
        if not busy:
            return
        pid, cmd = busy[0]
        if not wait:
            raise BuildError(f"another process works in {root} (pid {pid}: {cmd[:120]}); "
                             "wait for it to end (or pass --wait-build)")
        log(f"waiting for pid {pid} ({cmd[:80]}) working in {root}")
        time.sleep(poll_s)


def ensure_build(repo: Path, work: Path, source: Path, jobs: int = 2,
                 wait: bool = False) -> WrfBuild:
    """WORK/WRF built with the current bridge and patches (see the module docstring)."""
    check_tools()
    logs = work / "logs"
    root = work / "WRF"
    if root.exists():
        wait_for_other_builds(root, wait)
    else:
        unpack(source, work)
    log("building the bridge (make bridge)")
    res = subprocess.run(["make", "-s", "bridge"], cwd=repo, capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise BuildError(f"make bridge failed in {repo}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    inputs = {"bridge": bridge_hash(repo), "patches": patches_hash(repo)}
    stamp = read_json(root / STAMP) or {}
    wrf_exe, ideal_exe = root / "main" / "wrf.exe", root / "main" / "ideal.exe"
    built = wrf_exe.is_file() and ideal_exe.is_file()
    if built and stamp.get("inputs") == inputs:
        return WrfBuild(root, wrf_exe, ideal_exe, root / "test" / TARGET, stamp)

    env = build_env(work)
    if not (root / "configure.wrf").is_file():
        configure(root, env, logs)
        built = False
    log("applying the patches (python -m wrf_patches apply)")
    apply_patches(repo, root, logs)
    # WRF's make does not know the Registry either: the code it generates (namelist
    # entries, defaults, state) is in many objects, so a changed Registry means ./clean.
    registry = hash_files(sorted((root / "Registry").glob("Registry*")), root)
    if built and stamp.get("registry") != registry:
        log("the patched Registry changed: ./clean, then a full build")
        run_logged(["./clean"], root, env, logs / "clean.log")
        built = False
    if built and stamp.get("inputs", {}).get("bridge") != inputs["bridge"]:
        # WRF's make does not know the bridge's module file: rebuild its one user (and,
        # through main/depend.common, what uses that).
        (root / "phys" / "module_cu_mlcu_wrf.o").unlink(missing_ok=True)
    action = "incremental" if built else "full"
    if built:
        why = "no stamp (a tree built outside the benchmark)" if not stamp else \
            "changed: " + ", ".join(k for k in inputs if stamp.get("inputs", {}).get(k) != inputs[k])
        log(f"rebuilding WRF incrementally ({why})")
    seconds, log_path = compile_wrf(root, env, logs, jobs)
    stamp = {"inputs": inputs, "registry": registry, "action": action, "compile_s": round(seconds, 1),
             "log": str(log_path), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(root / STAMP, stamp)
    log(f"WRF built ({action}) in {seconds:.0f} s")
    return WrfBuild(root, wrf_exe, ideal_exe, root / "test" / TARGET, stamp, seconds, action)
