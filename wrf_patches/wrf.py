"""The mlcu cumulus option for a WRF 4.x source tree: what goes where, and apply/revert/check.

Every place a new cumulus option touches (see wrf_patches/README.md) gets either a block of our
own code from ``fragments/``, placed by an anchor made of WRF identifiers, or, where the
emulator needs exactly what WRF does for MSKF, an edit adding ``MLCUSCHEME`` to the CASE label
or condition of that one line. ``files/`` holds the files added whole (the WRF side of the
bridge). A manifest in the tree records what was applied.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from wrf_patches.engine import (
    Anchor,
    FilePlan,
    Insertion,
    PatchError,
    plan_file,
    read_lines,
    sha256_file,
    sha256_text,
    strip_blocks,
    write_atomic,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FRAGMENTS = HERE / "fragments"
ADDED = HERE / "files"
MANIFEST = ".mlcu_patches.json"
MANIFEST_FORMAT = "mlcu-wrf-patches"
PATCH_VERSION = 1

DEFAULT_CU_ID = 97
DEFAULT_BRIDGE_DIR = REPO / "fortran_bridge" / "build"
FLAGS_FILE = "wrf_flags.txt"

# WRF minor versions the patches were applied to and checked (see README.md).
SUPPORTED = ((4, 3), (4, 4), (4, 5), (4, 6), (4, 7))

# Files a WRF 4.x tree must have; the two optional ones are patched when present.
REQUIRED = (
    "Registry/Registry.EM_COMMON",
    "phys/module_cumulus_driver.F",
    "phys/module_physics_init.F",
    "phys/module_physics_addtendc.F",
    "phys/module_cu_mskf.F",
    "dyn_em/module_first_rk_step_part2.F",
    "share/module_check_a_mundo.F",
    "phys/Makefile",
    "main/depend.common",
    "main/module_wrf_top.F",
    "arch/postamble",
)
OPTIONAL = (
    "phys/CMakeLists.txt",   # the CMake build, WRF 4.6 and later
    "configure.wrf",         # written by ./configure
)


def _subroutine(name: str) -> tuple[str, str]:
    return (rf"^\s*SUBROUTINE\s+{name}\b", rf"^\s*END\s+SUBROUTINE\s+{name}\b")


CASE_DEFAULT = r"^\s*CASE\s+DEFAULT\b"
SELECT_CPS = r"^\s*cps_select\s*:\s*SELECT\s+CASE\b"
END_IF = r"^\s*END\s*IF\b"

MSKF_CASE = r"^\s*CASE\s*\(\s*MSKFSCHEME\s*\)"


def _add_to_case_label() -> tuple[str, str]:
    """An edit adding our scheme to a CASE label that holds MSKF's: where WRF does for
    MSKF exactly what the emulator needs, it does it for both."""
    return (r"\bMSKFSCHEME\b", "MSKFSCHEME, MLCUSCHEME")


# (block name, file, kind of file, anchor, fragment file or (pattern, replacement) of an edit)
PLACES = (
    ("registry-package", "Registry/Registry.EM_COMMON", "registry",
     Anchor((r"^package\s+mskfscheme\s",), "after"), "registry-package.reg"),
    ("registry-namelist", "Registry/Registry.EM_COMMON", "registry",
     Anchor((r"^rconfig\s+integer\s+cu_physics\s",), "after"), "registry-namelist.reg"),
    ("driver-use", "phys/module_cumulus_driver.F", "fortran",
     Anchor((r"^\s*USE\s+module_cu_kfeta\b",), "before", _subroutine("cumulus_driver")),
     "driver-use.F"),
    # Hybrid mode calls MSKF: the halo WRF exchanges before MSKF.
    ("driver-halo", "phys/module_cumulus_driver.F", "fortran",
     Anchor((r"cu_physics\s*==\s*MSKFSCHEME\s*\)\s*THEN",), "edit",
            _subroutine("cumulus_driver")),
     (r"(cu_physics\s*==\s*MSKFSCHEME)", r"\1 .OR. (cu_physics == MLCUSCHEME .AND. mlcu_hybrid)")),
    ("driver-case", "phys/module_cumulus_driver.F", "fortran",
     Anchor((SELECT_CPS, CASE_DEFAULT), "before", _subroutine("cumulus_driver")),
     "driver-case.F"),
    ("init-use", "phys/module_physics_init.F", "fortran",
     Anchor((r"^\s*USE\s+module_cu_kfeta\b",), "before", _subroutine("cu_init")),
     "init-use.F"),
    # cu_init: MSKF's initialisation as WRF makes it, then the emulator's.
    ("init-case", "phys/module_physics_init.F", "fortran",
     Anchor((SELECT_CPS, MSKF_CASE), "edit", _subroutine("cu_init")), _add_to_case_label()),
    ("init-emulator", "phys/module_physics_init.F", "fortran",
     Anchor((SELECT_CPS, MSKF_CASE, r"^\s*CALL\s+mskf_init\b"), "after", _subroutine("cu_init")),
     "init-emulator.F"),
    ("init-icloud", "phys/module_physics_init.F", "fortran",
     Anchor((r"cu_physics\s*==\s*mskfscheme\b",), "edit", _subroutine("phy_init")),
     (r"(cu_physics\s*==\s*mskfscheme)\b", r"\1 .OR. config_flags%cu_physics == MLCUSCHEME")),
    ("cuten-case", "phys/module_physics_addtendc.F", "fortran",
     Anchor((MSKF_CASE,), "edit", _subroutine("phy_cu_ten")), _add_to_case_label()),
    ("ppt-case", "phys/module_physics_addtendc.F", "fortran",
     Anchor((r"^\s*CASE\s*\(.*\bMSKFSCHEME\b",), "edit", _subroutine("advance_ppt")),
     _add_to_case_label()),
    ("rk-halo", "dyn_em/module_first_rk_step_part2.F", "fortran",
     Anchor((r"config_flags%cu_physics\s*==\s*MSKFSCHEME\b.*\.or\.",), "edit"),
     (r"(config_flags%cu_physics\s*==\s*MSKFSCHEME)\b",
      r"\1 .or. config_flags%cu_physics == MLCUSCHEME")),
    ("check-a-mundo-mskf", "share/module_check_a_mundo.F", "fortran",
     Anchor((r"^\s*IF\s*\(\s*model_config_rec%cu_physics\(i\)\s*\.EQ\.\s*MSKFSCHEME\s*\)\s*THEN",),
            "edit", _subroutine("check_nml_consistency")),
     (r"(model_config_rec%cu_physics\(i\)\s*\.EQ\.\s*MSKFSCHEME)",
      r"\1 .OR. model_config_rec%cu_physics(i) .EQ. MLCUSCHEME")),
    ("check-a-mundo", "share/module_check_a_mundo.F", "fortran",
     Anchor((r"model_config_rec\s*%\s*cu_used\s*=\s*0\b",), "before",
            _subroutine("check_nml_consistency")), "check-a-mundo.F"),
    ("phys-modules", "phys/Makefile", "make",
     Anchor((r"^OBJS\s*=",), "before"), "phys-makefile.mk"),
    ("depend", "main/depend.common", "make",
     Anchor((r"^module_cumulus_driver\.o\s*:",), "before"), "depend.mk"),
    ("depend-top", "main/depend.common", "make",
     Anchor((r"^module_wrf_top\.o\s*:",), "before"), "depend-top.mk"),
    # The end of the run: the emulator's last counters and its runtime released.
    ("finalize-use", "main/module_wrf_top.F", "fortran",
     Anchor((r"^\s*SUBROUTINE\s+wrf_finalize\b",), "after"), "finalize-use.F"),
    ("finalize", "main/module_wrf_top.F", "fortran",
     Anchor((r"wrf_debug\s*\(\s*0\s*,\s*'wrf: SUCCESS COMPLETE WRF'",), "before",
            _subroutine("wrf_finalize")), "finalize.F"),
    ("cmake-sources", "phys/CMakeLists.txt", "cmake",
     Anchor((r"^\s*module_cu_mskf\.F\s*$",), "before"), "cmake-sources.cmake"),
    ("cmake-link", "phys/CMakeLists.txt", "cmake",
     Anchor((r"^\s*add_dependencies\s*\(\s*\$\{PROJECT_NAME\}_Core\b",), "after"),
     "cmake-link.cmake"),
    ("bridge-flags", "arch/postamble", "make",
     Anchor((r"^LIB\s*=",), "after"), "postamble.mk"),
    ("bridge-flags", "configure.wrf", "make",
     Anchor((r"^LIB\s*=",), "after"), "postamble.mk"),
)

# Files added whole: path in the tree -> our file.
ADDED_FILES = {"phys/module_cu_mlcu_wrf.F": ADDED / "phys" / "module_cu_mlcu_wrf.F"}

PLACEHOLDER = ("$(error mlcu: the bridge flags are not set: put the output of make bridge-flags "
               "of the mlcu project into MLCU_BRIDGE_INC and MLCU_BRIDGE_LIB here and in "
               "arch/postamble or apply the patches again - see wrf_patches/README.md)")


# ---------------------------------------------------------------------------------------------
# The tree: layout and version


@dataclass(frozen=True)
class Tree:
    root: Path
    version: tuple[int, ...]

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def supported(self) -> bool:
        return tuple(self.version[:2]) in SUPPORTED


def supported_text() -> str:
    return ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED)


def read_version(root: Path) -> tuple[int, ...] | None:
    """WRF's release version: inc/version_decl (4.x), else the first line of README."""
    decl = root / "inc" / "version_decl"
    if decl.is_file():
        m = re.search(r"release_version\s*=\s*['\"]V?(\d+(?:\.\d+)*)", decl.read_text("latin-1"),
                      re.IGNORECASE)
        if m:
            return tuple(int(x) for x in m.group(1).split("."))
    readme = root / "README"
    if readme.is_file():
        m = re.search(r"WRF Model Version\s+(\d+(?:\.\d+)*)", readme.read_text("latin-1")[:2000])
        if m:
            return tuple(int(x) for x in m.group(1).split("."))
    return None


