"""wrf_patches: anchored, reversible insertion of the mlcu cumulus option into a WRF tree.

Most tests run on tests/fixtures/wrf_tree, a stand-in holding only the lines the patches anchor
on. Two optional checks use real WRF: MLCU_WRF_GIT (a git clone or mirror of WRF) with
MLCU_WRF_TAGS (default v4.7.1) exports the patched files of each tag and applies, checks and
reverts there; the Fortran of the added module is compiled with gfortran when it is installed.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wrf_patches import engine, wrf  # noqa: E402
from wrf_patches.__main__ import iofields_line, main  # noqa: E402
from wrf_patches.engine import Anchor, Insertion, PatchError  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "wrf_tree"
FLAGS = wrf.BridgeFlags(["-I/path/to/bridge"],
                        ["-L/path/to/bridge", "-lmlcu_bridge", "-lpython3.11"], "test")
ADDED = "phys/module_cu_mlcu_wrf.F"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "WRF"
    shutil.copytree(FIXTURE, root)
    return root


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------
# check, apply, revert


def test_check_reports_every_anchor_and_changes_nothing(tree):
    before = snapshot(tree)
    report = wrf.check(tree, flags=FLAGS)
    assert report.ok, str(report)
    text = str(report)
    assert "WRF 4.7.1" in text and "cu_physics = 97: free" in text
    for name, path, *_ in wrf.PLACES:
        if path == "configure.wrf":
            assert "skipped  configure.wrf" in text
        else:
            assert f"found    {path}: {name}" in text
    assert "MISSING" not in text and "state: not applied" in text
    assert snapshot(tree) == before


def test_apply_then_revert_restores_the_original_bytes(tree):
    before = snapshot(tree)
    report = wrf.apply(tree, 97, FLAGS)
    after = snapshot(tree)
    assert "patched    phys/module_cumulus_driver.F" in str(report)
    assert (tree / ADDED).read_bytes() == (wrf.ADDED / "phys" / "module_cu_mlcu_wrf.F").read_bytes()
    assert (tree / wrf.MANIFEST).is_file()
    registry = (tree / "Registry/Registry.EM_COMMON").read_text()
    assert re.search(r"^package\s+mlcuscheme\s+cu_physics==97\s", registry, re.M)
    for key in ("mlcu_model", "mlcu_threads", "mlcu_device", "mlcu_nan_policy",
                "mlcu_ood_policy", "mlcu_hybrid"):
        assert re.search(rf"^rconfig\s+\S+\s+{key}\s+namelist,physics", registry, re.M)
    # mlcu_model defaults to the shipped model of this project
    shipped = REPO / "models" / "mlcu-mskf.onnx"
    assert shipped.is_file()
    assert re.search(rf'^rconfig\s+character\s+mlcu_model\s+namelist,physics\s+1\s+"{re.escape(str(shipped))}"',
                     registry, re.M)
    driver = (tree / "phys/module_cumulus_driver.F").read_text()
    assert driver.index("CASE (MLCUSCHEME)") < driver.index("CASE DEFAULT")
    assert "CALL mlcu_cps(" in driver
    # Where the emulator needs what WRF does for MSKF, MLCUSCHEME joins MSKF's own CASE label
    # or condition, and the line as it was is kept in the block.
    tendencies = (tree / "phys/module_physics_addtendc.F").read_text()
    assert "   CASE (MSKFSCHEME, MLCUSCHEME)!JTR: Separate MSKF for cmt\n" in tendencies
    assert "! mlcu-patch was:   CASE (MSKFSCHEME)!JTR: Separate MSKF for cmt\n" in tendencies
    assert "CASE (KFETASCHEME, MSKFSCHEME, MLCUSCHEME, KFCUPSCHEME)!BSINGH" in tendencies
    init = (tree / "phys/module_physics_init.F").read_text()
    assert "cu_physics == mskfscheme .OR. config_flags%cu_physics == MLCUSCHEME) THEN" in init
    assert init.index("CASE (MSKFSCHEME, MLCUSCHEME)") < init.index("CALL mskf_init") \
        < init.index("CALL mlcu_init") < init.index("CASE DEFAULT")
    assert "(cu_physics == MLCUSCHEME .AND. mlcu_hybrid)" in driver
    assert "MSKFSCHEME .or. config_flags%cu_physics == MLCUSCHEME     .or.   &" in \
        (tree / "dyn_em/module_first_rk_step_part2.F").read_text()
    assert "cu_physics(i) .EQ. MSKFSCHEME .OR. model_config_rec%cu_physics(i) .EQ. MLCUSCHEME )" \
        in (tree / "share/module_check_a_mundo.F").read_text()
    postamble = (tree / "arch/postamble").read_text()
    assert "MLCU_BRIDGE_LIB = -L/path/to/bridge -lmlcu_bridge -lpython3.11" in postamble
    assert postamble.index("LIB             =") < postamble.index("LIB += $(MLCU_BRIDGE_LIB)")
    # every block sits between its markers, and the other lines are the original ones
    for rel, data in after.items():
        if rel in before:
            base, names = engine.strip_blocks(data.decode("latin-1").splitlines(True), rel)
            assert "".join(base).encode("latin-1") == before[rel]

    report = wrf.revert(tree)
    assert "original bytes restored" in str(report)
    assert snapshot(tree) == before


def test_apply_twice_changes_nothing(tree):
    wrf.apply(tree, 97, FLAGS)
    first = snapshot(tree)
    mtimes = {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()
              and p.name != wrf.MANIFEST}
    report = wrf.apply(tree, 97, FLAGS)
    assert "patched" not in str(report) and "added " not in str(report)
    assert snapshot(tree) == first
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert "state: applied and up to date" in str(wrf.check(tree, flags=FLAGS))


def test_cli_apply_is_idempotent_and_reuses_recorded_settings(tree, tmp_path):
    bridge = tmp_path / "bridge"
    bridge.mkdir()
    (bridge / "wrf_flags.txt").write_text("MLCU_INC = -I/b/build\n"
                                          "MLCU_LIB = -L/b/build -lmlcu_bridge -lpython3.11\n")
    before = snapshot(tree)
    code, out, err = run_cli("apply", str(tree), "--cu-id", "42", "--bridge-dir", str(bridge))
    assert code == 0, err
    patched = snapshot(tree)
    # no options: the ID and the flags recorded at the first apply are kept
    code, out, err = run_cli("apply", str(tree))
    assert code == 0, err
    assert snapshot(tree) == patched
    code, out, _ = run_cli("check", str(tree))
    assert code == 0 and "applied and up to date" in out and "cu_physics = 42" in out
    code, out, _ = run_cli("revert", str(tree))
    assert code == 0 and snapshot(tree) == before
    code, out, _ = run_cli("revert", str(tree))
    assert code == 0 and "nothing to revert" in out


def test_apply_with_other_settings_replaces_the_blocks(tree):
    before = snapshot(tree)
    wrf.apply(tree, 97, FLAGS)
    wrf.apply(tree, 42, wrf.BridgeFlags(["-I/x"], ["-L/x", "-lmlcu_bridge"], "test"))
    registry = (tree / "Registry/Registry.EM_COMMON").read_text()
    assert "cu_physics==42" in registry and "cu_physics==97" not in registry
    assert registry.count("mlcu-patch begin registry-package") == 1
    assert "MLCU_BRIDGE_LIB = -L/x -lmlcu_bridge" in (tree / "arch/postamble").read_text()
    wrf.revert(tree)
    assert snapshot(tree) == before


def test_configure_wrf_is_patched_when_present(tree):
    (tree / "configure.wrf").write_text("FC = gfortran\nLIB             =    $(LIB_EXTERNAL)\n"
                                        "LDFLAGS = $(OMP)\n")
    before = snapshot(tree)
    report = wrf.apply(tree, 97, FLAGS)
    assert "patched    configure.wrf" in str(report)
    assert "LIB += $(MLCU_BRIDGE_LIB)" in (tree / "configure.wrf").read_text()
    wrf.revert(tree)
    assert snapshot(tree) == before


def test_missing_flags_place_a_placeholder_that_stops_the_build(tree):
    report = wrf.apply(tree, 97, wrf.BridgeFlags(source="not built"))
    assert "bridge flags: NOT SET" in str(report)
    postamble = (tree / "arch/postamble").read_text()
    assert re.search(r"^MLCU_BRIDGE_LIB = \$\(error mlcu: ", postamble, re.M)
    assert "FATAL_ERROR" in (tree / "phys/CMakeLists.txt").read_text()
    assert "not available" in str(wrf.check(tree, flags=wrf.BridgeFlags(source="none")))


def test_revert_after_user_edits_keeps_them_and_says_so(tree):
    wrf.apply(tree, 97, FLAGS)
    path = tree / "phys/Makefile"
    path.write_text(path.read_text() + "# a line of the user\n")
    report = wrf.revert(tree)
    assert "otherwise edited" in str(report)
    text = path.read_text()
    assert "mlcu-patch" not in text and text.endswith("# a line of the user\n")


def test_revert_refuses_an_edited_added_file(tree):
    wrf.apply(tree, 97, FLAGS)
    added = tree / ADDED
    added.write_text(added.read_text() + "! edited\n")
    before = snapshot(tree)
    with pytest.raises(PatchError, match="changed after the patches added it"):
        wrf.revert(tree)
    assert snapshot(tree) == before
    wrf.revert(tree, force=True)
    assert not added.exists()


def test_damaged_markers_are_refused(tree):
    wrf.apply(tree, 97, FLAGS)
    path = tree / "phys/module_physics_addtendc.F"
    path.write_text(path.read_text().replace("! mlcu-patch end ppt-case\n", ""))
    before = snapshot(tree)
    with pytest.raises(PatchError, match="ppt-case"):
        wrf.revert(tree)
    assert snapshot(tree) == before


# ---------------------------------------------------------------------------------------------
# refusals: nothing is written


def test_refuses_an_unknown_layout(tmp_path, tree):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PatchError, match="not a WRF 4.x source tree"):
        wrf.apply(empty, 97, FLAGS)
    assert list(empty.iterdir()) == []
    (tree / "phys/module_cumulus_driver.F").unlink()
    before = snapshot(tree)
    code, _, err = run_cli("apply", str(tree), "--link-flags=-lmlcu_bridge")
    assert code == 1 and "missing phys/module_cumulus_driver.F" in err
    assert snapshot(tree) == before
    code, out, _ = run_cli("check", str(tree))
    assert code == 1 and "REFUSED" in out


@pytest.mark.parametrize("version", ["V3.9.1", "V4.2.2", "V4.8"])
def test_refuses_an_unsupported_version(tree, version):
    (tree / "inc/version_decl").write_text(f"   release_version = '{version}'\n")
    before = snapshot(tree)
    with pytest.raises(PatchError, match="is not supported"):
        wrf.apply(tree, 97, FLAGS)
    assert snapshot(tree) == before
    code, out, _ = run_cli("check", str(tree), "--link-flags=-lmlcu_bridge")
    assert code == 1 and "NOT supported" in out
    wrf.apply(tree, 97, FLAGS, force=True)   # --force: the anchors decide
    assert (tree / ADDED).is_file()


def test_refuses_without_a_version(tree):
    (tree / "inc/version_decl").write_text("nothing here\n")
    with pytest.raises(PatchError, match="cannot read the WRF version"):
        wrf.apply(tree, 97, FLAGS)


@pytest.mark.parametrize("path, line", [
    ("Registry/Registry.EM_COMMON", "package   mskfscheme"),
    ("main/depend.common", "module_cumulus_driver.o:"),
    ("phys/module_physics_addtendc.F", "   CASE (KFETASCHEME"),
])
def test_a_missing_anchor_changes_nothing(tree, path, line):
    target = tree / path
    target.write_text("".join(x for x in target.read_text().splitlines(True)
                              if not x.startswith(line)))
    before = snapshot(tree)
    with pytest.raises(PatchError, match="anchors not found, nothing was changed") as err:
        wrf.apply(tree, 97, FLAGS)
    assert path in str(err.value)
    assert snapshot(tree) == before
    code, out, _ = run_cli("check", str(tree), "--link-flags=-lmlcu_bridge")
    assert code == 1 and f"MISSING  {path}" in out
    assert snapshot(tree) == before


def test_an_ambiguous_anchor_is_refused(tree):
    path = tree / "Registry/Registry.EM_COMMON"
    path.write_text(path.read_text() + "package   mskfscheme     cu_physics==11  -  -\n")
    before = snapshot(tree)
    with pytest.raises(PatchError, match="found 2 times"):
        wrf.apply(tree, 97, FLAGS)
    assert snapshot(tree) == before


def test_refuses_a_cu_id_in_use(tree):
    before = snapshot(tree)
    with pytest.raises(PatchError, match="taken by package mskfscheme"):
        wrf.apply(tree, 11, FLAGS)
    code, _, err = run_cli("apply", str(tree), "--cu-id", "99", "--link-flags=-lx")
    assert code == 1 and "kfscheme" in err
    assert snapshot(tree) == before


def test_refuses_a_foreign_file_where_ours_goes(tree):
    (tree / ADDED).write_text("! somebody else's module\n")
    before = snapshot(tree)
    with pytest.raises(PatchError, match="not written by these patches"):
        wrf.apply(tree, 97, FLAGS)
    assert snapshot(tree) == before


# ---------------------------------------------------------------------------------------------
# the engine


def _ins(kind, anchor, text="X\n"):
    return Insertion("t", "f", kind, anchor, text)


def test_insertion_after_a_continued_statement_goes_after_its_last_line():
    lines = ["      IF ( a .OR. &\n", "           b ) THEN\n", "      ENDIF\n"]
    loc = engine.locate(lines, _ins("fortran", Anchor((r"IF \( a",), "after")))
    assert loc.line == 2
    lines = ["LIST = \\\n", "\ta.o \\\n", "\tb.o\n", "NEXT = 1\n"]
    loc = engine.locate(lines, _ins("make", Anchor((r"^LIST",), "after")))
    assert loc.line == 3


def test_insertion_before_a_continuation_line_is_refused():
    lines = ["MODULES = \\\n", "\tmodule_a.o \\\n", "\tmodule_b.o\n"]
    loc = engine.locate(lines, _ins("make", Anchor((r"module_b\.o",), "before")))
    assert not loc.found and "continues a statement" in loc.error


def test_scope_limits_the_search():
    lines = ["SUBROUTINE a\n", "CASE DEFAULT\n", "END SUBROUTINE a\n",
             "SUBROUTINE b\n", "CASE DEFAULT\n", "END SUBROUTINE b\n"]
    anchor = Anchor((r"CASE DEFAULT",), "before", (r"SUBROUTINE b\b", r"END SUBROUTINE b\b"))
    assert engine.locate(lines, _ins("fortran", anchor)).line == 4
    assert "found 2 times" in engine.locate(lines, _ins("fortran", Anchor((r"CASE DEFAULT",)))).error


def test_an_edit_changes_one_line_and_is_undone_exactly():
    base = ["   SELECT CASE (x)\n", "   CASE (A, B)! note\n", "   END SELECT\n"]
    edit = Insertion("t", "f", "fortran", Anchor((r"CASE \(A",), "edit"), "", (r"\bB\b", "B, C"))
    loc = engine.locate(base, edit)
    out = engine.render(base, [loc])
    assert out == ["   SELECT CASE (x)\n", "! mlcu-patch begin t\n", "! mlcu-patch was:   CASE (A, B)! note\n",
                   "   CASE (A, B, C)! note\n", "! mlcu-patch end t\n", "   END SELECT\n"]
    assert engine.strip_blocks(out) == (base, ["t"])
    # The pattern must occur in the anchored line exactly once.
    twice = Insertion("t", "f", "fortran", Anchor((r"CASE \(A",), "edit"), "", (r"\b[AB]\b", "X"))
    assert "2 times, not once" in engine.locate(base, twice).error
    with pytest.raises(PatchError, match="damaged"):
        engine.strip_blocks(out[:2] + [out[2], out[2]] + out[3:])


def test_line_ends_are_kept():
    base = ["a\r\n", "b\r\n"]
    loc = engine.locate(base, _ins("make", Anchor((r"^b",), "before"), "X\n"))
    out = engine.render(base, [loc])
    assert out == ["a\r\n", "# mlcu-patch begin t\r\n", "X\r\n", "# mlcu-patch end t\r\n", "b\r\n"]
    assert engine.strip_blocks(out)[0] == base


# ---------------------------------------------------------------------------------------------
# flags, iofields, our Fortran


def test_parse_flags_forms():
    assert wrf.parse_flags("-I/a/build\n-L/a/build -lmlcu_bridge -lpython3.11 -ldl\n") == (
        ["-I/a/build"], ["-L/a/build", "-lmlcu_bridge", "-lpython3.11", "-ldl"])
    assert wrf.parse_flags("WRF_INCLUDE = -I /a\nWRF_LIBS := -L/a -lmlcu_bridge # comment\n") == (
        ["-I/a"], ["-L/a", "-lmlcu_bridge"])
    # the form make bridge-flags prints: configure.wrf lines between comments
    printed = ("# Append to configure.wrf (after its own definitions):\n"
               "INCLUDE_MODULES += -I/m/fortran_bridge/build/include\n"
               "LIB_EXTERNAL += -L/m/fortran_bridge/build -lmlcu_bridge  -L/py/lib -lpython3.11 "
               "-ldl -Wl,-rpath,/py/lib -lm -lpthread -Wl,--export-dynamic\n"
               "# At run time the bridge uses the Python of /m/.venv\n")
    inc, link = wrf.parse_flags(printed)
    assert inc == ["-I/m/fortran_bridge/build/include"]
    assert link[:3] == ["-L/m/fortran_bridge/build", "-lmlcu_bridge", "-L/py/lib"]
    assert link[-1] == "-Wl,--export-dynamic" and "-Wl,-rpath,/py/lib" in link


def test_flags_from_the_bridge_folder(tmp_path):
    (tmp_path / "wrf_flags.txt").write_text("-I/x\n-L/x -lmlcu_bridge\n")
    flags = wrf.find_bridge_flags(tmp_path)
    assert flags.available and flags.include == ["-I/x"]
    missing = wrf.find_bridge_flags(tmp_path / "nowhere")
    assert not missing.available and "wrf_flags.txt not found" in missing.source


def test_iofields_line_comes_from_the_contract():
    from emulator.contract import default_contract

    line = iofields_line()
    assert line.startswith("+:h:0:")
    names = line[len("+:h:0:"):].split(",")
    contract = default_contract()
    expected = [v.iofields for v in contract.inputs + contract.outputs if v.iofields]
    assert names == expected
    assert {"w0avg", "rthcuten", "rucuten", "nca", "pratec", "qc_cu"} <= set(names)
    assert iofields_line(extra=["timec_kf,raincv", "nca"]).endswith(",timec_kf,raincv")
    code, out, _ = run_cli("iofields")
    assert code == 0 and out.strip() == line
    assert line in (REPO / "wrf_patches" / "README.md").read_text(), "README shows another line"


def _our_fortran() -> list[Path]:
    return sorted(wrf.FRAGMENTS.glob("*.F")) + sorted(wrf.ADDED.rglob("*.F"))


def test_our_fortran_survives_the_wrf_build_preprocessing():
    # WRF's build deletes comment lines holding an apostrophe before running cpp in traditional
    # mode; our comments hold none, and no line is longer than 132 characters.
    for path in _our_fortran():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert len(line) <= 132, f"{path.name}:{number} is too long"
            if line.lstrip().startswith("!"):
                assert "'" not in line, f"{path.name}:{number}: apostrophe in a comment"


def test_blocks_are_complete_fortran_statements():
    for path in sorted(wrf.FRAGMENTS.glob("*.F")):
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        assert not lines[-1].split("!")[0].rstrip().endswith("&"), path.name
        opened = sum(1 for x in lines if re.match(r"\s*#\s*if", x))
        closed = sum(1 for x in lines if re.match(r"\s*#\s*endif", x))
        assert opened == closed, path.name


STUBS = """
module module_cu_mlcu
contains
  subroutine cu_mlcu_init(model_path, nthreads, device, nan_policy, ood_policy, kts, kte)
    character(len=*), intent(in) :: model_path, device, nan_policy, ood_policy
    integer, intent(in) :: nthreads, kts, kte
  end subroutine
  subroutine cu_mlcu_driver(ids,ide,jds,jde,kds,kde, ims,ime,jms,jme,kms,kme, &
      its,ite,jts,jte,kts,kte, dt, dx, cudt, stepcu, u_phy, v_phy, w, t_phy, qv, qc, qr, qi, qs, &
      p_hyd, pi_phy, rho, dz8w, w0avg, hfx, ust, pblh, zol, xland, rthcuten, rqvcuten, &
      rqccuten, rqrcuten, rqicuten, rqscuten, rucuten, rvcuten, pratec, raincv, nca, cutop, &
      cubot, cldfra_dp, cldfra_sh, qc_cu, qi_cu, fallback)
    integer, intent(in) :: ids,ide,jds,jde,kds,kde, ims,ime,jms,jme,kms,kme, &
                           its,ite,jts,jte,kts,kte, stepcu
    real, intent(in) :: dt, dx, cudt
    real, dimension(ims:ime,kms:kme,jms:jme) :: u_phy, v_phy, w, t_phy, qv, qc, qr, qi, qs, &
        p_hyd, pi_phy, rho, dz8w, w0avg, rthcuten, rqvcuten, rqccuten, rqrcuten, rqicuten, &
        rqscuten, rucuten, rvcuten, cldfra_dp, cldfra_sh, qc_cu, qi_cu
    real, dimension(ims:ime,jms:jme) :: hfx, ust, pblh, zol, xland, pratec, raincv, nca, &
        cutop, cubot
    integer, dimension(ims:ime,jms:jme), intent(out) :: fallback
  end subroutine
  subroutine cu_mlcu_finalize(status, errmsg)
    integer, intent(out), optional :: status
    character(len=*), intent(out), optional :: errmsg
  end subroutine
  function cu_mlcu_counters() result(text)
    character(len=:), allocatable :: text
    text = ''
  end function
