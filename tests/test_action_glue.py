"""The actions' glue, run as the GitHub runner runs it (tests/action_runner.py), without Docker.

The CLI behind the glue is a stand-in here (THEORY_CLI_BIN → a folder of fake processorctl/localctl/
modalctl that answer with canned JSON and log every call), so these tests pin down the glue itself:
input validation and its messages, which verbs run with which flags in which environment, outputs
written with delimiters, the step summary, annotations on the registry.yaml line, secrets handling.
The real CLI end to end is tests/test_action_glue_docker.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.action_runner import ActionResult, evaluate, parse_output_file, run_action, substitute

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "scripts" / "action-entrypoint"
LITELLM = REPO / "processors" / "llm" / "litellm" / "registry.yaml"
REF = "llm/litellm@1"
HEX = "a" * 64

FAKE_CLI = textwrap.dedent('''\
    #!{python}
    """Stand-in CLI: answers each verb with canned JSON (overridable per verb), logs every call."""
    import json, os, sys
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    verb = args[0]
    def flag(name, default=None):
        return args[args.index(name) + 1] if name in args else default
    with open(os.environ["FAKE_CLI_LOG"], "a") as log:
        log.write(json.dumps({{"tool": tool, "args": args,
                               "env": {{k: os.environ.get(k) for k in (
                                   "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "REGISTRY_USERNAME",
                                   "REGISTRY_PASSWORD", "GITHUB_TOKEN", "OPENAI_API_KEY",
                                   "THEORY_REPO_ROOT")}},
                               "theory_in": sorted(k for k in os.environ if k[:10] == "THEORY_IN_")}})
                  + "\\n")
    scenario = json.loads(os.environ.get("FAKE_CLI_SCENARIO") or "{{}}")
    key = f"{{tool}} {{verb}}"
    if key in scenario:
        answer = scenario[key]
        sys.stderr.write(answer.get("stderr", ""))
        print(json.dumps(answer["json"]))
        sys.exit(answer.get("rc", 0))
    repo = flag("--repository") or "ghcr.io/theory-deploy/llm-litellm"
    def digest(arch):
        return f"{{repo}}@sha256:" + ("1" if arch == "amd64" else "2") * 64
    out = {{"status": "success"}}
    if verb == "push":
        plats = [p.split("/")[-1] for p in (flag("--platforms") or "linux/amd64,linux/arm64").split(",")]
        out.update(index=f"{{repo}}@sha256:" + "9" * 64, platforms={{a: digest(a) for a in plats}})
    elif verb == "pin":
        pushed = json.load(open(flag("--from-push")))["platforms"]
        out.update(pins={{a: {{"old": None, "new": d, "changed": True}} for a, d in pushed.items()}})
    elif verb == "pr":
        out.update(pr_url="https://github.com/o/r/pull/7", action="created")
    elif verb == "start":
        out.update(app="feat-x-dev-llm-litellm-v1", url="http://127.0.0.1:8123")
    elif verb == "sync-secrets":
        out.update(present=[], missing=["OPENAI_API_KEY"])
    elif verb == "verify-digest":
        out.update(verified=True, app="feat-x-dev-llm-litellm-v1")
    elif verb == "plan":
        out.update(deploys=[], builds=[])
    print(json.dumps(out))
''')


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, Any]:
    """A consumer repository with the litellm processor, a fake CLI, and the runner's folders."""
    repo = tmp_path / "repo"
    (repo / "processors" / "llm" / "litellm").mkdir(parents=True)
    shutil.copy(LITELLM, repo / "processors" / "llm" / "litellm" / "registry.yaml")
    cli = tmp_path / "cli"
    cli.mkdir()
    for tool in ("processorctl", "localctl", "modalctl"):
        path = cli / tool
        path.write_text(FAKE_CLI.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    log = tmp_path / "calls.jsonl"
    log.touch()
    return {"repo": repo, "cli": cli, "temp": temp, "log": log}


def run(
    fake: dict[str, Any],
    action: str = ".",
    scenario: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    **inputs: str,
) -> ActionResult:
    inputs.setdefault("working-directory", str(fake["repo"]))
    return run_action(
        REPO / action,
        {k.replace("_", "-"): v for k, v in inputs.items()},
        workspace=fake["repo"],
        runner_temp=fake["temp"],
        env={
            "THEORY_DEPLOY_VENV": sys.prefix,  # the dev venv: no pip install in unit tests
            "THEORY_CLI_BIN": str(fake["cli"]),
            "FAKE_CLI_LOG": str(fake["log"]),
            "FAKE_CLI_SCENARIO": json.dumps(scenario or {}),
            "GIT_BRANCH": "feat/x",
            "GIT_USER": "dev",
            **(environ or {}),
        },
    )


def calls(fake: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in fake["log"].read_text().splitlines()]


def verbs(fake: dict[str, Any]) -> list[str]:
    return [f"{c['tool']} {c['args'][0]}" for c in calls(fake)]


# --------------------------------------------------------------------------------------------------
# the runner stand-in itself


def test_expressions_follow_github_semantics() -> None:
    ctx = {"inputs": {"open-pr": "true", "empty": "", "x": "a"}, "steps": {"s": {"outputs": {"d": "D"}}}}
    assert evaluate("inputs.open-pr == 'true' && 'pin,pr' || 'pin'", ctx) == "pin,pr"
    ctx["inputs"]["open-pr"] = "false"
    assert evaluate("inputs.open-pr == 'true' && 'pin,pr' || 'pin'", ctx) == "pin"
    assert evaluate("steps.s.outputs.d || steps.t.outputs.d", ctx) == "D"
    assert evaluate("inputs.empty != ''", ctx) is False
    assert substitute("a-${{ inputs.x }}-${{ inputs.missing }}", ctx) == "a-a-"


def test_output_file_parser_reads_both_forms() -> None:
    text = "a=1\nb<<EOF_x\nline1\nline2\nEOF_x\nc=\n"
    assert parse_output_file(text) == {"a": "1", "b": "line1\nline2", "c": ""}


# --------------------------------------------------------------------------------------------------
# bad inputs: clear messages, nothing run


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (
            {"ref": "llm/LiteLLM", "env": "dev", "stages": "verify"},
            "input ref: 'llm/LiteLLM' is not a processor ref",
        ),
        ({"ref": "", "env": "dev", "stages": "verify"}, "input ref is empty"),
        ({"ref": REF, "env": "prod", "stages": "verify"}, "input env: 'prod' is not an environment"),
        (
            {"ref": REF, "env": "dev", "target": "aws", "stages": "verify"},
            "input target: 'aws' is not a target",
        ),
        ({"ref": REF, "env": "dev", "stages": "deploy"}, "unknown stage(s) deploy"),
        ({"ref": REF, "env": "dev", "stages": "run"}, "stage run needs input mode"),
        ({"ref": REF, "env": "dev", "stages": "run", "mode": "fake"}, "input mode: 'fake' is not a mode"),
        ({"ref": REF, "env": "staging", "stages": "build-push,start"}, "promotion is exact"),
        ({"ref": REF, "stages": "start"}, "stages start/sync-secrets/verify/run need dev, staging or main"),
        (
            {"ref": REF, "env": "dev", "stages": "verify", "inputs_json": "[1]"},
            "inputs-json: expected a JSON object",
        ),
        (
            {"ref": REF, "env": "dev", "stages": "build-push", "platforms": "linux/s390x"},
            "not a supported platform",
        ),
        ({"ref": REF, "env": "dev", "stages": "build-push", "repository": "Not A Repo"}, "input repository"),
        ({"ref": REF, "env": "dev", "stages": "build-push", "build_args": "NOEQUALS"}, "is not KEY=VALUE"),
        (
            {"ref": REF, "env": "dev", "stages": "verify", "fail_on_missing_secrets": "maybe"},
            "is not true or false",
        ),
    ],
)
def test_bad_inputs_fail_with_a_clear_message_before_anything_runs(fake, inputs, expected) -> None:
    result = run(fake, **inputs)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert "::error" in result.stderr  # an annotation, so the message shows on the run's page
    assert calls(fake) == []  # no verb ran