def open_tree(root: Path | str, force: bool = False) -> Tree:
    """The tree at ``root``, or a refusal for an unknown layout or an unsupported version."""
    root = Path(root)
    if not root.is_dir():
        raise PatchError(f"{root}: no such directory")
    missing = [p for p in REQUIRED if not (root / p).is_file()]
    if missing:
        raise PatchError(f"{root}: not a WRF 4.x source tree, or an unknown layout: missing "
                         + ", ".join(missing))
    version = read_version(root)
    if version is None:
        raise PatchError(f"{root}: cannot read the WRF version (inc/version_decl, README)")
    tree = Tree(root, version)
    if not tree.supported and not force:
        raise PatchError(f"{root}: WRF {tree.version_text} is not supported (supported: "
                         f"{supported_text()}); --force tries anyway, with every anchor "
                         "still checked")
    return tree


def cu_ids_in_use(root: Path) -> dict[int, str]:
    """cu_physics values of the Registry packages (ours left out) -> package name."""
    used: dict[int, str] = {}
    rx = re.compile(r"^package\s+(\S+)\s+cu_physics==(\d+)\b")
    for reg in sorted((root / "Registry").glob("Registry*")):
        if not reg.is_file():
            continue
        lines, _ = strip_blocks(read_lines(reg), str(reg))
        for line in lines:
            m = rx.match(line)
            if m:
                used.setdefault(int(m.group(2)), m.group(1))
    return used


