"""The stage engine's rules, without any service: which stages `all` means per environment, which
combinations are refused before anything runs, which digest an environment deploys, and the push
record that carries a push from one job to the next."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from theory_deploy.errors import InputsError, TheoryDeployError, UsageError
from theory_deploy.pipeline import (
    STAGES,
    PipelineRequest,
    default_inputs,
    deploy_source,
    parse_stages,
    resolve_stages,
    stage_problems,
)
from theory_deploy.push_records import PushRecord, collect_records
from theory_deploy.refs import ProcessorRef
from theory_deploy.registry_file import load_path, write_pins

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "processors" / "llm" / "litellm" / "registry.yaml"
AMD = "127.0.0.1:5000/org/app@sha256:" + "a" * 64
ARM = "127.0.0.1:5000/org/app@sha256:" + "b" * 64


def test_one_list_of_stages_includes_pr():
    assert STAGES == ("build", "push", "pin", "pr", "start", "sync-secrets", "verify", "run")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("all", None),
        ("start", ["start"]),
        ("run, build ,push", ["build", "push", "run"]),  # always pipeline order
        ("build-push,pin", ["build", "push", "pin"]),  # the actions' spelling of build+push
        ("pin\npr", ["pin", "pr"]),
    ],
)
def test_parse_stages(text, expected):
    assert parse_stages(text) == expected


def test_an_unknown_stage_is_named_with_the_choices():
    with pytest.raises(UsageError) as caught:
        parse_stages("build,deploy,ship", where="input stages")
    assert "input stages: unknown stage(s) deploy, ship" in caught.value.message
    assert "build, push, pin, pr, start" in caught.value.message


@pytest.mark.parametrize(
    ("env", "mode", "open_pr", "expected"),
    [
        ("dev", "mock", False, ["build", "push", "pin", "start", "sync-secrets", "verify", "run"]),
        ("dev", None, True, ["build", "push", "pin", "pr", "start", "sync-secrets", "verify"]),
        ("staging", None, True, ["start", "sync-secrets", "verify"]),  # promotion: never a rebuild
        ("main", "real", False, ["start", "sync-secrets", "verify", "run"]),
        (None, "mock", True, ["build", "push", "pin", "pr"]),  # no environment: nothing to deploy
    ],
)
def test_all_means_per_environment(env, mode, open_pr, expected):
    assert resolve_stages(None, env=env, mode=mode, open_pr=open_pr) == expected


def test_an_explicit_list_is_kept_as_given():
    assert resolve_stages(["build", "push", "start"], env="dev", mode="mock", open_pr=True) == [
        "build",
        "push",
        "start",
    ]


def problems(stages, env="dev", mode="mock", from_push=False, pr_base="main"):
    return "\n".join(stage_problems(stages, env=env, mode=mode, from_push=from_push, pr_base=pr_base))


def test_combinations_refused_before_anything_runs():
    assert problems(["build", "push", "start"]) == ""
    assert "promotion is exact" in problems(["build", "push", "start"], env="staging")
    assert "not allowed in main" in problems(["pin"], env="main", from_push=True)
    assert "need an environment" in problems(["start"], env=None)
    assert "stage run needs a mode" in problems(["run"], mode=None)
    assert "drop the build and push stages" in problems(["build", "push"], from_push=True)
    assert "stage push pushes what this run built" in problems(["push"])
    assert "stage pin pins what this run pushed" in problems(["pin"])
    assert problems(["pin"], from_push=True) == ""
    assert "stage pr needs the branch" in problems(["pr"], from_push=True, pr_base=None)


def test_request_check_reports_every_problem_at_once():
    request = PipelineRequest(refs=[], env=None, mode="loud", stages=["run"])
    with pytest.raises(UsageError) as caught:
        request.check()
    message = caught.value.message
    for text in ("need an environment", "'loud' is not a mode", "no processor ref given"):
        assert text in message


def test_which_digest_each_environment_deploys():
    pushed = PushRecord("llm/litellm@1", {"amd64": AMD})
    assert deploy_source("dev", pushed) == "pushed"  # a feature branch runs its own code
    assert deploy_source("dev", None) == "pin"  # nothing pushed: the pin
    assert deploy_source("staging", pushed) == "pin"  # promotion is exact, whatever was pushed
    assert deploy_source("main", pushed) == "pin"


def test_push_record_round_trip_and_folder_lookup(tmp_path):
    record = PushRecord("llm/litellm@1", {"amd64": AMD, "arm64": ARM}, index=AMD)
    path = record.write(tmp_path / "out", "llm-litellm-v1")
    assert path.name == "push-llm-litellm-v1.json"
    assert json.loads(path.read_text())["platforms"] == {"amd64": AMD, "arm64": ARM}
    assert PushRecord.read(tmp_path / "out", "llm-litellm-v1") == record
    assert PushRecord.read(path, "ignored-when-a-file") == record


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read it"),
        ("not json", "not JSON"),
        ('{"platforms": {}}', 'no "platforms" object'),
        ('{"platforms": {"s390x": "x"}}', "s390x"),
    ],
)
def test_a_bad_push_record_is_named(tmp_path, content, expected):
    path = tmp_path / "push.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TheoryDeployError) as caught:  # ERR_USAGE, or ERR_INVALID_REF for the platform
        PushRecord.read(path, "slug", where="--from-push")
    assert expected in caught.value.render()
    assert str(path) in caught.value.message


def test_collecting_per_platform_records(tmp_path):
    PushRecord("r@1", {"amd64": AMD}).write(tmp_path / "build-amd64", "slug")
    PushRecord("r@1", {"arm64": ARM}).write(tmp_path / "build-arm64", "slug")
    assert collect_records(tmp_path, "slug") == {"amd64": AMD, "arm64": ARM}
    PushRecord("r@1", {"amd64": AMD.replace("a" * 64, "c" * 64)}).write(tmp_path / "stale", "slug")
    with pytest.raises(UsageError, match="two different amd64 digests"):
        collect_records(tmp_path, "slug")
    with pytest.raises(UsageError, match=r"no push-other\.json"):
        collect_records(tmp_path, "other")


def test_run_inputs_default_to_the_first_example_or_say_what_to_add(tmp_path):
    sample = load_path(SAMPLE, REPO)
    assert default_inputs(sample) == sample.spec.inputs["examples"][0]
    folder = tmp_path / "processors" / "llm" / "litellm"
    folder.mkdir(parents=True)
    text = SAMPLE.read_text()
    assert "examples:" in text
    (folder / "registry.yaml").write_text(text.split("  examples:")[0] + _after_examples(text))
    bare = load_path(folder / "registry.yaml", tmp_path)
    assert bare.ref == ProcessorRef.parse("llm/litellm@1")
    with pytest.raises(InputsError) as caught:
        default_inputs(bare)
    assert "add `examples:" in caught.value.render()
    assert caught.value.details["file"] == str(bare.path)


def _after_examples(text: str) -> str:
    """registry.yaml from the first top-level key after `inputs.examples` onwards."""
    rest = text.split("  examples:", 1)[1]
    lines = rest.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "\n")):
            return "".join(lines[i:])
    return ""


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "too-big"])
def test_a_push_record_that_is_not_a_small_regular_file_is_refused_at_once(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "push-slug.json"
        os.mkfifo(path)  # opening it for reading would block forever
    elif kind == "dev-zero":
        path = Path("/dev/zero")  # endless: reading it whole would take all memory
    else:
        path = tmp_path / "push-slug.json"
        path.write_text('{"platforms": {"amd64": "' + "x" * (2 * 1024 * 1024) + '"}}')
    with pytest.raises(UsageError) as caught:
        PushRecord.read(path, "slug", where="--from-push")
    assert str(path) in caught.value.message
    assert ("not a regular file" if kind != "too-big" else "over the limit") in caught.value.message


def test_a_pin_write_removes_what_a_killed_writer_left(tmp_path):
    folder = tmp_path / "processors" / "llm" / "litellm"
    folder.mkdir(parents=True)
    registry = folder / "registry.yaml"
    registry.write_text(SAMPLE.read_text())
    leftover = folder / ".registry.yaml.k1ll3d.tmp"  # atomic_write's temporary, orphaned by kill -9
    leftover.write_text("half a file")
    unrelated = folder / ".other.yaml.abc.tmp"
    unrelated.write_text("not ours")
    write_pins(registry, {"amd64": AMD.replace("127.0.0.1:5000/org/app", "ghcr.io/theory-deploy/llm-litellm")})
    assert not leftover.exists()
    assert unrelated.exists()
    assert "sha256:" + "a" * 64 in registry.read_text()