def test_all_bad_inputs_are_reported_at_once(fake) -> None:
    result = run(fake, ref="nope", env="prod", target="aws", stages="verify")
    assert result.returncode == 2
    for text in ("input ref", "input env", "input target"):
        assert text in result.stderr


def test_an_unknown_processor_fails_naming_it(fake) -> None:
    result = run(fake, ref="no/such@1", env="dev", stages="verify")
    assert result.returncode != 0
    assert "no/such@1" in result.stderr
    assert calls(fake) == []


def test_setup_refuses_an_old_python_clearly(fake, tmp_path) -> None:
    old = tmp_path / "python3.8"
    old.write_text("#!/bin/sh\necho 3.8\n")
    old.chmod(0o755)
    result = run_action(REPO, {"ref": REF, "python": str(old)}, workspace=fake["repo"], runner_temp=fake["temp"])
    assert result.returncode != 0
    assert "needs 3.11 or newer" in result.stderr
    assert result.ran == ["setup"]


def test_setup_rejects_a_prepared_venv_without_the_cli(fake, tmp_path) -> None:
    result = run(fake, ref=REF, environ={"THEORY_DEPLOY_VENV": str(tmp_path)})
    assert result.returncode != 0
    assert "has no bin/python and bin/processorctl" in result.stderr


