"""The Modal control-plane stand-in, driven by the real `modal` SDK (pinned 1.6.4).

Every SDK call runs under a timeout: a client pointed at nothing hangs for about a minute.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import modal
import modal.exception
import pytest
from modal_standin import DEFAULT_ENVIRONMENTS, ModalStandIn
from modal_standin.sample_app import load_app

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
REF_A = "127.0.0.1:5000/theory/demo@" + DIGEST_A
REF_B = "127.0.0.1:5000/theory/demo@" + DIGEST_B
PULL = {"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": "pull-token"}

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="sdk")


def sdk(fn, *args, timeout: float = 30.0, **kwargs):
    """Run one blocking SDK call with a timeout."""
    return _pool.submit(fn, *args, **kwargs).result(timeout=timeout)


@pytest.fixture
def cp():
    with ModalStandIn() as standin, standin.activate():
        yield standin


def seed_secrets(env: str, app_secret: str = "proc-demo-env") -> None:
    sdk(modal.Secret.objects.create, "REGISTRY_AUTH", PULL, environment_name=env, allow_existing=True)
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


def test_deploy_records_app_image_function_and_environment(cp: ModalStandIn, tmp_path: Path) -> None:
    seed_secrets("staging")
    app = load_app(
        tmp_path,
        env="staging",
        image_ref=REF_A,
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
    assert spec.registry_ref == REF_A
    assert (spec.registry_secret_name, spec.registry_secret_environment) == ("REGISTRY_AUTH", "staging")
    assert spec.env == {"THEORY_REF": "demo@3", "X": "a b"}
    assert spec.image_id == fn.image_id and cp.image_spec(fn.image_id) == spec

    # Every call that named an environment named "staging" (or took it from its app).
    seen = [c for c in cp.state.calls if c.environment_name is not None]
    assert seen and {c.environment_name for c in seen} == {"staging"}
    assert not cp.state.failed_calls()


def test_redeploy_versions_noop_and_metadata(cp: ModalStandIn, tmp_path: Path) -> None:
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev", image_ref=REF_A), "dev", tag="t1")
    first = cp.state.deployed_app("dev", "proc-demo")
    assert first.version == 1
    deployed_at_1 = first.deployed_at

    # Same module, same tag: nothing changed, the version stays (the SDK prints "no changes").
    deploy(load_app(tmp_path, env="dev", image_ref=REF_A), "dev", tag="t1")
    rec = cp.state.deployed_app("dev", "proc-demo")
    assert rec.app_id == first.app_id and rec.version == 1 and rec.deployed_at == deployed_at_1
    assert [(d.version, d.noop) for d in rec.deploys] == [(1, False), (1, True)]

    # A new digest: a new version, same app id.
    deploy(load_app(tmp_path, env="dev", image_ref=REF_B, tags={"digest": "b" * 56}), "dev", tag="t2")
    rec = cp.state.deployed_app("dev", "proc-demo")
    assert rec.app_id == first.app_id and rec.version == 2 and rec.deployment_tag == "t2"
    assert rec.deploys[-1].images["web"].registry_ref == REF_B
    assert rec.tags == {"digest": "b" * 56}

    # Only the deploy tag changes: counted as a change here (the real rule is not documented).
    deploy(
        load_app(tmp_path, env="dev", image_ref=REF_B, tags={"digest": "b" * 56}),
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


def test_function_lookup_web_url_hook_and_info(cp: ModalStandIn, tmp_path: Path) -> None:
    seed_secrets("main")
    deploy(load_app(tmp_path, env="main", image_ref=REF_A, gpu="A100", cpu=4.0, memory=2048), "main")
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


def test_stop_then_redeploy_gets_a_new_app(cp: ModalStandIn, tmp_path: Path) -> None:
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev"), "dev")
    first = cp.state.deployed_app("dev", "proc-demo")
    app = sdk(modal.App.lookup, "proc-demo", environment_name="dev")
    sdk(app.stop)
    assert first.state == "stopped" and first.stopped_by == "standin-user"
    assert cp.state.deployed_app("dev", "proc-demo") is None
    with pytest.raises(modal.exception.NotFoundError):
        sdk(modal.App.lookup, "proc-demo", environment_name="dev")
    with pytest.raises(modal.exception.NotFoundError):
        sdk(lambda: modal.Function.from_name("proc-demo", "web", environment_name="dev").hydrate())

    deploy(load_app(tmp_path, env="dev"), "dev")
    again = cp.state.deployed_app("dev", "proc-demo")
    assert again.app_id != first.app_id and again.version == 1
    assert [d.app_id for d in cp.state.deploys("dev", "proc-demo")] == [first.app_id, again.app_id]


def test_app_list_per_environment(cp: ModalStandIn, tmp_path: Path) -> None:
    seed_secrets("dev")
    seed_secrets("staging")
    deploy(load_app(tmp_path, env="dev"), "dev")
    deploy(load_app(tmp_path, env="staging"), "staging", name="other-app")
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
        deploy(load_app(tmp_path, env="dev"), "dev")
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
    app = load_app(tmp_path, env="dev")
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


def test_logs_tail_fetch_stream(cp: ModalStandIn, tmp_path: Path) -> None:
    seed_secrets("dev")
    deploy(load_app(tmp_path, env="dev"), "dev")
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


def test_image_build_hook_can_fail_a_deploy(tmp_path: Path) -> None:
    built = []

    def hook(spec):
        built.append(spec)
        if spec.env.get("FAIL") == "1":
            raise RuntimeError("pull failed: manifest unknown")

    with ModalStandIn(image_build_hook=hook) as standin, standin.activate():
        seed_secrets("dev")
        deploy(load_app(tmp_path, env="dev", image_env={"OK": "1"}), "dev")
        assert built and built[-1].env == {"OK": "1"} and built[-1].registry_ref is not None
        with pytest.raises(modal.exception.RemoteError, match="manifest unknown"):
            deploy(load_app(tmp_path, env="dev", image_env={"FAIL": "1"}), "dev")
        assert standin.state.deployed_app("dev", "proc-demo").version == 1


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


def test_web_url_hook_sees_the_function_record(tmp_path: Path) -> None:
    calls = []

    def url_for(app_name, env, *, function_name, function):
        calls.append((app_name, env, function_name, function))
        image = standin.image_spec(function.image_id).registry_ref if function else None
        return f"http://127.0.0.1:9/{env}/{app_name}/{function_name}?image={image}"

    with ModalStandIn(web_url_for=url_for) as standin, standin.activate():
        seed_secrets("dev")
        deploy(load_app(tmp_path, env="dev", image_ref=REF_B), "dev")
        fn = sdk(modal.Function.from_name, "proc-demo", "web", environment_name="dev")
        assert sdk(fn.get_web_url) == f"http://127.0.0.1:9/dev/proc-demo/web?image={REF_B}"
        assert calls[0][3] is None  # FunctionPrecreate: no definition yet
        assert calls[-1][3].function_id == fn.object_id
