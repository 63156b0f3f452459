"""The exact contract of theory_deploy.secret_values' checks: every message and remedy a user sees
(word for word: errors say what, where and how to fix), which values are refused and which pass,
what gets masked in the Actions log and registered with the scrubber, and how the registry
credentials and their host are read. No value ever shows in a message (canaries check that).

Values are fresh per test: the scrubber's registry is process-wide, and a value registered once is
never masked again."""

from __future__ import annotations

import json
import random
import uuid

import pytest

from tests.helpers import assert_no_canary, make_canary
from theory_deploy import secret_values
from theory_deploy.errors import RegistryAuthError, TheoryDeployError, UsageError
from theory_deploy.secret_values import (
    check_header_value,
    parse_secret_bundle,
    registry_credentials,
    registry_credentials_host,
)

WHERE = "input processor-secrets"
BUNDLE_FIX = (
    " Fix: Give input processor-secrets as NAME=value lines (one per secret) or as a JSON object of NAME: value."
)


@pytest.fixture
def in_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # gha.add_mask writes ::add-mask:: only inside a run


@pytest.fixture
def no_registry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process environment holds none of the registry variables, so a value can only come from
    the mapping a test passes (a function that read os.environ instead would find nothing)."""
    for name in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD", *secret_values.REGISTRY_HOST_VARS):
        monkeypatch.delenv(name, raising=False)


def masks(stderr: str) -> list[str]:
    return [line.removeprefix("::add-mask::") for line in stderr.splitlines() if line.startswith("::add-mask::")]


def unknown_value(length: int) -> str:
    """A value of `length` characters the scrubber does not know yet (nor any part of it). CJK
    ideographs, not hex: a short hex value, once registered, would hide pieces of digests that other
    tests in the same process print."""
    while True:
        value = "".join(chr(random.randrange(0x4E00, 0x9FFF)) for _ in range(length))
        if secret_values.scrub(value) == value:
            return value


def header_error(name: str, problem: str) -> str:
    return (
        f"{name} {problem}, so it cannot be sent as an HTTP header; refusing to use it (its value is not shown)."
        f' Fix: Set {name} again without the stray character (e.g. `printf %s "$TOKEN"`, not `echo`).'
    )


# ---------------------------------------------------------------------------------------------------
# check_header_value


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        # a space before the newline: the first *control* character is named, not the first blank
        ("{a} {b}\n", "contains a newline (U+000A)"),
        ("{a}\r\n{b}", "contains a carriage return (U+000D)"),
        ("{a}\t{b}", "contains a tab (U+0009)"),
        ("{a} \x00{b}", "contains a control character (U+0000)"),
        ("{a}\x1b[0m{b}", "contains a control character (U+001B)"),
        ("{a}\x7f{b}", "contains a control character (U+007F)"),  # DEL is a control character too
        (" {a}{b}", "starts or ends with whitespace"),
        ("{a}{b} ", "starts or ends with whitespace"),
        ("{a}é{b}", "contains non-ASCII characters"),  # refused by default (ascii_only=True)
    ],
)
def test_a_value_no_header_can_carry_is_refused_by_name_never_by_value(template: str, problem: str) -> None:
    a, b = make_canary(), make_canary()
    with pytest.raises(UsageError) as caught:
        check_header_value(template.format(a=a, b=b), "ACME_TOKEN", UsageError)
    error = caught.value
    assert type(error) is UsageError
    assert error.message == (
        f"ACME_TOKEN {problem}, so it cannot be sent as an HTTP header; refusing to use it (its value is not shown)."
    )
    assert error.render() == header_error("ACME_TOKEN", problem)
    assert_no_canary(error.render(), [a, b])


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc.def",  # a space inside a value is fine in a header
        "a b c",
        "~!@#$%^&*()_+{}|:<>?`-=[]\\;',./\"",  # every printable ASCII character other than letters
    ],
)
def test_a_printable_ascii_value_passes_as_is(value: str) -> None:
    assert check_header_value(value, "ACME_TOKEN", UsageError) == value
    assert check_header_value(value, "ACME_TOKEN", UsageError, ascii_only=False) == value


def test_non_ascii_passes_only_when_the_caller_encodes_it() -> None:
    value = "pässwörd-ünïcode ✓"
    assert check_header_value(value, "ACME_TOKEN", UsageError, ascii_only=False) == value
    with pytest.raises(UsageError) as caught:
        check_header_value(value, "ACME_TOKEN", UsageError)
    assert caught.value.render() == header_error("ACME_TOKEN", "contains non-ASCII characters")
    # control characters and whitespace are refused whatever ascii_only says
    with pytest.raises(UsageError) as caught:
        check_header_value(value + "\n", "ACME_TOKEN", UsageError, ascii_only=False)
    assert caught.value.render() == header_error("ACME_TOKEN", "contains a newline (U+000A)")
    with pytest.raises(UsageError) as caught:
        check_header_value(" " + value, "ACME_TOKEN", UsageError, ascii_only=False)
    assert caught.value.render() == header_error("ACME_TOKEN", "starts or ends with whitespace")
    with pytest.raises(UsageError) as caught:
        check_header_value("x\x7fy", "ACME_TOKEN", UsageError, ascii_only=False)
    assert caught.value.render() == header_error("ACME_TOKEN", "contains a control character (U+007F)")
    # U+0080 is not ASCII but is no control character in the sense checked here
    assert check_header_value("x\x80y", "ACME_TOKEN", UsageError, ascii_only=False) == "x\x80y"


def test_the_error_raised_is_the_callers_class() -> None:
    with pytest.raises(RegistryAuthError) as caught:
        check_header_value("a\nb", "SOME_VAR", RegistryAuthError)
    assert type(caught.value) is RegistryAuthError
    assert caught.value.code == "ERR_REGISTRY_AUTH"
    assert caught.value.render() == header_error("SOME_VAR", "contains a newline (U+000A)")


# ---------------------------------------------------------------------------------------------------
# registry_credentials


def test_registry_credentials_come_from_the_mapping_given(no_registry_env: None) -> None:
    password = make_canary()
    assert registry_credentials({"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": password}) == ("bot", password)
    assert secret_values.scrub(f"pw={password}") == "pw=***"


def test_registry_credentials_default_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    password = make_canary()
    monkeypatch.setenv("REGISTRY_USERNAME", "bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", password)
    assert registry_credentials() == ("bot", password)


def test_a_password_alone_is_no_credentials_but_is_registered_at_once(no_registry_env: None) -> None:
    password = make_canary()
    assert registry_credentials({"REGISTRY_PASSWORD": password}) is None
    assert registry_credentials({"REGISTRY_USERNAME": "", "REGISTRY_PASSWORD": password}) is None
    assert secret_values.scrub(f"[{password}]") == "[***]"


def test_a_user_alone_is_no_credentials(
    no_registry_env: None, in_actions: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert registry_credentials({"REGISTRY_USERNAME": "bot"}) is None
    assert registry_credentials({"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": ""}) is None
    assert registry_credentials({}) is None
    assert masks(capsys.readouterr().err) == []  # nothing was read, so nothing is masked


def test_non_ascii_registry_credentials_are_accepted(no_registry_env: None) -> None:
    """Basic auth encodes user:password as UTF-8, so non-ASCII is fine in both (unlike a raw header)."""
    user, password = "jöe-ünïcode", "pässwörd-" + make_canary()
    assert registry_credentials({"REGISTRY_USERNAME": user, "REGISTRY_PASSWORD": password}) == (user, password)


@pytest.mark.parametrize(
    ("user", "password", "name", "problem"),
    [
        ("bot\n", "{canary}", "REGISTRY_USERNAME", "contains a newline (U+000A)"),
        (" bot", "{canary}", "REGISTRY_USERNAME", "starts or ends with whitespace"),
        ("bot", "{canary}\n", "REGISTRY_PASSWORD", "contains a newline (U+000A)"),
        ("bot", "{canary}\r", "REGISTRY_PASSWORD", "contains a carriage return (U+000D)"),
        ("bot", "{canary} ", "REGISTRY_PASSWORD", "starts or ends with whitespace"),
        ("bot", "x\x01{canary}", "REGISTRY_PASSWORD", "contains a control character (U+0001)"),
    ],
)
def test_registry_credentials_no_header_can_carry_are_refused_by_name(
    no_registry_env: None, user: str, password: str, name: str, problem: str
) -> None:
    canary = make_canary()
    with pytest.raises(RegistryAuthError) as caught:
        registry_credentials({"REGISTRY_USERNAME": user, "REGISTRY_PASSWORD": password.format(canary=canary)})
    assert type(caught.value) is RegistryAuthError
    assert caught.value.render() == header_error(name, problem)
    assert_no_canary(caught.value.render(), [canary])


def test_a_colon_in_the_registry_user_is_refused(no_registry_env: None) -> None:
    password = make_canary()
    with pytest.raises(RegistryAuthError) as caught:
        registry_credentials({"REGISTRY_USERNAME": "org:bot", "REGISTRY_PASSWORD": password})
    assert caught.value.message == ("REGISTRY_USERNAME contains ':', which Basic auth cannot carry in a user name.")
    assert caught.value.render() == (
        "REGISTRY_USERNAME contains ':', which Basic auth cannot carry in a user name. Fix: Set REGISTRY_USERNAME"
        " and REGISTRY_PASSWORD to a user/token that may read (and push) the repository."
    )
    assert caught.value.to_json()["error"]["code"] == "ERR_REGISTRY_AUTH"
    assert_no_canary(caught.value.render(), [password])
    # a colon in the password is fine: Basic auth splits at the first one
    assert registry_credentials({"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": f"a:{password}"}) == (
        "bot",
        f"a:{password}",
    )


# ---------------------------------------------------------------------------------------------------
# registry_credentials_host


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"THEORY_REGISTRY_HOST": "  HTTPS://Registry.Example.COM:5000/  "}, "registry.example.com:5000"),
        ({"THEORY_REGISTRY_HOST": "https://ghcr.io"}, "ghcr.io"),
        ({"REGISTRY_HOST": "http://LocalHost:5000//"}, "localhost:5000"),
        ({"REGISTRY_HOST": "HTTP://127.0.0.1:5001"}, "127.0.0.1:5001"),
        ({"REGISTRY_HOST": "ghcr.io/"}, "ghcr.io"),
        ({"THEORY_REGISTRY_HOST": "ghcr.io", "REGISTRY_HOST": "quay.io"}, "ghcr.io"),  # the first one set wins
        ({"THEORY_REGISTRY_HOST": "   ", "REGISTRY_HOST": "quay.io"}, "quay.io"),  # blank counts as unset
        ({"THEORY_REGISTRY_HOST": "", "REGISTRY_HOST": ""}, None),
        ({}, None),
    ],
)
def test_the_registry_host_is_read_from_the_mapping_and_normalised(
    no_registry_env: None, environ: dict[str, str], expected: str | None
) -> None:
    assert registry_credentials_host(environ) == expected


def test_the_registry_host_defaults_to_the_process_environment(
    no_registry_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registry_credentials_host() is None
    monkeypatch.setenv("REGISTRY_HOST", "https://Quay.io/")
    assert registry_credentials_host() == "quay.io"
    # a mapping given is used instead of the process environment, even an empty one
    assert registry_credentials_host({}) is None


# ---------------------------------------------------------------------------------------------------
# parse_secret_bundle: values


def test_values_keep_everything_after_the_first_equals_sign() -> None:
    """Base64 tokens end in `=`: only the first `=` separates the name."""
    token = make_canary() + "=="
    assert parse_secret_bundle(f"ACME_TOKEN={token}\nACME_URL=https://x/?a=b=c", where=WHERE) == {
        "ACME_TOKEN": token,
        "ACME_URL": "https://x/?a=b=c",
    }


def test_one_pair_of_surrounding_quotes_is_removed_and_nothing_else() -> None:
    text = "\n".join(
        [
            'EMPTY_DOUBLE=""',
            "EMPTY_SINGLE=''",
            'ONE="x"',
            "TWO='xy'",
            'LONE="',
            "MIXED=\"ab'",
            'NESTED=""ab""',
            "XS=XabcX",  # only quote characters count as quotes
            "ZEDS=ZabcZ",
            "PLAIN=ab",
        ]
    )
    assert parse_secret_bundle(text, where=WHERE) == {
        "EMPTY_DOUBLE": "",
        "EMPTY_SINGLE": "",
        "ONE": "x",
        "TWO": "xy",
        "LONE": '"',
        "MIXED": "\"ab'",
        "NESTED": '"ab"',
        "XS": "XabcX",
        "ZEDS": "ZabcZ",
        "PLAIN": "ab",
    }


def test_every_value_is_masked_once_whatever_its_length(in_actions: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A value shorter than the scrubber's minimum is still masked in the log (once); one at the
    minimum is masked once too (by registering it), not twice."""
    four = unknown_value(4)
    long = make_canary()
    bundle = parse_secret_bundle(f"ONE=7\nFOUR={four}\nLONG={long}\nEMPTY=", where=WHERE)
    assert bundle == {"ONE": "7", "FOUR": four, "LONG": long, "EMPTY": ""}
    assert masks(capsys.readouterr().err) == ["7", four, long]
    assert secret_values.scrub(f"<{four}> <{long}>") == "<***> <***>"


