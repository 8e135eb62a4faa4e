"""The `mlcu` console command, run as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

MLCU = str(Path(sys.executable).with_name("mlcu"))
REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([MLCU, *args], capture_output=True, text=True, timeout=300)


def test_help():
    out = run("--help")
    assert out.returncode == 0 and "generate" in out.stdout
    out = run("generate", "--help")
    assert out.returncode == 0 and "--config" in out.stdout and "--out" in out.stdout


def test_generate_writes_wrfout_and_prints_summary(tmp_path):
    out = run("generate", "--config", str(REPO / "configs" / "generate.yaml"), "--out", str(tmp_path),
              "--nx", "8", "--ny", "8", "--dx", "9000", "--run-minutes", "20", "--quiet")
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "dx09km").glob("wrfout_d01_*"))
    assert [f.name for f in files] == ["wrfout_d01_2026-07-01_12:00:00",
                                       "wrfout_d01_2026-07-01_12:10:00",
                                       "wrfout_d01_2026-07-01_12:20:00"]
    assert "triggered" in out.stdout and "K/day" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["9000"]["columns"] == 3 * 64


def test_bad_settings_fail_with_a_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nx: 2\n")
    out = run("generate", "--config", str(bad), "--out", str(tmp_path / "x"))
    assert out.returncode == 2
    assert "mlcu generate: error:" in out.stderr and "nx, ny >= 4" in out.stderr
