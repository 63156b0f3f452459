"""pytest plugin active only under mutmut (scripts/mutation): lets mutants reach CLI subprocesses.

Loaded by tests/conftest.py when MUTANT_UNDER_TEST is set, which only mutmut does. See
sitecustomize.py beside this file for what the subprocesses do with it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def activate() -> None:
    """Point every subprocess started from now on at mutmut's mutated sources (cwd is `mutants/`)."""
    mutants = Path.cwd()
    hits = tempfile.mkdtemp(prefix="theory-mutation-hits-")
    paths = [str(mutants / "src"), str(HERE)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    os.environ["THEORY_MUTATION_ROOT"] = str(mutants.parent)
    os.environ["THEORY_MUTATION_HITS"] = hits


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Hand the functions this test's subprocesses entered to mutmut's statistics, before mutmut
    files the test's own hits (its teardown hook runs after this one)."""
    hits_dir = os.environ.get("THEORY_MUTATION_HITS")
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not hits_dir:
        return
    from mutmut.state import state

    for hits_file in Path(hits_dir).glob("*.hits"):
        state()._stats.update(hits_file.read_text().split())
        hits_file.unlink()