# --------------------------------------------------------------------------------------------------
# the stages, their flags, and which digest is deployed


def test_dev_builds_pins_and_deploys_the_digest_just_pushed(fake) -> None:
    result = run(
        fake,
        ref=REF,
        env="dev",
        target="modal",
        mode="mock",
        inputs_json='{"schema": "v1", "params": {"messages": [{"role": "user", "content": "hi"}]}}',
        github_token="ghs_" + "t" * 36,
        modal_token_id="ak-id",
        modal_token_secret="as-secret",
        environ={"GITHUB_REF_NAME": "feat/x"},
    )
    assert result.returncode == 0, result.stderr
    assert verbs(fake) == [
        "processorctl build",
        "processorctl push",
        "processorctl pin",
        "processorctl pr",
        "modalctl start",
        "modalctl sync-secrets",
        "modalctl verify-digest",
        "modalctl run",
    ]
    by_verb = {f"{c['tool']} {c['args'][0]}": c["args"] for c in calls(fake)}
    amd64 = "ghcr.io/theory-deploy/llm-litellm@sha256:" + "1" * 64
    assert by_verb["modalctl start"] == ["start", "--ref", REF, "--env", "dev", "--oci", amd64, "--json"]
    assert "--oci" in by_verb["modalctl verify-digest"] and amd64 in by_verb["modalctl verify-digest"]
    assert "--fail-on-missing" in by_verb["modalctl sync-secrets"]
    assert by_verb["processorctl pr"] == [
        "pr",
        "--ref",
        REF,
        "--base",
        "feat/x",
        "--json",
    ]  # the branch being built
    outputs = result.outputs
    assert json.loads(outputs["digests"]) == {REF: {"amd64": amd64, "arm64": amd64.replace("1" * 64, "2" * 64)}}
    assert outputs["app-name"] == "feat-x-dev-llm-litellm-v1"
    assert outputs["verified"] == "true"
    assert outputs["pr-url"] == "https://github.com/o/r/pull/7"
    assert json.loads(outputs["results"])[REF]["deployed"] == amd64


def test_staging_deploys_the_pin_and_never_builds(fake) -> None:
    registry = fake["repo"] / "processors" / "llm" / "litellm" / "registry.yaml"
    pinned = "ghcr.io/theory-deploy/llm-litellm@sha256:" + "c" * 64
    registry.write_text(registry.read_text().replace("amd64: null", f"amd64: {pinned}"))
    result = run(fake, ref=REF, env="staging", target="modal", github_token="ghs_x" * 8)
    assert result.returncode == 0, result.stderr
    assert verbs(fake) == ["modalctl start", "modalctl sync-secrets", "modalctl verify-digest"]
    for call in calls(fake):
        assert "--oci" not in call["args"]  # the pin in registry.yaml, exactly
        assert call["args"][call["args"].index("--env") + 1] == "staging"
    assert json.loads(result.outputs["results"])[REF]["deployed"] == pinned


def test_staging_ignores_a_push_file_and_deploys_the_pin(fake, tmp_path) -> None:
    push = tmp_path / "push.json"
    push.write_text(json.dumps({"platforms": {"amd64": "ghcr.io/theory-deploy/llm-litellm@sha256:" + HEX}}))
    result = run(fake, "actions/modal-deploy", ref=REF, env="staging", from_push=str(push))
    assert result.returncode == 0, result.stderr
    assert all("--oci" not in c["args"] for c in calls(fake))