end module
module module_model_constants
  real, parameter :: xlv0 = 3.15e6, xlv1 = 2370., xls0 = 2.905e6, xls1 = 259.532, cp = 1004.5, &
      r_d = 287., g = 9.81, ep_1 = 0.608, ep_2 = 0.622, svp1 = 0.6112, svp2 = 17.67, &
      svp3 = 29.65, svpt0 = 273.15
end module
module module_cu_mskf
contains
  subroutine mskf_cps(ids,ide,jds,jde,kds,kde, ims,ime,jms,jme,kms,kme, its,ite,jts,jte,kts,kte, &
      trigger, dt, ktau, dx, cudt, adapt_step_flag, rho, raincv, pratec, nca, u, v, th, t, w, &
      dz8w, pcps, pi, w0avg, xlv0, xlv1, xls0, xls1, cp, r, g, ep1, ep2, svp1, svp2, svp3, &
      svpt0, stepcu, cu_act_flag, warm_rain, cutop, cubot, qv, f_qv, f_qc, f_qr, f_qi, f_qs, &
      rthcuten, rqvcuten, rqccuten, rqrcuten, rqicuten, rqscuten, rqvften, cldfra_dp_kf, &
      cldfra_sh_kf, qc_kf, qi_kf, qr_kf, qs_kf, nc_kf, ni_kf, nr_kf, ns_kf, ccn_kf, ainc_frac, &
      udr_kf, ddr_kf, uer_kf, der_kf, timec_kf, kf_edrates, zol, hfx, ust, pblh, aerocu, &
      no_src_types_cu, aercu_fct, aercu_opt, efcs, efis, efss, rucuten, rvcuten, xland)
    integer :: ids,ide,jds,jde,kds,kde, ims,ime,jms,jme,kms,kme, its,ite,jts,jte,kts,kte, &
               trigger, ktau, stepcu, kf_edrates, no_src_types_cu, aercu_opt
    real :: dt, dx, cudt, xlv0, xlv1, xls0, xls1, cp, r, g, ep1, ep2, svp1, svp2, svp3, svpt0, &
            aercu_fct
    logical :: adapt_step_flag, warm_rain, cu_act_flag(*)
    logical, optional :: f_qv, f_qc, f_qr, f_qi, f_qs
    real, dimension(*) :: rho, raincv, pratec, nca, u, v, th, t, w, dz8w, pcps, pi, w0avg, &
        cutop, cubot, qv, rthcuten, rqvcuten, rqccuten, rqrcuten, rqicuten, rqscuten, rqvften, &
        cldfra_dp_kf, cldfra_sh_kf, qc_kf, qi_kf, qr_kf, qs_kf, nc_kf, ni_kf, nr_kf, ns_kf, &
        ccn_kf, ainc_frac, udr_kf, ddr_kf, uer_kf, der_kf, timec_kf, zol, hfx, ust, pblh, &
        efcs, efis, efss, rucuten, rvcuten, xland
    real, optional :: aerocu(*)
  end subroutine
