"""Hostile registry.yaml files: every one is refused with a named ERR_* code, the file (and line) and
the limit it broke, quickly and without a traceback, by the real CLI and by the functions behind it.

Each test drives `processorctl validate` (or `plan`, `localctl start --dry-run`) in a throwaway
repository. The subprocess timeout is a guard against the hangs these files caused before (alias
expansion, FIFOs, huge files), not a timing assertion.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from theory_deploy import build, registry_file, registry_pins
from theory_deploy.bounded_yaml import DEFAULT_MAX_BYTES, DEFAULT_MAX_NODES, MAX_DEPTH
from theory_deploy.errors import ValidationError
from theory_deploy.registry_file import check_file

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "processors/llm/litellm/registry.yaml"
BIN = Path(sys.executable).parent
GUARD_S = 30  # generous: each of these finishes in well under a second


def cli(repo: Path, tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("THEORY_MAX_REGISTRY")}
    environ.update({"THEORY_REPO_ROOT": str(repo), "THEORY_STATE_DIR": str(repo.parent / "state"), **(env or {})})
    return subprocess.run(
        [str(BIN / tool), *args, "--json"],
        capture_output=True,
        text=True,
        cwd=repo,
        env=environ,
        timeout=GUARD_S,
    )


def refused(proc: subprocess.CompletedProcess[str], code: str = "ERR_VALIDATION") -> str:
    """The error message of a refused run, after checking the contract: the code, no traceback."""
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    body = json.loads(proc.stdout)
    assert body["status"] == "error", body
    assert body["error"]["code"] == code, body
    assert proc.returncode == {"ERR_VALIDATION": 5, "ERR_USAGE": 2}[code]
    message: str = body["error"]["message"]
    return message


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    folder = root / "processors/llm/litellm"
    folder.mkdir(parents=True)
    shutil.copy(SAMPLE, folder / "registry.yaml")
    (folder / "Dockerfile").write_text("FROM scratch\n")
    return root


def registry(repo: Path) -> Path:
    return repo / "processors/llm/litellm/registry.yaml"


REL = "processors/llm/litellm/registry.yaml"


def sample_with(replacements: dict[str, str], extra: str = "") -> str:
    text = SAMPLE.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text + extra


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- 1. encoding -----------------------------------------------------------------------------------


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_utf16_registry_yaml_is_a_validation_error_naming_the_file_and_utf8(repo: Path) -> None:
    registry(repo).write_bytes(SAMPLE.read_text().encode("utf-16"))  # with a byte-order mark
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:1:1" in message
    assert "must be encoded as UTF-8" in message and "UTF-16 byte-order mark" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_latin1_registry_yaml_is_a_validation_error_at_the_offending_line(repo: Path) -> None:
    text = sample_with({"# llm/litellm@1: chat": "# llm/litellm@1: caf\u00e9 chat"})
    registry(repo).write_bytes(text.encode("latin-1"))
    message = refused(cli(repo, "processorctl", "validate", REL))
    assert f"{REL}:{line_of(text, 'caf')}:" in message
    assert "byte 0xe9" in message and "must be encoded as UTF-8" in message


# --- 2. nesting depth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nested",
    [
        pytest.param("[" * 10_000 + "]" * 10_000, id="flow-sequences-10000-deep"),
        pytest.param("{a: " * 10_000 + "1" + "}" * 10_000, id="flow-mappings-10000-deep"),
        pytest.param(
            "\n" + "".join("  " * (i + 1) + "a:\n" for i in range(200)) + "  " * 201 + "1", id="block-mappings-200-deep"
        ),
    ],
)
@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_deep_nesting_is_refused_at_the_depth_limit(repo: Path, nested: str) -> None:
    text = sample_with({}, f"x_deep: {nested}\n")
    registry(repo).write_text(text)
    message = refused(cli(repo, "processorctl", "validate"))
    where = re.search(rf"{re.escape(REL)}:(\d+):\d+: nested more than {MAX_DEPTH} levels deep", message)
    assert where, message
    assert line_of(text, "x_deep") <= int(where[1]) <= line_of(text, "x_deep") + MAX_DEPTH + 1
    spec, problems = check_file(registry(repo))
    assert spec is None and "levels deep" in problems[0].message


def test_a_deep_but_legitimate_inputs_schema_is_accepted(repo: Path) -> None:
    deep = "{type: object, properties: {a: " * 12 + "{type: string}" + "}}" * 12
    registry(repo).write_text(sample_with({"outputs:\n": f"outputs:\n  deep: {deep}\n"}))
    spec, problems = check_file(registry(repo))
    assert problems == [] and spec is not None


# --- 3. aliases ------------------------------------------------------------------------------------

LAUGHS = "lols:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_billion_laughs_is_refused_by_validate(repo: Path) -> None:
    text = sample_with({"outputs:\n": LAUGHS + "outputs:\n"})
    registry(repo).write_text(text)
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:{line_of(text, 'l1:')}:" in message
    assert "YAML alias *l0 is not allowed" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_billion_laughs_is_refused_by_localctl_start_dry_run(repo: Path) -> None:
    registry(repo).write_text(sample_with({"outputs:\n": LAUGHS + "outputs:\n"}))
    proc = cli(repo, "localctl", "start", "--ref", "llm/litellm@1", "--env", "dev", "--dry-run")
    message = refused(proc)
    assert "registry.yaml" in message and "alias" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_single_alias_is_refused_too_so_the_rule_is_simple(repo: Path) -> None:
    text = sample_with({"outputs:\n": "outputs:\n  again: *base\n", "runtime:\n": "runtime: &base\n"})
    registry(repo).write_text(text)
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:{line_of(text, 'again:')}:" in message and "alias *base" in message


def test_pin_readers_treat_hostile_texts_as_unreadable_quickly() -> None:
    text = sample_with({"outputs:\n": LAUGHS + "outputs:\n"})
    assert registry_pins.pins_in_text(text) == {}
    assert registry_pins.without_pins(text) is None
    assert registry_pins.pin_lines(text) is None
    assert registry_file.pin_line(text, "amd64") is None
    deep = sample_with({}, "x: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert registry_pins.pins_in_text(deep) == {} and registry_pins.pin_lines(deep) is None


# --- 4. size and node caps -------------------------------------------------------------------------


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_200_mb_registry_yaml_is_refused_by_size_without_reading_it(repo: Path) -> None:
    with registry(repo).open("r+b") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: the size is real, the disk use is not
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:1:1" in message
    assert f"size limit of {DEFAULT_MAX_BYTES} bytes" in message and "THEORY_MAX_REGISTRY_BYTES" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_the_size_cap_is_exact_and_can_be_raised(repo: Path) -> None:
    text = sample_with({}, "#" * (DEFAULT_MAX_BYTES - len(SAMPLE.read_bytes())) + "\n")
    registry(repo).write_text(text)
    assert len(text.encode()) == DEFAULT_MAX_BYTES + 1
    assert "size limit" in refused(cli(repo, "processorctl", "validate"))
    ok = cli(repo, "processorctl", "validate", env={"THEORY_MAX_REGISTRY_BYTES": str(2 * DEFAULT_MAX_BYTES)})
    assert ok.returncode == 0, ok.stdout
    bad = cli(repo, "processorctl", "validate", env={"THEORY_MAX_REGISTRY_BYTES": "lots"})
    assert "THEORY_MAX_REGISTRY_BYTES='lots'" in refused(bad, "ERR_USAGE")


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_huge_list_is_refused_at_the_node_limit(repo: Path) -> None:
    text = sample_with({}, "x_many: [" + "1," * 1_000_000 + "1]\n")  # 2 MB: over the size cap first
    registry(repo).write_text(text)
    assert "size limit" in refused(cli(repo, "processorctl", "validate"))
    text = sample_with({}, "x_many: [" + "1," * 100_000 + "1]\n")  # 200 KB: under the size cap
    registry(repo).write_text(text)
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:{line_of(text, 'x_many')}:" in message
    assert f"more than {DEFAULT_MAX_NODES} YAML nodes" in message and "THEORY_MAX_REGISTRY_NODES" in message


# --- 5. special files ------------------------------------------------------------------------------


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_dev_zero_is_refused_as_not_a_regular_file(repo: Path) -> None:
    message = refused(cli(repo, "processorctl", "validate", "/dev/zero"))
    assert "/dev/zero:1:1" in message and "a character device, not a regular file" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_fifo_given_as_the_file_is_refused_without_hanging(repo: Path) -> None:
    fifo = repo / "processors/llm/litellm/pipe.yaml"
    os.mkfifo(fifo)
    message = refused(cli(repo, "processorctl", "validate", str(fifo)))
    assert "pipe.yaml:1:1" in message and "a FIFO, not a regular file" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_registry_yaml_symlinked_to_a_fifo_is_refused_without_hanging(repo: Path) -> None:
    fifo = repo / "processors/llm/litellm/pipe"
    os.mkfifo(fifo)
    registry(repo).unlink()
    registry(repo).symlink_to("pipe")
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:1:1" in message and "a FIFO, not a regular file" in message
    assert registry_file.pin_line(registry(repo), "amd64") is None
    message = refused(cli(repo, "processorctl", "plan", "--all"))
    assert "a FIFO" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_directory_named_registry_yaml_is_refused(repo: Path) -> None:
    registry(repo).unlink()
    registry(repo).mkdir()
    assert "a directory, not a regular file" in refused(cli(repo, "processorctl", "validate"))


# --- 6. NUL bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("context: ../../..", 'context: "../../..\\0/etc"', "build.context"),
        ("dockerfile: processors/llm/litellm/Dockerfile", 'dockerfile: "Docker\\0file"', "build.dockerfile"),
        ("path: /run", 'path: "/run\\0"', "api.path"),
    ],
)
@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_nul_byte_in_a_path_field_is_a_validation_error_at_its_line(
    repo: Path, old: str, new: str, field: str
) -> None:
    text = sample_with({old: new})
    registry(repo).write_text(text)
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:{line_of(text, new.split(':')[0] + ':')}:" in message
    assert f"{field} contains a NUL byte" in message


# --- 7. the repository boundary --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("context: ../../..", "context: /", "build.context"),
        ("context: ../../..", "context: ../../../..", "build.context"),
        ("context: ../../..", "context: ../../../../../../../..", "build.context"),
        ("dockerfile: processors/llm/litellm/Dockerfile", "dockerfile: /etc/passwd", "build.dockerfile"),
        ("dockerfile: processors/llm/litellm/Dockerfile", "dockerfile: ../etc/passwd", "build.dockerfile"),
    ],
)
@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_build_paths_outside_the_repository_are_refused(repo: Path, old: str, new: str, field: str) -> None:
    text = sample_with({old: new})
    registry(repo).write_text(text)
    proc = cli(repo, "processorctl", "validate")
    message = refused(proc)
    assert f"{REL}:{line_of(text, new.split(':')[0] + ':')}:" in message
    assert f"{field} " in message and f"outside the repository {repo.resolve()}" in message
    assert "root:" not in proc.stdout + proc.stderr  # nothing of /etc/passwd is ever quoted


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_context_symlinked_out_of_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo / "processors/llm/litellm/ctx").symlink_to(outside)
    registry(repo).write_text(
        sample_with(
            {
                "context: ../../..": "context: ctx",
                "dockerfile: processors/llm/litellm/Dockerfile": "dockerfile: Dockerfile",
            }
        )
    )
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"resolves to {outside.resolve()}, outside the repository" in message


@pytest.mark.parametrize("what", ["file", "folder"])
@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_registry_yaml_or_folder_symlinked_out_of_the_repository_is_refused(
    repo: Path, tmp_path: Path, what: str
) -> None:
    outside = tmp_path / "outside/litellm"
    outside.mkdir(parents=True)
    (outside / "registry.yaml").write_text(sample_with({"# llm/litellm@1": "# SECRET-OUTSIDE-LINE llm/litellm@1"}))
    if what == "file":
        registry(repo).unlink()
        registry(repo).symlink_to(outside / "registry.yaml")
    else:
        shutil.rmtree(repo / "processors/llm/litellm")
        (repo / "processors/llm/litellm").symlink_to(outside)
    proc = cli(repo, "processorctl", "validate")
    message = refused(proc)
    assert f"{REL}:1:1" in message and f"outside the repository {repo.resolve()}" in message
    assert "SECRET-OUTSIDE-LINE" not in proc.stdout + proc.stderr
    assert "outside the repository" in refused(cli(repo, "processorctl", "plan", "--all"))


def test_build_itself_refuses_paths_outside_the_repository_before_docker(repo: Path) -> None:
    spec, problems = check_file(registry(repo))
    assert spec is not None and problems == []
    for update in ({"context": "/"}, {"dockerfile": "/etc/passwd"}, {"context": "x\0y"}):
        hostile = spec.model_copy(update={"build": spec.build.model_copy(update=update)})
        with pytest.raises(ValidationError) as info:
            build.build_platform_images(hostile, repo, ["amd64"], registry_path=registry(repo), builder=None)
        assert "build." in info.value.message and "root:" not in info.value.message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_the_sample_context_at_the_repository_root_is_accepted(repo: Path) -> None:
    proc = cli(repo, "processorctl", "validate")
    assert proc.returncode == 0, proc.stdout


# --- 8. reserved secret names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "MODAL_TOKEN_SECRET",
        "MODAL_TOKEN_ID",
        "REGISTRY_PASSWORD",
        "REGISTRY_AUTH",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "ACTIONS_RUNTIME_TOKEN",
        "RUNNER_TEMP",
        "DOCKER_CONFIG",
        "THEORY_IN_GITHUB_TOKEN",
        "THEORY_AUTH_TOKEN",
        "THEORY_REF",
        "PATH",
        "HOME",
        "LD_PRELOAD",
        "PYTHONPATH",
        "IMAGE_DIGEST",
        "PORT",
    ],
)
@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_reserved_secret_name_is_refused(repo: Path, name: str) -> None:
    text = sample_with({"optional: [LITELLM_API_BASE]": f"optional: [LITELLM_API_BASE, {name}]"})
    registry(repo).write_text(text)
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:{line_of(text, 'optional:')}:" in message
    assert f"secrets.optional: {name!r} is a reserved name" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_reserved_auth_secret_is_refused(repo: Path) -> None:
    text = sample_with({"auth_secret: null": "auth_secret: GITHUB_TOKEN"})
    registry(repo).write_text(text)
    message = refused(cli(repo, "processorctl", "validate"))
    assert f"{REL}:{line_of(text, 'auth_secret:')}:" in message and "api.auth_secret: 'GITHUB_TOKEN'" in message


def test_ordinary_secret_names_stay_allowed(repo: Path) -> None:
    registry(repo).write_text(
        sample_with({"optional: [LITELLM_API_BASE]": "optional: [LITELLM_API_BASE, ANTHROPIC_API_KEY, MY_TOKEN]"})
    )
    assert check_file(registry(repo))[1] == []


# --- 9. slug collisions ----------------------------------------------------------------------------


def _two_colliding(repo: Path) -> tuple[Path, Path]:
    paths = []
    for ns, name in (("a-b", "c"), ("a", "b-c")):
        folder = repo / "processors" / ns / name
        folder.mkdir(parents=True)
        text = sample_with(
            {
                "ref: llm/litellm@1": f"ref: {ns}/{name}@1",
                "dockerfile: processors/llm/litellm/Dockerfile": f"dockerfile: processors/{ns}/{name}/Dockerfile",
            }
        )
        (folder / "registry.yaml").write_text(text)
        (folder / "Dockerfile").write_text("FROM scratch\n")
        paths.append(folder / "registry.yaml")
    return paths[0], paths[1]


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_two_refs_with_one_slug_are_refused_by_validate_naming_both_files(repo: Path) -> None:
    _two_colliding(repo)
    message = refused(cli(repo, "processorctl", "validate"))
    assert "processors/a/b-c/registry.yaml" in message and "processors/a-b/c/registry.yaml" in message
    assert "'a-b-c-v1'" in message and "must be unique" in message
    ok = cli(repo, "processorctl", "validate", "processors/a/b-c/registry.yaml")
    assert ok.returncode == 0, ok.stdout  # one file alone collides with nothing


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_two_refs_with_one_slug_are_refused_by_plan(repo: Path) -> None:
    _two_colliding(repo)
    message = refused(cli(repo, "processorctl", "plan", "--all"))
    assert "processors/a/b-c/registry.yaml" in message and "processors/a-b/c/registry.yaml" in message
    assert "a-b-c-v1" in message