def test_local_target_uses_localctl(fake) -> None:
    result = run(fake, "actions/modal-deploy", ref=REF, env="dev", target="local", fail_on_missing_secrets="false")
    assert result.returncode == 0, result.stderr
    assert verbs(fake) == ["localctl start", "localctl sync-secrets", "localctl verify-digest"]
    assert "--fail-on-missing" not in calls(fake)[1]["args"]


def test_several_refs_and_all(fake) -> None:
    result = run(fake, "actions/modal-deploy", ref="all", env="main", stages="verify")
    assert result.returncode == 0, result.stderr
    assert [c["args"][c["args"].index("--ref") + 1] for c in calls(fake)] == [REF]


def test_build_args_and_platforms_reach_build_and_push(fake) -> None:
    result = run(
        fake,
        "actions/build-push",
        ref=REF,
        platforms="linux/arm64",
        build_args="BASE_IMAGE=127.0.0.1:5000/base@sha256:" + HEX + "\nX=1",
        repository="127.0.0.1:5000/org/llm-litellm",
    )
    assert result.returncode == 0, result.stderr
    build, push = calls(fake)
    assert build["args"][:3] == ["build", "--ref", REF]
    assert ["--platforms", "linux/arm64"] == build["args"][3:5]
    assert build["args"].count("--build-arg") == 2
    assert push["args"][-3:] == ["--repository", "127.0.0.1:5000/org/llm-litellm", "--json"]
    digests = json.loads(result.outputs["digests"])
    assert list(digests[REF]) == ["arm64"]
    push_file = Path(result.outputs["push-dir"]) / "push-llm-litellm-v1.json"
    assert json.loads(push_file.read_text())["platforms"] == digests[REF]


def test_pin_action_reads_a_push_dir_and_opens_the_pr_only_when_asked(fake, tmp_path) -> None:
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    (pushed / "push-llm-litellm-v1.json").write_text(
        json.dumps({"platforms": {"amd64": "ghcr.io/theory-deploy/llm-litellm@sha256:" + HEX}})
    )
    result = run(fake, "actions/pin", ref=REF, from_push=str(pushed))
    assert result.returncode == 0, result.stderr
    assert verbs(fake) == ["processorctl pin"]
    fake["log"].write_text("")
    result = run(
        fake,
        "actions/pin",
        ref=REF,
        from_push=str(pushed),
        open_pr="true",
        pr_base="main",
        github_token="ghs_" + "z" * 36,
    )
    assert result.returncode == 0, result.stderr
    assert verbs(fake) == ["processorctl pin", "processorctl pr"]
    assert calls(fake)[1]["args"][3:5] == ["--base", "main"]
    assert calls(fake)[1]["env"]["GITHUB_TOKEN"] == "ghs_" + "z" * 36
    assert result.outputs["pr-url"] == "https://github.com/o/r/pull/7"


def test_pinning_another_repository_points_the_workspace_there_first(fake, tmp_path) -> None:
    pushed = tmp_path / "push.json"
    pushed.write_text(json.dumps({"platforms": {"amd64": "localhost:5000/llm-litellm@sha256:" + HEX}}))
    result = run(fake, "actions/pin", ref=REF, from_push=str(pushed), repository="localhost:5000/llm-litellm")
    assert result.returncode == 0, result.stderr
    assert [c["args"][:5] for c in calls(fake)] == [
        ["set-repository", "--ref", REF, "--repository", "localhost:5000/llm-litellm"],
        [
            "pin",
            "--ref",
            REF,
            "--from-push",
            str(fake["temp"] / "theory-deploy" / "out" / "push-llm-litellm-v1.json"),
        ],
    ]
    assert "::notice file=processors/llm/litellm/registry.yaml::" in result.stderr
    fake["log"].write_text("")
    result = run(
        fake,
        "actions/pin",
        ref=REF,
        from_push=str(pushed),
        repository="localhost:5000/llm-litellm",
        open_pr="true",
        pr_base="main",
        github_token="ghs_" + "q" * 36,
    )
    assert result.returncode != 0
    assert "a pin PR must pin image.repository" in result.stderr
    assert calls(fake) == []


