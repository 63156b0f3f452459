"""No silent skips: under THEORY_REQUIRE_DOCKER=1 (scripts/test, hence CI) a skipped test fails the
run unless tests/skip_allowlist.txt lists it with a reason. Checked by running pytest, with this
repository's own conftest.py, on a probe suite in a scratch folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

PROBE = """
import pytest

def test_passes():
    assert 1 + 1 == 2

def test_skips():
    pytest.skip("no reason anyone reviewed")

@pytest.mark.xfail(reason="expected to fail", strict=True)
def test_xfails():
    assert False
"""


def run_probe(tmp_path: Path, allowlist: str) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "tests"
    suite.mkdir()
    for name in ("conftest.py", "helpers.py"):
        shutil.copy(TESTS / name, suite / name)
    (suite / "__init__.py").write_text("")
    (suite / "skip_allowlist.txt").write_text(allowlist)
    (suite / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "THEORY_REQUIRE_DOCKER": "1", "THEORY_DEV_SERVICES_DISABLED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(suite)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_unlisted_skip_fails_the_run(tmp_path: Path) -> None:
    proc = run_probe(tmp_path, "# nothing listed\n")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped, 1 xfailed" in proc.stdout  # an expected failure is not a skip
    assert "skip_allowlist.txt does not list" in proc.stdout
    assert "tests/test_probe.py::test_skips" in proc.stdout


def test_a_listed_skip_with_its_reason_passes(tmp_path: Path) -> None:
    proc = run_probe(tmp_path, "tests/test_probe.py::test_skips  # the probe: allowed on purpose\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    proc = run_probe(tmp_path, "tests/test_probe.py::test_skips\n")
    assert proc.returncode != 0
    assert "needs `# why`" in proc.stdout + proc.stderr
