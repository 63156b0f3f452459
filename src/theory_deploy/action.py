"""The GitHub Actions front end: an action's inputs in, the stage engine, step outputs and summary out.

`action.yml` and `actions/*/action.yml` run one line per step, `python -m theory_deploy.action VERB`,
on the private virtualenv that `scripts/action-entrypoint setup` made (that bootstrap is the only
part that runs before the package is installed). Inputs arrive as `THEORY_*` variables set in the
step's `env:`, never through `${{ }}` inside `run:`. The verbs:

  deploy       every stage asked for, for each ref, through `pipeline.Pipeline` (the same engine as
               `theory-deploy pipeline`), then the outputs and the step summary.
  plan         `processorctl plan` with the action's inputs, writing its matrices as step outputs.
  merge        join per-platform pushes (one push-<slug>.json per build job) into one index.
  drift-issue  open, update or close the one drift issue from the verify results of drift.yml.

Tokens arrive as `THEORY_IN_*` and are masked, then handed to the engine under their real names
(MODAL_TOKEN_ID, …) only when non-empty, so an empty input never hides a value the caller put in the
step's env. Every failure is a `TheoryDeployError`: its exit code, one line on stderr, and an
annotation on the registry.yaml line concerned where there is one.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from . import errors, gha, output, push_records, registry_file
from .errors import RegistryMismatchError, TheoryDeployError, UsageError
from .oci import RegistryClients
from .pipeline import MODES, Pipeline, PipelineRequest, ProcessorResult, parse_stages, resolve_stages
from .refs import ENVIRONMENTS, Environment, ProcessorRef, parse_platforms, parse_repository, split_refs
from .secret_values import parse_secret_bundle, register_secret_value, scrub

TARGETS = ("modal", "local")
TOKEN_INPUTS = {
    "THEORY_IN_MODAL_TOKEN_ID": "MODAL_TOKEN_ID",
    "THEORY_IN_MODAL_TOKEN_SECRET": "MODAL_TOKEN_SECRET",
    "THEORY_IN_REGISTRY_USERNAME": "REGISTRY_USERNAME",
    "THEORY_IN_REGISTRY_PASSWORD": "REGISTRY_PASSWORD",
    "THEORY_IN_GITHUB_TOKEN": "GITHUB_TOKEN",
}
DRIFT_LABEL = "theory-deploy-drift"
DRIFT_TITLE = "theory-deploy: deployed digests drifted from registry.yaml pins"


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _flag(name: str, default: bool, problems: list[str]) -> bool:
    value = _env(name).lower()
    if not value:
        return default
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    problems.append(f"input {_input_name(name)}: {value!r} is not true or false.")
    return default


def _input_name(variable: str) -> str:
    return {"THEORY_FAIL_ON_MISSING": "fail-on-missing-secrets"}.get(
        variable, variable.removeprefix("THEORY_").lower().replace("_", "-")
    )


def hand_over_tokens() -> set[str]:
    """Mask every token input, then give the non-empty ones to this process under their real names.
    Returns the names that came from inputs (a `github-token` input is what asks for the pin PR)."""
    given = set()
    for source, name in TOKEN_INPUTS.items():
        value = os.environ.pop(source, "")
        if value:
            register_secret_value(value)
            gha.add_mask(value)  # even a value too short for the scrubber is masked in the log
            os.environ[name] = value
            given.add(name)
    return given


def hand_over_processor_secrets() -> list[str]:
    """The processor-secrets input (NAME=value lines or a JSON object, in the consumer's own names):
    each value masked on its own, then set in this process's environment under its name, where
    sync-secrets reads the names registry.yaml lists. Returns the names given (never the values)."""
    bundle = parse_secret_bundle(os.environ.pop("THEORY_IN_PROCESSOR_SECRETS", ""), where="input processor-secrets")
    for name, value in bundle.items():
        if value:  # an empty value stays "missing", as an unset variable would
            os.environ[name] = value
    return sorted(bundle)


def lock_holder() -> str | None:
    """Who holds the app's deploy lock for this step: THEORY_LOCK_HOLDER, else this workflow run.

    Every job of one run (and every re-run attempt of it) is the same holder, so the start job takes
    the lock, and the sync-secrets and verify jobs of the same run continue it, while another run
    waits. Outside a run (no GITHUB_RUN_ID) the engine makes a holder of its own."""
    explicit = _env("THEORY_LOCK_HOLDER")
    if explicit:
        return explicit
    run_id, repository = _env("GITHUB_RUN_ID"), _env("GITHUB_REPOSITORY")
    if run_id and repository:
        return f"{_env('GITHUB_SERVER_URL') or 'https://github.com'}/{repository}/actions/runs/{run_id}"
    return None


def repo_root() -> Path:
    """working-directory, else the workspace: where processors/ lives. Set for every module that looks."""
    workdir = _env("THEORY_WORKDIR")
    root = Path(workdir).resolve() if workdir else registry_file.find_repo_root()
    os.environ["THEORY_REPO_ROOT"] = str(root)
    return root


def out_dir() -> Path:
    base = _env("THEORY_OUT_DIR") or os.path.join(_env("RUNNER_TEMP") or tempfile.gettempdir(), "theory-deploy", "out")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _refs(problems: list[str], root: Path | None) -> list[ProcessorRef]:
    raw = _env("THEORY_REFS")
    if raw == "all":
        if root is None:
            return []
        return [registry_file.load_path(p, root).ref for p in registry_file.discover(root)]
    if not raw:
        problems.append(
            "input ref is empty: give a processor ref such as llm/litellm@1 (several: comma or newline separated, or `all`)."
        )
    refs = []
    for item in split_refs(raw):
        try:
            refs.append(ProcessorRef.parse(item, where="input ref"))
        except TheoryDeployError as err:
            problems.append(err.message)
    return refs


def read_request(tokens_given: set[str] | None = None) -> PipelineRequest:
    """Every input checked before anything runs; all problems are reported at once, each naming its input."""
    problems: list[str] = []
    try:
        root: Path | None = repo_root()
    except TheoryDeployError as err:
        problems.append(f"input working-directory: {err.message}")
        root = None
    refs = _refs(problems, root)
    env_name = _env("THEORY_ENV")
    if env_name and env_name not in ENVIRONMENTS:
        problems.append(f"input env: {env_name!r} is not an environment; expected dev, staging or main.")
        env_name = ""
    target = _env("THEORY_TARGET") or "modal"
    if target not in TARGETS:
        problems.append(f"input target: {target!r} is not a target; expected modal or local.")
        target = "modal"
    mode = _env("THEORY_MODE")
    if mode in ("none", "off"):
        mode = ""
    if mode and mode not in MODES:
        problems.append(f"input mode: {mode!r} is not a mode; expected mock, real or empty (no run).")
        mode = ""
    platforms = None
    if _env("THEORY_PLATFORMS"):
        try:
            platforms = [str(p) for p in parse_platforms(_env("THEORY_PLATFORMS"), where="input platforms")]
        except TheoryDeployError as err:
            problems.append(err.message)
    repository = _env("THEORY_REPOSITORY") or None
    if repository:
        try:
            parse_repository(repository, where="input repository")
        except TheoryDeployError as err:
            problems.append(err.message)
    inputs = None
    if _env("THEORY_INPUTS_JSON"):
        try:
            inputs = json.loads(_env("THEORY_INPUTS_JSON"))
            if not isinstance(inputs, dict):
                problems.append("input inputs-json: expected a JSON object.")
        except ValueError as exc:
            problems.append(f"input inputs-json: not JSON ({exc}).")
    build_args: dict[str, str] = {}
    for line in (a.strip() for a in os.environ.get("THEORY_BUILD_ARGS", "").splitlines()):
        key, sep, value = line.partition("=")
        if not line:
            continue
        if not sep or not key:
            problems.append(f"input build-args: {line!r} is not KEY=VALUE (one per line).")
        build_args[key] = value
    from_push = Path(_env("THEORY_FROM_PUSH")) if _env("THEORY_FROM_PUSH") else None
    fail_on_missing = _flag("THEORY_FAIL_ON_MISSING", True, problems)
    keep_going = _flag("THEORY_KEEP_GOING", False, problems)
    keep_lock = _flag("THEORY_KEEP_LOCK", False, problems)
    continue_lock = _flag("THEORY_CONTINUE_LOCK", False, problems)
    try:
        requested = parse_stages(_env("THEORY_STAGES") or "all", where="input stages")
    except TheoryDeployError as err:
        problems.append(err.message)
        requested = []
    environment = cast(Environment, env_name) if env_name else None
    if from_push is not None and env_name in ("staging", "main"):
        # Promotion deploys the pin, never what a push file names: the file is not read at all.
        from_push = None
    stages = resolve_stages(
        requested, env=environment, mode=mode or None, open_pr="GITHUB_TOKEN" in (tokens_given or set())
    )
    if requested is None and from_push is not None:
        stages = [s for s in stages if s not in ("build", "push")]
    request = PipelineRequest(
        refs=refs,
        env=environment,
        target=target,
        mode=mode or None,
        stages=stages,
        platforms=platforms,
        build_args=build_args,
        repository=repository,
        from_push=from_push,
        pr_base=_env("THEORY_PR_BASE") or _env("GITHUB_HEAD_REF") or _env("GITHUB_REF_NAME") or None,
        inputs=inputs,
        fail_on_missing=fail_on_missing,
        keep_going=keep_going,
        repo_root=root,
        lock_holder=lock_holder(),
        release_lock=not keep_lock,
        continue_lock=continue_lock,
    )
    if not problems:  # the engine's own checks of the stage combination, once every input parsed
        try:
            request.check()
        except UsageError as err:
            problems += [line.strip().removeprefix("- ") for line in err.message.splitlines()[1:]]
    if problems:
        raise _bad_inputs(problems)
    return request


def _bad_inputs(problems: list[str]) -> UsageError:
    return UsageError(
        "bad inputs:\n  - " + "\n  - ".join(dict.fromkeys(problems)),
        remedy="Fix the inputs listed above in the workflow step that calls the action.",
    )


# ---------------------------------------------------------------------------------------------------
# deploy
# ---------------------------------------------------------------------------------------------------


def shown(path: Path | str) -> str:
    """Path relative to the workspace, as GitHub wants for annotations."""
    base = Path(_env("GITHUB_WORKSPACE") or os.getcwd()).resolve()
    try:
        return str(Path(path).resolve().relative_to(base))
    except ValueError:
        return str(path)


def cmd_deploy() -> None:
    tokens = hand_over_tokens()
    hand_over_processor_secrets()
    request = read_request(tokens)
    results = Pipeline(request).run_all()
    records: list[dict[str, Any]] = []
    folder = out_dir()
    for result in results:
        record = _record(result)
        if result.pushed is not None:
            slug = ProcessorRef.parse(result.ref).slug
            record["push_file"] = str(result.pushed.write(folder, slug))
        records.append(record)
        if result.error is not None:
            annotate_failure(result, request.target)
    write_outputs(records, request)
    write_summary(records, request)
    failed = [r.error for r in results if r.error is not None]
    if failed:
        assert failed[0] is not None
        raise failed[0]


def _record(result: ProcessorResult) -> dict[str, Any]:
    return {
        "ref": result.ref,
        "pins_before": result.pins_before,
        "pushed": dict(result.pushed.platforms) if result.pushed else None,
        "index": result.pushed.index if result.pushed else None,
        "pins": result.pins,
        "app": result.app,
        "url": result.url,
        "deployed": result.deployed,
        "verified": result.verified,
        "pr_url": result.pr_url,
        "error": result.error.render() if result.error else "",
        "stages": [r.name for r in result.reports if r.status == "ok"],
        "secrets": result.secrets,  # names and what sync-secrets did with them, never values
        "envelope": result.envelope,
        "lock": result.lock,  # the deploy lock's facts: holder, waited_s, acquired_at, released(_at)
    }


def annotate_failure(result: ProcessorResult, target: str) -> None:
    """Point at the file and line concerned: the error's own, else the pin line the stage used."""
    err = result.error
    assert err is not None
    stage = str(err.details.get("stage") or "")
    file, line = err.details.get("file"), err.details.get("line")
    if file is None and result.registry_path is not None:
        file = result.registry_path
        if stage in ("start", "verify", "run", "pin", "sync-secrets") and result.platform:
            line = registry_file.pin_line(result.registry_path, result.platform)
    gha.annotate(
        "error",
        f"{result.ref}: [{err.code}] {err.render()}",
        file=shown(file) if file else None,
        line=line if isinstance(line, int) else None,
        title=f"theory-deploy {stage}".strip(),
    )
    err.details["annotated"] = True


def write_outputs(records: list[dict[str, Any]], request: PipelineRequest) -> None:
    digests = {r["ref"]: r["pushed"] for r in records if r.get("pushed")}
    for r in records:
        if r["ref"] not in digests and r.get("pins"):
            digests[r["ref"]] = {k: v.get("new") for k, v in r["pins"].items() if isinstance(v, dict)}
    gha.set_output("digests", json.dumps(digests, sort_keys=True))
    apps = {
        r["ref"]: {
            "app": r["app"],
            "url": r["url"],
            "verified": r["verified"],
            "deployed": r["deployed"],
            "pr_url": r["pr_url"],
            "error": r["error"],
            "secrets": r["secrets"],
            "envelope": r["envelope"],
            "lock": r["lock"],
        }
        for r in records
    }
    gha.set_output("results", scrub(json.dumps(apps, sort_keys=True)))
    gha.set_output("app-name", ",".join(r["app"] for r in records if r.get("app")))
    gha.set_output("app-url", ",".join(r["url"] for r in records if r.get("url")))
    verified = [r["verified"] for r in records if r.get("verified") is not None]
    all_verified = bool(verified) and all(verified) and len(verified) == len(records)
    gha.set_output("verified", "" if not verified else ("true" if all_verified else "false"))
    gha.set_output("pr-url", "\n".join(r["pr_url"] for r in records if r.get("pr_url")))
    gha.set_output("push-dir", str(out_dir()) if any(r.get("push_file") for r in records) else "")
    results_file = out_dir() / "results.json"
    body = {"env": request.env, "target": request.target, "results": apps}
    results_file.write_text(scrub(json.dumps(body, indent=2, sort_keys=True)) + "\n", encoding="utf-8")
    gha.set_output("results-file", str(results_file))


def _short(ref: str | None) -> str:
    if not ref:
        return "—"
    _repo, _, digest = str(ref).partition("@")
    return f"`{digest[:19]}…`" if digest else f"`{ref}`"


def write_summary(records: list[dict[str, Any]], request: PipelineRequest) -> None:
    title = f"### theory-deploy: {request.env or 'build'}" + (f" ({request.target})" if request.env else "")
    parts = [title, "", f"Stages: {', '.join(request.stages)}", ""]
    rows = []
    for r in records:
        before = r.get("pins_before") or {}
        after = dict(r.get("pushed") or {})
        for arch, pin in (r.get("pins") or {}).items():
            if isinstance(pin, dict) and pin.get("new"):
                after[arch] = pin["new"]
        for arch in sorted(set(before) | set(after)):
            old, new = before.get(arch), after.get(arch)
            if old or new:
                rows.append(
                    [r["ref"], arch, _short(old), _short(new or old), "unchanged" if new in (None, old) else "changed"]
                )
    if rows:
        parts += [
            "Digests (registry.yaml pin → this run):",
            "",
            gha.markdown_table(["processor", "platform", "before", "after", ""], rows),
        ]
    app_rows = []
    for r in records:
        if r.get("app") or r.get("verified") is not None or r.get("error"):
            verdict = {True: "✅ verified", False: "❌ not verified", None: "—"}[r["verified"]]
            app_rows.append(
                [
                    r["ref"],
                    r.get("app") or "—",
                    r.get("url") or "—",
                    _short(r.get("deployed")),
                    verdict,
                    r.get("pr_url") or "—",
                ]
            )
    if app_rows:
        parts += [gha.markdown_table(["processor", "app", "URL", "deployed", "verify", "pin PR"], app_rows)]
    failures = [f"- **{r['ref']}**: {r['error']}" for r in records if r.get("error")]
    if failures:
        parts += ["**Failures**", "", *failures, ""]
    gha.add_summary(scrub("\n".join(parts) + "\n"))


# ---------------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------------


def cmd_plan() -> None:
    from .cli import framework, processorctl

    repo_root()
    refs, base = _env("THEORY_REFS"), _env("THEORY_BASE")
    args = ["plan", "--github-output", "--env", _env("THEORY_ENV")]
    if refs == "all" or (not refs and not base):
        args.append("--all")
    elif refs:
        args += ["--refs", ",".join(split_refs(refs))]
    else:
        args += ["--base", base]
    for variable, flag in (
        ("THEORY_PLATFORMS", "--platforms"),
        ("THEORY_ARM_RUNNER", "--arm-runner"),
        ("THEORY_RUNNER", "--runner"),
    ):
        if _env(variable):
            args += [flag, _env(variable)]
    code = framework.run_tool(processorctl.parser(), [*args, "--json"])
    if code != 0:
        raise _Reported(code)


class _Reported(Exception):
    """A verb that already printed and annotated its own error: only its exit code is left to pass on."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------------


def cmd_merge() -> None:
    hand_over_tokens()
    root = repo_root()
    problems: list[str] = []
    refs = _refs(problems, root)
    source = Path(_env("THEORY_MERGE_FROM") or ".")
    if problems:
        raise _bad_inputs(problems)
    merged: dict[str, push_records.PushRecord] = {}
    processors = [registry_file.load_processor(ref, root) for ref in refs]  # each must exist here
    clients = RegistryClients(credentials_host=processors[0].registry if processors else None)
    try:
        for ref in refs:
            platforms = push_records.collect_records(source, ref.slug)
            record = push_records.merge(str(ref), ref.slug, platforms, clients)
            record.write(out_dir(), ref.slug)
            merged[str(ref)] = record
    finally:
        clients.close()
    gha.set_output("digests", json.dumps({r: m.platforms for r, m in merged.items()}, sort_keys=True))
    gha.set_output("index", json.dumps({r: m.index for r, m in merged.items()}, sort_keys=True))
    gha.set_output("push-dir", str(out_dir()))
    rows = [[r, _short(m.index), ", ".join(sorted(m.platforms))] for r, m in merged.items()]
    gha.add_summary("### Multi-arch index\n\n" + gha.markdown_table(["processor", "index", "platforms"], rows))


# ---------------------------------------------------------------------------------------------------
# drift-issue
# ---------------------------------------------------------------------------------------------------


def _drift_rows(source: Path) -> list[list[str]]:
    rows = []
    for path in sorted(source.rglob("results.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"input results-dir: {path} is not a results.json of the deploy action ({exc}).") from None
        for ref, r in sorted((data.get("results") or {}).items()):
            ok = r.get("verified") is True
            verdict = "✅ verified" if ok else "❌ " + (r.get("error") or "not verified")
            rows.append([data.get("env", "?"), ref, r.get("app") or "—", verdict])
    return rows


def cmd_drift_issue() -> None:
    from .github_client import GitHubClient

    hand_over_tokens()
    repo = _env("GITHUB_REPOSITORY")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
        raise UsageError(f"GITHUB_REPOSITORY {repo!r} is not owner/name.")
    source = Path(_env("THEORY_RESULTS_DIR") or ".")
    rows = _drift_rows(source)
    if not rows:
        raise UsageError(f"no results.json under {source}: the verify jobs produced nothing to report.")
    drifted = [row for row in rows if not row[3].startswith("✅")]
    headers = ["env", "processor", "app", "verify"]
    report = gha.markdown_table(headers, rows)
    run_url = f"{_env('GITHUB_SERVER_URL') or 'https://github.com'}/{repo}/actions/runs/{_env('GITHUB_RUN_ID')}"
    github = GitHubClient.from_env()
    open_issues = github.find_open_issues(DRIFT_LABEL)
    existing = open_issues[0]["number"] if open_issues else None
    number: int | None
    if drifted:
        body = (
            f"The nightly drift check found apps that do not run the digest registry.yaml pins.\n\n{report}\n"
            f"Latest run: {run_url}\n\n"
            "Re-deploy the pin (`modalctl start --ref R --env E`) or pin what should run.\n"
        )
        if existing:
            number = int(existing)
            github.update_issue(number, body=body)
            github.comment_on_issue(number, f"Still drifting: {run_url}\n\n" + gha.markdown_table(headers, drifted))
            action = "updated"
        else:
            number = github.create_issue(DRIFT_TITLE, body, [DRIFT_LABEL])
            action = "opened"
    elif existing:
        number = int(existing)
        github.comment_on_issue(number, f"No drift any more: {run_url}\n\n{report}")
        github.update_issue(number, state="closed", state_reason="completed")
        action = "closed"
    else:
        number, action = None, "none"
    gha.set_output("drift", "true" if drifted else "false")
    gha.set_output("issue-action", action)
    gha.set_output("issue-number", str(number or ""))
    gha.add_summary(f"### Drift check\n\n{report}\nIssue: {action}" + (f" (#{number})" if number else "") + "\n")
    if drifted:
        raise RegistryMismatchError(
            f"{len(drifted)} app(s) do not run their pinned digest; drift issue {action}"
            + (f" (#{number})" if number else "")
            + ".",
            remedy="Re-deploy the pin (`modalctl start --ref R --env E`), or pin what should run.",
        )


# ---------------------------------------------------------------------------------------------------

VERBS = {"deploy": cmd_deploy, "plan": cmd_plan, "merge": cmd_merge, "drift-issue": cmd_drift_issue}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in VERBS:
        sys.stderr.write(f"usage: python -m theory_deploy.action {{{'|'.join(VERBS)}}}\n")
        return errors.UsageError.exit_code
    from .cli.framework import Terminated, handle_termination

    handle_termination()
    try:
        VERBS[args[0]]()
    except Terminated:
        output.progress("theory-deploy: terminated")
        return 143
    except _Reported as done:
        return done.exit_code
    except TheoryDeployError as err:
        if not err.details.get("annotated"):
            location = err.details.get("file")
            line = err.details.get("line")
            gha.annotate(
                "error",
                err.render(),
                file=shown(location) if location else None,
                line=line if isinstance(line, int) else None,
                title="theory-deploy",
            )
        output.progress(f"theory-deploy: error: [{err.code}] {err.render()}")
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
