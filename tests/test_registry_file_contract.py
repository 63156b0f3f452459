"""registry_file: the exact contract of a registry.yaml's problems and of a pin write.

Every problem a user sees is `file:line:col: message`; scripts and GitHub annotations match on the
position and on the words (what is wrong, where, how to fix it), so each is asserted whole. The pin
writer promises to change only the characters of the pin values: the tests here compare the whole
text, byte for byte, after a splice or a write (quotes, comments, flow style, CRLF, trailing spaces,
no final newline), and name the texts it must refuse rather than corrupt. Known product bugs found
while writing them are kept at the end as strict xfails, so a fix shows up as an XPASS.

Everything runs against files in a temporary repository (processors/<ns>/<name>/registry.yaml)
with the working folder set to it, so a problem's file is shown as the user would type it. No
product function is replaced.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from theory_deploy import registry_file as rf
from theory_deploy.errors import (
    ImageUnpinnedError,
    InvalidRefError,
    ProcessorNotFoundError,
    TheoryDeployError,
    ValidationError,
)
from theory_deploy.refs import ImageRef, ProcessorRef

REPOSITORY = "ghcr.io/theory-deploy/llm-litellm"
D1 = f"{REPOSITORY}@sha256:{'1' * 64}"
D2 = f"{REPOSITORY}@sha256:{'2' * 64}"
FILE = "processors/llm/litellm/registry.yaml"  # as shown: relative to the working folder (the repository)

VALID = f"""\
ref: llm/litellm@1
image:
  repository: {REPOSITORY}
  platforms:
    amd64: null
    arm64: null
inputs:
  type: object
"""


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    """A mutant that loops forever (a scanner that never advances) fails in seconds, not never."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("test took longer than 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with processors/llm/litellm/ (no registry.yaml yet), and the working folder in it."""
    root = tmp_path / "repo"
    (root / "processors/llm/litellm").mkdir(parents=True)
    monkeypatch.chdir(root)
    monkeypatch.delenv("THEORY_REPO_ROOT", raising=False)
    return root


def write(repo: Path, text: str, folder: str = "llm/litellm") -> Path:
    path = repo / "processors" / folder / "registry.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def shown(path: Path, **kwargs: object) -> list[str]:
    """check_file's problems as the user reads them; the spec must be None exactly when there are some."""
    spec, problems = rf.check_file(path, **kwargs)  # type: ignore[arg-type]
    assert (spec is None) == bool(problems)
    return [str(p) for p in problems]


def at(line: int, col: int, message: str, file: str = FILE) -> str:
    return f"{file}:{line}:{col}: {message}"


# ---------------------------------------------------------------------------------------------------
# Field problems (pydantic's), each at the key or value it is about
# ---------------------------------------------------------------------------------------------------

FIELD_PROBLEMS = """\
surplus: 1
ref: llm/litellm@1
build:
  port: 0
  colour: blue
image:
  platforms:
    amd64: null
secrets:
  required: [OK, 1BAD]
  optional: NOT_A_LIST
api:
  path: run
  auth_secret: 2x
inputs:
  type: object
"""


def test_field_problems_have_their_own_message_and_position(repo: Path) -> None:
    path = write(repo, FIELD_PROBLEMS)
    assert shown(path) == [
        # an unknown key is shown at the key itself, top level or nested
        at(1, 1, "unknown key 'surplus'"),
        at(4, 9, "build.port: Input should be greater than or equal to 1"),
        at(5, 3, "unknown key 'colour'"),
        # a missing key is named by its own name and shown at the mapping that lacks it
        at(7, 3, "missing required key 'repository'"),
        # a bad secret name is explained; a secrets value of another type is not called a bad name
        at(10, 18, "'1BAD' is not a valid environment variable name (letters, digits, '_'; not starting with a digit)"),
        at(11, 13, "secrets.optional: Input should be a valid list"),
        # outside `secrets`, a pattern mismatch is pydantic's own words, with the dotted path
        at(13, 9, "api.path: String should match pattern '^/'"),
        at(14, 16, "api.auth_secret: String should match pattern '^[A-Za-z_][A-Za-z0-9_]*$'"),
    ]


def test_a_missing_top_level_key_is_named_and_shown_at_the_start(repo: Path) -> None:
    path = write(repo, VALID.replace("ref: llm/litellm@1\n", "").replace("inputs:\n  type: object\n", ""))
    assert shown(path) == [at(1, 1, "missing required key 'ref'"), at(1, 1, "missing required key 'inputs'")]


def test_a_problem_in_a_list_item_is_shown_at_that_item(repo: Path) -> None:
    path = write(repo, VALID + "secrets:\n  required:\n    - GOOD\n    - 9lives\nbuild:\n  platforms: [linux/s390x]\n")
    assert shown(path) == [
        at(
            12, 7, "'9lives' is not a valid environment variable name (letters, digits, '_'; not starting with a digit)"
        ),
        at(14, 15, "build.platforms.0: Input should be 'linux/amd64' or 'linux/arm64'"),
    ]


def test_problem_json_has_exactly_file_line_col_message() -> None:
    problem = rf.Problem("processors/a/b/registry.yaml", 3, 7, "unknown key 'x'")
    assert problem.to_json() == {
        "file": "processors/a/b/registry.yaml",
        "line": 3,
        "col": 7,
        "message": "unknown key 'x'",
    }
    assert str(problem) == "processors/a/b/registry.yaml:3:7: unknown key 'x'"


def test_load_path_raises_every_problem_with_the_first_ones_position(repo: Path) -> None:
    path = write(repo, FIELD_PROBLEMS)
    with pytest.raises(ValidationError) as info:
        rf.load_path(path)
    _spec, problems = rf.check_file(path)
    assert info.value.message == "\n".join(str(p) for p in problems)
    assert info.value.details == {
        "file": FILE,
        "line": 1,
        "problems": [p.to_json() for p in problems],
    }
    assert info.value.details["problems"][0] == {"file": FILE, "line": 1, "col": 1, "message": "unknown key 'surplus'"}


# ---------------------------------------------------------------------------------------------------
# Cross-field checks: ref vs folder, image.repository, pins, inputs schema, secrets, NUL bytes
# ---------------------------------------------------------------------------------------------------


def test_ref_repository_pin_and_schema_problems_each_at_their_value(repo: Path) -> None:
    path = write(
        repo,
        f"""\
ref: llm/other@1
image:
  repository: {REPOSITORY}:v1
  platforms:
    amd64: {REPOSITORY}@sha256:{"a" * 64}
    arm64: REPLACE_ME
inputs:
  $schema: 7
""",
    )
    assert shown(path) == [
        at(1, 6, "ref 'llm/other@1' does not match its folder processors/llm/litellm; expected llm/litellm@N"),
        at(3, 15, "image.repository must have no tag and no digest"),
        # a repository with a tag is not compared with the pins, nor quoted in their hint (the tag
        # problem above is the one to fix first)
        at(
            6,
            12,
            "pin 'REPLACE_ME' is not a digest ref; expected exactly <image.repository>@sha256:<64 lowercase hex> "
            "(no tags, no placeholders)",
        ),
        at(8, 12, "inputs.$schema must be a string naming a JSON Schema dialect (a URI)"),
    ]


def test_a_bad_ref_a_foreign_pin_an_uppercase_digest_and_a_nested_schema_error(repo: Path) -> None:
    path = write(
        repo,
        f"""\
ref: Not A Ref
image:
  repository: {REPOSITORY}
  platforms:
    amd64: ghcr.io/else/where@sha256:{"a" * 64}
    arm64: {REPOSITORY}@sha256:{"A" * 64}
inputs:
  type: object
  properties:
    a: {{type: 5}}
""",
    )
    assert shown(path) == [
        at(1, 6, "ref: 'Not A Ref' is not a processor ref; expected ns/name@N (e.g. llm/litellm@1)."),
        at(5, 12, f"pin names repository 'ghcr.io/else/where', but image.repository is '{REPOSITORY}'"),
        at(
            6,
            12,
            f"pin '{REPOSITORY}@sha256:{'A' * 64}' is not a digest ref; expected exactly "
            f"{REPOSITORY}@sha256:<64 lowercase hex> (no tags, no placeholders)",
        ),
        at(
            10,
            15,
            "inputs is not a valid JSON Schema at /properties/a/type: 5 is not valid under any of the given schemas",
        ),
    ]


