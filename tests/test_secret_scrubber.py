"""The secret scrubber (secret_values.scrub) and the sinks it guards: every occurrence of every known
value is hidden, whatever the order values were registered in, however they repeat, contain or overlap
one another, in a plain string, in an error message a verb raises (human and --json), and in a
verb's JSON result. Values are fresh canaries per test (the scrubber's registry is process-wide)."""

from __future__ import annotations

import argparse
import json
import uuid

import pytest

from tests.helpers import assert_no_canary
from theory_deploy import output, secret_values
from theory_deploy.cli import framework
from theory_deploy.errors import TheoryDeployError
from theory_deploy.secret_values import register_secret_value, scrub


def fresh(n: int = 16) -> str:
    """A value nothing else registered and no text holds by chance: lowercase hex, no separators."""
    return uuid.uuid4().hex[:n]


def pieces_left(text: str, *values: str) -> list[str]:
    """Every 4-character piece of a value that still shows in `text` (a cut-off tail of a secret is a
    leak too)."""
    return sorted({v[i : i + 4] for v in values for i in range(len(v) - 3) if v[i : i + 4] in text})


# ---------------------------------------------------------------------------------------------------
# scrub(text)


def test_every_occurrence_of_a_value_is_hidden_not_only_the_first() -> None:
    value = fresh()
    register_secret_value(value)
    text = f"a {value} b {value}, c={value}; d:{value}"
    assert scrub(text) == "a *** b ***, c=***; d:***"
    assert scrub(f"{value}{value}{value}") == "***"  # back to back: one run of hidden characters
    assert scrub("\n".join([value] * 5)) == "\n".join(["***"] * 5)


@pytest.mark.parametrize("order", ["short first", "long first"])
def test_a_value_inside_another_is_hidden_with_the_longer_one(order: str) -> None:
    short = fresh(8)
    long = short + fresh(8)  # "abc" and "abcdef": the long one starts with the short one
    for value in (short, long) if order == "short first" else (long, short):
        register_secret_value(value)
    assert scrub(f"[{long}] [{short}] [{long}]") == "[***] [***] [***]"
    middle = fresh(6) + short + fresh(6)  # the short one in the middle of the long one
    register_secret_value(middle)
    assert scrub(f"<{middle}>") == "<***>"
    assert pieces_left(scrub(f"{long} {middle} {short}"), long, middle, short) == []


def test_overlapping_values_leave_no_piece_of_either() -> None:
    head, shared, tail = fresh(8), fresh(8), fresh(8)
    a, b = head + shared, shared + tail  # a's end is b's start
    register_secret_value(a)
    register_secret_value(b)
    assert scrub(f"x{head}{shared}{tail}y") == "x***y"
    assert scrub(f"{a} {b} {head}{shared}{tail}") == "*** *** ***"
    assert pieces_left(scrub(f"{b}{a}{b}"), a, b) == []


def test_escaped_forms_are_hidden_at_every_occurrence() -> None:
    value = f'{fresh(8)}"\\{fresh(8)}'  # json.dumps and repr escape the quote and the backslash
    register_secret_value(value)
    escaped = json.dumps(value)[1:-1]
    assert escaped != value
    assert scrub(f"{escaped} and {escaped} and {value}") == "*** and *** and ***"


# ---------------------------------------------------------------------------------------------------
# The sinks: a verb's JSON result, and an error a verb raises (run_tool: --json and human)


def _tool(verb: framework.Verb) -> argparse.ArgumentParser:
    parser, subparsers, parent = framework.new_tool("scrubtest", "the scrubber's sinks")
    framework.add_verb(subparsers, parent, "go", verb, "run the verb")
    return parser


def _values() -> tuple[str, str, str, str]:
    """A value, one containing it, and two that overlap: registered in the order that hides least
    when a scrubber works shortest-first or stops at the first occurrence."""
    short = fresh(10)
    long = short + fresh(10)
    left, right = fresh(10), fresh(10)
    a, b = left + right, right + fresh(10)
    for value in (short, long, a, b):
        register_secret_value(value)
    return short, long, a, b


def test_a_json_result_hides_every_value_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    short, long, a, b = _values()
    overlapped = a + b[len(a) - len(a) // 2 :]  # a, then the rest of b after their shared part
    result = {
        "summary": f"{short} {short}",
        "items": [long, short, long],
        "nested": {"text": f"{long}/{short}/{long}", "overlap": overlapped},
    }
    code = framework.run_tool(_tool(lambda _args: result), ["go", "--json"])
    out = capsys.readouterr()
    assert code == 0
    printed = json.loads(out.out)
    assert printed["summary"] == "*** ***"
    assert printed["items"] == ["***", "***", "***"]
    assert printed["nested"] == {"text": "***/***/***", "overlap": "***"}
    assert_no_canary(out.out + out.err, [short, long, a, b])
    assert pieces_left(out.out + out.err, short, long, a, b) == []


def test_an_error_message_hides_every_value_in_json_and_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    short, long, a, b = _values()

    def fail(_args: argparse.Namespace) -> dict[str, object]:
        raise TheoryDeployError(
            f"token {long} rejected; retried with {long}; short form {short} and {short}; pair {a}{b}",
            remedy=f"Rotate {short}.",
        )

    code = framework.run_tool(_tool(fail), ["go", "--json"])
    out = capsys.readouterr()
    assert code == TheoryDeployError.exit_code
    message = json.loads(out.out)["error"]["message"]
    assert message == "token *** rejected; retried with ***; short form *** and ***; pair *** Fix: Rotate ***."
    assert out.err.startswith("error[ERR_INTERNAL]: token *** rejected; retried with ***;")
    assert pieces_left(out.out + out.err, short, long, a, b) == []

    # an unexpected exception (a bug) is reported through the same sink
    def crash(_args: argparse.Namespace) -> dict[str, object]:
        raise RuntimeError(f"{short}:{long}:{short}")

    code = framework.run_tool(_tool(crash), ["go"])
    out = capsys.readouterr()
    assert code == 1
    assert out.err.strip() == "error[ERR_INTERNAL]: unexpected RuntimeError: ***:***:*** " + (
        f"Fix: {TheoryDeployError.remedy}"
    )


def test_progress_and_human_summaries_hide_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    short, long, a, b = _values()
    output.progress(f"{short}..{long}..{short}")
    output.emit_result({"summary": f"{a}{b} then {b} then {a}"}, json_mode=False)
    out = capsys.readouterr()
    assert out.err == "***..***..***\n"
    assert out.out == "*** then *** then ***\n"
    assert secret_values.scrub(f"{long}{short}") == "***"
