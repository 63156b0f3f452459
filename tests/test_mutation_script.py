"""scripts/mutation.py's --recheck: which mutants it tests again and which verdicts it keeps.

A small module in a real git repository stands in for a core module; mutmut's own generator makes
its mutants (the same function scripts/mutation.py calls), so the names are the ones a run records.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = "src/pkg/mod.py"
BEFORE = """def add_one(x):
    return x + 1


def label(flag):
    return "yes" if flag else "no"
"""


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    pytest.importorskip("mutmut")
    spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts" / "mutation.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutation_script", module)
    spec.loader.exec_module(module)
    # The script works on the repository it lives in; here, on a small one of the test's own.
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "EQUIVALENTS", tmp_path / "tests" / "mutation_equivalents.txt")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / MODULE).write_text(BEFORE)
    (tmp_path / "tests" / "mutation_equivalents.txt").write_text("# none yet\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "first"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args], cwd=tmp_path, check=True)
    return module


def _head(root: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


def _entry(script: ModuleType, root: Path, alive: list[str], equivalent: int = 0) -> dict[str, object]:
    grouped, _ = script.mutants_by_function(MODULE, (root / MODULE).read_text())
    total = sum(map(len, grouped.values()))
    return {
        "killed": total - len(alive) - equivalent,
        "survived": len(alive),
        "equivalent": equivalent,
        "not_checked": 0,
        "surviving_mutants": alive,
        "commit": _head(root),
    }


def test_a_changed_function_is_tested_again_whole_and_the_rest_keeps_its_verdicts(
    script: ModuleType, tmp_path: Path
) -> None:
    grouped, _ = script.mutants_by_function(MODULE, BEFORE)
    add_one, label = grouped["x_add_one"], grouped["x_label"]
    assert all(name.startswith("pkg.mod.x_") for name in add_one + label) and len(label) >= 3
    entry = _entry(script, tmp_path, alive=[label[0]])
    (tmp_path / MODULE).write_text(BEFORE.replace("x + 1", "x + 2"))  # add_one changes; label does not
    (tmp_path / "tests" / "mutation_equivalents.txt").write_text(f"{label[1]}  # why it is equivalent\n")

    plan = script.RecheckPlan(MODULE, entry, script.read_equivalents())
    new_add_one = script.mutants_by_function(MODULE, (tmp_path / MODULE).read_text())[0]["x_add_one"]
    assert plan.changed_functions == ["x_add_one"]
    assert sorted(plan.to_run) == sorted([*new_add_one, label[0]])
    assert plan.listed == [label[1]]
    assert sorted(plan.killed_then) == sorted(label[2:])

    # this run kills the survivor and one new mutant; another new one survives
    tested = {name: 0 for name in plan.to_run} | {label[0]: 1, new_add_one[0]: 1}
    score = script.score_module(plan.verdicts(tested), script.read_equivalents())
    assert (score["killed"], score["survived"], score["equivalent"], score["not_checked"]) == (
        len(label) - 2 + 2,
        len(new_add_one) - 1,
        1,
        0,
    )
    assert score["surviving_mutants"] == sorted(new_add_one[1:])


def test_a_mutant_listed_since_the_run_but_no_longer_is_tested_again(script: ModuleType, tmp_path: Path) -> None:
    label = script.mutants_by_function(MODULE, BEFORE)[0]["x_label"]
    entry = _entry(script, tmp_path, alive=[], equivalent=1)
    equivalents = tmp_path / "tests" / "mutation_equivalents.txt"
    equivalents.write_text(f"{label[0]}  # listed when the run was scored\n")
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "list"], cwd=tmp_path, check=True
    )
    equivalents.write_text("# dropped again\n")
    plan = script.RecheckPlan(MODULE, entry, script.read_equivalents())
    assert (plan.changed_functions, plan.to_run) == ([], [label[0]])  # never counted as a kill it may not be
    assert label[0] not in plan.killed_then


def test_an_entry_that_is_not_a_complete_clean_run_tests_every_mutant_again(script: ModuleType, tmp_path: Path) -> None:
    grouped, _ = script.mutants_by_function(MODULE, BEFORE)
    everything = sorted(n for names in grouped.values() for n in names)
    (tmp_path / "tests" / "mutation_equivalents.txt").write_text(f"{everything[0]}  # why it is equivalent\n")
    entry = _entry(script, tmp_path, alive=[])
    for partial in ({**entry, "commit": entry["commit"] + "+dirty"}, {**entry, "not_checked": 3}):
        plan = script.RecheckPlan(MODULE, partial, script.read_equivalents())
        assert plan.partial and plan.killed_then == [] and plan.listed == [everything[0]]
        assert sorted(plan.to_run) == everything[1:]  # none of the interrupted run's kills is kept
        assert plan.changed_functions == sorted(grouped)
        untested = script.score_module(plan.verdicts({}), script.read_equivalents())
        assert (untested["killed"], untested["not_checked"]) == (0, len(everything) - 1)


def test_counts_that_do_not_match_the_commits_mutants_are_refused(script: ModuleType, tmp_path: Path) -> None:
    entry = _entry(script, tmp_path, alive=[])
    assert not script.RecheckPlan(MODULE, entry, {}).partial
    # counts that do not add up to the mutants of that commit's source: another mutmut made them
    with pytest.raises(SystemExit, match=r"gives \d+ mutants but its entry counts \d+"):
        script.RecheckPlan(MODULE, {**entry, "killed": int(entry["killed"]) + 1}, {})  # type: ignore[call-overload]