def test_a_line_without_equals_is_masked_whole_before_it_is_refused(
    in_actions: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line without `=` may be a value pasted on its own: all of it is masked, and the error names
    only its number."""
    pasted = f"pasted {make_canary()} value"
    with pytest.raises(UsageError) as caught:
        parse_secret_bundle(f"OK=1\n{pasted}\n", where=WHERE)
    assert caught.value.render() == f"{WHERE} line 2 is not NAME=value (its text is not shown).{BUNDLE_FIX}"
    assert masks(capsys.readouterr().err) == ["1", pasted]
    assert secret_values.scrub(f"[{pasted}]") == "[***]"
    assert_no_canary(caught.value.render(), [pasted])


def test_a_json_value_that_is_not_a_string_is_masked_as_json_then_refused(
    in_actions: None, capsys: pytest.CaptureFixture[str]
) -> None:
    number = random.randrange(10**17, 10**18)
    with pytest.raises(UsageError) as caught:
        parse_secret_bundle(json.dumps({"ACME_PORT": number}), where=WHERE)
    assert caught.value.render() == (f"{WHERE} 'ACME_PORT': the value is not a string (JSON int).{BUNDLE_FIX}")
    assert masks(capsys.readouterr().err) == [str(number)]
    assert secret_values.scrub(f"port {number}") == "port ***"

    canary, fine = make_canary(), make_canary()
    with pytest.raises(UsageError) as caught:
        parse_secret_bundle(json.dumps({"OK": fine, "ACME_LIST": [canary]}), where=WHERE)
    assert caught.value.render() == (f"{WHERE} 'ACME_LIST': the value is not a string (JSON list).{BUNDLE_FIX}")
    # every value is masked before any is checked: the string one too, and the list as JSON text
    assert masks(capsys.readouterr().err) == [fine, json.dumps([canary])]
    assert_no_canary(caught.value.render(), [canary])


# ---------------------------------------------------------------------------------------------------
# parse_secret_bundle: errors, word for word


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ACME_API_KEY {canary}", "line 1 is not NAME=value (its text is not shown)"),
        ("# c\n\nOK=1\n{canary}", "line 4 is not NAME=value (its text is not shown)"),
        ("=   {canary}", "line 1 is not NAME=value (its text is not shown)"),
        ("1BAD={canary}", "line 1: '1BAD' is not a variable name (letters, digits, _)"),
        ("ACME-KEY={canary}", "line 1: 'ACME-KEY' is not a variable name (letters, digits, _)"),
        (
            "OK=1\nMODAL_TOKEN_ID={canary}",
            "line 2: 'MODAL_TOKEN_ID' is reserved (it would replace theory-deploy's own settings); rename it",
        ),
        ("PATH={canary}", "line 1: 'PATH' is reserved (it would replace theory-deploy's own settings); rename it"),
        ("A={canary}\n\nA={canary}x", "line 3: 'A' is given twice"),
        ('{{"A": "{canary}"', "is not valid JSON (Expecting ',' delimiter at line 1, column {col})"),
        ('["{canary}"]', "is a JSON value but not an object of NAME: value"),
        ('{{"A": "{canary}", "B": 3}}', "'B': the value is not a string (JSON int)"),
        ('{{"lower-case": "{canary}"}}', "key 'lower-case': 'lower-case' is not a variable name (letters, digits, _)"),
        (
            '{{"REGISTRY_AUTH": "{canary}"}}',
            "key 'REGISTRY_AUTH': 'REGISTRY_AUTH' is reserved (it would replace theory-deploy's own settings); rename it",
        ),
    ],
)
def test_bundle_errors_are_exact_and_never_show_a_value(text: str, problem: str) -> None:
    canary = make_canary()
    text = text.format(canary=canary)
    col = len(text) + 1  # where the JSON parser wanted the next ','
    with pytest.raises(UsageError) as caught:
        parse_secret_bundle(text, where=WHERE)
    error = caught.value
    assert type(error) is UsageError and error.code == "ERR_USAGE"
    assert error.message == f"{WHERE} {problem.format(col=col)}."
    assert error.render() == f"{WHERE} {problem.format(col=col)}.{BUNDLE_FIX}"
    assert_no_canary(error.render(), [canary])


def test_the_remedy_names_the_place_the_bundle_came_from() -> None:
    with pytest.raises(TheoryDeployError) as caught:
        parse_secret_bundle("not a pair", where="secret PROCESSOR_SECRETS")
    assert caught.value.remedy == (
        "Give secret PROCESSOR_SECRETS as NAME=value lines (one per secret) or as a JSON object of NAME: value."
    )


# ---------------------------------------------------------------------------------------------------
# register_secret_value / scrub: the forms a value takes in a message, each hidden whole


def test_a_value_in_its_repr_form_is_hidden_whole() -> None:
    """repr() escapes a single quote when the value also holds a double one, and keeps a non-ASCII
    letter as is (json.dumps and a bytes repr escape it): that text is hidden from its first
    character to its last."""
    value = f"{uuid.uuid4().hex}é'\"{uuid.uuid4().hex}"
    secret_values.register_secret_value(value)
    forms = (value, json.dumps(value)[1:-1], repr(value.encode("utf-8"))[2:-1])
    assert not any(repr(value)[1:-1] in form for form in forms)  # a form of its own
    assert secret_values.scrub(f"got {value!r} back") == "got '***' back"
    assert secret_values.scrub(f"got {json.dumps(value)} back") == 'got "***" back'


def test_a_value_in_its_utf8_bytes_repr_form_is_hidden_whole() -> None:
    """A non-ASCII value printed as bytes (b'caf\\xc3\\xa9...') is hidden from its first character to
    its last."""
    value = f"café-{uuid.uuid4().hex}-ü"
    secret_values.register_secret_value(value)
    shown = repr(value.encode("utf-8"))
    assert shown[2:-1] not in (value, repr(value)[1:-1], json.dumps(value)[1:-1])  # a form of its own
    assert secret_values.scrub(f"sent {shown}") == "sent b'***'"


def test_each_line_of_a_multiline_value_is_hidden_on_its_own() -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    value = f"  {first}  \n{second}\n"
    secret_values.register_secret_value(value)
    assert secret_values.scrub(f"[{first}] [{second}] [{value.strip()}]") == "[***] [***] [***]"


def test_a_value_is_masked_in_the_log_once_however_often_it_is_registered(
    in_actions: None, capsys: pytest.CaptureFixture[str]
) -> None:
    value = make_canary()
    for _ in range(3):
        secret_values.register_secret_value(value)
    secret_values.read_from_environment(["ACME_KEY"], {"ACME_KEY": value})
    assert masks(capsys.readouterr().err) == [value]
    # shorter than the scrubber's minimum: neither registered nor masked by register_secret_value
    secret_values.register_secret_value("abc")
    assert secret_values.scrub("abc") == "abc"
    assert masks(capsys.readouterr().err) == []


def test_a_four_character_value_is_the_shortest_the_scrubber_hides() -> None:
    four = unknown_value(4)
    secret_values.register_secret_value(four)
    assert secret_values.scrub(f"pin {four}.") == "pin ***."
    # a line of four characters inside a longer value is hidden on its own too
    line = unknown_value(4)
    secret_values.register_secret_value(f"{make_canary()}\n{line}")
    assert secret_values.scrub(f"[{line}]") == "[***]"


# ---------------------------------------------------------------------------------------------------
# read_from_environment


def test_secrets_are_read_from_the_mapping_given_and_registered_even_when_incomplete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, password, empty_user = make_canary(), make_canary(), ""
    for name in ("ACME_KEY", "ACME_UNSET", "REGISTRY_USERNAME", "REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    found = secret_values.read_from_environment(
        ["ACME_KEY", "ACME_UNSET", "REGISTRY_AUTH"],
        {"ACME_KEY": key, "REGISTRY_USERNAME": empty_user, "REGISTRY_PASSWORD": password},
    )
    assert found == secret_values.SecretValues(
        values={"ACME_KEY": {"ACME_KEY": key}}, missing=["ACME_UNSET", "REGISTRY_AUTH"]
    )
    # a pull secret missing its user is missing, but the password read is hidden all the same
    assert secret_values.scrub(f"{key} {password}") == "*** ***"


def test_secrets_default_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = make_canary()
    monkeypatch.setenv("ACME_KEY", key)
    monkeypatch.setenv("REGISTRY_USERNAME", "bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", key + "-pw")
    found = secret_values.read_from_environment(["ACME_KEY", "REGISTRY_AUTH"])
    assert found.values == {
        "ACME_KEY": {"ACME_KEY": key},
        "REGISTRY_AUTH": {"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": key + "-pw"},
    }
    assert found.missing == []


def test_every_occurrence_is_hidden_the_middle_ones_and_those_that_overlap_too() -> None:
    value = make_canary()
    secret_values.register_secret_value(value)
    assert secret_values.scrub(f"1 {value} 2 {value} 3 {value} 4 {value} 5") == "1 *** 2 *** 3 *** 4 *** 5"
    # a value of one repeated character occurs again one character later: both occurrences count
    while True:
        same = chr(random.randrange(0x4E00, 0x9FFF)) * 8  # a CJK ideograph nothing else registered
        if secret_values.scrub(same) == same:
            break
    secret_values.register_secret_value(same)
    assert secret_values.scrub(f"<{same}{same[0]}>") == "<***>"
    assert secret_values.scrub(f"<{same}{same[:3]}>") == "<***>"
