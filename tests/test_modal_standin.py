"""The Modal control-plane stand-in, driven by the real `modal` SDK (pinned 1.6.4).

Every SDK call runs under a timeout: a client pointed at nothing hangs for about a minute.

The stand-in is as strict as Modal where it matters to the product (servicer.py's docstring lists
each rule and the docs it follows); each rule has a test here:
  * RPCs it does not implement answer UNIMPLEMENTED (never an empty success), blob uploads and
    AppRollback included;
  * image builds pull what `from_registry` names from the real loopback registries, with the
    attached registry secret's credentials (so deploys here push real images first), and fail as a
    pull fails (no linux/amd64 entry, a missing layer, 403 denied, AWS/GCP auth not implemented);
  * secrets follow Modal's documented key/value limits and the object-name rules;
  * secret ids are the only environment handle SecretUpdate/GetInfo/Delete carry: they must be live;
    a registry secret is read by its id, whatever its environment;
  * image ids follow from the definition (an identical one gets the existing image back);
  * a publish merges the app's tags, App.set_tags replaces them;
  * a Dict needs a name, and a deleted Dict's id is dead;
  * environments can be created and deleted; a deletion takes the environment's objects with it.
Raw RPCs (`raw`) go over the wire with grpclib, for what the SDK checks client-side first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpclib.client
import modal
import modal.exception
import pytest
from grpclib import GRPCError, Status
from modal_proto import api_grpc, api_pb2
from modal_standin import DEFAULT_ENVIRONMENTS, ModalStandIn
from modal_standin.images import push_tiny_image, push_tiny_index
from modal_standin.sample_app import load_app

from tests.helpers import AuthRegistry

PULL = {"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": "pull-token"}
NOWHERE = "127.0.0.1:5000/theory/nowhere@sha256:" + "e" * 64  # for deploys that fail before any build

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="sdk")


def sdk(fn, *args, timeout: float = 30.0, **kwargs):
    """Run one blocking SDK call with a timeout."""
    return _pool.submit(fn, *args, **kwargs).result(timeout=timeout)


def raw(cp: ModalStandIn, method: str, request: Any, *, token_secret: str | None = None) -> Any:
    """One RPC over the wire (grpclib), bypassing the SDK's client-side checks. Streams return a list."""

    async def go() -> Any:
        channel = grpclib.client.Channel(cp.host, cp.port)
        try:
            stub = api_grpc.ModalClientStub(channel)
            metadata = {"x-modal-token-id": cp.token_id, "x-modal-token-secret": token_secret or cp.token_secret}
            return await asyncio.wait_for(getattr(stub, method)(request, metadata=metadata), 20)
        finally:
            channel.close()

    return asyncio.run(go())


@pytest.fixture
def cp():
    with ModalStandIn() as standin, standin.activate():
        yield standin


@pytest.fixture(scope="module")
def images(registry: str) -> SimpleNamespace:
    """Real tiny images in the anonymous loopback registry: a, b (linux/amd64), arm (linux/arm64),
    index (a + arm), missing (a digest the repository lacks)."""
    repo = f"standin/demo-{uuid.uuid4().hex[:10]}"
    a = push_tiny_image(registry, repo, payload="a")
    b = push_tiny_image(registry, repo, payload="b")
    arm = push_tiny_image(registry, repo, payload="a", arch="arm64")
    index = push_tiny_index(registry, repo, [a, arm])
    return SimpleNamespace(
        a=a.ref,
        b=b.ref,
        a_digest=a.digest,
        arm=arm.ref,
        index=index,
        missing=f"{registry}/{repo}@sha256:" + "0" * 64,
        repository=a.repository,
    )


@pytest.fixture(scope="module")
def private(auth_registry: AuthRegistry) -> SimpleNamespace:
    """A tiny image in the basic-auth loopback registry (by digest and as tag v1), and its credentials."""
    repo = f"standin/private-{uuid.uuid4().hex[:10]}"
    img = push_tiny_image(
        auth_registry.host, repo, payload="p", tag="v1", credentials=(auth_registry.user, auth_registry.password)
    )
    return SimpleNamespace(
        ref=img.ref,
        tag_ref=f"{img.repository}:v1",
        digest=img.digest,
        creds={"REGISTRY_USERNAME": auth_registry.user, "REGISTRY_PASSWORD": auth_registry.password},
    )


def seed_secrets(env: str, app_secret: str = "proc-demo-env", pull: dict[str, str] | None = None) -> None:
    sdk(modal.Secret.objects.create, "REGISTRY_AUTH", pull or PULL, environment_name=env, allow_existing=True)
    sdk(
        modal.Secret.objects.create,
        app_secret,
        {"API_KEY": f"k-{env}"},
        environment_name=env,
        allow_existing=True,
    )


def deploy(app, env: str, tag: str = "", strategy: str = "rolling", name: str = "proc-demo"):
    return sdk(app.deploy, name=name, environment_name=env, tag=tag, strategy=strategy)


def test_defaults(cp: ModalStandIn) -> None:
    assert cp.state.environments == list(DEFAULT_ENVIRONMENTS) == ["dev", "staging", "main"]
    env = cp.env_vars()
    assert env["MODAL_SERVER_URL"] == cp.url == f"http://127.0.0.1:{cp.port}"
    assert (env["MODAL_TOKEN_ID"], env["MODAL_TOKEN_SECRET"]) == ("ak-test", "as-test")
    assert "MODAL_ENVIRONMENT" not in env
    assert "MODAL_ENVIRONMENT" not in os.environ
    sdk(lambda: modal.Client.from_env().hello())
    (hello,) = cp.state.calls_to("ClientHello")
    assert (hello.status, hello.token_id, hello.client_version) == ("OK", "ak-test", modal.__version__)


