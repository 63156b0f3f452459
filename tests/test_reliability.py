"""The reliability suite at CI size: runs `bench/reliability.py --size ci` once (a few minutes) and
asserts its invariants (zero wrong pins, zero leaks, zero half-written branches, ...), never timings.

What each section does is in bench/reliability.py's docstring. The `reliability` marker is
registered by tests/reliability_markers.py (no pyproject.toml edit); `slow` is set here, and the
`registry`/`docker` markers come from the fixtures.

The bugs this suite first found (SIGTERM and SIGKILL leaving the pin bot's worktree behind, a kill
inside `git worktree add` wedging the clone, `--from-push` of a FIFO or /dev/zero, a mapping as
`inputs.$schema`) each have a test below that held them as a strict expected failure until fixed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.reliability_markers"]
pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


# CI replays one fixed seed, so a run is reproducible; `bench/reliability.py` without --seed explores
# a new one each time (the seed is printed and kept in the JSON to replay a finding).
CI_SEED = "20261130"
FROM_PUSH_HANG = "--from-push /dev/zero", "--from-push FIFO"
SCHEMA_DICT = "inputs.$schema is a mapping"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, registry: str, base_image: str, docker_cli: str) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reliability") / "reliability.json"
    env = {**os.environ, "THEORY_REGISTRY": registry, "THEORY_BASE_IMAGE": base_image, "DOCKER": docker_cli}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reliability.py"), "--size", "ci", "--seed", CI_SEED, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.exists(), f"the suite wrote no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    data = json.loads(out.read_text())
    print(proc.stdout)  # the table, shown with -s or on failure
    assert not data.get("section_errors"), json.dumps(data.get("section_errors"), indent=1)[:4000]
    return data


def test_r1_registry_faults_never_give_a_wrong_pin(report: dict[str, Any]) -> None:
    r1 = report["R1"]
    assert sum(r1["injected_faults"].values()) > 0, "the proxy injected nothing: the test proves nothing"
    assert r1["ok"] == r1["runs"], r1["problems"]
    assert r1["wrong_pins"] == 0, r1["problems"]
    # a failed attempt may only be "the registry kept failing" (re-runs resume), never anything else
    assert set(r1["failed_attempt_codes"]) <= {"ERR_REGISTRY_UNREACHABLE"}, r1["failed_attempt_codes"]


def test_r1_401_403_404_fail_at_once(report: dict[str, Any]) -> None:
    fast = report["R1"]["fast_fails"]
    assert len(fast) == 6
    for case in fast:
        assert case["exit"] not in (0, 1), case  # refused, with a real error code (not ERR_INTERNAL)
        assert not case["retried"], case  # at once: on the first refusal, without a retry
        assert case["file_untouched"], case
    # How long each refusal took is the benchmark's figure (bench/reliability.py `fast`, `secs`), not
    # asserted here: on a loaded 2-core CI machine a push's own start-up can pass any fixed bound.


def test_r2_killed_pin_leaves_the_old_or_the_new_file(report: dict[str, Any]) -> None:
    pin = report["R2"]["pin"]
    n = pin["iterations"]
    assert pin.get("parse_ok", 0) == n
    assert pin.get("old_or_new", 0) == n, report["R2"]["pin_examples"]
    assert pin.get("rerun_ok", 0) == n, report["R2"]["pin_examples"]
    # A SIGKILL may land between the temporary file's creation and its rename; the re-run removes it.
    assert pin.get("tmp_files_after_rerun", 0) == 0, report["R2"]["pin_examples"]


def test_r2_killed_pr_never_half_writes_the_bot_branch(report: dict[str, Any]) -> None:
    pr = report["R2"]["pr"]
    n = pr["iterations"]
    assert pr.get("half_written_branches", 0) == 0, report["R2"]["pr_examples"]
    # a re-run finishes the job by itself: the bench repairs a wedged clone by hand only so that it can
    # go on measuring, and counts each such repair as a failure here
    assert pr.get("rerun_failed", 0) == 0, report["R2"]["pr_examples"]
    assert pr.get("rerun_failed_wedged_by_stale_worktree", 0) == 0, report["R2"]["pr_examples"]
    assert pr.get("rerun_ok", 0) == n + pr["targeted_iterations"], report["R2"]["pr_examples"]
    assert pr.get("open_prs_at_end") == 1
    # a kill may leave git's lock files (inside `git fetch`: a private ref's lock); the re-run removes them
    assert pr.get("lock_files_after_rerun", 0) == 0, report["R2"]["pr_examples"]


def test_r2_interrupted_pr_removes_its_worktree(report: dict[str, Any]) -> None:
    pr = report["R2"]["pr"]
    assert pr.get("targeted_SIGINT", 0) >= 1, "no SIGINT landed while the worktree existed"
    assert pr.get("targeted_stale_worktrees_after_SIGINT", 0) == 0


def test_r2_terminated_pr_removes_its_worktree(report: dict[str, Any]) -> None:
    pr = report["R2"]["pr"]
    assert pr.get("targeted_SIGTERM", 0) >= 1, "no SIGTERM landed while the worktree existed"
    assert pr.get("targeted_stale_worktrees_after_SIGTERM", 0) == 0


def test_r2_rerun_reclaims_a_killed_prs_worktree(report: dict[str, Any]) -> None:
    pr = report["R2"]["pr"]
    assert pr.get("targeted_SIGKILL", 0) >= 1, "no SIGKILL landed while the worktree existed"
    assert pr.get("targeted_stale_worktrees_kept_by_rerun", 0) == 0


def test_r2_pr_killed_inside_worktree_add_is_finished_by_a_rerun(report: dict[str, Any]) -> None:
    pr = report["R2"]["pr"]
    assert pr.get("in_worktree_add_kills", 0) >= 1, "no kill landed inside `git worktree add`"
    assert pr.get("in_worktree_add_rerun_failed", 0) == 0, report["R2"]["pr_examples"].get(
        "in_worktree_add_rerun_failed"
    )


def test_r3_concurrent_pins_and_prs_lose_no_update(report: dict[str, Any]) -> None:
    r3 = report["R3"]
    want = r3["rounds"] * r3["processors"]
    assert max(o["peak_overlap"] for o in r3["overlap"]) > 1, "the runs did not overlap: the test proves nothing"
    assert r3.get("lost_pin_updates", 0) == 0, r3["examples"]
    assert r3.get("pins_intended", 0) == want, r3["examples"]
    assert r3.get("lost_branch_updates", 0) == 0, r3["examples"]
    assert r3.get("branches_final_ok", 0) == want, r3["examples"]
    assert r3["processors_with_one_pr"] == r3["processors"], r3["prs_per_processor"]
    assert r3.get("pin_ok", 0) == 10 * r3["rounds"], r3["examples"]


def test_r4_hostile_input_never_crashes_or_moves_the_file(report: dict[str, Any]) -> None:
    r4 = report["R4"]
    assert r4["cases"] >= 300
    assert r4.get("tracebacks", 0) == 0, r4["examples"].get("tracebacks")
    assert r4.get("json_contract_violations", 0) == 0, r4["examples"].get("json_contract_violations")
    assert r4.get("file_changed_after_failure", 0) == 0, r4["examples"].get("file_changed_after_failure")
    assert r4.get("option_injection", 0) == 0, r4["examples"].get("option_injection")
    assert r4.get("harness_errors", 0) == 0, r4["examples"].get("harness_errors")
    assert r4["subprocess_hangs"] == 0 and r4["subprocess_tracebacks"] == 0


def test_r4_hang_probes_end_with_an_error(report: dict[str, Any]) -> None:
    for probe in report["R4"]["hang_probes"]:
        assert not probe["hung"] and not probe["traceback"], probe
        assert probe["exit"] not in (0, 1, None) and probe["file_untouched"], probe


def test_r4_from_push_of_a_fifo_or_dev_zero_does_not_hang(report: dict[str, Any]) -> None:
    probes = [p for p in report["R4"]["hang_probes"] if p["probe"] in FROM_PUSH_HANG]
    assert len(probes) == 2
    for probe in probes:
        assert not probe["hung"] and not probe["traceback"] and probe["exit"] not in (0, 1, None), probe


def test_r4_inputs_schema_of_the_wrong_type_is_a_validation_error(report: dict[str, Any]) -> None:
    (probe,) = [p for p in report["R4"]["hang_probes"] if p["probe"] == SCHEMA_DICT]
    assert probe["code"] == "ERR_VALIDATION" and not probe["traceback"], probe


def test_r5_no_secret_value_leaks(report: dict[str, Any]) -> None:
    r5 = report["R5"]
    assert r5["places_checked"] >= 100
    assert r5["local_start_ok"], r5["start_error"]
    assert r5["prs_checked"] >= 1
    assert r5["leaks"] == 0, r5["leak_places"]


def test_nothing_left_behind(report: dict[str, Any]) -> None:
    left = report["left_behind"]
    assert all("/.git/worktrees/" in p for p in left["lock_files"]), left["lock_files"]
    assert left["temp_files"] == []
    assert left["containers"] == []
    assert left["local_tags"] == []
    # the only TMPDIR entries / worktrees / git locks allowed are the killed pr's (xfails above)
    assert all(e.startswith("theory-deploy-pin-") for e in left["tmpdir_entries"]), left["tmpdir_entries"]
    assert set(left["worktrees"]) <= {"r2pr/work"}, left["worktrees"]