def test_an_unparsable_repository_is_reported_once_and_pins_are_not_compared_with_it(repo: Path) -> None:
    path = write(
        repo,
        f"""\
ref: llm/litellm@1
image:
  repository: NOT/valid repo
  platforms:
    amd64: ghcr.io/else/where@sha256:{"a" * 64}
inputs:
  type: objekt
""",
    )
    assert shown(path) == [
        at(
            3,
            15,
            "image.repository: the image ref contains a space (U+0020) at position 10; "
            "image refs may not contain whitespace or control characters.",
        ),
        at(7, 9, "inputs is not a valid JSON Schema at /type: 'objekt' is not valid under any of the given schemas"),
    ]


def test_a_pin_of_the_declared_repository_is_accepted(repo: Path) -> None:
    path = write(repo, VALID.replace("amd64: null", f"amd64: {D1}").replace("arm64: null", f"arm64: '{D2}'"))
    spec, problems = rf.check_file(path)
    assert problems == [] and spec is not None
    assert spec.pins() == {"amd64": D1, "arm64": D2}


def test_a_ref_in_a_folder_outside_processors_is_not_compared_with_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere/x/registry.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(VALID.replace("llm/litellm@1", "other/name@1"))
    spec, problems = rf.check_file(path)
    assert problems == [] and spec is not None and spec.ref == "other/name@1"


def test_secrets_listed_twice_and_reserved_names_any_case(repo: Path) -> None:
    path = write(
        repo,
        VALID
        + "secrets:\n  required: [A, path, B, modal_token]\n  optional: [B, A, Python_X, LD_PRELOAD]\n"
        + "api:\n  auth_secret: theory_auth_token\n",
    )
    handed = "(its value would be handed to the processor); rename the secret"
    assert shown(path) == [
        at(
            10,
            17,
            "secrets.required: 'path' is a reserved name and cannot be a processor secret: "
            f"the deployer or the runtime sets or reads that variable itself {handed}",
        ),
        at(
            10,
            26,
            "secrets.required: 'modal_token' is a reserved name and cannot be a processor secret: "
            f"names starting with MODAL_ hold the deployer's own credentials or configuration {handed}",
        ),
        at(11, 13, "secret 'A' is listed as both required and optional"),
        at(11, 13, "secret 'B' is listed as both required and optional"),
        at(
            11,
            20,
            "secrets.optional: 'Python_X' is a reserved name and cannot be a processor secret: "
            f"names starting with PYTHON hold the deployer's own credentials or configuration {handed}",
        ),
        at(
            11,
            30,
            "secrets.optional: 'LD_PRELOAD' is a reserved name and cannot be a processor secret: "
            f"names starting with LD_ hold the deployer's own credentials or configuration {handed}",
        ),
        at(
            13,
            16,
            "api.auth_secret: 'theory_auth_token' is a reserved name and cannot be a processor secret: "
            "the deployer or the runtime sets or reads that variable itself; rename the secret",
        ),
    ]


def test_a_reserved_prefix_in_auth_secret_is_named(repo: Path) -> None:
    path = write(repo, VALID + "api:\n  auth_secret: GH_PAT\n")
    assert shown(path) == [
        at(
            10,
            16,
            "api.auth_secret: 'GH_PAT' is a reserved name and cannot be a processor secret: "
            "names starting with GH_ hold the deployer's own credentials or configuration; rename the secret",
        )
    ]


def test_an_ordinary_auth_secret_is_required_once(repo: Path) -> None:
    path = write(repo, VALID + "api:\n  auth_secret: MY_TOKEN\nsecrets:\n  required: [MY_TOKEN]\n  optional: [EXTRA]\n")
    spec, problems = rf.check_file(path)
    assert problems == [] and spec is not None
    assert spec.secret_names() == (["MY_TOKEN", "EXTRA"], ["MY_TOKEN"])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("PORT", "the deployer or the runtime sets or reads that variable itself"),
        ("image_digest", "the deployer or the runtime sets or reads that variable itself"),
        ("REGISTRY_PASSWORD", "names starting with REGISTRY_ hold the deployer's own credentials or configuration"),
        ("theory_in_token", "names starting with THEORY_IN_ hold the deployer's own credentials or configuration"),
        ("PIP_INDEX_URL", "names starting with PIP_ hold the deployer's own credentials or configuration"),
        ("OPENAI_API_KEY", None),
        ("THEORY_CUSTOM", None),
        ("PATHS", None),
    ],
)
def test_reserved_secret_reason(name: str, reason: str | None) -> None:
    assert rf.reserved_secret_reason(name) == reason


NUL_TEXT = (
    VALID
    + 'build:\n  context: "sub\\0dir"\n  dockerfile: "../../../../etc/Dockerfile"\n'
    + 'outputs:\n  "k\\0": "v\\0"\n  list: ["a\\0"]\n'
)


def test_nul_bytes_are_reported_in_keys_values_and_lists_and_such_a_path_is_not_resolved(repo: Path) -> None:
    path = write(repo, NUL_TEXT)
    nul = "contains a NUL byte (\\0), which no path, name or value in registry.yaml may hold"
    # build.context holds a NUL: it is not resolved, and build.dockerfile (relative to it) neither
    assert shown(path) == [
        at(10, 12, f"build.context {nul}"),
        at(13, 10, f"outputs.k\0 {nul}"),  # the key
        at(13, 10, f"outputs.k\0 {nul}"),  # its value, at the same place
        at(14, 10, f"outputs.list.0 {nul}"),
    ]


def test_a_nul_in_a_mapping_inside_a_list_is_shown_at_its_value(repo: Path) -> None:
    path = write(repo, VALID + 'outputs:\n  list:\n    - {a: 1, b: "x\\0"}\n')
    assert shown(path) == [
        at(11, 17, "outputs.list.0.b contains a NUL byte (\\0), which no path, name or value in registry.yaml may hold")
    ]


def test_a_nul_only_in_an_otherwise_valid_file_is_still_found(repo: Path) -> None:
    # the fast reader vouches for this document; only the NUL check can refuse it
    path = write(repo, VALID + 'outputs:\n  a: "x\\0"\n')
    assert shown(path) == [
        at(10, 6, "outputs.a contains a NUL byte (\\0), which no path, name or value in registry.yaml may hold")
    ]


def test_a_nul_in_the_dockerfile_leaves_the_context_checked(repo: Path) -> None:
    path = write(repo, VALID + 'build:\n  context: ../../../..\n  dockerfile: "x\\0"\n')
    assert shown(path) == [
        at(
            10,
            12,
            f"build.context '../../../..' resolves to {repo.parent}, outside the repository {repo}; "
            "build.context must stay inside the repository (symlinks are followed)",
        ),
        at(
            11, 15, "build.dockerfile contains a NUL byte (\\0), which no path, name or value in registry.yaml may hold"
        ),
    ]


def test_sections_of_the_wrong_type_are_reported_once_by_the_model(repo: Path) -> None:
    # the cross-field checks skip what is not a mapping or list instead of failing on it
    path = write(
        repo,
        f"ref: llm/litellm@1\nimage:\n  repository: {REPOSITORY}\n  platforms: [amd64]\n"
        "secrets: [A]\napi: 5\nbuild: x\ninputs: [1]\n",
    )
    assert shown(path) == [
        at(4, 14, "image.platforms: Input should be a valid dictionary or instance of PlatformPins"),
        at(5, 10, "secrets: Input should be a valid dictionary or instance of SecretsSpec"),
        at(6, 6, "api: Input should be a valid dictionary or instance of ApiSpec"),
        at(7, 8, "build: Input should be a valid dictionary or instance of BuildSpec"),
        at(8, 9, "inputs: Input should be a valid dictionary"),
    ]
    # a secret listed in `optional` and in a `required` that is no list is not "listed twice"
    path.write_text("ref: 5\nimage: 7\nsecrets:\n  required: A\n  optional: [A]\ninputs: {}\n")
    assert shown(path) == [
        at(1, 6, "ref: Input should be a valid string"),
        at(2, 8, "image: Input should be a valid dictionary or instance of ImageSpec"),
        at(4, 13, "secrets.required: Input should be a valid list"),
    ]