def _set_examples(registry: Path, examples: list[dict[str, Any]] | None) -> None:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    doc = yaml.load(registry.read_text())
    doc["inputs"].pop("examples", None)
    if examples is not None:
        doc["inputs"]["examples"] = examples
    with registry.open("w") as handle:
        yaml.dump(doc, handle)


def test_run_uses_the_examples_of_the_inputs_schema_or_says_what_to_add(fake) -> None:
    registry = fake["repo"] / "processors" / "llm" / "litellm" / "registry.yaml"
    _set_examples(registry, None)
    result = run(fake, "actions/modal-deploy", ref=REF, env="dev", stages="run", mode="mock")
    assert result.returncode != 0
    assert "add `examples:`" in result.stderr
    example = {"schema": "v1", "params": {"messages": [{"role": "user", "content": "hello"}]}}
    _set_examples(registry, [example])
    fake["log"].write_text("")
    result = run(fake, "actions/modal-deploy", ref=REF, env="dev", stages="run", mode="mock")
    assert result.returncode == 0, result.stderr
    args = calls(fake)[0]["args"]
    assert json.loads(args[args.index("--inputs-json") + 1]) == example


# --------------------------------------------------------------------------------------------------
# outputs, summary, annotations


def test_every_output_is_written_with_a_random_delimiter(fake) -> None:
    result = run(fake, "actions/modal-deploy", ref=REF, env="dev", fail_on_missing_secrets="false")
    assert result.returncode == 0, result.stderr
    raw = result.output_files["deploy"]
    for name in ("digests", "results", "app-name", "app-url", "verified", "results-file"):
        assert f"\n{name}<<ghadelimiter_" in "\n" + raw
    assert all("=" not in line.split("<<")[0] for line in raw.splitlines() if "<<" in line)
    assert result.outputs["verified"] == "true"


def test_a_multi_line_value_cannot_forge_another_output(fake) -> None:
    evil = "x\nverified=true\nghadelimiter_0"
    scenario = {"modalctl start": {"json": {"status": "success", "app": evil, "url": ""}}}
    result = run(fake, "actions/modal-deploy", ref=REF, env="dev", stages="start", scenario=scenario)
    assert result.returncode == 0, result.stderr
    assert result.outputs["app-name"] == evil
    assert result.outputs["verified"] == ""  # not forged by the app name's second line


def test_summary_has_the_digest_table_app_and_verify(fake) -> None:
    result = run(fake, ref=REF, env="dev", target="modal")
    assert result.returncode == 0, result.stderr
    summary = result.summary
    assert "### theory-deploy: dev (modal)" in summary
    assert "| processor | platform | before | after |" in summary
    assert "| llm/litellm@1 | amd64 | — | `sha256:111111111111…` | changed |" in summary
    assert "feat-x-dev-llm-litellm-v1" in summary and "http://127.0.0.1:8123" in summary
    assert "✅ verified" in summary


def test_a_failed_verify_fails_the_step_and_annotates_the_pin_line(fake) -> None:
    scenario = {
        "modalctl verify-digest": {
            "rc": 21,
            "json": {
                "status": "error",
                "error": {
                    "code": "ERR_REGISTRY_MISMATCH",
                    "message": "llm-litellm-v1 (main) does not verify: expected sha256:cc",
                },
            },
        }
    }
    result = run(fake, ref=REF, env="main", scenario=scenario)
    assert result.returncode == 21
    line = next(i for i, text in enumerate(LITELLM.read_text().splitlines(), 1) if text.strip().startswith("amd64:"))
    assert (
        f"::error file=processors/llm/litellm/registry.yaml,line={line},title=theory-deploy verify::" in result.stderr
    )
    assert "ERR_REGISTRY_MISMATCH" in result.stderr
    assert result.outputs["verified"] == "false"
    assert "❌ not verified" in result.summary and "**Failures**" in result.summary


def test_an_error_the_cli_already_located_is_not_annotated_twice(fake) -> None:
    scenario = {
        "modalctl start": {
            "rc": 10,
            "stderr": "::error file=x.yaml,line=3::unpinned\n",
            "json": {
                "status": "error",
                "error": {
                    "code": "ERR_IMAGE_UNPINNED",
                    "message": "no amd64 pin",
                    "details": {"file": "x.yaml", "line": 3},
                },
            },
        }
    }
    result = run(fake, ref=REF, env="main", scenario=scenario)
    assert result.returncode == 10
    assert result.stderr.count("::error") == 1


