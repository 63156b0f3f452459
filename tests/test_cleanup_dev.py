"""`cleanup-dev` on both targets: stop the dev apps whose RECORDED branch no longer exists.

The trap: a cleanup that rebuilds branch names by splitting app names on `-` stops the
wrong apps. Here the branches are chosen so that any name-splitting rule picks the wrong app:
`feat` + user `x-alice` and `feat-x` + user `bob` give `feat-x-alice-…` and `feat-x-bob-…`; with
`feat` deleted and `feat-x` kept, "first part" stops both, "all but the user part" stops neither.
Only the recorded branch (Modal tag / container label `theory.branch`) stops exactly the right one.

* Modal: the real SDK against the control-plane stand-in, driven through `modalctl` subprocesses.
* Local: the real Docker engine with tiny test-processor images (marked `docker`).
* The shared decisions (redeployed meanwhile, failures, the summary) with a fake target, in-process,
  are in tests/test_target_base_contract.py (fast, so the mutation run covers them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from modal_standin import ModalStandIn
from modal_standin.images import push_tiny_image
from modal_standin.sample_app import load_app

BIN = Path(sys.executable).parent
MODALCTL = BIN / "modalctl"
LOCALCTL = BIN / "localctl"
MODAL_IMAGE_PATH = "theory-test/cleanup-modal"  # in the anonymous loopback registry (the stand-in pulls it)

REGISTRY_YAML = """\
# a test processor for tests/test_cleanup_dev.py
ref: {ref}
build:
  port: 8000
image:
  repository: {repository}
  platforms:
    amd64: {amd64}
    arm64: {arm64}
runtime:
  cpu: 0.5
  memory_gb: 0.25
  timeout_s: 60
inputs:
  type: object
