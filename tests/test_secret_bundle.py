"""Processor secrets in the consumer's own names, carried in one value (the input processor-secrets,
from the secret PROCESSOR_SECRETS): each value masked on its own, none ever in a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_no_canary, make_canaries

from theory_deploy import secret_values
from theory_deploy.errors import UsageError
from theory_deploy.secret_values import parse_secret_bundle


@pytest.fixture
def in_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # gha.add_mask writes ::add-mask:: only inside a run


def masks(stderr: str) -> list[str]:
    return [line.removeprefix("::add-mask::") for line in stderr.splitlines() if line.startswith("::add-mask::")]


def test_lines_and_json_give_the_same_names_and_values(in_actions: None, capsys: pytest.CaptureFixture[str]) -> None:
    canary = make_canaries("ACME_API_KEY", "ACME_BASE")
    lines = f'# the consumer\'s own names\nACME_API_KEY={canary["ACME_API_KEY"]}\n\nexport ACME_BASE="{canary["ACME_BASE"]}"\n'
    assert parse_secret_bundle(lines, where="input processor-secrets") == canary
    assert parse_secret_bundle(json.dumps(canary), where="input processor-secrets") == canary
    # every value masked on its own, before anything could print it
    assert sorted(set(masks(capsys.readouterr().err))) == sorted(canary.values())
    assert secret_values.scrub(f"x {canary['ACME_BASE']} y") == "x *** y"


def test_a_short_value_is_masked_too_and_an_empty_one_stays_missing(
    in_actions: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_secret_bundle("PIN=123\nEMPTY=\n", where="w") == {"PIN": "123", "EMPTY": ""}
    assert masks(capsys.readouterr().err) == ["123"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ACME_API_KEY {canary}", "line 1 is not NAME=value"),
        ("OK=1\n{canary}", "line 2 is not NAME=value"),
        ("1BAD={canary}", "'1BAD' is not a variable name"),
        ("MODAL_TOKEN_ID={canary}", "'MODAL_TOKEN_ID' is reserved"),
        ("THEORY_STAGES={canary}", "'THEORY_STAGES' is reserved"),
        ("PATH={canary}", "'PATH' is reserved"),
        ("REGISTRY_PASSWORD={canary}", "'REGISTRY_PASSWORD' is reserved"),
        ("A={canary}\nA={canary}x", "'A' is given twice"),
        ('{{"A": "{canary}", "B": 3}}', "'B': the value is not a string"),
        ('{{"A": "{canary}"', "is not valid JSON"),
        ('["{canary}"]', "not an object"),
    ],
)
def test_bad_bundles_name_the_line_never_the_text(text: str, expected: str) -> None:
    canary = make_canaries("VALUE")["VALUE"]
    with pytest.raises(UsageError) as caught:
        parse_secret_bundle(text.format(canary=canary), where="input processor-secrets")
    message = caught.value.render()
    assert expected in message and "input processor-secrets" in message
    assert_no_canary(message, [canary])
    assert caught.value.__cause__ is None and (caught.value.__suppress_context__ or caught.value.__context__ is None)


def test_the_action_refuses_a_bad_bundle_with_its_exit_code_and_no_value(tmp_path: Path) -> None:
    """The real entry point a workflow step runs: ERR_USAGE (exit 2), the line named, nothing leaked."""
    canary = make_canaries("VALUE")["VALUE"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("THEORY_", "GITHUB_"))},
        "GITHUB_ACTIONS": "true",
        "RUNNER_TEMP": str(tmp_path),
        "THEORY_REFS": "acme/echo@1",
        "THEORY_IN_PROCESSOR_SECRETS": f"ACME_API_KEY={canary}\nnot a pair {canary}\n",
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-m", "theory_deploy.action", "deploy"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "ERR_USAGE" in proc.stderr and "line 2 is not NAME=value" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the only place a value may appear is the mask command itself, which the runner swallows
    shown = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("::add-mask::"))
    assert_no_canary(shown, [canary])
    assert f"::add-mask::{canary}" in proc.stderr
