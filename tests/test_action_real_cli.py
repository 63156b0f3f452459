"""The actions and the real CLI agree about what runs.

The modal-deploy action (actions/modal-deploy/action.yml, run step by step as the GitHub runner runs
it: tests/action_runner.py, then `python -I -m theory_deploy.action deploy`) and the CLI a person
runs (`modalctl` / `localctl`, real subprocesses of this virtualenv) act on one and the same target:

- Modal: the control-plane stand-in (tests/modal_standin) with the real `modal` SDK, pulling the
  tiny images of tests/test_modal_target.py from the loopback registry, and that module's healthz
  stand-in for what the deployed image reports;
- local: the real Docker engine, pulling test images built and pushed to the loopback registry by
  tests/test_local_target.py's `images` fixture.

What one deploys, the other verifies; when the pin moves, both refuse alike (ERR_REGISTRY_MISMATCH,
exit 21); neither reports a deploy the other cannot see. No canned answers: every check reads what
the other side actually did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from modal_standin import ModalStandIn

from tests import test_modal_target
from tests.action_runner import ActionResult, run_action
from tests.helpers import assert_no_canary
from tests.test_local_target import PLATFORM, REGISTRY_YAML, BuiltImages, images
from tests.test_modal_target import D_A, D_B, IMAGE_REPO, World
from theory_deploy.refs import ProcessorRef
from theory_deploy.registry_file import write_pins

# Every test runs the action's steps and the CLI in subprocesses (seconds each).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ACTION = REPO / "actions" / "modal-deploy"

# The Modal stand-in and its fixtures, and the test images of both targets: the same ones, not copies.
# (Both modules call their images fixture `images`: Modal's is `modal_images` here.)
health, canaries, cp = test_modal_target.health, test_modal_target.canaries, test_modal_target.cp
modal_images = test_modal_target.images  # D_A and D_B in the loopback registry, which the stand-in pulls
__all__ = ["images"]  # tests/test_local_target.py's images, built and pushed for the Docker engine

# The caller's environment must not reach the action or the CLI: each test sets what they get.
CLEARED_PREFIXES = ("MODAL_", "GITHUB_", "THEORY_IN_", "REGISTRY_")
CLEARED = ("OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE", "THEORY_AUTH", "THEORY_REPO_ROOT")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith(CLEARED_PREFIXES) or k in CLEARED]:
        monkeypatch.delenv(name)


def _action(root: Path, temp: Path, step_env: dict[str, str], **inputs: str) -> ActionResult:
    temp.mkdir(parents=True, exist_ok=True)
    given = {k.replace("_", "-"): v for k, v in inputs.items()}
    return run_action(
        ACTION,
        {"working-directory": str(root), **given},
        workspace=root,
        runner_temp=temp,
        env={"THEORY_DEPLOY_VENV": sys.prefix, **step_env},
        timeout=900,
    )


# ---------------------------------------------------------------------------------------------------
# Modal: the action and `modalctl` against the control-plane stand-in
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def modal_world(
    tmp_path: Path, cp: ModalStandIn, canaries: dict[str, str], modal_images: tuple[str, str]
) -> Iterator[World]:
    world = World(cp, tmp_path / "repo", ProcessorRef("mact", f"p{uuid.uuid4().hex[:8]}", 1), "main", canaries, {})
    world.write(amd64=f"{IMAGE_REPO}@{D_A}")
    yield world
    for text in world.outputs:
        assert_no_canary(text, canaries)


def _modal_step_env(world: World) -> dict[str, str]:
    """What a workflow step gives the action: the endpoint and tokens of the stand-in, the processor's
    secrets and the registry pull secret (MODAL_ENVIRONMENT=main is the same trap as for the CLI)."""
    return world.cli_env(
        world.secrets_env(
            OPENAI_API_KEY=world.canaries["OPENAI_API_KEY"], THEORY_CANARY_SECRET=world.canaries["THEORY_CANARY_SECRET"]
        )
    )


def _leaks(result: ActionResult, canaries: dict[str, str]) -> None:
    shown = [line for line in result.log.splitlines() if not line.startswith("::add-mask::")]
    assert_no_canary("\n".join(shown), canaries)
    assert_no_canary(json.dumps(result.outputs) + result.summary, canaries)


def test_what_the_action_deploys_on_modal_the_real_cli_verifies(modal_world: World, tmp_path: Path) -> None:
    w = modal_world
    result = _action(w.root, tmp_path / "runner", _modal_step_env(w), ref=str(w.ref), env="main")
    assert result.returncode == 0, result.log[-4000:]
    assert result.outputs["verified"] == "true" and result.outputs["app-name"] == w.name
    assert json.loads(result.outputs["results"])[str(w.ref)]["deployed"] == f"{IMAGE_REPO}@{D_A}"
    _leaks(result, w.canaries)

    status = w.ok("status")  # the real CLI sees the deploy the action made, in `main` only
    assert (status["state"], status["digest"], status["matches_pin"]) == ("deployed", D_A, True)
    assert status["image"] == f"{IMAGE_REPO}@{D_A}"
    verified = w.ok("verify-digest")
    assert verified["verified"] is True and verified["readings"] == {
        "deploy_record": D_A,
        "modal_image": D_A,
        "healthz": D_A,
    }
    # the secrets the action synced are the step's values, in the target environment
    assert w.cp.state.secret_values("main", "OPENAI_API_KEY") == {"OPENAI_API_KEY": w.canaries["OPENAI_API_KEY"]}
    assert w.cp.state.apps_in("staging") == [] and w.cp.state.apps_in("dev") == []


def test_what_the_real_cli_deploys_on_modal_the_action_verifies_and_both_refuse_a_moved_pin(
    modal_world: World, tmp_path: Path
) -> None:
    w = modal_world
    w.ok("start", extra=w.secrets_env())  # deployed by a person with the CLI
    env = _modal_step_env(w)
    checked = _action(w.root, tmp_path / "runner-1", env, ref=str(w.ref), env="main", stages="verify")
    assert checked.returncode == 0, checked.log[-4000:]
    assert checked.outputs["verified"] == "true"
    assert json.loads(checked.outputs["results"])[str(w.ref)]["verified"] is True

    w.write(amd64=f"{IMAGE_REPO}@{D_B}")  # the pin moves; what runs does not
    refused = _action(w.root, tmp_path / "runner-2", env, ref=str(w.ref), env="main", stages="verify")
    assert refused.returncode == 21, refused.log[-4000:]
    assert refused.outputs["verified"] == "false"
    assert "ERR_REGISTRY_MISMATCH" in refused.stderr and D_A in refused.stderr
    cli = w.ctl("verify-digest")
    assert cli.code == 21 and cli.out["error"]["code"] == "ERR_REGISTRY_MISMATCH"
    assert cli.out["error"]["details"]["readings"] == {"deploy_record": D_A, "modal_image": None, "healthz": D_A}

    redeployed = _action(w.root, tmp_path / "runner-3", env, ref=str(w.ref), env="main", stages="start")
    assert redeployed.returncode == 0, redeployed.log[-4000:]
    after = w.ok("verify-digest")  # the action's start is what the CLI now verifies
    assert after["readings"] == {"deploy_record": D_B, "modal_image": D_B, "healthz": D_B}
    assert w.ok("status")["version"] == 2


# ---------------------------------------------------------------------------------------------------
# Local: the action and `localctl` on the real Docker engine
# ---------------------------------------------------------------------------------------------------


@dataclass
class LocalWorld:
    root: Path
    ref: ProcessorRef
    env: dict[str, str]  # what both the action's step and the CLI get

    @property
    def path(self) -> Path:
        return self.root / "processors" / self.ref.namespace / self.ref.name / "registry.yaml"

    def localctl(self, verb: str, *args: str) -> tuple[int, dict[str, Any]]:
        proc = subprocess.run(
            [str(BIN / "localctl"), verb, "--ref", str(self.ref), "--env", "staging", "--json", *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, **self.env, "THEORY_REPO_ROOT": str(self.root)},
        )
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"localctl {verb}: {proc.stdout!r}\n{proc.stderr}") from None

    def action(self, temp: Path, **inputs: str) -> ActionResult:
        return _action(self.root, temp, self.env, ref=str(self.ref), env="staging", target="local", **inputs)


@pytest.fixture
def local_world(tmp_path: Path, images: BuiltImages, docker_cli: str) -> Iterator[LocalWorld]:
    ref = ProcessorRef("lact", f"p{uuid.uuid4().hex[:10]}", 1)
    root = tmp_path / "repo"
    folder = root / "processors" / ref.namespace / ref.name
    folder.mkdir(parents=True)
    pins = {"amd64": "null", "arm64": "null", PLATFORM: str(images.v1)}
    (folder / "registry.yaml").write_text(REGISTRY_YAML.format(ref=ref, repository=images.repository, **pins))
    env = {
        "THEORY_STATE_DIR": str(tmp_path / "state"),
        "THEORY_DOCKER": docker_cli,
        "OPENAI_API_KEY": f"canary-{uuid.uuid4().hex}",
        "THEORY_CANARY_SECRET": f"canary-{uuid.uuid4().hex}",
    }
    world = LocalWorld(root, ref, env)
    yield world
    world.localctl("stop")


def test_what_the_action_starts_locally_the_real_cli_verifies(
    local_world: LocalWorld, images: BuiltImages, tmp_path: Path
) -> None:
    w = local_world
    result = w.action(tmp_path / "runner-1")
    assert result.returncode == 0, result.log[-4000:]
    assert result.outputs["verified"] == "true"
    assert json.loads(result.outputs["results"])[str(w.ref)]["deployed"] == str(images.v1)

    code, status = w.localctl("status")
    assert code == 0 and status["state"] == "running" and status["matches_pin"] is True
    assert status["digest"] == images.v1.digest
    code, verified = w.localctl("verify-digest")
    assert code == 0 and verified["verified"] is True
    assert verified["readings"] == {"engine": images.v1.digest, "healthz": images.v1.digest}

    code, _ = w.localctl("stop")  # stopped by a person: the action's verify must now fail closed
    assert code == 0
    refused = w.action(tmp_path / "runner-2", stages="verify")
    assert refused.returncode == 21, refused.log[-4000:]
    assert refused.outputs["verified"] == "false"
    assert "ERR_REGISTRY_MISMATCH" in refused.stderr


def test_what_the_real_cli_starts_locally_the_action_verifies_and_both_refuse_a_moved_pin(
    local_world: LocalWorld, images: BuiltImages, tmp_path: Path
) -> None:
    w = local_world
    code, started = w.localctl("start")
    assert code == 0, started
    checked = w.action(tmp_path / "runner-1", stages="verify")
    assert checked.returncode == 0, checked.log[-4000:]
    assert checked.outputs["verified"] == "true"

    write_pins(w.path, {PLATFORM: str(images.v2)})  # the pin moves; the container does not
    refused = w.action(tmp_path / "runner-2", stages="verify")
    assert refused.returncode == 21, refused.log[-4000:]
    assert refused.outputs["verified"] == "false" and images.v1.digest in refused.stderr
    code, cli = w.localctl("verify-digest")
    assert code == 21 and cli["error"]["code"] == "ERR_REGISTRY_MISMATCH"
    assert cli["error"]["details"]["readings"] == {"engine": images.v1.digest, "healthz": images.v1.digest}

    moved = w.action(tmp_path / "runner-3", stages="start")  # the action deploys the new pin
    assert moved.returncode == 0, moved.log[-4000:]
    code, after = w.localctl("verify-digest")
    assert code == 0 and after["readings"] == {"engine": images.v2.digest, "healthz": images.v2.digest}