def test_keep_going_checks_every_ref_then_fails(fake) -> None:
    second = fake["repo"] / "processors" / "llm" / "other"
    second.mkdir()
    (second / "registry.yaml").write_text(
        LITELLM.read_text().replace("llm/litellm@1", "llm/other@1").replace("llm-litellm", "llm-other")
    )
    scenario = {
        "modalctl verify-digest": {
            "rc": 21,
            "json": {"status": "error", "error": {"code": "ERR_REGISTRY_MISMATCH", "message": "drift"}},
        }
    }
    result = run(
        fake,
        "actions/modal-deploy",
        ref="all",
        env="main",
        stages="verify",
        keep_going="true",
        scenario=scenario,
    )
    assert result.returncode == 21
    assert len(calls(fake)) == 2
    results = json.loads(Path(result.outputs["results-file"]).read_text())["results"]
    assert set(results) == {"llm/litellm@1", "llm/other@1"}
    assert all(r["verified"] is False for r in results.values())


# --------------------------------------------------------------------------------------------------
# tokens and secrets


def test_tokens_reach_the_cli_under_their_own_names_and_are_masked(fake) -> None:
    result = run(
        fake,
        "actions/modal-deploy",
        ref=REF,
        env="dev",
        stages="start",
        modal_token_id="ak-1234",
        modal_token_secret="as-secret-5678",
        registry_password="regpass-90",
    )
    assert result.returncode == 0, result.stderr
    call = calls(fake)[0]
    assert call["env"]["MODAL_TOKEN_ID"] == "ak-1234"
    assert call["env"]["MODAL_TOKEN_SECRET"] == "as-secret-5678"
    assert call["env"]["REGISTRY_PASSWORD"] == "regpass-90"
    assert call["theory_in"] == []  # the THEORY_IN_* copies never reach the CLI
    assert "::add-mask::as-secret-5678" in result.stderr
    assert "::add-mask::regpass-90" in result.stderr


def test_an_empty_token_input_does_not_hide_the_callers_env(fake) -> None:
    result = run(
        fake,
        "actions/modal-deploy",
        ref=REF,
        env="dev",
        stages="start",
        environ={"MODAL_TOKEN_SECRET": "from-step-env", "OPENAI_API_KEY": "sk-from-env"},
    )
    assert result.returncode == 0, result.stderr
    call = calls(fake)[0]
    assert call["env"]["MODAL_TOKEN_SECRET"] == "from-step-env"
    assert call["env"]["OPENAI_API_KEY"] == "sk-from-env"  # processor secrets pass through the step env


def test_working_directory_becomes_the_repo_root(fake) -> None:
    result = run(fake, "actions/modal-deploy", ref=REF, env="dev", stages="start")
    assert result.returncode == 0, result.stderr
    assert calls(fake)[0]["env"]["THEORY_REPO_ROOT"] == str(fake["repo"].resolve())


# --------------------------------------------------------------------------------------------------
# plan, merge and drift-issue