def check_cu_id(root: Path, cu_id: int) -> None:
    if not 1 <= cu_id <= 999:
        raise PatchError(f"--cu-id {cu_id}: choose a positive cu_physics value")
    used = cu_ids_in_use(root)
    if cu_id in used:
        free = [n for n in range(12, 100) if n not in used]
        raise PatchError(f"cu_physics = {cu_id} is taken by package {used[cu_id]} in the "
                         f"Registry; free values include {', '.join(map(str, free[:8]))}")


# ---------------------------------------------------------------------------------------------
# Bridge flags


@dataclass
class BridgeFlags:
    include: list[str] = field(default_factory=list)
    link: list[str] = field(default_factory=list)
    source: str = ""          # where they came from, or why they are missing

    @property
    def available(self) -> bool:
        return bool(self.link)


def parse_flags(text: str) -> tuple[list[str], list[str]]:
    """Include and link flags from text such as the output of ``make bridge-flags``: lines of
    flags, optionally as ``NAME = flags``; ``-I`` flags are include flags, the rest link flags."""
    include, link = [], []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*[:+]?=\s*(.*)$", line)
        if m:
            line = m.group(1)
        tokens = shlex.split(line)
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if tok == "-I" and i + 1 < len(tokens):
                include.append("-I" + tokens[i + 1])
                i += 2
                continue
            (include if tok.startswith("-I") else link).append(tok)
            i += 1
    return include, link