"""

# (branch, user): the app names of A and B are ambiguous when split on '-'; C's branch also
# sanitizes to `feat-x`. The branch `feat` is the deleted one.
DEPLOYED = {"A": ("feat", "x-alice"), "B": ("feat-x", "bob"), "C": ("feat/x", "carol")}
EXISTING = ["feat-x", "feat/x", "main"]


@dataclass
class Out:
    code: int
    out: dict[str, Any]
    stderr: str


def _run(cmd: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = 300) -> Out:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, input=stdin, timeout=timeout)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"{cmd}: stdout is not one JSON object: {proc.stdout!r}\n{proc.stderr}") from None
    return Out(proc.returncode, out, proc.stderr)


def _write_processor(root: Path, ref: str, *, amd64: str, repository: str, arm64: str = "null") -> None:
    namespace, rest = ref.split("/", 1)
    folder = root / "processors" / namespace / rest.split("@", 1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "registry.yaml").write_text(
        REGISTRY_YAML.format(ref=ref, repository=repository, amd64=amd64, arm64=arm64)
    )


def _names(entries: list[dict[str, Any]]) -> list[str]:
    return [e["app"] for e in entries]


# ------------------------------------------------------------------------------------------------
# Modal


@dataclass
class ModalWorld:
    cp: ModalStandIn
    root: Path
    ref: str
    tmp: Path
    image: str  # repository@sha256:... of a real tiny image: the Modal stand-in pulls what a deploy names
    apps: dict[str, str] = field(default_factory=dict)  # A/B/C/... -> app name

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "GIT_", "GITHUB_"))}
        env.update(self.cp.env_vars())
        env["MODAL_ENVIRONMENT"] = "main"  # a trap: every call must name its environment itself
        env.update(THEORY_REPO_ROOT=str(self.root), THEORY_MODAL_TIMEOUT_S="30")
        env.update(REGISTRY_USERNAME="bot", REGISTRY_PASSWORD="pw")
        env.update(extra)
        return env

    def start(self, env_name: str, branch: str | None = None, user: str | None = None) -> str:
        identity = {"GIT_BRANCH": branch, "GIT_USER": user} if branch and user else {}
        run = _run([str(MODALCTL), "start", "--ref", self.ref, "--env", env_name, "--json"], self.env(**identity))
        assert run.code == 0, run
        return str(run.out["app"])

    def cleanup(self, *args: str, branches: list[str] | None = None, stdin: str | None = None) -> Out:
        if branches is not None:
            path = self.tmp / f"branches-{uuid.uuid4().hex[:6]}.txt"
            path.write_text("".join(f"{b}\n" for b in branches))
            args = ("--existing-branches-file", str(path), *args)
        return _run([str(MODALCTL), "cleanup-dev", *args, "--json"], self.env(), stdin=stdin)

    def deploy_by_hand(self, name: str, tags: dict[str, str]) -> None:
        """An app theory-deploy did not deploy (or a tampered one), with these tags, in dev."""
        with self.cp.activate():
            app = load_app(
                self.tmp,
                env="dev",
                app_name=name,
                image_ref=self.image,
                tags=tags,
                secrets=(),
                module=f"m_{uuid.uuid4().hex}",
            )
            app.deploy(name=name, environment_name="dev")

    def live(self, env_name: str, name: str) -> bool:
        return self.cp.state.deployed_app(env_name, name) is not None


@pytest.fixture
def modal_world(tmp_path: Path, registry: str) -> Iterator[ModalWorld]:
    image = push_tiny_image(registry, MODAL_IMAGE_PATH, payload="cleanup")
    with ModalStandIn() as cp:
        for env_name in ("dev", "staging"):
            cp.state.put_secret(env_name, "REGISTRY_AUTH", {"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": "pw"})
        ref = f"ctest/p{uuid.uuid4().hex[:8]}@1"
        root = tmp_path / "repo"
        _write_processor(root, ref, amd64=image.ref, repository=image.repository)
        world = ModalWorld(cp, root, ref, tmp_path, image.ref)
        for key, (branch, user) in DEPLOYED.items():
            world.apps[key] = world.start("dev", branch, user)
        world.apps["staging"] = world.start("staging")
        # Deployed from the deleted branch, then stopped: not live, so never listed.
        world.apps["D"] = world.start("dev", "feat", "dave")
        _run(
            [str(MODALCTL), "stop", "--ref", ref, "--env", "dev", "--json"],
            world.env(GIT_BRANCH="feat", GIT_USER="dave"),
        )
        # Named like apps of the deleted branch `feat`, but nothing recorded says so.
        world.apps["untagged"] = "feat-legacy-tool"
        world.deploy_by_hand("feat-legacy-tool", {})
        world.apps["unmanaged"] = "feat-someone-else"
        world.deploy_by_hand("feat-someone-else", {"theory.branch": "feat", "theory.env": "dev"})
        world.apps["nobranch"] = "feat-no-branch"
        world.deploy_by_hand("feat-no-branch", {"theory.managed": "true", "theory.env": "dev"})
        yield world


@pytest.mark.slow
def test_modal_app_names_are_ambiguous_on_purpose(modal_world: ModalWorld) -> None:
    apps = modal_world.apps
    slug = apps["staging"]
    assert apps["A"] == f"feat-x-alice-{slug}" and apps["B"] == f"feat-x-bob-{slug}"
    assert apps["C"] == f"feat-x-carol-{slug}"
    assert not modal_world.live("dev", apps["D"])


@pytest.mark.slow
def test_modal_cleanup_stops_exactly_the_app_of_the_deleted_branch(modal_world: ModalWorld) -> None:
    w, apps = modal_world, modal_world.apps
    dev_before = {a.name for a in w.cp.state.apps_in("dev") if a.state == "deployed"}

    # --dry-run: the same decisions, nothing stopped.
    first_call = len(w.cp.state.calls)
    dry = w.cleanup("--dry-run", branches=EXISTING)
    assert dry.code == 0, dry
    assert dry.out["dry_run"] is True
    assert dry.out["stopped"] == [{"app": apps["A"], "branch": "feat", "user": "x-alice"}]
    assert {a.name for a in w.cp.state.apps_in("dev") if a.state == "deployed"} == dev_before
    assert not [c for c in w.cp.state.calls[first_call:] if c.method == "AppStop"]

    run = w.cleanup(branches=EXISTING)
    assert run.code == 0, run
    out = run.out
    assert out["status"] == "success" and out["dry_run"] is False and out["env"] == "dev"
    assert out["stopped"] == [{"app": apps["A"], "branch": "feat", "user": "x-alice"}]
    assert out["kept"] == [
        {"app": apps["B"], "branch": "feat-x", "user": "bob"},
        {"app": apps["C"], "branch": "feat/x", "user": "carol"},
    ]
    skipped = {e["app"]: e["reason"] for e in out["skipped"]}
    assert set(skipped) == {apps["untagged"], apps["unmanaged"], apps["nobranch"]}
    assert "not deployed by theory-deploy" in skipped[apps["untagged"]]
    assert "not deployed by theory-deploy" in skipped[apps["unmanaged"]]
    assert "no branch recorded" in skipped[apps["nobranch"]]
    listed = _names(out["stopped"]) + _names(out["kept"]) + list(skipped)
    assert apps["staging"] not in listed and apps["D"] not in listed  # staging never listed; stopped ones neither

    # Exactly A was stopped; everything else still runs, staging included.
    assert not w.live("dev", apps["A"])
    for key in ("B", "C", "untagged", "unmanaged", "nobranch"):
        assert w.live("dev", apps[key]), key
    assert w.live("staging", apps["staging"])

    # Only `dev` was ever named (MODAL_ENVIRONMENT=main was set as a trap); nothing failed.
    calls = w.cp.state.calls[first_call:]
    assert {c.environment_name for c in calls if c.environment_name is not None} == {"dev"}
    assert [c for c in calls if c.status != "OK"] == []
    assert len([c for c in calls if c.method == "AppStop"]) == 1

    # Human summary, and a second run has nothing left to stop.
    again = w.cleanup(branches=EXISTING)
    assert again.code == 0 and again.out["stopped"] == [] and len(again.out["kept"]) == 2
    path = w.tmp / "human.txt"
    path.write_text("\n".join(EXISTING))
    human = subprocess.run(
        [str(MODALCTL), "cleanup-dev", "--existing-branches-file", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        env=w.env(),
        timeout=120,
    )
    assert human.returncode == 0, human.stderr
    assert "would stop 0, kept 2, skipped 3" in human.stdout and "dry run" in human.stdout


@pytest.mark.slow
def test_modal_cleanup_reads_stdin_and_refuses_an_empty_list(modal_world: ModalWorld) -> None:
    w, apps = modal_world, modal_world.apps
    before = len(w.cp.state.calls)
    for empty in ([], ["", "  "]):
        run = w.cleanup(branches=empty)
        assert run.code == 2 and run.out["error"]["code"] == "ERR_USAGE", run
        assert "empty" in run.out["error"]["message"]
    run = w.cleanup("--existing-branches-file", "-", stdin="")
    assert run.code == 2 and run.out["error"]["code"] == "ERR_USAGE"
    # Raw `git ls-remote` lines (sha<TAB>ref) would match no branch: refused, not obeyed.
    run = w.cleanup("--existing-branches-file", "-", stdin=f"{'0' * 40}\trefs/heads/feat-x\n")
    assert run.code == 2 and "not a branch name" in run.out["error"]["message"]
    assert w.cp.state.calls[before:] == []  # nothing was even listed
    assert w.live("dev", apps["A"])

    # `-` reads stdin; `refs/heads/` prefixes are accepted.
    run = w.cleanup("--dry-run", "--existing-branches-file", "-", stdin="refs/heads/feat-x\nfeat/x\n")
    assert run.code == 0 and _names(run.out["stopped"]) == [apps["A"]]


@pytest.mark.slow
def test_cleanup_takes_no_ref_or_env(modal_world: ModalWorld) -> None:
    path = modal_world.tmp / "b.txt"
    path.write_text("main\n")
    for extra in (["--env", "staging"], ["--ref", modal_world.ref]):
        run = _run(
            [str(MODALCTL), "cleanup-dev", "--existing-branches-file", str(path), *extra, "--json"],
            modal_world.env(),
        )
        assert run.code == 2 and run.out["error"]["code"] == "ERR_USAGE"
    run = _run([str(MODALCTL), "cleanup-dev", "--json"], modal_world.env())
    assert run.code == 2 and "--existing-branches-file" in run.out["error"]["message"]


# ------------------------------------------------------------------------------------------------
# Local (Docker engine)


@dataclass
class LocalWorld:
    docker_cli: str
    root: Path
    state: Path
    ref: str
    tmp: Path
    containers: list[str] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITHUB_"))}
        env.update(
            THEORY_REPO_ROOT=str(self.root),
            THEORY_STATE_DIR=str(self.state),
            THEORY_DOCKER=self.docker_cli,
            THEORY_LOCAL_START_TIMEOUT="60",
        )
        env.update(extra)
        return env

    def start(self, env_name: str, branch: str | None = None, user: str | None = None) -> str:
        identity = {"GIT_BRANCH": branch, "GIT_USER": user} if branch and user else {}
        run = _run([str(LOCALCTL), "start", "--ref", self.ref, "--env", env_name, "--json"], self.env(**identity))
        assert run.code == 0, run
        self.containers.append(str(run.out["container"]))
        return str(run.out["app"])

    def exists(self, name: str) -> bool:
        """A container of that app (`<app>.<env>`, local.container_name) or of that very name."""
        return any(
            subprocess.run(
                [self.docker_cli, "container", "inspect", candidate], capture_output=True, text=True, timeout=60
            ).returncode
            == 0
            for candidate in (f"{name}.dev", f"{name}.staging", name)
        )

    def dev_branches(self) -> set[str]:
        """The branches recorded on every dev container on this engine (other tests' included)."""
        ids = subprocess.run(
            [self.docker_cli, "container", "ls", "-aq", "--filter", "label=theory.env=dev"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        found = set()
        for cid in ids:
            proc = subprocess.run(
                [self.docker_cli, "container", "inspect", "--format", '{{index .Config.Labels "theory.branch"}}', cid],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if proc.returncode == 0 and proc.stdout.strip():
                found.add(proc.stdout.strip())
        return found


@pytest.mark.docker
def test_local_cleanup_stops_exactly_the_app_of_the_deleted_branch(
    tmp_path: Path, docker_cli: str, registry: str, base_image: str
) -> None:
    from tests.test_local_target import PLATFORM, _build, _push

    run_id = uuid.uuid4().hex[:8]
    repository = f"{registry}/theory-test/cleanup"
    tag = f"{repository}:v1-{run_id}"
    _build(docker_cli, base_image, tmp_path / "ctx", "v1", tag)
    image = _push(docker_cli, tag)
    ref = f"ctest/l{run_id}@1"
    pins = {"amd64": "null", "arm64": "null", PLATFORM: str(image)}
    _write_processor(tmp_path / "repo", ref, repository=repository, **pins)
    world = LocalWorld(docker_cli, tmp_path / "repo", tmp_path / "state", ref, tmp_path)
    deleted, kept = f"feat{run_id}", f"feat{run_id}-x"  # unique, so only this test's apps carry them
    try:
        a = world.start("dev", deleted, "x-alice")
        b = world.start("dev", kept, "bob")
        assert a.startswith(f"feat{run_id}-x-alice-") and b.startswith(f"feat{run_id}-x-bob-")
        staging = world.start("staging")
        # Containers that carry dev labels but were not started by theory-deploy, or record no branch.
        for name, labels in (
            (f"feat{run_id}-x-eve", ["theory.env=dev", f"theory.branch={deleted}"]),
            (f"feat{run_id}-x-nobranch", ["theory.env=dev", "theory.managed=true"]),
        ):
            args = [arg for label in labels for arg in ("--label", label)]
            subprocess.run(
                [
                    docker_cli,
                    "run",
                    "-d",
                    "--name",
                    name,
                    *args,
                    base_image,
                    "python3",
                    "-c",
                    "import time; time.sleep(600)",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            world.containers.append(name)

        # The engine is shared: keep every other dev container's branch (and the other tests' ones).
        existing = (world.dev_branches() | {kept, "feat/local_target"}) - {deleted}
        path = tmp_path / "branches.txt"
        path.write_text("\n".join(sorted(existing)) + "\n")
        cmd = [str(LOCALCTL), "cleanup-dev", "--existing-branches-file", str(path), "--json"]

        dry = _run([*cmd, "--dry-run"], world.env())
        assert dry.code == 0, dry
        assert dry.out["stopped"] == [{"app": a, "branch": deleted, "user": "x-alice"}]
        assert world.exists(a)

        out = _run(cmd, world.env())
        assert out.code == 0, out
        assert out.out["stopped"] == [{"app": a, "branch": deleted, "user": "x-alice"}]
        assert {"app": b, "branch": kept, "user": "bob"} in out.out["kept"]
        skipped = {e["app"]: e["reason"] for e in out.out["skipped"]}
        assert "not deployed by theory-deploy" in skipped[f"feat{run_id}-x-eve"]
        assert "no branch recorded" in skipped[f"feat{run_id}-x-nobranch"]
        listed = _names(out.out["stopped"]) + _names(out.out["kept"]) + list(skipped)
        assert staging not in listed
        assert not world.exists(a)
        for name in (b, staging, f"feat{run_id}-x-eve", f"feat{run_id}-x-nobranch"):
            assert world.exists(name), name

        empty = tmp_path / "empty.txt"
        empty.write_text("")
        refused = _run([str(LOCALCTL), "cleanup-dev", "--existing-branches-file", str(empty), "--json"], world.env())
        assert refused.code == 2 and refused.out["error"]["code"] == "ERR_USAGE"
        assert world.exists(b)
    finally:
        for name in world.containers:
            subprocess.run([docker_cli, "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run([docker_cli, "rmi", tag], capture_output=True, timeout=120)