def test_image_without_platforms_is_unpinned(repo: Path) -> None:
    path = write(repo, f"ref: llm/litellm@1\nimage:\n  repository: {REPOSITORY}\ninputs: {{}}\n")
    spec, problems = rf.check_file(path)
    assert problems == [] and spec is not None and spec.pins() == {"amd64": None, "arm64": None}


def test_a_null_pin_does_not_stop_the_check_of_the_next_one(repo: Path) -> None:
    path = write(
        repo, VALID.replace("arm64: null", "arm64: nope").replace(REPOSITORY, f"{REPOSITORY}@sha256:{'a' * 64}", 1)
    )
    assert shown(path) == [
        at(3, 15, "image.repository must have no tag and no digest"),
        at(
            6,
            12,
            "pin 'nope' is not a digest ref; expected exactly <image.repository>@sha256:<64 lowercase hex> "
            "(no tags, no placeholders)",
        ),
    ]


# ---------------------------------------------------------------------------------------------------
# Locations: the file, build.context and build.dockerfile must stay inside the repository
# ---------------------------------------------------------------------------------------------------


def outside(field: str, value: str, resolved: object, root: Path) -> str:
    return (
        f"build.{field} {value!r} resolves to {resolved}, outside the repository {root}; "
        f"build.{field} must stay inside the repository (symlinks are followed)"
    )


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        # the repository root itself is inside; the Dockerfile is read relative to the context
        ("  context: ../../..\n  dockerfile: processors/llm/litellm/Dockerfile\n", []),
        ("  context: .\n", []),
        ("  context: ./../.\n  dockerfile: ./Dockerfile\n", []),
        # an empty path part (`..//x`) is no root: it stays below the processor's parent
        ("  context: ..//x\n", []),
        # a context outside: reported at its value; the default Dockerfile in it at `build:` itself
        (
            "  context: ../../../..\n",
            [
                (10, 3, "dockerfile", "Dockerfile", "{parent}/Dockerfile"),
                (10, 12, "context", "../../../..", "{parent}"),
            ],
        ),
        # a name before the `..` parts is a folder to enter first, not something to skip
        (
            "  context: x/../../../../..\n",
            [
                (10, 3, "dockerfile", "Dockerfile", "{parent}/Dockerfile"),
                (10, 12, "context", "x/../../../../..", "{parent}"),
            ],
        ),
        # a space is part of a folder's name, not a separator
        (
            "  context: a b/../../../../..\n",
            [
                (10, 3, "dockerfile", "Dockerfile", "{parent}/Dockerfile"),
                (10, 12, "context", "a b/../../../../..", "{parent}"),
            ],
        ),
        (
            "  context: sub\n  dockerfile: ../../../../../Dockerfile\n",
            [(11, 15, "dockerfile", "../../../../../Dockerfile", "{parent}/Dockerfile")],
        ),
        (
            "  context: ../../..\n  dockerfile: ../Dockerfile\n",
            [(11, 15, "dockerfile", "../Dockerfile", "{parent}/Dockerfile")],
        ),
        # with no context given, the Dockerfile is relative to the processor's folder
        (
            "  dockerfile: ../../../../Dockerfile\n",
            [(10, 15, "dockerfile", "../../../../Dockerfile", "{parent}/Dockerfile")],
        ),
        # absolute paths are taken as they are
        ("  dockerfile: /etc/passwd\n", [(10, 15, "dockerfile", "/etc/passwd", "/etc/passwd")]),
        (
            "  context: /\n",
            [(10, 3, "dockerfile", "Dockerfile", "/Dockerfile"), (10, 12, "context", "/", "/")],
        ),
    ],
)
def test_build_paths_outside_the_repository(repo: Path, build: str, expected: list[tuple]) -> None:
    path = write(repo, VALID + "build:\n" + build)
    assert shown(path) == [
        at(line, col, outside(field, value, resolved.format(parent=repo.parent), repo))
        for line, col, field, value, resolved in expected
    ]


def test_a_context_that_is_no_string_leaves_the_dockerfile_unchecked(repo: Path) -> None:
    path = write(repo, VALID + "build:\n  context: 5\n  dockerfile: ../../../../Dockerfile\n")
    assert shown(path) == [at(10, 12, "build.context: Input should be a valid string")]
    path.write_text(VALID + "build:\n  context: 5\n  dockerfile: /etc/Dockerfile\n")
    assert shown(path) == [at(10, 12, "build.context: Input should be a valid string")]


def test_a_symlinked_context_is_followed_out_of_the_repository(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (repo / "processors/llm/litellm/ctx").symlink_to(tmp_path / "outside")
    path = write(repo, VALID + "build:\n  context: ctx\n")
    assert shown(path) == [
        at(10, 3, outside("dockerfile", "Dockerfile", tmp_path / "outside/Dockerfile", repo)),
        at(10, 12, outside("context", "ctx", tmp_path / "outside", repo)),
    ]


def test_an_explicit_repository_root_is_the_one_paths_must_stay_in(repo: Path) -> None:
    path = write(repo, VALID + "build:\n  context: ../../..\n")
    inner = repo / "processors"
    assert shown(path, repo_root=inner) == [
        at(10, 3, outside("dockerfile", "Dockerfile", repo / "Dockerfile", inner)),
        at(10, 12, outside("context", "../../..", repo, inner)),
    ]
    assert shown(path, repo_root=repo) == []


def test_a_file_in_no_repository_has_no_location_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "registry.yaml"
    path.write_text(VALID.replace("llm/litellm@1", "a/b@1") + "build:\n  context: ../../../..\n")
    assert shown(path) == []


def test_a_registry_yaml_symlinked_out_of_the_repository_is_never_read(repo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("this: [is not read\n")
    path = repo / "processors/llm/litellm/registry.yaml"
    path.symlink_to(elsewhere)
    assert [p.to_json() for p in rf.check_file(path)[1]] == [
        {
            "file": FILE,
            "line": 1,
            "col": 1,
            "message": f"resolves to {elsewhere}, outside the repository {repo} (a symlinked file or processor "
            "folder?); registry.yaml and its processor folder must be inside the repository",
        }
    ]


def test_a_processor_folder_symlinked_out_of_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    real_folder = tmp_path / "real/ns/name"
    real_folder.mkdir(parents=True)
    (real_folder / "registry.yaml").write_text(VALID.replace("llm/litellm@1", "ns/name@1"))
    (repo / "processors/ns").mkdir()
    (repo / "processors/ns/name").symlink_to(real_folder)
    path = repo / "processors/ns/name/registry.yaml"
    assert shown(path) == [
        at(
            1,
            1,
            f"resolves to {real_folder / 'registry.yaml'}, outside the repository {repo} (a symlinked file or "
            "processor folder?); registry.yaml and its processor folder must be inside the repository",
            file="processors/ns/name/registry.yaml",
        )
    ]


def test_a_registry_yaml_symlinked_within_the_repository_is_read(repo: Path) -> None:
    (repo / "shared").mkdir()
    (repo / "shared/registry.yaml").write_text(VALID)
    path = repo / "processors/llm/litellm/registry.yaml"
    path.symlink_to(repo / "shared/registry.yaml")
    spec, problems = rf.check_file(path)
    assert problems == [] and spec is not None and spec.ref == "llm/litellm@1"


# ---------------------------------------------------------------------------------------------------
# Reading: files that cannot be read or parsed, each with one problem at its place
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "ref: llm/litellm@1\nimage: [unclosed\n",
            (3, 1, "not valid YAML: expected ',' or ']', but got '<stream end>'"),
        ),
        ("a: b: c\n", (1, 5, "not valid YAML: mapping values are not allowed here")),
        ("a: 1\na: 2\n", (2, 1, 'not valid YAML: found duplicate key "a" with value "2" (original value: "1")')),
        ('key: "\\x"\n', (1, 9, "not valid YAML: expected escape sequence of 2 hexdecimal numbers, but found '\"'")),
        ("a: !!map [1]\n", (1, 4, "not valid YAML: expected a mapping node, but found sequence")),
        # errors ruamel's constructors raise without a position are shown at the value to blame
        (
            "a: 2001-02-30\n",
            (1, 4, "not valid YAML: '2001-02-30' is not a valid !!timestamp (day is out of range for month)"),
        ),
        (
            "a: 1\nb: !!int x\n",
            (2, 4, "not valid YAML: 'x' is not a valid !!int (invalid literal for int() with base 10: 'x')"),
        ),
        ("a:\n  - !!bool maybe\n", (2, 5, "not valid YAML: 'maybe' is not a valid !!bool")),
        ("a: {b: !!float }\n", (1, 8, "not valid YAML: '' is not a valid !!float")),
        ("? !!int 0x\n: v\n", (1, 3, "not valid YAML: '0x' is not a valid !!int")),
        ("a: !!omap x\n", (1, 4, "not valid YAML: 'x' is not a valid !!omap")),
        # a character YAML forbids, at its place, without ruamel's stream name and offset
        (
            "a: 1\nb\0c: 2\n",
            (2, 2, "not valid YAML: unacceptable character #x0000: special characters are not allowed"),
        ),
        (
            "a: 1\r\nb: \x07\n",
            (2, 4, "not valid YAML: unacceptable character #x0007: special characters are not allowed"),
        ),
        (
            "a: 1\nb: 2\nc\0: 3\n",
            (3, 2, "not valid YAML: unacceptable character #x0000: special characters are not allowed"),
        ),
        ("\nb\x01: 1\n", (2, 2, "not valid YAML: unacceptable character #x0001: special characters are not allowed")),
        ("- a\n- b\n", (1, 1, "expected a mapping at the top level")),
        ("", (1, 1, "expected a mapping at the top level")),
        (
            "a: &x 1\nb: *x\n",
            (
                2,
                4,
                "YAML alias *x is not allowed in registry.yaml (aliases can expand a small file into a huge "
                "document); write the value out, or use $defs/$ref inside `inputs`",
            ),
        ),
        ("ref: " + "[" * 70 + "]" * 70 + "\n", (1, 69, "nested more than 64 levels deep, the registry.yaml limit")),
    ],
)
def test_a_file_that_does_not_parse_has_one_problem_at_its_place(repo: Path, text: str, expected: tuple) -> None:
    path = write(repo, text)
    assert shown(path) == [at(*expected)]