def find_bridge_flags(bridge_dir: Path | None = None, include: str | None = None,
                      link: str | None = None, run_make: bool = True) -> BridgeFlags:
    """The flags, from (in order) the command line, ``<bridge_dir>/wrf_flags.txt``, or
    ``make -s bridge-flags`` of this repository (for the default bridge folder only)."""
    if link:
        inc, lnk = parse_flags(include or "")
        extra_inc, extra_lnk = parse_flags(link)
        return BridgeFlags(inc + extra_inc, lnk + extra_lnk, "command line")
    if include:
        return BridgeFlags(parse_flags(include)[0], [],
                           "command line: --include-flags without --link-flags")
    bridge_dir = Path(bridge_dir) if bridge_dir else DEFAULT_BRIDGE_DIR
    flags_file = bridge_dir / FLAGS_FILE
    if flags_file.is_file():
        inc, lnk = parse_flags(flags_file.read_text())
        return BridgeFlags(inc, lnk, str(flags_file))
    if bridge_dir.resolve() != DEFAULT_BRIDGE_DIR.resolve():
        return BridgeFlags(source=f"{flags_file} not found")
    if not run_make:
        return BridgeFlags(source=f"{flags_file} not found; apply asks make bridge-flags")
    try:
        res = subprocess.run(["make", "-s", "-C", str(REPO), "bridge-flags"],
                             capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        return BridgeFlags(source=f"make bridge-flags failed: {err}")
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return BridgeFlags(source=f"{flags_file} not found; make bridge-flags failed: {last}")
    inc, lnk = parse_flags(res.stdout)
    return BridgeFlags(inc, lnk, "make bridge-flags" if lnk else
                       "make bridge-flags printed no link flags")


def resolve_flags(root: Path, bridge_dir: Path | None = None, include: str | None = None,
                  link: str | None = None, run_make: bool = True) -> BridgeFlags:
    """The flags for ``root``: given ones first, then those recorded when the patches were
    applied (so that applying again changes nothing), then ``find_bridge_flags``."""
    if bridge_dir or include or link:
        return find_bridge_flags(bridge_dir, include, link, run_make)
    recorded = read_manifest(Path(root)).get("bridge_flags") or {}
    if recorded.get("link"):
        return BridgeFlags(list(recorded.get("include", [])), list(recorded["link"]),
                           recorded.get("source", "the last apply"))
    return find_bridge_flags(run_make=run_make)


# ---------------------------------------------------------------------------------------------
# Insertions


def _cmake_quote(token: str) -> str:
    return f'"{token}"' if re.search(r"[\s;]", token) else token


def shipped_model() -> str:
    """The default of mlcu_model: the model that ships in models/, where this project lies."""
    path = str(REPO / "models" / "mlcu-mskf.onnx")
    if len(path) > 256 or '"' in path:  # WRF's namelist strings hold 256 characters
        raise PatchError(f"{path}: the shipped model's path is longer than 256 characters or "
                         "holds a quote; move the project, or copy the model and set mlcu_model")
    return path


def insertions(cu_id: int, flags: BridgeFlags, paths: set[str] | None = None) -> list[Insertion]:
    """Our blocks, with the cu_physics ID and the bridge flags filled in."""
    values = {
        "@CU_ID@": str(cu_id),
        "@MLCU_MODEL@": shipped_model(),
        "@MLCU_INC@": " ".join(flags.include) if flags.available else PLACEHOLDER,
        "@MLCU_LIB@": " ".join(flags.link) if flags.available else PLACEHOLDER,
        "@CMAKE_INCLUDE_DIRS@": " ".join(_cmake_quote(f[2:]) for f in flags.include),
        "@CMAKE_LINK@": " ".join(_cmake_quote(f) for f in flags.link),
    }
    out = []
    for name, path, kind, anchor, fragment in PLACES:
        if paths is not None and path not in paths:
            continue
        if isinstance(fragment, tuple):  # an edit of the anchored line
            out.append(Insertion(name, path, kind, anchor, "", fragment))
            continue
        if fragment == "cmake-link.cmake" and not flags.available:
            fragment = "cmake-link-missing.cmake"
        text = (FRAGMENTS / fragment).read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        out.append(Insertion(name, path, kind, anchor, text))
    return out


def target_files(root: Path) -> list[str]:
    """The files to patch that exist in the tree, in the order of PLACES."""
    seen: list[str] = []
    for _, path, *_ in PLACES:
        if path not in seen and (root / path).is_file():
            seen.append(path)
    return seen


def plan(root: Path, cu_id: int, flags: BridgeFlags) -> list[FilePlan]:
    files = target_files(root)
    links = [path for path in files if (root / path).is_symlink()]
    if links:
        raise PatchError("symbolic links where files are patched (patch their targets "
                         "instead): " + ", ".join(links))
    ins = insertions(cu_id, flags, set(files))
    return [plan_file(root, path, [i for i in ins if i.path == path]) for path in files]


# ---------------------------------------------------------------------------------------------
# Manifest


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if data.get("format") == MANIFEST_FORMAT else {}


def write_manifest(root: Path, data: dict) -> None:
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    path = root / MANIFEST
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text)