def test_deploy_records_app_image_function_and_environment(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("staging")
    app = load_app(
        tmp_path,
        env="staging",
        image_ref=images.a,
        image_env={"THEORY_REF": "demo@3", "X": "a b"},
        tags={"digest": "a" * 56, "ref": "demo-3"},
        gpu="T4",
        cpu=2.0,
        memory=1024,
        timeout=600,
    )
    t0 = time.time()
    deploy(app, "staging", tag="demo-3-aaaaaaaa")

    rec = cp.state.deployed_app("staging", "proc-demo")
    assert rec is not None and rec.app_id.startswith("ap-") and len(rec.app_id) == 25
    assert cp.state.deployed_app("dev", "proc-demo") is None
    assert rec.state == "deployed" and rec.version == 1
    assert rec.deployment_tag == "demo-3-aaaaaaaa"
    assert rec.tags == {"digest": "a" * 56, "ref": "demo-3"}
    assert rec.deployed_by == "standin-user" and t0 <= rec.deployed_at <= time.time()
    (d,) = rec.deploys
    assert (d.version, d.noop, d.strategy, d.deployment_tag) == (1, False, "rolling", "demo-3-aaaaaaaa")
    assert d.client_version == modal.__version__ == "1.6.4"

    fn = rec.functions["web"]
    assert (fn.cpu, fn.memory_mb, fn.gpu, fn.timeout_secs) == (2.0, 1024, "T4", 600)
    assert fn.max_concurrent_inputs == 100
    assert fn.webhook_type == "ASGI_APP"
    assert fn.web_url == f"http://127.0.0.1:{cp.port}/staging/proc-demo"
    assert fn.secret_names == ["staging/proc-demo-env"]

    spec = d.images["web"]
    assert spec.registry_ref == images.a
    assert (spec.registry_secret_name, spec.registry_secret_environment) == ("REGISTRY_AUTH", "staging")
    assert spec.env == {"THEORY_REF": "demo@3", "X": "a b"}
    assert spec.image_id == fn.image_id and cp.image_spec(fn.image_id) == spec

    # Every call that named an environment named "staging" (or took it from its app).
    seen = [c for c in cp.state.calls if c.environment_name is not None]
    assert seen and {c.environment_name for c in seen} == {"staging"}
    assert not cp.state.failed_calls()


def test_redeploy_versions_noop_and_metadata(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev", image_ref=images.a), "dev", tag="t1")
    first = cp.state.deployed_app("dev", "proc-demo")
    assert first.version == 1
    deployed_at_1 = first.deployed_at

    # Same module, same tag: nothing changed, the version stays (the SDK prints "no changes").
    deploy(load_app(tmp_path, env="dev", image_ref=images.a), "dev", tag="t1")
    rec = cp.state.deployed_app("dev", "proc-demo")
    assert rec.app_id == first.app_id and rec.version == 1 and rec.deployed_at == deployed_at_1
    assert [(d.version, d.noop) for d in rec.deploys] == [(1, False), (1, True)]

    # A new digest: a new version, same app id.
    deploy(load_app(tmp_path, env="dev", image_ref=images.b, tags={"digest": "b" * 56}), "dev", tag="t2")
    rec = cp.state.deployed_app("dev", "proc-demo")
    assert rec.app_id == first.app_id and rec.version == 2 and rec.deployment_tag == "t2"
    assert rec.deploys[-1].images["web"].registry_ref == images.b
    assert rec.tags == {"digest": "b" * 56}

    # Only the deploy tag changes: counted as a change here (the real rule is not documented).
    deploy(
        load_app(tmp_path, env="dev", image_ref=images.b, tags={"digest": "b" * 56}),
        "dev",
        tag="t3",
        strategy="recreate",
    )
    rec = cp.state.deployed_app("dev", "proc-demo")
    assert rec.version == 3 and rec.deploys[-1].strategy == "recreate"
    assert [d.version for d in cp.state.deploys("dev", "proc-demo") if not d.noop] == [1, 2, 3]

    # What the SDK exposes about the deployment.
    looked_up = sdk(modal.App.lookup, "proc-demo", environment_name="dev")
    assert looked_up.app_id == rec.app_id
    info = sdk(looked_up.info)
    assert info.lifecycle.state.name == "DEPLOYED"
    assert info.lifecycle.version == 3
    assert info.lifecycle.deployed_by == "standin-user"
    assert abs(info.lifecycle.deployed_at.timestamp() - rec.deployed_at) < 1e-3
    assert info.functions == {"web": rec.functions["web"].function_id}
    assert sdk(looked_up.get_tags) == {"digest": "b" * 56}
    refreshed = sdk(looked_up.info, refresh=True)
    assert refreshed.lifecycle.version == 3


def test_function_lookup_web_url_hook_and_info(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("main")
    deploy(load_app(tmp_path, env="main", image_ref=images.a, gpu="A100", cpu=4.0, memory=2048), "main")
    seen: list[tuple[str, str]] = []

    def url_for(app_name: str, env: str) -> str:
        seen.append((app_name, env))
        return "http://127.0.0.1:18080"

    cp.web_url_for = url_for  # set after deploy: consulted again on lookup
    fn = sdk(modal.Function.from_name, "proc-demo", "web", environment_name="main")
    assert sdk(fn.get_web_url) == "http://127.0.0.1:18080"
    assert ("proc-demo", "main") in seen
    info = sdk(fn.info)
    assert (info.cpu, info.memory_mib, info.gpus) == (4.0, 2048, [("A100", 1)])
    assert info.timeout == 300
    assert info.concurrency_info.max_inputs == 100
    assert info.web_info.web_url == "http://127.0.0.1:18080"
    assert info.image_info.image_id == cp.state.deployed_app("main", "proc-demo").functions["web"].image_id
    assert info.image_info.image_id.startswith("im-")  # Modal's id, never the registry digest
    assert len(info.secrets) == 1

    with pytest.raises(modal.exception.NotFoundError):
        sdk(lambda: modal.Function.from_name("proc-demo", "nope", environment_name="main").hydrate())
    with pytest.raises(modal.exception.NotFoundError):
        sdk(lambda: modal.Function.from_name("proc-demo", "web", environment_name="dev").hydrate())
    with pytest.raises(modal.exception.NotFoundError):
        sdk(modal.App.lookup, "missing-app", environment_name="main")
    with pytest.raises(modal.exception.NotFoundError):
        sdk(modal.App.lookup, "proc-demo", environment_name="staging")


def _built_id(app: Any, image_ref: str, image_env: dict[str, str], env: str = "dev") -> str:
    """The id Modal gives `from_registry(image_ref, secret=REGISTRY_AUTH).env(image_env)`."""
    image = modal.Image.from_registry(
        image_ref, secret=modal.Secret.from_name("REGISTRY_AUTH", environment_name=env)
    ).env(image_env)
    sdk(image.build, app, timeout=60)
    return str(image.object_id)


def test_image_ids_come_from_the_definition(cp: ModalStandIn, tmp_path: Path, images) -> None:
    """Rule 8: an identical definition gets the existing image (and no second pull); any change to
    the reference, the environment values, the pull secret or the builder version gives another id.
    A function's image id is the one of the definition it was deployed with."""
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev", image_ref=images.a, image_env={"IMAGE_DIGEST": "x"}), "dev")
    app = sdk(modal.App.lookup, "proc-demo", environment_name="dev")
    running = cp.state.deployed_app("dev", "proc-demo").functions["web"].image_id
    pulls = len(cp.state.pulls)
    same = _built_id(app, images.a, {"IMAGE_DIGEST": "x"})
    assert same == running and _built_id(app, images.a, {"IMAGE_DIGEST": "x"}) == running
    assert len(cp.state.pulls) == pulls  # the cached image was handed back: nothing pulled again
    assert _built_id(app, images.a, {"IMAGE_DIGEST": "y"}) != running
    assert _built_id(app, images.b, {"IMAGE_DIGEST": "x"}) != running
    fn = sdk(modal.Function.from_name, "proc-demo", "web", environment_name="dev")
    assert sdk(fn.info).image_info.image_id == running

    # Another pull secret (a re-created REGISTRY_AUTH has a new id) is another definition.
    sdk(modal.Secret.objects.delete, "REGISTRY_AUTH", environment_name="dev")
    seed_secrets("dev")
    assert _built_id(app, images.a, {"IMAGE_DIGEST": "x"}) != running

    # The builder version is part of the id (raw RPC: the SDK always sends the server's own).
    definition = cp.state.images[running].proto
    ids = {
        raw(
            cp,
            "ImageGetOrCreate",
            api_pb2.ImageGetOrCreateRequest(app_id=app.app_id, image=definition, builder_version=v),
        ).image_id
        for v in ("2025.06", "2024.10", "2025.06")
    }
    assert len(ids) == 2


def test_a_publish_merges_tags_and_set_tags_replaces_them(cp: ModalStandIn, tmp_path: Path, images) -> None:
    """Rule 9: whether a publish replaces an app's tags is undocumented, so the stand-in merges them
    (what a client relying on replacement would trip over); App.set_tags replaces, as documented."""
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev", image_ref=images.a, tags={"a": "1", "b": "2"}), "dev")
    deploy(load_app(tmp_path, env="dev", image_ref=images.b, tags={"b": "3", "c": "4"}), "dev")
    app = sdk(modal.App.lookup, "proc-demo", environment_name="dev")
    assert sdk(app.get_tags) == {"a": "1", "b": "3", "c": "4"}
    sdk(app.set_tags, {"c": "5"})
    assert sdk(app.get_tags) == {"c": "5"} == cp.state.deployed_app("dev", "proc-demo").tags


def test_stop_then_redeploy_gets_a_new_app(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev", image_ref=images.a), "dev")
    first = cp.state.deployed_app("dev", "proc-demo")
    app = sdk(modal.App.lookup, "proc-demo", environment_name="dev")
    sdk(app.stop)
    assert first.state == "stopped" and first.stopped_by == "standin-user"
    assert cp.state.deployed_app("dev", "proc-demo") is None
    with pytest.raises(modal.exception.NotFoundError):
        sdk(modal.App.lookup, "proc-demo", environment_name="dev")
    with pytest.raises(modal.exception.NotFoundError):
        sdk(lambda: modal.Function.from_name("proc-demo", "web", environment_name="dev").hydrate())

    deploy(load_app(tmp_path, env="dev", image_ref=images.a), "dev")
    again = cp.state.deployed_app("dev", "proc-demo")
    assert again.app_id != first.app_id and again.version == 1
    assert [d.app_id for d in cp.state.deploys("dev", "proc-demo")] == [first.app_id, again.app_id]


def test_app_list_per_environment(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("dev")
    seed_secrets("staging")
    deploy(load_app(tmp_path, env="dev", image_ref=images.a), "dev")
    deploy(load_app(tmp_path, env="staging", image_ref=images.a), "staging", name="other-app")
    dev_apps = sdk(modal.Environment.from_name("dev").apps.list)
    staging_apps = sdk(modal.Environment.from_name("staging").apps.list)
    assert [a.name for a in dev_apps] == ["proc-demo"]
    assert [a.name for a in staging_apps] == ["other-app"]
    assert {c.environment_name for c in cp.state.calls_to("AppList")} == {"dev", "staging"}


def test_secrets_per_environment_with_values(cp: ModalStandIn) -> None:
    S = modal.Secret
    sdk(S.objects.create, "svc", {"A": "1", "B": "2"}, environment_name="dev")
    sdk(S.objects.create, "svc", {"A": "prod"}, environment_name="main")
    assert cp.state.secret_values("dev", "svc") == {"A": "1", "B": "2"}
    assert cp.state.secret_values("main", "svc") == {"A": "prod"}
    assert cp.state.secret_values("staging", "svc") is None

    with pytest.raises(modal.exception.AlreadyExistsError):
        sdk(S.objects.create, "svc", {"A": "x"}, environment_name="dev")
    sdk(S.objects.create, "svc", {"A": "x", "C": "3"}, environment_name="dev", allow_existing=True)
    assert cp.state.secret_values("dev", "svc") == {"A": "1", "B": "2"}  # allow_existing keeps values

    secret = sdk(S.from_name("svc", environment_name="dev").hydrate)
    sdk(secret.update, {"B": "22", "D": "4"})
    assert cp.state.secret_values("dev", "svc") == {"A": "1", "B": "22", "D": "4"}  # merge, no deletes
    assert cp.state.secret_values("main", "svc") == {"A": "prod"}

    sdk(S.objects.create, "other", {"Z": "z"}, environment_name="dev")
    assert sorted(s.name for s in sdk(S.objects.list, environment_name="dev")) == ["other", "svc"]
    assert [s.name for s in sdk(S.objects.list, environment_name="main")] == ["svc"]
    assert sdk(S.objects.list, environment_name="staging") == []

    sdk(S.objects.delete, "svc", environment_name="dev")
    assert cp.state.secret_names("dev") == ["other"]
    assert cp.state.secret_names("main") == ["svc"]
    sdk(S.objects.delete, "svc", environment_name="dev", allow_missing=True)
    with pytest.raises(modal.exception.NotFoundError):
        sdk(S.objects.delete, "svc", environment_name="dev")
    with pytest.raises(modal.exception.NotFoundError):
        sdk(S.from_name("svc", environment_name="dev").hydrate)
    with pytest.raises(modal.exception.NotFoundError):
        sdk(S.from_name("svc", environment_name="main", required_keys=["NOPE"]).hydrate)
    # The old handle's id is gone too.
    with pytest.raises(modal.exception.NotFoundError):
        sdk(secret.update, {"A": "again"})


def test_registry_secret_keys_are_checked_by_the_client(cp: ModalStandIn, tmp_path: Path) -> None:
    sdk(modal.Secret.objects.create, "REGISTRY_AUTH", {"TOKEN": "x"}, environment_name="dev")
    sdk(modal.Secret.objects.create, "proc-demo-env", {"K": "v"}, environment_name="dev")
    with pytest.raises(modal.exception.InvalidError, match="REGISTRY_USERNAME"):
        deploy(load_app(tmp_path, env="dev", image_ref=NOWHERE), "dev")  # refused before any build
    assert cp.state.pulls == []
    assert cp.state.deployed_app("dev", "proc-demo") is None
    assert all(a.state == "stopped" for a in cp.state.apps.values())


def test_empty_or_unknown_environment_fails(cp: ModalStandIn, tmp_path: Path) -> None:
    S = modal.Secret
    with pytest.raises(modal.exception.InvalidError, match="environment_name is empty"):
        sdk(S.objects.create, "x", {"A": "1"})
    with pytest.raises(modal.exception.InvalidError):
        sdk(S.from_name("x").hydrate)
    # allow_missing must not swallow a missing environment.
    with pytest.raises(modal.exception.InvalidError):
        sdk(S.objects.delete, "x", allow_missing=True)
    with pytest.raises(modal.exception.InvalidError):
        sdk(S.objects.list)
    with pytest.raises(modal.exception.InvalidError):
        sdk(modal.App.lookup, "proc-demo")
    with pytest.raises(modal.exception.InvalidError):
        sdk(lambda: modal.Function.from_name("proc-demo", "web").hydrate())
    with pytest.raises(modal.exception.NotFoundError, match="Environment 'prod' not found"):
        sdk(S.objects.create, "x", {"A": "1"}, environment_name="prod")

    seed_secrets("dev")
    app = load_app(tmp_path, env="dev", image_ref=NOWHERE)  # refused before any build
    with pytest.raises(modal.exception.InvalidError):
        sdk(app.deploy, name="proc-demo")  # no environment_name
    with pytest.raises(modal.exception.NotFoundError):
        sdk(app.deploy, name="proc-demo", environment_name="prod")
    assert cp.state.apps == {}

    empty = [c for c in cp.state.calls if c.environment_name == ""]
    assert empty and all(c.status == "INVALID_ARGUMENT" for c in empty)
    assert {c.status for c in cp.state.calls if c.environment_name == "prod"} == {"NOT_FOUND"}


def test_wrong_token_is_an_auth_error() -> None:
    with ModalStandIn(token_secret="as-other") as standin, standin.activate():
        os.environ["MODAL_TOKEN_SECRET"] = "as-wrong"  # restored by activate()
        with pytest.raises(modal.exception.AuthError):
            sdk(modal.Secret.objects.list, environment_name="dev")
        assert standin.state.calls[-1].status == "UNAUTHENTICATED"


def test_logs_tail_fetch_stream(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev", image_ref=images.a), "dev")
    cp.add_log("dev", "proc-demo", "booting\n", at=time.time() - 5)
    cp.add_log("dev", "proc-demo", "oops\n", fd="stderr")
    app = sdk(modal.App.lookup, "proc-demo", environment_name="dev")

    tail = sdk(lambda: [e.message for e in app.logs.tail(10)])
    assert tail == ["booting\n", "oops\n"]
    since = datetime.now(UTC) - timedelta(minutes=1)
    fetched = sdk(lambda: [(e.message, e.source) for e in app.logs.fetch(since=since)])
    assert [m for m, _ in fetched] == ["booting\n", "oops\n"]
    streamed = sdk(lambda: [e.message for e in app.logs.stream(timeout=1)], timeout=20)
    assert streamed == ["booting\n", "oops\n"]


def test_image_build_hook_runs_after_the_pull_and_can_fail_a_deploy(tmp_path: Path, images) -> None:
    built = []

    def hook(spec):
        built.append(spec)
        if spec.env.get("FAIL") == "1":
            raise RuntimeError("pull failed: manifest unknown")

    with ModalStandIn(image_build_hook=hook) as standin, standin.activate():
        seed_secrets("dev")
        deploy(load_app(tmp_path, env="dev", image_ref=images.a, image_env={"OK": "1"}), "dev")
        assert built and built[-1].env == {"OK": "1"} and built[-1].registry_ref == images.a
        assert [(p.ref, p.ok) for p in standin.state.pulls] == [(images.a, True)]  # pulled, then the hook ran
        with pytest.raises(modal.exception.RemoteError, match="manifest unknown"):
            deploy(load_app(tmp_path, env="dev", image_ref=images.a, image_env={"FAIL": "1"}), "dev")
        assert standin.state.deployed_app("dev", "proc-demo").version == 1
        # A pull that fails stops the build before the hook (Modal's workers never see the image).
        hooked = len(built)
        with pytest.raises(modal.exception.ImageBuildError, match="manifest unknown"):
            deploy(load_app(tmp_path, env="dev", image_ref=images.missing, image_env={"OK": "1"}), "dev")
        assert len(built) == hooked


def test_sdk_in_a_subprocess_via_env_vars(cp: ModalStandIn) -> None:
    code = (
        "import json, modal\n"
        "modal.Secret.objects.create('sub', {'K': 'v'}, environment_name='staging')\n"
        "print(json.dumps([s.name for s in modal.Secret.objects.list(environment_name='staging')]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(cp.env_vars())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["sub"]
    assert cp.state.secret_values("staging", "sub") == {"K": "v"}
    assert {c.token_id for c in cp.state.calls} == {"ak-test"}


def test_web_url_hook_sees_the_function_record(tmp_path: Path, images) -> None:
    calls = []

    def url_for(app_name, env, *, function_name, function):
        calls.append((app_name, env, function_name, function))
        image = standin.image_spec(function.image_id).registry_ref if function else None
        return f"http://127.0.0.1:9/{env}/{app_name}/{function_name}?image={image}"

    with ModalStandIn(web_url_for=url_for) as standin, standin.activate():
        seed_secrets("dev")
        deploy(load_app(tmp_path, env="dev", image_ref=images.b), "dev")
        fn = sdk(modal.Function.from_name, "proc-demo", "web", environment_name="dev")
        assert sdk(fn.get_web_url) == f"http://127.0.0.1:9/dev/proc-demo/web?image={images.b}"
        assert calls[0][3] is None  # FunctionPrecreate: no definition yet
        assert calls[-1][3].function_id == fn.object_id


# ------------------------------------------------------------------------------------------------
# Rule 1: an RPC the stand-in does not implement answers UNIMPLEMENTED, never an empty success


def test_unknown_rpcs_answer_unimplemented(cp: ModalStandIn) -> None:
    with pytest.raises(modal.exception.UnimplementedError, match="stand-in: QueueGetOrCreate is not implemented"):
        sdk(modal.Queue.from_name("q", environment_name="dev", create_if_missing=True).hydrate)
    (call,) = cp.state.calls_to("QueueGetOrCreate")
    assert (call.status, call.error) == ("UNIMPLEMENTED", "stand-in: QueueGetOrCreate is not implemented")
    # A streaming RPC too: no empty stream.
    with pytest.raises(GRPCError) as info:
        raw(cp, "VolumeListFiles2", api_pb2.VolumeListFiles2Request(volume_id="vo-x", path="/"))
    assert info.value.status is Status.UNIMPLEMENTED
    assert cp.state.calls_to("VolumeListFiles2")[-1].status == "UNIMPLEMENTED"
    # Every RPC that answered OK had an implementation of its own.
    for c in cp.state.calls:
        if c.status == "OK":
            assert hasattr(cp.servicer, f"_do_{c.method}") or hasattr(cp.servicer, f"_stream_{c.method}")


def test_blob_uploads_answer_unimplemented(cp: ModalStandIn) -> None:
    """Files over the inline limit go through the blob store (BlobCreate, then MountPutFile with a
    data_blob_id); the stand-in has none, so each step answers UNIMPLEMENTED and nothing is stored."""
    data = b"x" * 16
    sha = hashlib.sha256(data).hexdigest()
    for method, request in (
        ("BlobCreate", api_pb2.BlobCreateRequest(content_sha256_base64="eA==", content_length=5 * 2**20)),
        ("BlobGet", api_pb2.BlobGetRequest(blob_id="bl-" + "x" * 22)),
    ):
        with pytest.raises(GRPCError) as info:
            raw(cp, method, request)
        assert (info.value.status, info.value.message) == (
            Status.UNIMPLEMENTED,
            f"stand-in: {method} is not implemented",
        )
    with pytest.raises(GRPCError) as info:
        raw(cp, "MountPutFile", api_pb2.MountPutFileRequest(sha256_hex=sha, data_blob_id="bl-" + "x" * 22))
    assert (info.value.status, info.value.message) == (
        Status.UNIMPLEMENTED,
        "stand-in: blob uploads (files over the inline size) are not implemented",
    )
    assert sha not in cp.state.mount_blobs
    assert [(c.method, c.status) for c in cp.state.calls] == [
        ("BlobCreate", "UNIMPLEMENTED"),
        ("BlobGet", "UNIMPLEMENTED"),
        ("MountPutFile", "UNIMPLEMENTED"),
    ]


def test_a_deploy_module_over_the_inline_limit_fails_unimplemented(cp: ModalStandIn, tmp_path: Path, images) -> None:
    """The SDK's own path: a module file of 4 MiB or more is uploaded as a blob, and BlobCreate is the
    first RPC it sends for it; the deploy fails there, loudly, and nothing is published."""
    seed_secrets("dev")
    app = load_app(tmp_path, env="dev", image_ref=images.a)
    with (tmp_path / "standin_sample_app.py").open("a") as module:
        module.write(("# padding\n" * 420_000)[: 4 * 2**20])  # the SDK's LARGE_FILE_LIMIT is 4 MiB
    with pytest.raises(modal.exception.UnimplementedError, match=r"^stand-in: BlobCreate is not implemented$"):
        deploy(app, "dev")
    assert cp.state.calls_to("BlobCreate")[-1].status == "UNIMPLEMENTED"
    assert cp.state.calls_to("MountPutFile") == []
    assert cp.state.deployed_app("dev", "proc-demo") is None
    assert all(a.state == "stopped" for a in cp.state.apps.values())


def test_app_rollback_answers_unimplemented(cp: ModalStandIn) -> None:
    """AppRollback is a paid-plan feature on Modal: refused on purpose, for a deployed app too."""
    app = sdk(modal.App.lookup, "proc-demo", environment_name="dev", create_if_missing=True)
    assert cp.state.apps[app.app_id].state == "deployed"
    for version in (-1, 1):  # -1: the previous version (what `modal app rollback <app>` sends)
        with pytest.raises(GRPCError) as info:
            raw(cp, "AppRollback", api_pb2.AppRollbackRequest(app_id=app.app_id, version=version))
        assert (info.value.status, info.value.message) == (
            Status.UNIMPLEMENTED,
            "stand-in: rollback is not supported (it needs a paid plan on Modal)",
        )
    assert [c.status for c in cp.state.calls_to("AppRollback")] == ["UNIMPLEMENTED", "UNIMPLEMENTED"]
    assert cp.state.apps[app.app_id].state == "deployed"


def test_a_deploy_uses_only_implemented_rpcs_and_uploads_its_module(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("dev")
    app = load_app(tmp_path, env="dev", image_ref=images.a)
    deploy(app, "dev")
    assert not cp.state.failed_calls()
    # The module file was really uploaded: existence checked, then its bytes sent and verified.
    text = (tmp_path / "standin_sample_app.py").read_bytes()
    sha = hashlib.sha256(text).hexdigest()
    assert cp.state.mount_blobs[sha] == text
    (check, *_) = cp.state.calls_to("MountBatchedCheckExistence")
    assert sha in check.request.sha256_hex_hashes
    assert [c.request.sha256_hex for c in cp.state.calls_to("MountPutFile")] == [sha]
    fn = cp.state.deployed_app("dev", "proc-demo").functions["web"]
    assert any(cp.state.mount_file(m, f) == text for m in fn.mount_ids for f in cp.state.mounts[m].files)
    # Redeploying the same file uploads nothing: the stand-in already has it.
    deploy(load_app(tmp_path, env="dev", image_ref=images.a), "dev")
    assert len(cp.state.calls_to("MountPutFile")) == 1


def test_mount_files_must_be_uploaded_and_match_their_hash(cp: ModalStandIn) -> None:
    data = b"print('hi')\n"
    sha = hashlib.sha256(data).hexdigest()
    missing = raw(cp, "MountBatchedCheckExistence", api_pb2.MountBatchedCheckExistenceRequest(sha256_hex_hashes=[sha]))
    assert list(missing.missing_sha256_hex_hashes) == [sha]
    files = [api_pb2.MountFile(filename="/root/m.py", sha256_hex=sha)]
    with pytest.raises(GRPCError) as info:
        raw(cp, "MountGetOrCreate", api_pb2.MountGetOrCreateRequest(environment_name="dev", files=files))
    assert info.value.status is Status.INVALID_ARGUMENT and "never uploaded: /root/m.py" in info.value.message
    with pytest.raises(GRPCError) as info:
        raw(cp, "MountPutFile", api_pb2.MountPutFileRequest(sha256_hex=sha, data=b"other bytes"))
    assert info.value.status is Status.INVALID_ARGUMENT
    assert raw(cp, "MountPutFile", api_pb2.MountPutFileRequest(sha256_hex=sha)).exists is False
    assert raw(cp, "MountPutFile", api_pb2.MountPutFileRequest(sha256_hex=sha, data=data)).exists is True
    assert raw(cp, "MountPutFile", api_pb2.MountPutFileRequest(sha256_hex=sha)).exists is True
    found = raw(cp, "MountBatchedCheckExistence", api_pb2.MountBatchedCheckExistenceRequest(sha256_hex_hashes=[sha]))
    assert list(found.missing_sha256_hex_hashes) == []
    mount = raw(cp, "MountGetOrCreate", api_pb2.MountGetOrCreateRequest(environment_name="dev", files=files))
    assert cp.state.mount_file(mount.mount_id, "/root/m.py") == data


# ------------------------------------------------------------------------------------------------
# Rule 2: an image build pulls what `from_registry` references, with the attached registry secret


def _deploy_fails(tmp_path: Path, ref: str, match: str, **kwargs: Any) -> str:
    with pytest.raises(modal.exception.ImageBuildError, match=match) as info:
        deploy(load_app(tmp_path, env="dev", image_ref=ref, **kwargs), "dev")
    return str(info.value)


def test_build_pulls_the_referenced_manifest(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev", image_ref=images.a), "dev")
    (pull,) = cp.state.pulls
    secret = cp.state.secret("dev", "REGISTRY_AUTH")
    assert (pull.ref, pull.ok, pull.manifest_digest, pull.auth) == (images.a, True, images.a_digest, "anonymous")
    assert (pull.secret_id, pull.username) == (secret.secret_id, "bot")  # attached (the registry never asked)
    assert cp.state.images[pull.image_id].pulled_digest == images.a_digest
    # The same image again is Modal's cache hit: no second pull.
    deploy(load_app(tmp_path, env="dev", image_ref=images.a, image_env={"X": "1"}), "dev")
    assert len(cp.state.pulls) == 1
    # An index resolves to its linux/amd64 manifest (the arm64 entry is never picked).
    deploy(load_app(tmp_path, env="dev", image_ref=images.index), "dev")
    assert (cp.state.pulls[-1].ok, cp.state.pulls[-1].manifest_digest) == (True, images.a_digest)


def test_build_fails_when_the_reference_does_not_exist(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("dev")
    message = _deploy_fails(tmp_path, images.missing, "manifest unknown")
    assert "Image build for im-" in message and f"failed to pull {images.missing}" in message
    _deploy_fails(tmp_path, f"{images.repository}:no-such-tag", "manifest unknown")
    assert cp.state.deployed_app("dev", "proc-demo") is None
    assert [p.ok for p in cp.state.pulls] == [False, False]
    assert all(i.builds == 0 for i in cp.state.images.values() if i.pulled_digest == "")


def test_build_fails_for_a_platform_modal_cannot_run(cp: ModalStandIn, tmp_path: Path, images) -> None:
    seed_secrets("dev")
    _deploy_fails(tmp_path, images.arm, "wanted linux/amd64, actual: linux/arm64")
    assert cp.state.deployed_app("dev", "proc-demo") is None


def test_private_registry_needs_the_secrets_credentials(
    cp: ModalStandIn, tmp_path: Path, private: SimpleNamespace
) -> None:
    # The right credentials in the attached secret: pulled with Basic auth, by digest and by tag.
    seed_secrets("dev", pull=private.creds)
    deploy(load_app(tmp_path, env="dev", image_ref=private.ref), "dev")
    assert (cp.state.pulls[-1].ok, cp.state.pulls[-1].auth) == (True, "basic")
    assert cp.state.pulls[-1].username == private.creds["REGISTRY_USERNAME"]
    deploy(load_app(tmp_path, env="dev", image_ref=private.tag_ref), "dev")
    assert (cp.state.pulls[-1].ok, cp.state.pulls[-1].manifest_digest) == (True, private.digest)
    assert cp.state.deployed_app("dev", "proc-demo").version == 2

    # No secret attached: a private reference (digest or tag) cannot be pulled.
    for ref in (private.ref, private.tag_ref):
        _deploy_fails(tmp_path, ref, "unauthorized: authentication required", registry_secret=None)
    # Credentials the registry refuses (a stale token), in another secret or after an update.
    sdk(
        modal.Secret.objects.create,
        "STALE_AUTH",
        {**private.creds, "REGISTRY_PASSWORD": "expired"},
        environment_name="dev",
    )
    message = _deploy_fails(tmp_path, private.ref, "refused the credentials", registry_secret="STALE_AUTH")
    assert "expired" not in message and private.creds["REGISTRY_PASSWORD"] not in message
    assert cp.state.deployed_app("dev", "proc-demo").version == 2


def test_bearer_token_registry_gets_the_secrets_credentials(cp: ModalStandIn, tmp_path: Path, registry: str) -> None:
    from tests.registry_faults import FaultProxy, TokenAuth

    auth = TokenAuth("robot", "s3cret-token")
    with FaultProxy(registry, token_auth=auth) as proxy:
        repo = f"standin/bearer-{uuid.uuid4().hex[:8]}"
        img = push_tiny_image(registry, repo, payload="t")  # pushed upstream; pulled through the proxy
        ref = f"{proxy.host}/{repo}@{img.digest}"
        seed_secrets("dev", pull={"REGISTRY_USERNAME": "robot", "REGISTRY_PASSWORD": "s3cret-token"})
        deploy(load_app(tmp_path, env="dev", image_ref=ref), "dev")
        assert (cp.state.pulls[-1].ok, cp.state.pulls[-1].auth) == (True, "bearer")
        assert auth.token_requests == [f"repository:{repo}:pull"]
        sdk(
            modal.Secret.objects.create,
            "WRONG_AUTH",
            {"REGISTRY_USERNAME": "robot", "REGISTRY_PASSWORD": "no"},
            environment_name="dev",
        )
        _deploy_fails(tmp_path, ref, "refused the credentials", registry_secret="WRONG_AUTH")
        _deploy_fails(tmp_path, ref, "authentication required", registry_secret=None)


def test_build_fails_when_the_registry_secret_is_gone_or_lacks_keys(cp: ModalStandIn, images) -> None:
    """Over the wire (the SDK checks keys before it sends): the builder reads the secret by id."""
    app = raw(cp, "AppCreate", api_pb2.AppCreateRequest(environment_name="dev", description="x"))
    lacking = cp.state.put_secret("dev", "TOKEN_ONLY", {"TOKEN": "x"})
    deleted = cp.state.put_secret("dev", "GONE", PULL)
    del cp.state.secrets["dev"]["GONE"]

    def build(secret_id: str, auth_type: int = api_pb2.REGISTRY_AUTH_TYPE_STATIC_CREDS) -> api_pb2.GenericResult:
        image = api_pb2.Image(
            dockerfile_commands=[f"FROM {images.a}"],
            image_registry_config=api_pb2.ImageRegistryConfig(registry_auth_type=auth_type, secret_id=secret_id),
        )
        got = raw(cp, "ImageGetOrCreate", api_pb2.ImageGetOrCreateRequest(app_id=app.app_id, image=image))
        (joined,) = raw(cp, "ImageJoinStreaming", api_pb2.ImageJoinStreamingRequest(image_id=got.image_id))
        return joined.result

    failed = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
    for secret_id, text in (
        ("st-" + "n" * 22, "not found"),
        (deleted.secret_id, "not found"),
        (lacking.secret_id, "lacks the key(s) REGISTRY_USERNAME, REGISTRY_PASSWORD"),
        ("", "needs a registry Secret"),
    ):
        result = build(secret_id)
        assert result.status == failed and text in result.exception, (secret_id, result.exception)
    result = build("", api_pb2.REGISTRY_AUTH_TYPE_AWS)
    assert result.status == failed and "AWS ECR registry authentication is not implemented" in result.exception
    assert build("", api_pb2.REGISTRY_AUTH_TYPE_UNSPECIFIED).status == api_pb2.GenericResult.GENERIC_STATUS_SUCCESS


def test_only_loopback_registries_are_pulled_from(cp: ModalStandIn, tmp_path: Path) -> None:
    seed_secrets("dev")
    _deploy_fails(tmp_path, "ghcr.io/theory-test/x@sha256:" + "a" * 64, "ghcr.io is not a loopback registry")
    assert cp.state.pulls[-1].ok is False


def _builder_app(env: str = "dev") -> Any:
    """An app to build images in (`Image.build` needs one), without a deploy."""
    return sdk(modal.App.lookup, "image-builder", environment_name=env, create_if_missing=True)


def _the_failed_pull(cp: ModalStandIn, message: str, expected: str) -> Any:
    """The one pull of a deploy that failed with `expected`: the SDK showed that error and nothing was
    deployed. Returns the pull record for the test's own checks."""
    (pull,) = cp.state.pulls
    assert (pull.ok, pull.error) == (False, expected)
    assert message.endswith(f"failed with the exception:\n{expected}")
    assert cp.state.deployed_app("dev", "proc-demo") is None
    return pull


def test_build_fails_for_an_index_without_linux_amd64(cp: ModalStandIn, tmp_path: Path, registry: str) -> None:
    """The product refuses such an index before it deploys, so only this self-test reaches the rule."""
    repo = f"standin/no-amd64-{uuid.uuid4().hex[:10]}"
    arm = push_tiny_image(registry, repo, payload="a", arch="arm64")
    s390x = push_tiny_image(registry, repo, payload="a", arch="s390x")
    index = push_tiny_index(registry, repo, [arm, s390x])
    seed_secrets("dev")
    message = _deploy_fails(tmp_path, index, "no matching manifest for linux/amd64")
    expected = f"failed to pull {index}: no matching manifest for linux/amd64 in the manifest list entries"
    assert _the_failed_pull(cp, message, expected).manifest_digest == ""


def test_build_fails_when_a_layer_blob_is_missing(cp: ModalStandIn, tmp_path: Path, registry: str) -> None:
    """The manifest and config are there, one layer is not (a registry refuses to store such a manifest,
    so the proxy answers 404 for the layer): the pull fails on the layer."""
    from tests.registry_faults import Fault, FaultProxy

    repo = f"standin/layerless-{uuid.uuid4().hex[:10]}"
    img = push_tiny_image(registry, repo, payload="layer")
    with FaultProxy(registry, faults=[Fault(f"/blobs/{img.layer_digest}$", "404", times=100)]) as proxy:
        ref = f"{proxy.host}/{repo}@{img.digest}"
        seed_secrets("dev")
        message = _deploy_fails(tmp_path, ref, "blob unknown")
        assert proxy.count(path=f"/blobs/{img.config_digest}$") == 1  # the config was there
        assert proxy.count(path=f"/blobs/{img.layer_digest}$", method="HEAD") == 1
    expected = f"failed to pull {ref}: blob unknown: {img.layer_digest} is missing from {proxy.host}/{repo}"
    assert _the_failed_pull(cp, message, expected).manifest_digest == ""


def test_build_fails_when_the_registry_denies_the_pull(cp: ModalStandIn, tmp_path: Path, registry: str) -> None:
    """403 (denied) is a refusal, not a challenge: no credentials are tried, nothing is retried."""
    from tests.registry_faults import Fault, FaultProxy

    repo = f"standin/denied-{uuid.uuid4().hex[:10]}"
    img = push_tiny_image(registry, repo, payload="denied")
    with FaultProxy(registry, faults=[Fault(r"/manifests/", "403", times=100)]) as proxy:
        ref = f"{proxy.host}/{repo}@{img.digest}"
        seed_secrets("dev")  # a registry secret is attached: a 403 is still final
        message = _deploy_fails(tmp_path, ref, "denied: requested access to the resource is denied")
        assert [(r.method, r.authorization) for r in proxy.requests] == [("GET", "none")]
    expected = f"failed to pull {ref}: denied: requested access to the resource is denied (injected: injected 403)"
    assert _the_failed_pull(cp, message, expected).auth == "anonymous"


def test_gcp_registry_auth_is_not_implemented(cp: ModalStandIn, images) -> None:
    """`Image.from_gcp_artifact_registry` sends REGISTRY_AUTH_TYPE_GCP: the stand-in has no GCP auth, so
    the build fails saying so, even for an image anyone could pull."""
    sdk(modal.Secret.objects.create, "GCP_PULL", {"SERVICE_ACCOUNT_JSON": "{}"}, environment_name="dev")
    image = modal.Image.from_gcp_artifact_registry(
        images.a, secret=modal.Secret.from_name("GCP_PULL", environment_name="dev")
    )
    with pytest.raises(modal.exception.ImageBuildError) as info:
        sdk(image.build, _builder_app(), timeout=60)
    expected = f"failed to pull {images.a}: stand-in: GCP Artifact Registry registry authentication is not implemented"
    (pull,) = cp.state.pulls
    assert (pull.ok, pull.error, pull.secret_id) == (False, expected, cp.state.secret("dev", "GCP_PULL").secret_id)
    assert cp.state.images[pull.image_id].registry_auth_type == api_pb2.REGISTRY_AUTH_TYPE_GCP
    assert str(info.value).endswith(f"failed with the exception:\n{expected}")


# ------------------------------------------------------------------------------------------------
# Rule 3: secrets follow Modal's documented limits and the object-name rules


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "A.B", "", "KEY=", "CAFÉ"])
def test_secret_keys_must_be_environment_variable_names(cp: ModalStandIn, key: str) -> None:
    with pytest.raises(modal.exception.InvalidError, match="Invalid Secret key"):
        sdk(modal.Secret.objects.create, "svc", {"OK": "1", key: "v"}, environment_name="dev")
    assert cp.state.secret("dev", "svc") is None
    sdk(modal.Secret.objects.create, "svc", {"_OK_1": "v"}, environment_name="dev")
    secret = sdk(modal.Secret.from_name("svc", environment_name="dev").hydrate)
    with pytest.raises(modal.exception.InvalidError, match="Invalid Secret key"):
        sdk(secret.update, {"GOOD": "x", key: "v"})
    assert cp.state.secret_values("dev", "svc") == {"_OK_1": "v"}  # nothing of a refused update landed
    assert cp.state.calls_to("SecretUpdate")[-1].status == "INVALID_ARGUMENT"


def test_secret_key_and_value_sizes(cp: ModalStandIn) -> None:
    canary = "canary-" + uuid.uuid4().hex
    sdk(modal.Secret.objects.create, "big", {"K" * 16_384: "v" * 32_768, "EMPTY": ""}, environment_name="dev")
    assert cp.state.secret_values("dev", "big")["EMPTY"] == ""  # empty values are accepted (see servicer)
    with pytest.raises(modal.exception.InvalidError, match="16384"):
        sdk(modal.Secret.objects.create, "k2", {"K" * 16_385: "v"}, environment_name="dev")
    with pytest.raises(modal.exception.InvalidError, match="32768") as info:
        sdk(modal.Secret.objects.create, "v2", {"V": canary + "x" * 32_768}, environment_name="dev")
    assert canary not in str(info.value)  # a refused value is never echoed
    secret = sdk(modal.Secret.from_name("big", environment_name="dev").hydrate)
    with pytest.raises(modal.exception.InvalidError, match="32768"):
        sdk(secret.update, {"V": "x" * 32_769})
    assert cp.state.secret_names("dev") == ["big"]


@pytest.mark.parametrize("name", ["bad/name", "x" * 65, "ap-" + "A" * 22, "", "sp ace"])
def test_secret_names_follow_the_object_name_rules(cp: ModalStandIn, name: str) -> None:
    # The SDK refuses these before sending; the service refuses them too (over the wire here).
    with pytest.raises(modal.exception.InvalidError):
        sdk(modal.Secret.objects.create, name, {"A": "1"}, environment_name="dev")
    for kind in (
        api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
        api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
        api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS,
    ):
        req = api_pb2.SecretGetOrCreateRequest(
            deployment_name=name, environment_name="dev", object_creation_type=kind, env_dict={"A": "1"}
        )
        with pytest.raises(GRPCError) as info:
            raw(cp, "SecretGetOrCreate", req)
        assert info.value.status is Status.INVALID_ARGUMENT and "Invalid Secret name" in info.value.message
    assert cp.state.secret_names("dev") == []
    raw(  # 64 characters of the allowed set is fine
        cp,
        "SecretGetOrCreate",
        api_pb2.SecretGetOrCreateRequest(
            deployment_name="a.b_c-" + "d" * 58,
            environment_name="dev",
            object_creation_type=api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
        ),
    )


# ------------------------------------------------------------------------------------------------
# Rule 4: a secret lives in one environment; its id is all SecretUpdate/GetInfo/Delete carry


def test_secret_requests_by_id_carry_no_environment() -> None:
    # If a new SDK adds an environment to these, the stand-in must start checking it (see servicer).
    for message in (api_pb2.SecretUpdateRequest, api_pb2.SecretGetInfoRequest, api_pb2.SecretDeleteRequest):
        assert "environment_name" not in message.DESCRIPTOR.fields_by_name, message.DESCRIPTOR.name


def test_a_secret_id_reaches_only_its_own_live_record(cp: ModalStandIn) -> None:
    S = modal.Secret
    sdk(S.objects.create, "svc", {"A": "dev-1"}, environment_name="dev")
    sdk(S.objects.create, "svc", {"A": "main-1"}, environment_name="main")
    dev = sdk(S.from_name("svc", environment_name="dev").hydrate)
    sdk(dev.update, {"A": "dev-2"})
    assert cp.state.secret_values("dev", "svc") == {"A": "dev-2"}
    assert cp.state.secret_values("main", "svc") == {"A": "main-1"}

    # Deleted and re-created under the same name: the old id is dead everywhere.
    old_id = dev.object_id
    sdk(S.objects.delete, "svc", environment_name="dev")
    sdk(S.objects.create, "svc", {"A": "dev-3"}, environment_name="dev")
    for method, request in (
        ("SecretUpdate", api_pb2.SecretUpdateRequest(secret_id=old_id, updates=[{"key": "A", "value": "x"}])),
        ("SecretGetInfo", api_pb2.SecretGetInfoRequest(secret_id=old_id)),
        ("SecretDelete", api_pb2.SecretDeleteRequest(secret_id=old_id)),
        ("SecretUpdate", api_pb2.SecretUpdateRequest(secret_id="st-" + "z" * 22)),
    ):
        with pytest.raises(GRPCError) as info:
            raw(cp, method, request)
        assert info.value.status is Status.NOT_FOUND, method
    assert cp.state.secret_values("dev", "svc") == {"A": "dev-3"}
    assert cp.state.secret_values("main", "svc") == {"A": "main-1"}


def test_a_registry_secret_of_another_environment_is_used_by_its_id(cp: ModalStandIn, private: SimpleNamespace) -> None:
    """Assumption (servicer rule 4): the image definition carries only the registry secret's id and
    ImageGetOrCreate names no environment, so the builder reads that id's secret whatever its
    environment: a dev app's image pulls with main's secret, not with dev's secret of the same name."""
    assert "environment_name" not in api_pb2.ImageGetOrCreateRequest.DESCRIPTOR.fields_by_name
    sdk(
        modal.Secret.objects.create,
        "REGISTRY_AUTH",
        {**private.creds, "REGISTRY_PASSWORD": "no"},
        environment_name="dev",
    )
    sdk(modal.Secret.objects.create, "REGISTRY_AUTH", private.creds, environment_name="main")
    app = _builder_app("dev")
    image = modal.Image.from_registry(
        private.ref, secret=modal.Secret.from_name("REGISTRY_AUTH", environment_name="main")
    )
    sdk(image.build, app, timeout=60)
    main_secret = cp.state.secret("main", "REGISTRY_AUTH")
    (pull,) = cp.state.pulls
    assert (pull.ok, pull.auth, pull.manifest_digest) == (True, "basic", private.digest)
    assert (pull.secret_id, pull.username) == (main_secret.secret_id, private.creds["REGISTRY_USERNAME"])
    assert cp.state.apps[cp.state.images[pull.image_id].app_id].environment_name == "dev"
    spec = cp.image_spec(str(image.object_id))
    assert (spec.registry_secret_name, spec.registry_secret_environment) == ("REGISTRY_AUTH", "main")
    assert not cp.state.failed_calls()


# ------------------------------------------------------------------------------------------------
# Rule 5: Dicts (the deploy lock) are named per environment; a deleted Dict's id is dead


@pytest.mark.parametrize(
    "kind",
    [
        api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED,
        api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
        api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
    ],
)
def test_a_dict_name_must_not_be_empty(cp: ModalStandIn, kind: int) -> None:
    # The SDK refuses it before sending; the service refuses it too (over the wire here).
    with pytest.raises(modal.exception.InvalidError, match="Invalid Dict name: ''"):
        sdk(modal.Dict.from_name("", environment_name="dev", create_if_missing=True).hydrate)
    assert cp.state.calls_to("DictGetOrCreate") == []
    req = api_pb2.DictGetOrCreateRequest(deployment_name="", environment_name="dev", object_creation_type=kind)
    with pytest.raises(GRPCError) as info:
        raw(cp, "DictGetOrCreate", req)
    assert (info.value.status, info.value.message) == (Status.INVALID_ARGUMENT, "Dict name is empty")
    assert cp.state.dicts_by_id == {} and cp.state.dict_names("dev") == []
    # An ephemeral Dict has no name: that is not refused.
    ephemeral = api_pb2.DictGetOrCreateRequest(
        environment_name="dev", object_creation_type=api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL
    )
    assert raw(cp, "DictGetOrCreate", ephemeral).dict_id in cp.state.dicts_by_id


def test_a_deleted_dicts_id_is_refused(cp: ModalStandIn) -> None:
    d = sdk(modal.Dict.from_name("locks", environment_name="dev", create_if_missing=True).hydrate)
    sdk(d.put, "k", "v")
    old_id = d.object_id
    sdk(modal.Dict.objects.delete, "locks", environment_name="dev")
    gone = f"Dict '{old_id}' not found"
    # The old handle (what a lock holder keeps) reaches nothing.
    with pytest.raises(modal.exception.NotFoundError, match=f"^{gone}$"):
        sdk(d.get, "k")
    with pytest.raises(modal.exception.NotFoundError, match=f"^{gone}$"):
        sdk(d.put, "k", "v2", skip_if_exists=True)
    # Nor does any RPC that takes a dict_id (the stream included).
    key = b"k"
    for method, request in (
        ("DictGetById", api_pb2.DictGetByIdRequest(dict_id=old_id)),
        ("DictGet", api_pb2.DictGetRequest(dict_id=old_id, key=key)),
        ("DictUpdate", api_pb2.DictUpdateRequest(dict_id=old_id, updates=[api_pb2.DictEntry(key=key, value=b"v")])),
        ("DictPop", api_pb2.DictPopRequest(dict_id=old_id, key=key)),
        ("DictContains", api_pb2.DictContainsRequest(dict_id=old_id, key=key)),
        ("DictLen", api_pb2.DictLenRequest(dict_id=old_id)),
        ("DictClear", api_pb2.DictClearRequest(dict_id=old_id)),
        ("DictHeartbeat", api_pb2.DictHeartbeatRequest(dict_id=old_id)),
        ("DictDelete", api_pb2.DictDeleteRequest(dict_id=old_id)),
        ("DictContents", api_pb2.DictContentsRequest(dict_id=old_id, keys=True, values=True)),
    ):
        with pytest.raises(GRPCError) as info:
            raw(cp, method, request)
        assert (info.value.status, info.value.message) == (Status.NOT_FOUND, gone), method
    # Re-created under the same name: a new, empty Dict with a new id; the old id stays dead.
    again = sdk(modal.Dict.from_name("locks", environment_name="dev", create_if_missing=True).hydrate)
    assert again.object_id != old_id and sdk(again.get, "k") is None
    with pytest.raises(modal.exception.NotFoundError, match=f"^{gone}$"):
        sdk(d.get, "k")
    assert cp.state.dicts_by_id[old_id].deleted and cp.state.dict_names("dev") == ["locks"]


# ------------------------------------------------------------------------------------------------
# Rule 6: environments can be created and deleted (EnvironmentCreate / EnvironmentDelete)


def test_environments_are_created_and_deleted_with_their_objects(cp: ModalStandIn) -> None:
    E = modal.Environment.objects
    sdk(E.create, "qa")
    assert cp.state.environments == ["dev", "staging", "main", "qa"]
    assert [e.name for e in sdk(E.list)] == ["dev", "staging", "main", "qa"]
    for name in ("qa", "dev"):
        with pytest.raises(modal.exception.AlreadyExistsError, match=f"^Environment '{name}' already exists$"):
            sdk(E.create, name)
    # The new environment is usable like the others.
    sdk(modal.Secret.objects.create, "svc", {"A": "qa-1"}, environment_name="qa")
    secret = sdk(modal.Secret.from_name("svc", environment_name="qa").hydrate)
    lock = sdk(modal.Dict.from_name("locks", environment_name="qa", create_if_missing=True).hydrate)
    app = sdk(modal.App.lookup, "proc-demo", environment_name="qa", create_if_missing=True)

    sdk(E.delete, "qa")
    assert cp.state.environments == ["dev", "staging", "main"]
    assert [e.name for e in sdk(E.list)] == ["dev", "staging", "main"]
    for call in (
        lambda: modal.Secret.objects.list(environment_name="qa"),
        lambda: modal.Secret.from_name("svc", environment_name="qa").hydrate(),
        lambda: modal.App.lookup("proc-demo", environment_name="qa"),
        lambda: E.delete("qa"),
    ):
        with pytest.raises(modal.exception.NotFoundError, match=r"^Environment 'qa' not found$"):
            sdk(call)
    # The SDK documents the deletion as transitive ("will transitively delete all objects in the
    # Environment"): its objects are gone, and a new environment of the same name starts empty.
    assert cp.state.apps[app.app_id].state == "stopped"
    sdk(E.create, "qa")
    assert sdk(modal.Secret.objects.list, environment_name="qa") == []
    assert sdk(modal.Dict.objects.list, environment_name="qa") == []
    with pytest.raises(modal.exception.NotFoundError, match=r"^App 'proc-demo' not found"):
        sdk(modal.App.lookup, "proc-demo", environment_name="qa")
    with pytest.raises(modal.exception.NotFoundError, match=f"^Secret '{secret.object_id}' not found$"):
        sdk(secret.update, {"A": "qa-2"})
    with pytest.raises(modal.exception.NotFoundError, match=f"^Dict '{lock.object_id}' not found$"):
        sdk(lock.get, "k")