def test_a_file_over_the_size_limit_is_refused(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(repo, VALID)
    monkeypatch.setenv("THEORY_MAX_REGISTRY_BYTES", "50")
    assert shown(path) == [
        at(
            1,
            1,
            "file is 142 bytes, over the registry.yaml size limit of 50 bytes (raise it with THEORY_MAX_REGISTRY_BYTES=<bytes>)",
        )
    ]
    # text given for the file (another revision's) is held to the same limit
    assert shown(path, text=VALID + "#" * 10) == [
        at(
            1,
            1,
            "file is 152 bytes, over the registry.yaml size limit of 50 bytes (raise it with THEORY_MAX_REGISTRY_BYTES=<bytes>)",
        )
    ]


def test_a_missing_file_a_folder_and_a_symlink_loop(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = repo / "processors/llm/litellm/registry.yaml"
    assert shown(path) == [at(1, 1, "file not found")]
    path.mkdir()
    assert shown(path) == [at(1, 1, "a directory, not a regular file; registry.yaml must be a regular file")]
    path.rmdir()
    path.symlink_to(path)
    assert shown(path) == [at(1, 1, "cannot read: Too many levels of symbolic links")]
    # seen from outside the repository, the loop cannot be resolved to a shorter name: shown as given
    (repo.parent / "cwd").mkdir()
    monkeypatch.chdir(repo.parent / "cwd")
    assert shown(path) == [f"{path}:1:1: cannot read: Too many levels of symbolic links"]


def test_given_text_is_checked_instead_of_the_file(repo: Path) -> None:
    path = write(repo, "not: [valid\n")
    spec, problems = rf.check_file(path, text=VALID)
    assert problems == [] and spec is not None and spec.ref == "llm/litellm@1"
    assert shown(path, text="- a list\n") == [at(1, 1, "expected a mapping at the top level")]
    assert shown(path, text=VALID.replace("amd64: null", "amd64: nope")) == [
        at(
            5,
            12,
            f"pin 'nope' is not a digest ref; expected exactly {REPOSITORY}@sha256:<64 lowercase hex> (no tags, no placeholders)",
        )
    ]


def test_a_file_outside_the_working_folder_is_shown_by_its_own_path(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(repo, "- a\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert shown(path) == [f"{path}:1:1: expected a mapping at the top level"]
    # a path through a symlink into the working folder is shown relative to it
    monkeypatch.chdir(repo / "processors")
    (tmp_path / "link").symlink_to(repo / "processors/llm")
    assert shown(tmp_path / "link/litellm/registry.yaml") == [
        "llm/litellm/registry.yaml:1:1: expected a mapping at the top level"
    ]
    # a relative path is shown as given
    assert shown(Path("llm/litellm/registry.yaml")) == [
        "llm/litellm/registry.yaml:1:1: expected a mapping at the top level"
    ]


# ---------------------------------------------------------------------------------------------------
# Many processors: discovery, slugs, finding the repository, loading one by ref
# ---------------------------------------------------------------------------------------------------


def processor(repo: Path, folder: str, ref: str, extra: str = "") -> Path:
    return write(
        repo, "# a comment line first, so `ref` is on line 2\n" + VALID.replace("llm/litellm@1", ref) + extra, folder
    )


SLUG_MESSAGE = (
    "ref 'a-b/c@1' has the slug 'a-b-c-v1', as does processors/a/b-c/registry.yaml (ref 'a/b-c@1'); "
    "the slug names the Modal app, the pin branch and the build artifacts, so it must be unique: "
    "rename one of the two processors"
)


def test_check_files_reports_problems_in_file_order_then_slug_collisions(repo: Path) -> None:
    a_bc = processor(repo, "a/b-c", "a/b-c@1")
    processor(repo, "a/b-c2", "a/b-c@2")
    ab_c = processor(repo, "a-b/c", "a-b/c@1")
    processor(repo, "x/y", "x/y@1", "bad: 1\n")
    files = rf.discover(repo)
    assert files == [
        repo / "processors/a/b-c/registry.yaml",
        repo / "processors/a/b-c2/registry.yaml",
        repo / "processors/a-b/c/registry.yaml",
        repo / "processors/x/y/registry.yaml",
    ]
    valid, problems = rf.check_files(files)
    assert [(path, spec.ref) for path, spec in valid] == [(a_bc, "a/b-c@1"), (ab_c, "a-b/c@1")]
    assert [str(p) for p in problems] == [
        at(
            2,
            6,
            "ref 'a/b-c@2' does not match its folder processors/a/b-c2; expected a/b-c2@N",
            "processors/a/b-c2/registry.yaml",
        ),
        at(10, 1, "unknown key 'bad'", "processors/x/y/registry.yaml"),
        at(2, 6, SLUG_MESSAGE, "processors/a-b/c/registry.yaml"),
    ]
    # with an explicit root that the files are outside of, every file is refused where it stands
    _valid, problems = rf.check_files(files[:1], repo_root=repo / "processors/x")
    assert [p.message for p in problems] == [
        f"resolves to {files[0]}, outside the repository {repo / 'processors/x'} (a symlinked file or processor "
        "folder?); registry.yaml and its processor folder must be inside the repository"
    ]


def test_discover_finds_only_processors_two_levels_down(repo: Path) -> None:
    processor(repo, "a/b", "a/b@1")
    (repo / "processors/registry.yaml").write_text(VALID)
    (repo / "processors/a/registry.yaml").write_text(VALID)
    (repo / "processors/a/b/c").mkdir()
    (repo / "processors/a/b/c/registry.yaml").write_text(VALID)
    assert rf.discover(repo) == [repo / "processors/a/b/registry.yaml"]


def test_one_file_listed_twice_or_through_a_symlink_is_no_collision(repo: Path) -> None:
    path = processor(repo, "a-b/c", "a-b/c@1")
    spec = rf.check_file(path)[0]
    assert spec is not None
    (repo / "alias.yaml").symlink_to(path)
    assert (
        rf.slug_collisions(
            [
                (path, spec),
                (path, spec),
                (Path(FILE.replace("llm/litellm", "a-b/c")), spec),
                (repo / "alias.yaml", spec),
            ]
        )
        == []
    )


def test_a_spec_whose_ref_does_not_parse_is_left_out_of_the_slug_check(repo: Path) -> None:
    first = processor(repo, "a/b-c", "a/b-c@1")
    second = processor(repo, "a-b/c", "a-b/c@1")
    bad = rf.ProcessorSpec.model_validate({"ref": "not a ref", "image": {"repository": REPOSITORY}, "inputs": {}})
    specs = {p: rf.check_file(p)[0] for p in (first, second)}
    problems = rf.slug_collisions([(first, bad), (first, specs[first]), (second, bad), (second, specs[second])])
    # the second listing of a file is skipped as a repeat, bad ref or not
    assert problems == []
    problems = rf.slug_collisions([(first, specs[first]), (first, specs[first]), (second, specs[second])])
    assert [p.line for p in problems] == [2]  # a repeat does not end the check
    problems = rf.slug_collisions([(repo / "nowhere.yaml", bad), (first, specs[first]), (second, specs[second])])
    assert [p.to_json() for p in problems] == [
        {"file": "processors/a-b/c/registry.yaml", "line": 2, "col": 6, "message": SLUG_MESSAGE}
    ]


def test_a_colliding_file_that_no_longer_parses_is_reported_at_its_start(repo: Path) -> None:
    first = processor(repo, "a/b-c", "a/b-c@1")
    second = processor(repo, "a-b/c", "a-b/c@1")
    specs = [(first, rf.check_file(first)[0]), (second, rf.check_file(second)[0])]
    second.write_text("- gone\n")
    assert [str(p) for p in rf.slug_collisions(specs)] == [at(1, 1, SLUG_MESSAGE, "processors/a-b/c/registry.yaml")]


def test_find_repo_root(repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert rf.find_repo_root() == repo  # from the working folder
    assert rf.find_repo_root(repo / "processors/llm/litellm") == repo
    monkeypatch.setenv("THEORY_REPO_ROOT", str(repo / "processors/.."))
    assert rf.find_repo_root(Path("/")) == repo  # the setting wins, resolved
    monkeypatch.setenv("THEORY_REPO_ROOT", "")
    with pytest.raises(ProcessorNotFoundError) as info:
        rf.find_repo_root(tmp_path)
    assert info.value.message == f"no processors/ folder in {tmp_path} or above."
    assert info.value.remedy == (
        "Run from your repository (it holds processors/<ns>/<name>/registry.yaml) or set THEORY_REPO_ROOT."
    )


def test_load_processor_by_ref(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = processor(repo, "a/b", "a/b@1")
    loaded = rf.load_processor(ProcessorRef.parse("a/b@1"), repo)
    assert (loaded.ref, loaded.path, loaded.repo_root, loaded.folder) == (
        ProcessorRef("a", "b", 1),
        path,
        repo,
        path.parent,
    )
    assert loaded.registry == "ghcr.io"
    monkeypatch.setenv("THEORY_REPO_ROOT", str(repo))
    assert rf.load_processor(ProcessorRef.parse("a/b@1")).path == path  # the root found from the setting
    with pytest.raises(ValidationError) as info:
        rf.load_processor(ProcessorRef.parse("a/b@2"), repo)
    assert info.value.message == "processors/a/b/registry.yaml: declares ref a/b@1, not a/b@2."
    with pytest.raises(ProcessorNotFoundError) as missing:
        rf.load_processor(ProcessorRef.parse("zz/zz@1"), repo)
    assert missing.value.message == f"zz/zz@1: no {repo}/processors/zz/zz/registry.yaml."
    (repo / "processors/d/e/registry.yaml").mkdir(parents=True)  # a folder, not a file
    with pytest.raises(ProcessorNotFoundError) as folder:
        rf.load_processor(ProcessorRef.parse("d/e@1"), repo)
    assert folder.value.message == f"d/e@1: no {repo}/processors/d/e/registry.yaml."


def test_load_path_takes_the_root_from_where_the_file_stands(repo: Path) -> None:
    path = processor(repo, "a/b", "a/b@1")
    assert rf.load_path(path).repo_root == repo
    assert rf.load_path(path, repo).repo_root == repo
    with pytest.raises(ValidationError) as info:
        rf.load_path(path, repo / "processors/x")
    assert info.value.details["line"] == 1 and info.value.details["file"] == "processors/a/b/registry.yaml"


# ---------------------------------------------------------------------------------------------------
# Reading one pin: pin_for (the digest ref, or ERR_IMAGE_UNPINNED at its line) and pin_line
# ---------------------------------------------------------------------------------------------------


def test_pin_for_returns_the_digest_ref_or_names_the_line_of_the_null(repo: Path) -> None:
    path = write(repo, VALID.replace("amd64: null", f"amd64: {D1}"))
    loaded = rf.load_path(path)
    assert loaded.pin_for("amd64") == ImageRef.parse_digest_ref(D1)
    with pytest.raises(ImageUnpinnedError) as info:
        loaded.pin_for("arm64")
    assert info.value.message == f"{FILE}:6: llm/litellm@1 has no arm64 pin (image.platforms.arm64 is null)."
    assert info.value.details == {"file": FILE, "line": 6}
    assert info.value.to_json()["error"]["details"] == {"file": FILE, "line": 6}


def test_pin_for_a_file_gone_since_loading_names_line_1(repo: Path) -> None:
    path = write(repo, VALID)
    loaded = rf.load_path(path)
    path.unlink()
    with pytest.raises(ImageUnpinnedError) as info:
        loaded.pin_for("amd64")
    assert info.value.message == f"{FILE}:1: llm/litellm@1 has no amd64 pin (image.platforms.amd64 is null)."
    assert info.value.details == {"file": FILE, "line": 1}


def test_pin_for_a_pin_that_is_no_digest_ref_names_the_file_and_key(repo: Path) -> None:
    # a spec built in code (not read from a file) can hold a tag where a pin belongs
    spec = rf.ProcessorSpec.model_validate(
        {
            "ref": "llm/litellm@1",
            "image": {"repository": REPOSITORY, "platforms": {"amd64": f"{REPOSITORY}:v1"}},
            "inputs": {},
        }
    )
    loaded = rf.LoadedProcessor(ProcessorRef("llm", "litellm", 1), spec, repo / FILE, repo)
    with pytest.raises(TheoryDeployError) as info:
        loaded.pin_for("amd64")
    assert info.value.message == (
        f"{FILE} image.platforms.amd64: '{REPOSITORY}:v1' is not a digest ref; "
        "expected REPOSITORY@sha256:<64 lowercase hex> with no tag."
    )


@pytest.mark.parametrize(
    ("text", "platform", "line"),
    [
        (VALID, "amd64", 5),
        (VALID, "linux/arm64", 6),
        ("image:\n  platforms: {arm64: x}\n", "arm64", 2),
        ("image:\n  platforms: {arm64: x}\n", "amd64", None),
        ("image:\n  platforms: [amd64]\n", "amd64", None),
        ("image: [platforms]\n", "amd64", None),
        ("image:\n  platforms: amd64\n", "amd64", None),
        ("- image\n", "amd64", None),
        ("platforms:\n  amd64: x\n", "amd64", None),
        ("image: {platforms: {amd64: x\n", "amd64", None),  # does not parse
        ("a: &x 1\nimage: {platforms: {amd64: *x}}\n", "amd64", None),  # refused by the limits
    ],
)
def test_pin_line_of_a_text(text: str, platform: str, line: int | None) -> None:
    assert rf.pin_line(text, platform) == line


def test_pin_line_of_a_path_reads_the_file(repo: Path) -> None:
    path = write(repo, "# one\n# two\n" + VALID)
    assert rf.pin_line(path, "amd64") == 7
    assert rf.pin_line(repo / "processors/none/registry.yaml", "amd64") is None
    assert rf.pin_line(repo / "processors", "amd64") is None  # a folder: refused, not read
    # a str is the text itself, never a file name
    assert rf.pin_line(str(path), "amd64") is None


# ---------------------------------------------------------------------------------------------------
# The pin writer: only the characters of the values change
# ---------------------------------------------------------------------------------------------------

AMD64 = ("image", "platforms", "amd64")
ARM64 = ("image", "platforms", "arm64")


def pins_text(amd64_line: str, arm64_line: str = "    arm64: null\n") -> str:
    return f"image:\n  repository: {REPOSITORY}\n  platforms:\n{amd64_line}{arm64_line}"


@pytest.mark.parametrize(
    ("old", "value", "new"),
    [
        # single quotes: a doubled quote is part of the value, wherever it stands
        ("'it''s'  # c", "NEW", "'NEW'  # c"),
        ("'a'''  # c", "NEW", "'NEW'  # c"),
        ("'a'''", "NEW", "'NEW'"),
        ("'''a'", "NEW", "'NEW'"),
        ("'x'", "NEW", "'NEW'"),
        ("''  # c", "NEW", "'NEW'  # c"),
        # a backslash escapes only inside double quotes
        ("'a\\'  # c", "NEW", "'NEW'  # c"),
        ('"a\\"b"  # c', "NEW", '"NEW"  # c'),
        ('"a\\""  # c', "NEW", '"NEW"  # c'),
        ('"a\\\\"  # c', "NEW", '"NEW"  # c'),
        ('""  # c', "NEW", '"NEW"  # c'),
        # null is written plain, whatever the old quotes were
        ('"x"  # c', None, "null  # c"),
        ("'x'", None, "null"),
        # plain values end before a comment or trailing space; `#` without a space before it is text
        ("Xyz  # c", "NEW", "NEW  # c"),
        ("null   ", "NEW", "NEW   "),
        ("null#c", "NEW", "NEW"),
        ("null  # a # b", "NEW", "NEW  # a # b"),
        ("nullXX", "NEW", "NEW"),
        ("~", "NEW", "NEW"),
    ],
)
def test_splice_replaces_exactly_the_value_on_a_block_line(old: str, value: str | None, new: str) -> None:
    text = pins_text(f"    amd64: {old}\n")
    assert rf.splice_values(text, {AMD64: value}) == pins_text(f"    amd64: {new}\n")


@pytest.mark.parametrize(
    ("old", "values", "new"),
    [
        ("{amd64: null, arm64: ~}", {AMD64: D1, ARM64: D2}, f"{{amd64: {D1}, arm64: {D2}}}"),
        # the left value grows while the right one shrinks to null, and the other way round
        (f"{{amd64: ~, arm64: {D2}}}", {AMD64: D1, ARM64: None}, f"{{amd64: {D1}, arm64: null}}"),
        (f"{{amd64: {D1}, arm64: ~}}", {AMD64: None, ARM64: D2}, f"{{amd64: null, arm64: {D2}}}"),
        # the edits given in the other order, both values growing
        ("{arm64: '', amd64: \"\"}", {ARM64: "b", AMD64: "a"}, "{arm64: 'b', amd64: \"a\"}"),
        ("{amd64: x,arm64: y}", {AMD64: "long-a", ARM64: "long-b"}, "{amd64: long-a,arm64: long-b}"),
        ("{ amd64: x }", {AMD64: "NEW"}, "{ amd64: NEW }"),
        ("{amd64: x, arm64: y, other: z}", {AMD64: "NEW"}, "{amd64: NEW, arm64: y, other: z}"),
        (
            "{amd64: {x: 1}, arm64: [y, z]}",
            {("image", "platforms", "amd64", "x"): "2"},
            "{amd64: {x: 2}, arm64: [y, z]}",
        ),
    ],
)
def test_splice_of_two_values_on_one_flow_line(old: str, values: dict, new: str) -> None:
    text = f"image:\n  platforms: {old}  # flow\nnext: 1\n"
    assert rf.splice_values(text, values) == f"image:\n  platforms: {new}  # flow\nnext: 1\n"


def test_splice_keeps_crlf_trailing_spaces_and_a_missing_final_newline() -> None:
    text = "image:\r\n  platforms:\r\n    amd64: null  \r\n    arm64: null"
    assert (
        rf.splice_values(text, {AMD64: "A", ARM64: "B"}) == "image:\r\n  platforms:\r\n    amd64: A  \r\n    arm64: B"
    )


def test_splice_writes_into_an_empty_value_at_the_very_end() -> None:
    # `amd64:` as the file's last characters: its value is recorded just past the colon
    assert (
        rf.splice_values("image:\n  platforms:\n    amd64:", {AMD64: "NEW"}) == "image:\n  platforms:\n    amd64: NEW"
    )
    # the value goes right after the colon, whatever follows it
    assert rf.splice_values("image:\n  platforms:\n    amd64:   ", {AMD64: "NEW"}) == (
        "image:\n  platforms:\n    amd64: NEW   "
    )


@pytest.mark.parametrize(
    ("text", "loc"),
    [
        ("image:\n  platforms:\n    arm64: null\n", AMD64),
        ("image:\n  platforms: [amd64]\n", AMD64),
        ("image: 5\n", AMD64),
        ("image:\n  repository: x\n", ("image", "nothing", "amd64")),
        ("platforms:\n  amd64: null\n", AMD64),
    ],
)
def test_splice_into_a_key_that_is_not_there_is_refused(text: str, loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        rf.splice_values(text, {loc: "x"})
    assert info.value.message == f"registry.yaml has no {'.'.join(loc)} key to write into."
    assert (
        info.value.remedy == "Add `platforms: {amd64: null, arm64: null}` under `image:` (as in the sample processor)."
    )


@pytest.mark.parametrize(("value", "held"), [("{x: 1}", "a mapping"), ("[x]", "a list"), ("\n      - x", "a list")])
def test_splice_into_a_key_holding_a_collection_is_refused(value: str, held: str) -> None:
    with pytest.raises(ValidationError) as info:
        rf.splice_values(pins_text(f"    amd64: {value}\n"), {AMD64: "x"})
    assert (
        info.value.message == f"registry.yaml's image.platforms.amd64 holds {held}, not a single value to write into."
    )
    assert info.value.remedy == "Write it as `amd64: null` (as in the sample processor)."


def test_the_proof_refuses_a_text_where_anything_else_moved(repo: Path) -> None:
    path = write(repo, VALID)
    old = VALID
    moved = VALID.replace("amd64: null", f"amd64: {D1}")
    # exactly the edited values changed: no complaint
    rf._prove_only_these_moved(path, old, moved, {AMD64: D1})
    rf._prove_only_these_moved(path, old, old.replace(REPOSITORY, "r/x"), {("image", "repository"): "r/x"})
    # anything else: refused, naming the file and how many values were meant to change
    for new_text, edits in [
        (moved.replace("type: object", "type: array"), {AMD64: D1}),
        (moved, {ARM64: D1}),
        (moved, {AMD64: D2, ARM64: None}),
    ]:
        with pytest.raises(TheoryDeployError) as info:
            rf._prove_only_these_moved(path, old, new_text, edits)
        assert info.value.message == (
            f"{FILE}: the splice would change more than {len(edits)} value(s); refusing to write."
        )


def test_write_pins_changes_only_the_pin_characters(repo: Path) -> None:
    text = (
        "# header\n"
        + VALID.replace("    amd64: null\n", f"    amd64: '{D2}'   # quoted, trailing spaces after   \n").replace(
            "    arm64: null\n", "    arm64: ~\n"
        )
        + "outputs: {a: 1}"  # no newline at the end
    )
    path = write(repo, text)
    assert rf.write_pins(path, {"amd64": D1, "arm64": D2}) == {"amd64": (D2, D1), "arm64": (None, D2)}
    assert path.read_bytes() == text.replace(f"'{D2}'", f"'{D1}'").replace("arm64: ~", f"arm64: {D2}").encode()
    # only what changed is reported and written
    assert rf.write_pins(path, {"amd64": D1, "arm64": None}) == {"arm64": (D2, None)}
    assert path.read_bytes() == text.replace(f"'{D2}'", f"'{D1}'").replace("arm64: ~", "arm64: null").encode()


def test_write_pins_with_nothing_to_change_does_not_write_but_clears_leftovers(repo: Path) -> None:
    path = write(repo, VALID)
    leftover = path.parent / ".registry.yaml.abc123.tmp"
    leftover.write_text("half a file")
    inode = path.stat().st_ino
    assert rf.write_pins(path, {"amd64": None, "arm64": None}) == {}
    assert path.stat().st_ino == inode and path.read_text() == VALID
    assert not leftover.exists()


def test_write_pins_keeps_non_ascii_text_whatever_the_locale(repo: Path) -> None:
    text = VALID.replace("inputs:\n", "# café, naïve: ü\ninputs:\n")
    path = write(repo, text)
    # a C locale without UTF-8 mode: Python's default text encoding is ASCII there
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    for code in (
        f"from pathlib import Path; from theory_deploy.registry_file import write_pins; write_pins(Path({str(path)!r}), {{'amd64': {D1!r}}})",
        f"from pathlib import Path; from theory_deploy.registry_file import set_repository; set_repository(Path({str(path)!r}), '127.0.0.1:5000/x/y')",
    ):
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert path.read_bytes() == text.replace(REPOSITORY, "127.0.0.1:5000/x/y").encode("utf-8")


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ({"riscv": D1}, "unknown platform 'riscv'; expected one of amd64, arm64."),
        ({"linux/amd64": D1}, "unknown platform 'linux/amd64'; expected one of amd64, arm64."),
        (
            {"arm64": "x"},
            f"refusing to pin arm64 to 'x': a pin must be exactly {REPOSITORY}@sha256:<64 lowercase hex>.",
        ),
        # the repository is matched literally: a `.` in it is no wildcard
        (
            {"amd64": D1.replace("ghcr.io", "ghcrXio")},
            f"refusing to pin amd64 to {D1.replace('ghcr.io', 'ghcrXio')!r}: a pin must be exactly "
            f"{REPOSITORY}@sha256:<64 lowercase hex>.",
        ),
        (
            {"amd64": f"{REPOSITORY}@sha256:{'A' * 64}"},
            f"refusing to pin amd64 to {REPOSITORY + '@sha256:' + 'A' * 64!r}: a pin must be exactly "
            f"{REPOSITORY}@sha256:<64 lowercase hex>.",
        ),
        (
            {"amd64": D1 + "\n"},
            f"refusing to pin amd64 to {D1 + chr(10)!r}: a pin must be exactly {REPOSITORY}@sha256:<64 lowercase hex>.",
        ),
    ],
)
def test_write_pins_refusals_leave_the_file_alone(repo: Path, pins: dict, message: str) -> None:
    path = write(repo, VALID)
    with pytest.raises(ValidationError) as info:
        rf.write_pins(path, pins)
    assert info.value.message == message
    assert path.read_text() == VALID


def test_write_pins_into_an_invalid_file_is_refused_with_its_problems(repo: Path) -> None:
    path = write(repo, VALID + "bad: 1\n")
    with pytest.raises(ValidationError) as info:
        rf.write_pins(path, {"amd64": D1})
    assert info.value.message == at(9, 1, "unknown key 'bad'")
    assert path.read_text() == VALID + "bad: 1\n"


def test_set_repository_clears_the_pins_and_reports_what_moved(repo: Path) -> None:
    text = VALID.replace("amd64: null", f"amd64: {D1}  # pinned") + "# end"
    path = write(repo, text)
    new = "127.0.0.1:5000/theory/llm-litellm"
    assert rf.set_repository(path, new) == {"old": REPOSITORY, "new": new, "changed": True, "cleared_pins": ["amd64"]}
    expected = text.replace(f"amd64: {D1}  # pinned", "amd64: null  # pinned").replace(REPOSITORY, new)
    assert path.read_bytes() == expected.encode()
    # moving again with no pins: nothing to clear
    assert rf.set_repository(path, REPOSITORY) == {"old": new, "new": REPOSITORY, "changed": True, "cleared_pins": []}
    assert path.read_bytes() == expected.replace(new, REPOSITORY).encode()


def test_set_repository_to_the_same_repository_writes_nothing(repo: Path) -> None:
    path = write(repo, VALID.replace("amd64: null", f"amd64: {D1}"))
    inode, before = path.stat().st_ino, path.read_bytes()
    assert rf.set_repository(path, REPOSITORY) == {
        "old": REPOSITORY,
        "new": REPOSITORY,
        "changed": False,
        "cleared_pins": [],
    }
    assert path.stat().st_ino == inode and path.read_bytes() == before


@pytest.mark.parametrize(
    ("repository", "error", "message"),
    [
        ("ghcr.io/x/y:tag", ValidationError, "--repository 'ghcr.io/x/y:tag' must have no tag and no digest."),
        (
            f"ghcr.io/x/y@sha256:{'a' * 64}",
            ValidationError,
            f"--repository 'ghcr.io/x/y@sha256:{'a' * 64}' must have no tag and no digest.",
        ),
        (
            "Not Valid",
            InvalidRefError,
            "--repository: the image ref contains a space (U+0020) at position 4; "
            "image refs may not contain whitespace or control characters.",
        ),
    ],
)
def test_set_repository_refusals_name_the_flag(repo: Path, repository: str, error: type, message: str) -> None:
    path = write(repo, VALID)
    with pytest.raises(error) as info:
        rf.set_repository(path, repository)
    assert info.value.message == message
    assert path.read_text() == VALID


# ---------------------------------------------------------------------------------------------------
# Bugs found while writing these tests (once pinned as strict xfails), fixed: each stays a test
# ---------------------------------------------------------------------------------------------------


def test_a_pin_write_keeps_crlf_line_endings(repo: Path) -> None:
    text = VALID.replace("\n", "\r\n")
    path = write(repo, text)
    rf.write_pins(path, {"amd64": D1})
    assert path.read_bytes() == text.replace("amd64: null", f"amd64: {D1}").encode()


def test_a_repository_move_keeps_crlf_line_endings(repo: Path) -> None:
    text = VALID.replace("amd64: null", f"amd64: {D1}").replace("\n", "\r\n")
    path = write(repo, text)
    rf.set_repository(path, "127.0.0.1:5000/a/b")
    assert path.read_bytes() == VALID.replace(REPOSITORY, "127.0.0.1:5000/a/b").replace("\n", "\r\n").encode()


def test_a_pin_write_into_empty_values_followed_by_a_key(repo: Path) -> None:
    # the parser marks an empty value where the next key starts; the pin still goes after its own colon
    text = VALID.replace("amd64: null", "amd64:").replace("arm64: null", "arm64:")
    path = write(repo, text)
    assert rf.write_pins(path, {"amd64": D1}) == {"amd64": (None, D1)}
    assert path.read_text() == text.replace("amd64:", f"amd64: {D1}")


def test_a_pin_write_into_an_empty_value_on_the_last_line(repo: Path) -> None:
    text = VALID.replace("    amd64: null\n    arm64: null\n", "    arm64: null\n    amd64:\n").replace(
        "inputs:\n  type: object\n", ""
    )
    text = "inputs: {type: object}\n" + text
    path = write(repo, text)
    rf.write_pins(path, {"amd64": D1})
    assert path.read_text() == text.replace("amd64:", f"amd64: {D1}")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    amd64:  # pinned by the bot\n", f"    amd64: {D1}  # pinned by the bot\n"),
        ("    amd64:\n\n    # a comment\n", f"    amd64: {D1}\n\n    # a comment\n"),
        ("    ? amd64\n    :\n", f"    ? amd64\n    : {D1}\n"),
    ],
)
def test_a_pin_write_into_an_empty_value_before_a_comment_or_blank_line(repo: Path, old: str, new: str) -> None:
    text = VALID.replace("    amd64: null\n", old)
    path = write(repo, text)
    rf.write_pins(path, {"amd64": D1})
    assert path.read_text() == VALID.replace("    amd64: null\n", new)


def test_a_pin_write_into_empty_flow_values(repo: Path) -> None:
    text = VALID.replace("  platforms:\n    amd64: null\n    arm64: null\n", "  platforms: {amd64: , arm64: }\n")
    path = write(repo, text)
    assert rf.write_pins(path, {"amd64": D1, "arm64": D2}) == {"amd64": (None, D1), "arm64": (None, D2)}
    assert path.read_text() == text.replace("{amd64: , arm64: }", f"{{amd64: {D1}, arm64: {D2} }}")


def test_a_pin_written_over_a_multi_line_quoted_pin_replaces_it_whole(repo: Path) -> None:
    two_lines = f'"{REPOSITORY}@sha256:{"2" * 32}\\\n      {"2" * 32}"'
    path = write(repo, VALID.replace("amd64: null", f"amd64: {two_lines}"))
    assert rf.check_file(path)[1] == []
    assert rf.write_pins(path, {"amd64": D1}) == {"amd64": (D2, D1)}
    assert path.read_text() == VALID.replace("amd64: null", f'amd64: "{D1}"')


def test_the_proof_refuses_a_splice_that_does_not_parse(repo: Path) -> None:
    path = write(repo, VALID)
    with pytest.raises(TheoryDeployError) as info:
        rf._prove_only_these_moved(path, VALID, VALID.replace("amd64: null", 'amd64: "unclosed'), {AMD64: D1})
    assert info.value.message == f"{FILE}: the splice would change more than 1 value(s); refusing to write."


@pytest.mark.parametrize(
    ("value", "col", "message"),
    [
        ("!!bool maybe", 6, "'maybe' is not a valid !!bool"),
        ("!!float", 6, "'' is not a valid !!float"),
        ("!!int 0x", 6, "'0x' is not a valid !!int"),
    ],
)
def test_an_impossible_tagged_scalar_is_a_problem_not_a_traceback(
    repo: Path, value: str, col: int, message: str
) -> None:
    path = write(repo, VALID + f"outputs:\n  a: {value}\n")
    line = VALID.count("\n") + 2
    assert shown(path) == [at(line, col, f"not valid YAML: {message}")]


def test_the_repository_is_the_folder_above_processors_even_with_a_nearer_processors_folder(repo: Path) -> None:
    # a processors/ folder inside the processor's own folder does not make that folder the repository
    (repo / "processors/llm/litellm/processors").mkdir()
    path = write(repo, VALID + "build:\n  context: ../../..\n")
    assert shown(path) == []


def test_a_registry_yaml_outside_the_processors_layout_belongs_to_the_nearest_repository(repo: Path) -> None:
    path = repo / "other/place/registry.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(VALID + "build:\n  context: ../../..\n")
    assert shown(path) == [
        at(10, 3, outside("dockerfile", "Dockerfile", repo.parent / "Dockerfile", repo), "other/place/registry.yaml"),
        at(10, 12, outside("context", "../../..", repo.parent, repo), "other/place/registry.yaml"),
    ]
    path.write_text(VALID + "build:\n  context: ../..\n")
    assert shown(path) == []


def test_input_schemas_holding_dates_are_checked_every_time(repo: Path) -> None:
    # a date is no JSON value, so such a schema is never remembered as valid: a later, invalid one
    # holding a date is still checked
    path = write(repo, VALID + "  default: 2020-01-01\n")
    assert shown(path) == []
    path.write_text(VALID + "  default: 2020-01-01\n  minProperties: -1\n")
    assert shown(path) == [
        at(10, 18, "inputs is not a valid JSON Schema at /minProperties: -1 is less than the minimum of 0")
    ]


def test_load_processor_keeps_the_repository_root_it_was_given(repo: Path, tmp_path: Path) -> None:
    processor(repo, "a/b", "a/b@1")
    (tmp_path / "via").symlink_to(repo)
    loaded = rf.load_processor(ProcessorRef.parse("a/b@1"), tmp_path / "via")
    assert (loaded.repo_root, loaded.path) == (tmp_path / "via", tmp_path / "via/processors/a/b/registry.yaml")


def test_a_repository_written_as_a_block_scalar_is_replaced_whole(repo: Path) -> None:
    text = VALID.replace(f"  repository: {REPOSITORY}\n", f"  repository: |-\n    {REPOSITORY}\n")
    path = write(repo, text)
    assert rf.check_file(path)[1] == []
    rf.set_repository(path, "127.0.0.1:5000/a/b")
    assert path.read_text() == VALID.replace(REPOSITORY, "127.0.0.1:5000/a/b")


def test_a_pin_written_as_a_folded_scalar_is_replaced_whole(repo: Path) -> None:
    text = VALID.replace("    amd64: null\n", f"    amd64: >-\n      {D2}\n")
    path = write(repo, text)
    assert rf.write_pins(path, {"amd64": D1, "arm64": D2}) == {"amd64": (D2, D1), "arm64": (None, D2)}
    assert path.read_text() == VALID.replace("amd64: null", f"amd64: {D1}").replace("arm64: null", f"arm64: {D2}")


def test_platform_names_are_the_build_platforms_without_linux(repo: Path) -> None:
    path = write(repo, VALID + "build:\n  platforms: [linux/arm64, linux/amd64]\n")
    spec, problems = rf.check_file(path)
    assert problems == [] and spec is not None
    assert spec.platform_names() == ["arm64", "amd64"]
    spec, _ = rf.check_file(write(repo, VALID))
    assert spec is not None and spec.platform_names() == ["amd64", "arm64"]  # the default: both


def test_an_auth_secret_is_required_even_when_not_listed_and_none_adds_nothing(repo: Path) -> None:
    path = write(repo, VALID + "api:\n  auth_secret: MY_TOKEN\nsecrets:\n  required: [OTHER]\n  optional: [EXTRA]\n")
    spec, problems = rf.check_file(path)
    assert problems == [] and spec is not None
    assert spec.secret_names() == (["OTHER", "MY_TOKEN", "EXTRA"], ["OTHER", "MY_TOKEN"])
    path.write_text(VALID + "secrets:\n  required: [OTHER]\n  optional: [EXTRA]\n")
    spec, problems = rf.check_file(path)
    assert problems == [] and spec is not None
    assert spec.secret_names() == (["OTHER", "EXTRA"], ["OTHER"])


def test_a_build_path_no_file_system_can_name_is_shown_at_its_value(repo: Path) -> None:
    """A lone surrogate (`\\ud800`, from a YAML escape) cannot be encoded as a file name: the context
    cannot be resolved, which is reported at its value (and the Dockerfile in it is not checked)."""
    path = write(repo, VALID + 'build:\n  context: "\\ud800"\n  dockerfile: ../../../../Dockerfile\n')
    folder = str((repo / "processors/llm/litellm").resolve())
    assert shown(path) == [
        at(
            10,
            12,
            "build.context '\\ud800' cannot be resolved: 'utf-8' codec can't encode character '\\ud800' in "
            f"position {len(folder) + 1}: surrogates not allowed",
        )
    ]


def test_real_paths_join_takes_each_leading_dot_dot_as_one_parent(tmp_path: Path) -> None:
    """Called directly (not through the checks, whose `except OSError` would also swallow the deadline's
    TimeoutError): a scanner that stops advancing over the leading parts fails here in 20 s."""
    base = tmp_path.resolve() / "a" / "b" / "c"
    paths = rf._RealPaths()
    assert paths.join(base, "../../x") == base.parent.parent / "x"
    assert paths.join(base, "./../.") == base.parent
    assert paths.join(base, "../..//x/y") == base.parent.parent / "x" / "y"