# ---------------------------------------------------------------------------------------------
# Commands


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, text: str) -> None:
        self.lines.append(text)

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _missing_anchors(plans: list[FilePlan]) -> list[str]:
    return [f"{p.path}: block {loc.insertion.name}: anchor {loc.insertion.anchor.describe()}: "
            f"{loc.error}" for p in plans for loc in p.located if not loc.found]


def apply(root: Path | str, cu_id: int = DEFAULT_CU_ID, flags: BridgeFlags | None = None,
          force: bool = False) -> Report:
    """Applies the patches (idempotent; other settings replace our blocks in place)."""
    tree = open_tree(root, force)
    root = tree.root
    check_cu_id(root, cu_id)
    flags = flags if flags is not None else resolve_flags(root)
    plans = plan(root, cu_id, flags)
    missing = _missing_anchors(plans)
    if missing:
        raise PatchError("anchors not found, nothing was changed:\n  " + "\n  ".join(missing))

    manifest = read_manifest(root)
    added_before = manifest.get("added", {})
    added_actions = []
    for rel, source in ADDED_FILES.items():
        target = root / rel
        want = source.read_bytes()
        if target.exists():
            have = target.read_bytes()
            if have == want:
                continue
            if added_before.get(rel) != sha256_file(target):
                raise PatchError(f"{rel} exists and was not written by these patches; "
                                 "move it away first (nothing was changed)")
        added_actions.append((target, want))

    report = Report()
    report.add(f"WRF {tree.version_text} at {root}: cu_physics = {cu_id} (mlcuscheme)")
    files = dict(manifest.get("files", {}))
    for p in plans:
        entry = files.get(p.path, {})
        if not entry or entry.get("original_sha256") is None:
            entry = {"original_sha256": p.original_sha256}
        entry["blocks"] = [loc.insertion.name for loc in p.located]
        files[p.path] = entry
        if p.changed:
            write_atomic(root / p.path, "".join(p.new), like=root / p.path)
            report.add(f"  patched    {p.path} ({', '.join(entry['blocks'])})")
        else:
            report.add(f"  unchanged  {p.path}")
    added = {}
    for rel, source in ADDED_FILES.items():
        target = root / rel
        if any(t == target for t, _ in added_actions):
            existed = target.exists()
            write_atomic(target, source.read_bytes().decode("latin-1"))
            report.add(f"  {'updated' if existed else 'added':<10} {rel}")
        else:
            report.add(f"  unchanged  {rel}")
        added[rel] = sha256_file(target)
    if flags.available:
        report.add(f"bridge flags: from {flags.source}")
    else:
        report.add(f"bridge flags: NOT SET ({flags.source}); a placeholder stops the WRF build "
                   "with a message until MLCU_BRIDGE_INC/MLCU_BRIDGE_LIB are set in "
                   "configure.wrf and arch/postamble (or apply again with --bridge-dir or "
                   "--link-flags)")
    write_manifest(root, {
        "format": MANIFEST_FORMAT,
        "patch_version": PATCH_VERSION,
        "wrf_version": tree.version_text,
        "cu_id": cu_id,
        "bridge_flags": {"include": flags.include, "link": flags.link, "source": flags.source},
        "files": files,
        "added": added,
    })
    report.add(f"manifest: {MANIFEST}; undo with: python -m wrf_patches revert {root}")
    return report