end module
"""


BRIDGE_MODULE = REPO / "fortran_bridge" / "module_cu_mlcu.F90"


@pytest.mark.skipif(not shutil.which("gfortran") or not shutil.which("cpp"),
                    reason="gfortran and cpp are needed")
@pytest.mark.parametrize("bridge", ["interface", "fortran_bridge"])
def test_added_module_compiles_against_the_bridge_interface(tmp_path, bridge):
    """The WRF side of the bridge, preprocessed as WRF does (EM core, OpenMP), compiles
    against the bridge (the interface it relies on, and the module of fortran_bridge/) and
    stand-ins with the MSKF argument names."""
    stubs = STUBS
    if bridge == "fortran_bridge":
        if not BRIDGE_MODULE.is_file():
            pytest.skip("fortran_bridge/module_cu_mlcu.F90 not present")
        subprocess.run(["gfortran", "-c", "-J", str(tmp_path), str(BRIDGE_MODULE),
                        "-o", str(tmp_path / "bridge.o")], check=True, capture_output=True)
        stubs = stubs[stubs.index("module module_model_constants"):]
    (tmp_path / "stubs.f90").write_text(stubs)
    subprocess.run(["gfortran", "-c", "-J", str(tmp_path), "stubs.f90"], cwd=tmp_path,
                   check=True, capture_output=True)
    src = wrf.ADDED / "phys" / "module_cu_mlcu_wrf.F"
    pre = subprocess.run(["cpp", "-P", "-traditional", "-DEM_CORE=1", str(src)],
                         check=True, capture_output=True, text=True).stdout
    (tmp_path / "mlcu.f90").write_text(pre)
    res = subprocess.run(["gfortran", "-fsyntax-only", "-fopenmp", "-ffree-line-length-none",
                          "-Wall", "-I", str(tmp_path), "mlcu.f90"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr, res.stderr


# ---------------------------------------------------------------------------------------------
# real WRF (optional)

WRF_GIT = os.environ.get("MLCU_WRF_GIT")
WRF_TAGS = [t for t in os.environ.get("MLCU_WRF_TAGS", "v4.7.1").split(",") if t]


def _export(tag: str, dest: Path) -> None:
    listed = subprocess.run(["git", "-C", WRF_GIT, "ls-tree", "-r", "--name-only", tag],
                            check=True, capture_output=True, text=True).stdout.split("\n")
    wanted = set(wrf.REQUIRED) | set(wrf.OPTIONAL) | {"inc/version_decl", "README"}
    paths = [p for p in listed if p in wanted] + [p for p in listed if p.startswith("Registry/")]
    data = subprocess.run(["git", "-C", WRF_GIT, "archive", "--format=tar", tag, "--", *paths],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


@pytest.mark.skipif(not WRF_GIT, reason="set MLCU_WRF_GIT to a git clone of WRF")
@pytest.mark.parametrize("tag", WRF_TAGS)
def test_real_wrf_apply_check_revert(tmp_path, tag):
    root = tmp_path / tag
    root.mkdir()
    _export(tag, root)
    before = snapshot(root)
    report = wrf.check(root, flags=FLAGS)
    assert report.ok, str(report)
    wrf.apply(root, 97, FLAGS)
    assert "state: applied and up to date" in str(wrf.check(root, flags=FLAGS))
    patched = snapshot(root)
    wrf.apply(root, 97, FLAGS)
    assert snapshot(root) == patched
    wrf.revert(root)
    assert snapshot(root) == before


def test_the_emulator_is_finalised_at_the_end_of_the_run(tree):
    """wrf_finalize calls mlcu_finalize (the last counters line, the runtime released) after
    the I/O is shut down and before WRF reports success and shuts MPI down."""
    wrf.apply(tree, 97, FLAGS)
    top = (tree / "main/module_wrf_top.F").read_text()
    lines = top.splitlines()
    start = next(i for i, x in enumerate(lines) if x.strip().startswith("SUBROUTINE wrf_finalize"))
    assert "USE module_cu_mlcu_wrf, ONLY : mlcu_finalize" in "\n".join(lines[start:start + 5])
    assert top.index("CALL med_shutdown_io") < top.index("CALL mlcu_finalize()") \
        < top.index("'wrf: SUCCESS COMPLETE WRF'")
    depend = (tree / "main/depend.common").read_text()
    assert depend.index("module_wrf_top.o: ../phys/module_cu_mlcu_wrf.o") \
        < depend.index("module_wrf_top.o: \\")
    module = (wrf.ADDED / "phys" / "module_cu_mlcu_wrf.F").read_text()
    assert re.search(r"PUBLIC\s*::.*\bmlcu_finalize\b", module)
    # finalises only where the emulator was started
    body = module[module.index("SUBROUTINE mlcu_finalize"):module.index("END SUBROUTINE mlcu_finalize")]
    assert "IF ( started ) THEN" in body and "CALL cu_mlcu_finalize(" in body
    wrf.revert(tree)
    assert "mlcu_finalize" not in (tree / "main/module_wrf_top.F").read_text()