def test_plan_action_writes_matrices(fake) -> None:
    wrapper = fake["cli"] / "processorctl"
    wrapper.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        from theory_deploy.cli import framework, plan_cmds, processorctl
        parser = processorctl.parser()
        choices = parser._subparsers._group_actions[0].choices
        if "plan" not in choices:
            sub = parser._subparsers._group_actions[0]
            plan_cmds.register(sub, framework.common_flags())
        sys.exit(framework.run_tool(parser))
    """)
    )
    result = run(fake, "actions/plan", refs=REF, platforms="linux/amd64")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.outputs["build-matrix"]) == {
        "include": [
            {
                "ref": REF,
                "slug": "llm-litellm-v1",
                "platform": "linux/amd64",
                "arch": "amd64",
                "runner": "ubuntu-latest",
                "qemu": False,
            }
        ]
    }
    assert result.outputs["has-builds"] == "true"
    assert result.outputs["env"] == "dev"
    assert json.loads(result.outputs["build-processors-matrix"])["include"][0]["slug"] == "llm-litellm-v1"
    assert "### Plan" in result.summary


class _GitHubIssues(BaseHTTPRequestHandler):
    issues: list[dict[str, Any]] = []
    seen: list[tuple[str, str, Any]] = []

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, None))
        self._reply(200, [i for i in self.issues if i["state"] == "open"])

    def do_POST(self) -> None:
        body = self._body()
        self.seen.append(("POST", self.path, body))
        if self.path.endswith("/issues"):
            issue = {"number": len(self.issues) + 1, "state": "open", **body}
            self.issues.append(issue)
            self._reply(201, issue)
        else:
            self._reply(201, {})

    def do_PATCH(self) -> None:
        body = self._body()
        self.seen.append(("PATCH", self.path, body))
        number = int(self.path.rsplit("/", 1)[1])
        self.issues[number - 1].update(body)
        self._reply(200, self.issues[number - 1])

    def log_message(self, *args: Any) -> None:
        pass


def _drift(tmp_path: Path, api: str, verified: bool) -> Any:
    results = tmp_path / "drift" / "drift-main"
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(
        json.dumps(
            {
                "env": "main",
                "results": {
                    REF: {
                        "app": "llm-litellm-v1",
                        "verified": verified,
                        "error": "" if verified else "drifted",
                    }
                },
            }
        )
    )
    out = tmp_path / "out.txt"
    out.write_text("")
    import subprocess

    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), "drift-issue"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "GITHUB_API_URL": api,
            "GITHUB_REPOSITORY": "o/r",
            "GITHUB_RUN_ID": "42",
            "THEORY_IN_GITHUB_TOKEN": "ghs_test",
            "THEORY_RESULTS_DIR": str(tmp_path / "drift"),
            "GITHUB_OUTPUT": str(out),
            "GITHUB_ACTIONS": "true",
        },
    ), parse_output_file(out.read_text())


def test_drift_opens_then_updates_then_closes_one_issue(tmp_path) -> None:
    _GitHubIssues.issues, _GitHubIssues.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GitHubIssues)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        proc, out = _drift(tmp_path, api, verified=False)
        assert proc.returncode == 21, proc.stderr
        assert out["issue-action"] == "opened" and out["drift"] == "true"
        assert _GitHubIssues.issues[0]["labels"] == ["theory-deploy-drift"]
        proc, out = _drift(tmp_path, api, verified=False)
        assert out["issue-action"] == "updated" and len(_GitHubIssues.issues) == 1
        proc, out = _drift(tmp_path, api, verified=True)
        assert proc.returncode == 0, proc.stderr
        assert out["issue-action"] == "closed" and _GitHubIssues.issues[0]["state"] == "closed"
        shown = [line for line in (proc.stderr + proc.stdout).splitlines() if not line.startswith("::add-mask::")]
        assert "ghs_test" not in "\n".join(shown)
    finally:
        server.shutdown()


def test_merge_rejects_a_folder_without_pushes(fake, tmp_path) -> None:
    empty = tmp_path / "parts"
    empty.mkdir()
    result = run(fake, "actions/build-push", ref=REF, merge_from=str(empty))
    assert result.returncode != 0
    assert "no push-llm-litellm-v1.json under" in result.stderr
    assert result.ran == ["setup", "merge"]


@pytest.mark.slow
def test_setup_builds_a_private_hash_locked_venv_once(tmp_path) -> None:
    """The real setup: `pip install --require-hashes -r requirements/lock.txt`, then this checkout
    with --no-deps, into $RUNNER_TEMP; a second action in the same job reuses it."""
    import subprocess

    environ = {k: v for k, v in os.environ.items() if k not in ("THEORY_DEPLOY_VENV", "VIRTUAL_ENV")}
    environ.update(RUNNER_TEMP=str(tmp_path), GITHUB_OUTPUT=str(tmp_path / "out"), GITHUB_ACTIONS="true")
    first = subprocess.run(
        ["python3", str(ENTRYPOINT), "setup"], env=environ, capture_output=True, text=True, timeout=1200
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "--require-hashes" in first.stderr
    venv = Path(parse_output_file((tmp_path / "out").read_text())["venv"])
    assert venv.parent == tmp_path / "theory-deploy"
    assert (venv / "bin" / "processorctl").exists() and (venv / "bin" / "modalctl").exists()
    second = subprocess.run(
        ["python3", str(ENTRYPOINT), "setup"], env=environ, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0 and f"reusing {venv}" in second.stderr