def revert(root: Path | str, force: bool = False) -> Report:
    """Removes every block of ours and the files we added; the manifest tells whether each
    file is back to the bytes it had before the patches."""
    root = Path(root)
    if not root.is_dir():
        raise PatchError(f"{root}: no such directory")
    manifest = read_manifest(root)
    report = Report()
    stripped = []
    for path in REQUIRED + OPTIONAL:
        full = root / path
        if not full.is_file():
            continue
        lines = read_lines(full)
        base, names = strip_blocks(lines, path)
        if names:
            stripped.append((full, path, base, names))
    added_remove = []
    for rel in ADDED_FILES:
        target = root / rel
        if not target.exists():
            continue
        recorded = manifest.get("added", {}).get(rel)
        if recorded is not None and recorded != sha256_file(target) and not force:
            raise PatchError(f"{rel} was changed after the patches added it; --force removes "
                             "it anyway (nothing was changed)")
        if recorded is None and not force and \
                target.read_bytes() != ADDED_FILES[rel].read_bytes():
            raise PatchError(f"{rel} is not the file these patches add; --force removes it "
                             "anyway (nothing was changed)")
        added_remove.append((target, rel))
    if not stripped and not added_remove and not manifest:
        report.add(f"{root}: no mlcu patches found; nothing to revert")
        return report
    recorded_files = manifest.get("files", {})
    for full, path, base, names in stripped:
        write_atomic(full, "".join(base), like=full)
        original = recorded_files.get(path, {}).get("original_sha256")
        if original is None:
            note = "no manifest entry"
        elif sha256_text(base) == original:
            note = "original bytes restored"
        else:
            note = "blocks removed; the file was otherwise edited since the patches were applied"
        report.add(f"  reverted   {path} ({len(names)} blocks; {note})")
    for target, rel in added_remove:
        target.unlink()
        report.add(f"  removed    {rel}")
    if (root / MANIFEST).exists():
        (root / MANIFEST).unlink()
    report.add(f"{root}: mlcu patches reverted")
    return report


def check(root: Path | str, cu_id: int | None = None, flags: BridgeFlags | None = None,
          force: bool = False) -> Report:
    """A dry run: the version, the ID, every anchor found or missing, the state of each file
    and the bridge flags. ``ok`` is False when apply would refuse."""
    report = Report()
    root = Path(root)
    try:
        tree = open_tree(root, force=True)
    except PatchError as err:
        report.add(f"REFUSED  {err}")
        report.ok = False
        return report
    manifest = read_manifest(root)
    if cu_id is None:
        cu_id = int(manifest.get("cu_id", DEFAULT_CU_ID))
    if tree.supported:
        report.add(f"WRF {tree.version_text} at {root}: supported")
    else:
        report.add(f"WRF {tree.version_text} at {root}: NOT supported (supported: "
                   f"{supported_text()})" + ("; --force given" if force else ""))
        report.ok = report.ok and force
    try:
        check_cu_id(root, cu_id)
        report.add(f"cu_physics = {cu_id}: free")
    except PatchError as err:
        report.add(f"cu_physics = {cu_id}: {err}")
        report.ok = False
    flags = flags if flags is not None else resolve_flags(root, run_make=False)
    try:
        plans = plan(root, cu_id, flags)
    except PatchError as err:
        report.add(f"REFUSED  {err}")
        report.ok = False
        return report
    for p in plans:
        for loc in p.located:
            where = f"{p.path}: {loc.insertion.name}"
            if loc.found:
                text = (f"  found    {where}: {loc.insertion.anchor.where} line "
                        f"{loc.anchor_index + 1} {loc.anchor_line[:50]!r}")
                if loc.first_index != loc.anchor_index:
                    text += f" (after line {loc.first_index + 1} {loc.first_line[:40]!r})"
                report.add(text)
            else:
                report.add(f"  MISSING  {where}: {loc.insertion.anchor.describe()}: {loc.error}")
                report.ok = False
    skipped = [p for p in OPTIONAL if not (root / p).is_file()]
    for path in skipped:
        report.add(f"  skipped  {path}: not in the tree (patched when present)")
    applied = [p for p in plans if p.had_blocks]
    if not applied and not any((root / rel).exists() for rel in ADDED_FILES):
        report.add("state: not applied")
    else:
        stale = [p.path for p in plans if p.changed]
        missing_added = [rel for rel in ADDED_FILES if not (root / rel).exists()]
        if stale or missing_added:
            report.add("state: applied, but differs from what apply would write now: "
                       + ", ".join(stale + missing_added))
        else:
            report.add("state: applied and up to date")
    if flags.available:
        report.add(f"bridge flags: from {flags.source}")
    else:
        report.add(f"bridge flags: not available ({flags.source}); apply would place a "
                   "placeholder that stops the WRF build until they are set")
    return report
