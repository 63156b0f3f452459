"""GitHub Actions I/O: silent outside Actions; correct file formats and escaping inside."""

from __future__ import annotations

import pytest

from theory_deploy import gha


@pytest.fixture
def actions(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    out, summary = tmp_path / "out", tmp_path / "summary"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    return out, summary


def test_outputs_single_and_multiline(actions):
    out, _ = actions
    gha.set_output("app", "llm-litellm-v1")
    gha.set_output("digests", '{\n "amd64": "x"\n}')
    lines = out.read_text().splitlines()
    name, first = lines[0].split("<<")
    assert name == "app" and lines[1:3] == ["llm-litellm-v1", first]
    name, delimiter = lines[3].split("<<")
    assert name == "digests" and delimiter.startswith("ghadelimiter_") and len(delimiter) > 20
    assert delimiter != first
    assert lines[4:7] == ["{", ' "amd64": "x"', "}"] and lines[7] == delimiter


def test_masks_and_annotations_are_escaped(actions, capsys):
    gha.add_mask("line1\nline2")
    gha.annotate("error", "bad: 100%\nnext", file="a,b:c.yaml", line=3, col=7, title="T")
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == ["::add-mask::line1", "::add-mask::line2"]
    assert err[2] == "::error file=a%2Cb%3Ac.yaml,line=3,col=7,title=T::bad: 100%25%0Anext"


def test_summary_is_capped(actions):
    _, summary = actions
    gha.add_summary("x" * (gha.SUMMARY_LIMIT_BYTES + 5000))
    gha.add_summary("more")
    size = summary.stat().st_size
    assert size <= gha.SUMMARY_LIMIT_BYTES < 1024 * 1024
    assert "truncated" in summary.read_text()


def test_silent_outside_actions(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    gha.add_mask("s3cret-value")
    gha.annotate("warning", "w")
    with gha.group("g"):
        pass
    gha.set_output("a", "b")
    gha.add_summary("s")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_table_escapes_pipes():
    table = gha.markdown_table(["a", "b"], [["x|y", "z"]])
    assert "x\\|y" in table and table.count("\n") == 3


def test_registered_secret_values_never_reach_the_runner_except_to_be_masked(actions, capsys):
    """Annotations, their titles and the step summary go through the secret scrubber; the only place
    a value is written to the log is its own add-mask command."""
    from tests.helpers import assert_no_canary, make_canary
    from theory_deploy import secret_values

    canary = make_canary()
    secret_values.register_secret_value(canary)
    _, summary = actions
    gha.annotate("error", f"pull failed with {canary}", file="registry.yaml", line=2, title=f"T {canary}")
    gha.annotate("warning", f"again {canary}")
    gha.add_summary(f"| secret | {canary} |\n")
    err = capsys.readouterr().err
    masks = [line for line in err.splitlines() if line.startswith("::add-mask::")]
    assert masks == [f"::add-mask::{canary}"]
    assert_no_canary("\n".join(line for line in err.splitlines() if line not in masks), [canary])
    assert "pull failed with ***" in err and "again ***" in err
    assert_no_canary(summary.read_text(), [canary])
