"""The local target: one container per app on the local Docker engine, pulled by digest from the registry.

`localctl` takes exactly `modalctl`'s verbs; this module is what they do here.

Why one file of this size: it is one implementation of `base.Target`, verb by verb, the local
counterpart of targets/modal.py; reading it top to bottom tells what each verb does on this engine.

**The engine.** Driven through the `docker` CLI (`docker.Docker`: a timeout on every call), not the
Engine API: the CLI already honours everything a user may have configured (DOCKER_HOST, TLS,
ssh://), it passes registry credentials to the daemon for us, and `docker run -e NAME` copies a
value from *its own* environment, so no secret value is ever on a command line (where `ps` would
show it). The client is the one build and push use (`docker.docker_client`: `$THEORY_DOCKER` or
`$DOCKER`, else the first installed client that can build with BuildKit). A client that cannot
reach a daemon is `ERR_DOCKER`.

**What runs.** `start` verifies the pin (or `--oci`) in the registry as this host's platform
manifest, `docker pull`s exactly `repo@sha256:...` (with REGISTRY_USERNAME/REGISTRY_PASSWORD, when
set, in a throw-away 0600 DOCKER_CONFIG), and runs it as a container named `<app>.<env>` (see
`container_name`), labelled
`theory.managed=true`, `theory.ref`, `theory.env`, `theory.branch`/`theory.user` (dev),
`theory.digest`, `theory.image`, `theory.secrets` (a keyed fingerprint of the injected values) and
`theory.config` (a hash of the run arguments). It publishes `build.port` on 127.0.0.1 at an
ephemeral port, sets IMAGE_DIGEST and PORT, and waits for /healthz.

Re-running `start`: same digest, same secrets, same arguments, still running → `unchanged`
(nothing restarts); another digest → `replaced`; same digest with changed secrets or arguments (or
an exited container) → `restarted`. A container with that name that theory-deploy did not create
is never touched.

**Secrets, and the order start → sync-secrets** (the documented order; the reverse works too).
Containers get values only from the local secret store (`secret_store.py`), never straight from
the shell, exactly as a Modal function only sees Modal secrets. So, mirroring Modal, where deploying
binds secrets by name and `sync-secrets` sets their values:
  * `start` declares each required secret that has no value yet (an empty placeholder entry), starts
    the container without it, and says which names are pending. Mock mode needs no secrets, so the
    app is usable at once; real mode answers ERR_MISSING_SECRET until the values arrive.
  * `sync-secrets` writes the values from this process's environment into the store and, when the
    values a running container was given differ from the store's, recreates that container at the
    *same digest* with the new values. An unchanged sync restarts nothing.
Either order therefore ends in the same state: sync first, and `start` injects the values at once.

**The deploy lock** (`deploy_lock.py`, taken by `--lock` and by the pipeline) is a file per app
under $THEORY_STATE_DIR/deploy-locks/; it keeps two runs from interleaving between start and verify.

**Verifying.** `read_running_digests` gives two independent readings: `engine`, the registry
digest the Docker engine recorded for the container's image (its RepoDigests, written by the pull
that verified the manifest's hash), and `healthz`, what the processor reports. Labels are never a
reading: a container can carry any label.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import platform as _platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx

from .. import output, secret_values
from ..deploy_lock import DeployLock, LocalLockStore
from ..docker import DOCKER_TIMEOUT_S, Docker, tail_text
from ..errors import (
    AuthRequiredError,
    DeployError,
    DockerUnavailableError,
    FunctionNotFoundError,
    ImagePullError,
    ImageUnavailableError,
    MissingSecretError,
    NotRunningError,
    PlatformMismatchError,
    RegistryAuthError,
    TheoryDeployError,
)
from ..files import exclusive_lock
from ..refs import DIGEST_RE, Environment, ImageRef, Platform
from ..secret_store import SecretStore, state_dir
from .base import AppContext, DigestReadings, Endpoint, ListedApp, Target, changed_since_listing, digest_of

MANAGED_LABEL = "theory.managed"
START_TIMEOUT_ENV = "THEORY_LOCAL_START_TIMEOUT"
DEFAULT_START_TIMEOUT_S = 120.0
PULL_TIMEOUT_S = 900.0
HEALTH_REQUEST_TIMEOUT_S = 5.0
LOG_LINES_ON_FAILURE = 25


def host_platform() -> Platform:
    machine = _platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "amd64"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    raise DeployError(
        f"this host is {machine!r}; the local target runs linux/amd64 or linux/arm64 images only.",
        remedy="Run on an amd64 or arm64 host, or deploy to Modal (`modalctl`).",
    )


# ---------------------------------------------------------------------------------------------------
# Registry credentials for docker pull
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def registry_auth_env(registry: str, base_env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The environment for a docker call that must authenticate to `registry`.

    With REGISTRY_USERNAME/REGISTRY_PASSWORD set: a fresh 0700 DOCKER_CONFIG holding one 0600
    config.json with an `auths` entry for that registry, removed afterwards. The password is never an
    argument (nothing like `docker login -p`). Without them: the caller's own docker config.
    """
    env = dict(os.environ if base_env is None else base_env)
    credentials = secret_values.registry_credentials()
    bound = secret_values.registry_credentials_host()
    if bound is not None and bound != registry.lower():
        credentials = None  # they belong to another registry host (THEORY_REGISTRY_HOST)
    if credentials is None:
        yield env
        return
    user, password = credentials
    folder = tempfile.mkdtemp(prefix="theory-docker-config-")  # 0700
    try:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        secret_values.register_secret_value(token)
        path = os.path.join(folder, "config.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"auths": {registry: {"auth": token}}}, handle)
        env["DOCKER_CONFIG"] = folder
        yield env
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------------


@dataclass
class SecretPlan:
    """Which of the app's secrets a container gets. `values` maps name → {key: value}; never printed."""

    names: list[str]  # every name the processor declares (required, optional, api.auth_secret)
    required: list[str]
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # required, no value in the store yet
    unset_optional: list[str] = field(default_factory=list)
    fingerprint: str | None = None

    @property
    def injected(self) -> list[str]:
        return [n for n in self.names if n in self.values]

    def env_keys(self) -> list[str]:
        return [key for name in self.injected for key in self.values[name]]

    def env_values(self) -> dict[str, str]:
        return {key: value for name in self.injected for key, value in self.values[name].items()}


def container_name(app: AppContext) -> str:
    """`<app>.<env>`: the name of the app's container on this engine.

    On Modal an app name is unique only within its environment, and staging and main both use the
    bare slug. One engine is one namespace, so the environment is part of the container's name:
    without it, starting main replaced the staging container. App names never contain a '.', so no
    app of one environment can take another's name."""
    return f"{app.name}.{app.env}"


def _name_of(container: dict[str, Any]) -> str:
    """The name `docker container inspect` reports ("/name"), else its id: either one addresses it."""
    return str(container.get("Name") or "").lstrip("/") or str(container.get("Id"))


def _short(container_id: str | None) -> str | None:
    return container_id[:12] if container_id else None


def _labels(container: dict[str, Any]) -> dict[str, str]:
    return dict((container.get("Config") or {}).get("Labels") or {})


def _state(container: dict[str, Any] | None) -> str:
    if container is None:
        return "missing"
    return str((container.get("State") or {}).get("Status") or "unknown")


def _host_port(container: dict[str, Any], port: int) -> int | None:
    bindings = ((container.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        host_port = binding.get("HostPort")
        if host_port and str(host_port).isdigit():
            return int(host_port)
    return None


class LocalTarget(Target):
    kind: ClassVar[str] = "local"

    def __init__(self, docker: Docker | None = None, *, store_root: Path | None = None) -> None:
        self.docker = docker or Docker()
        self._store_root = store_root

    # --- identity --------------------------------------------------------------------------------------
    @property
    def platform(self) -> Platform:
        return host_platform()

    def _store(self, app: AppContext) -> SecretStore:
        return SecretStore(app.env, root=self._store_root, repo_root=app.processor.repo_root)

    def _ctl(self, app: AppContext) -> str:
        return f"--ref {app.processor.ref} --env {app.env}"

    @contextlib.contextmanager
    def _locked(self, app: AppContext, timeout_s: float = 600.0) -> Iterator[None]:
        """One start/sync at a time per app on this machine (two would race for the container name)."""
        folder = state_dir() / "locks"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(
            folder / f"local-{container_name(app)}.lock",
            timeout_s=timeout_s,
            busy=DeployError,
            what=f"{app.name} (another start or sync-secrets is running)",
        ):
            yield

    def deploy_lock(self, app: AppContext) -> DeployLock:
        """A JSON file per app and environment under $THEORY_STATE_DIR/deploy-locks/ (not `locks/`,
        where `_locked` keeps its flock files), keyed by the container name: staging and main share
        the app name (the slug) but not the container, so a main deploy never waits on staging's."""
        return DeployLock(
            LocalLockStore(state_dir() / "deploy-locks"),
            container_name(app),
            target=self.kind,
            env=app.env,
            app=app.name,
            ref=str(app.processor.ref),
        )

    # --- images ----------------------------------------------------------------------------------------
    def _pull(self, image: ImageRef) -> None:
        output.progress(f"pulling {image}")
        with registry_auth_env(image.registry) as env:
            proc = self.docker.run(
                ["pull", str(image)],
                timeout=PULL_TIMEOUT_S,
                env=env,
                check=False,
                what=f"docker pull {image}",
            )
        if proc.returncode == 0:
            return
        message = tail_text(proc.stderr or proc.stdout)
        lowered = message.lower()
        if "unauthorized" in lowered or "denied" in lowered or "authentication required" in lowered:
            raise RegistryAuthError(f"docker pull {image}: {message}")
        if "manifest unknown" in lowered or "not found" in lowered:
            raise ImageUnavailableError(f"docker pull {image}: {message}")
        raise ImagePullError(f"docker pull {image} failed: {message}")

    def _ensure_local(self, image: ImageRef) -> None:
        if self.docker.inspect_image(str(image)) is None:
            self._pull(image)

    # --- secrets ---------------------------------------------------------------------------------------
    def _secret_plan(
        self,
        app: AppContext,
        store: SecretStore,
        *,
        overlay: dict[str, dict[str, str]] | None = None,
        create_key: bool = True,
    ) -> SecretPlan:
        names, required = app.processor.spec.secret_names()
        plan = SecretPlan(names=names, required=required)
        for name in names:
            value = (overlay or {}).get(name) or store.value(name)
            if value is not None:
                plan.values[name] = value
            elif name in required:
                plan.pending.append(name)
            else:
                plan.unset_optional.append(name)
        if create_key or (store.dir / ".fingerprint-key").exists():
            plan.fingerprint = store.fingerprint(plan.values, names)
        return plan

    # --- docker run ------------------------------------------------------------------------------------
    def _run_args(self, app: AppContext, image: ImageRef, plan: SecretPlan) -> tuple[list[str], str]:
        """`docker run` arguments (no secret values: `-e NAME` takes the value from docker's own env)
        and the config hash that says whether two starts would run the same thing."""
        spec = app.processor.spec
        port = spec.build.port
        cpus = min(float(spec.runtime.cpu), float(os.cpu_count() or 1))
        memory_mb = int(spec.runtime.memory_gb * 1024)
        labels = {
            MANAGED_LABEL: "true",
            **app.labels(),
            "theory.target": "local",
            "theory.image": str(image),
            "theory.digest": str(image.digest),
            "theory.port": str(port),
        }
        body = [
            "--detach",
            "--name",
            container_name(app),
            "--env",
            f"IMAGE_DIGEST={image.digest}",
            "--env",
            f"PORT={port}",
            "--env",
            f"THEORY_REF={app.processor.ref}",
            "--env",
            f"THEORY_ENV={app.env}",
        ]
        for key in plan.env_keys():
            body += ["--env", key]  # value from the docker client's environment, never argv
        body += [
            "--publish",
            f"127.0.0.1::{port}",
            "--add-host",
            "host.docker.internal:host-gateway",
            "--cpus",
            f"{cpus:g}",
            "--memory",
            f"{memory_mb}m",
        ]
        for key, value in sorted(labels.items()):
            body += ["--label", f"{key}={value}"]
        config = hashlib.sha256(json.dumps([body, str(image)]).encode()).hexdigest()[:16]
        args = ["run", *body, "--label", f"theory.config={config}"]
        if plan.fingerprint:
            args += ["--label", f"theory.secrets={plan.fingerprint}"]
        return [*args, str(image)], config

    def _decide(
        self, app: AppContext, image: ImageRef, existing: dict[str, Any] | None, config: str, plan: SecretPlan
    ) -> tuple[str, str]:
        if existing is None:
            return "started", "no container was running"
        labels = _labels(existing)
        if labels.get(MANAGED_LABEL) != "true":
            name = _name_of(existing)
            raise DeployError(
                f"a container named {name} exists that theory-deploy did not start "
                f"(no {MANAGED_LABEL}=true label); "
                "refusing to touch it.",
                remedy=f"Remove it yourself (`docker rm -f {name}`) if it is not needed, then re-run start.",
            )
        engine, _note = self._engine_digest(app, existing)
        state = _state(existing)
        previous = labels.get("theory.digest")
        if engine != image.digest or previous != image.digest:
            return "replaced", f"it ran {engine or previous or 'an unknown digest'}"
        if state != "running":
            return "restarted", f"the container was {state}"
        if labels.get("theory.config") != config:
            return "restarted", "its run settings changed"
        if plan.fingerprint is None or labels.get("theory.secrets") != plan.fingerprint:
            return "restarted", "its secret values changed"
        return "unchanged", "already running that digest with the same secrets"

    def _launch(
        self,
        app: AppContext,
        image: ImageRef,
        plan: SecretPlan,
        args: list[str],
        existing: dict[str, Any] | None,
    ) -> dict[str, Any]:
        port = app.processor.spec.build.port
        previous_port = None
        if existing is not None:
            previous_port = _host_port(existing, port)
            output.progress(f"removing the old container {_name_of(existing)} ({_short(existing.get('Id'))})")
            self._remove(_name_of(existing))
        env = dict(os.environ)
        for key in [k for name in plan.names for k in secret_values.keys_for(name)]:
            env.pop(key, None)  # only the store's values reach the container
        env.update(plan.env_values())
        attempts = [args]
        if previous_port:
            # Keep the app's URL across restarts when that port is still free; else a new ephemeral one.
            publish = f"127.0.0.1::{port}"
            attempts.insert(0, [f"127.0.0.1:{previous_port}:{port}" if a == publish else a for a in args])
        name = container_name(app)
        for attempt in attempts:
            proc = self.docker.run(attempt, env=env, check=False, what=f"docker run {name}")
            if proc.returncode == 0:
                break
            if attempt is not args:
                self.docker.run(["rm", "--force", name], check=False, what=f"docker rm {name}")
                continue
            raise DeployError(f"docker run {name} failed: {tail_text(proc.stderr)}")
        container = self.docker.inspect_container(name)
        if container is None:
            raise DeployError(f"{name}: the container vanished right after docker run.")
        return self._wait_healthy(app, container)

    def _find(self, app: AppContext) -> dict[str, Any] | None:
        """The app's container (`docker container inspect`), or None.

        Before containers were named `<app>.<env>` they were named after the app alone. A container
        of that older name still counts as this app's when theory-deploy started it for this very
        environment (its labels say so), so that after an upgrade `stop`, `status` and `verify`
        still find it and `start` replaces it instead of leaving it running beside the new one."""
        found = self.docker.inspect_container(container_name(app))
        if found is not None:
            return found
        legacy = self.docker.inspect_container(app.name)
        if legacy is not None:
            labels = _labels(legacy)
            if labels.get(MANAGED_LABEL) == "true" and labels.get("theory.env") == app.env:
                return legacy
        return None

    def _remove(self, name: str) -> None:
        self.docker.run(
            ["stop", "--time", "10", name], check=False, timeout=DOCKER_TIMEOUT_S, what=f"docker stop {name}"
        )
        proc = self.docker.run(["rm", "--force", name], check=False, what=f"docker rm {name}")
        if proc.returncode != 0 and "no such" not in proc.stderr.lower():
            raise DeployError(f"docker rm {name} failed: {tail_text(proc.stderr)}")

    def _wait_healthy(self, app: AppContext, container: dict[str, Any]) -> dict[str, Any]:
        spec = app.processor.spec
        port = _host_port(container, spec.build.port)
        timeout = float(os.environ.get(START_TIMEOUT_ENV) or DEFAULT_START_TIMEOUT_S)
        deadline = time.monotonic() + timeout
        output.progress(f"waiting up to {timeout:.0f}s for {spec.api.healthz} of {app.name}")
        last = "no answer yet"
        while True:
            if port is not None:
                health = self._healthz(f"http://127.0.0.1:{port}", spec.api.healthz)
                if health.get("ok") is True:
                    return container
                last = str(health.get("error") or health)
            current = self.docker.inspect_container(container_name(app))
            if current is None or _state(current) != "running":
                code = ((current or {}).get("State") or {}).get("ExitCode")
                raise DeployError(
                    f"{app.name} stopped before it became healthy "
                    f"(state {_state(current)}, exit code {code}). "
                    f"Last log lines:\n{self._last_logs(app)}",
                    remedy=f"Fix the processor (see the lines above or `localctl logs {self._ctl(app)}`), "
                    "then re-run start.",
                )
            container = current
            port = port or _host_port(current, spec.build.port)
            if time.monotonic() > deadline:
                raise DeployError(
                    f"{app.name} did not answer {spec.api.healthz} within {timeout:.0f}s ({last}). "
                    f"Last log lines:\n{self._last_logs(app)}",
                    remedy=f"Read `localctl logs {self._ctl(app)}`; "
                    f"if it is only slow to boot, raise {START_TIMEOUT_ENV}.",
                )
            time.sleep(0.5)

    def _last_logs(self, app: AppContext) -> str:
        with contextlib.suppress(TheoryDeployError):
            self._store(app).register_all()
        proc = self.docker.run(
            ["logs", "--tail", str(LOG_LINES_ON_FAILURE), container_name(app)], check=False, what="docker logs"
        )
        text = (proc.stdout or "") + (proc.stderr or "")
        lines = [secret_values.scrub(line) for line in text.splitlines()[-LOG_LINES_ON_FAILURE:]]
        return "\n".join(f"  | {line}" for line in lines) or "  | (no output)"

    def _healthz(self, base_url: str, path: str) -> dict[str, Any]:
        try:
            with httpx.Client(timeout=HEALTH_REQUEST_TIMEOUT_S, trust_env=False) as client:
                response = client.get(base_url + path)
        except httpx.HTTPError as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if response.status_code != 200:
            return {"ok": False, "error": f"HTTP {response.status_code}"}
        try:
            body = response.json()
        except ValueError:
            return {"ok": False, "error": "not JSON"}
        if not isinstance(body, dict):
            return {"ok": False, "error": "not a JSON object"}
        return body

    def _result(
        self,
        app: AppContext,
        image: ImageRef,
        container: dict[str, Any],
        action: str,
        reason: str,
        plan: SecretPlan,
    ) -> dict[str, Any]:
        spec = app.processor.spec
        port = _host_port(container, spec.build.port)
        url = f"http://127.0.0.1:{port}" if port else None
        result: dict[str, Any] = {
            "app": app.name,
            "env": app.env,
            "image": str(image),
            "digest": image.digest,
            "url": url,
            "ws_url": f"ws://127.0.0.1:{port}{spec.api.path}" if port else None,
            "action": action,
            "reason": reason,
            "container": _name_of(container),
            "container_id": _short(container.get("Id")),
            "secrets": {
                "injected": plan.injected,
                "pending": plan.pending,
                "unset_optional": plan.unset_optional,
            },
        }
        lines = [f"{action}: {app.name} ({app.env}) runs {image} at {url} ({reason})."]
        if plan.pending:
            lines.append(
                f"secret(s) {', '.join(plan.pending)} have no value yet: export them and run "
                f"`localctl sync-secrets {self._ctl(app)}` "
                "(the container is then recreated with them; mock mode works meanwhile)."
            )
        result["summary"] = "\n".join(lines)
        return result

    # --- verbs -----------------------------------------------------------------------------------------
    def start(self, app: AppContext, image: ImageRef, *, dry_run: bool = False) -> dict[str, Any]:
        if image.digest is None:
            raise ImagePullError(f"{image}: start deploys digests only.")
        store = self._store(app)
        if dry_run:
            return self._plan(app, image, store)
        with self._locked(app):
            _names, required = app.processor.spec.secret_names()
            for name in required:
                if store.value(name) is None:
                    store.ensure_placeholder(name)
            plan = self._secret_plan(app, store)
            args, config = self._run_args(app, image, plan)
            existing = self._find(app)
            action, reason = self._decide(app, image, existing, config, plan)
            if action == "unchanged":
                assert existing is not None
                return self._result(app, image, existing, action, reason, plan)
            if action == "restarted":
                # The engine already holds this digest, recorded by the pull that verified it.
                self._ensure_local(image)
            else:
                self._verify_platform_manifest(image)
                self._pull(image)
            container = self._launch(app, image, plan, args, existing)
            return self._result(app, image, container, action, reason, plan)

    def _verify_platform_manifest(self, image: ImageRef) -> None:
        verified = self.verify_image(image)
        if verified.digest != image.digest:
            raise PlatformMismatchError(
                f"{image} is an index, not the linux/{self.platform} manifest ({verified.digest}); "
                "a pin must name the platform manifest.",
                remedy=f"Pin {verified} instead (`processorctl pin ... --oci {verified}`).",
            )

    def _plan(self, app: AppContext, image: ImageRef, store: SecretStore) -> dict[str, Any]:
        plan = self._secret_plan(app, store, create_key=False)
        args, config = self._run_args(app, image, plan)
        note = None
        try:
            existing = self._find(app)
            action, reason = self._decide(app, image, existing, config, plan)
        except DockerUnavailableError as err:
            action, reason, note = "start", "the engine could not be asked what runs", err.message
        plan_result: dict[str, Any] = {
            "app": app.name,
            "env": app.env,
            "image": str(image),
            "digest": image.digest,
            "url": None,
            "action": action,
            "reason": reason,
            "dry_run": True,
            "secrets": {
                "injected": plan.injected,
                "pending": plan.pending,
                "unset_optional": plan.unset_optional,
            },
            "docker": [self.docker.binary, *args],
        }
        if note:
            plan_result["note"] = note
        steps = [f"dry run: {app.name} ({app.env}) would be {action} ({reason}); nothing was changed."]
        steps.append(f"image: {image}")
        if plan.injected:
            steps.append(f"secrets injected by name (values from the store): {', '.join(plan.injected)}")
        if plan.pending:
            steps.append(f"secrets declared without a value (run sync-secrets after start): {', '.join(plan.pending)}")
        steps.append("docker " + " ".join(args))
        plan_result["summary"] = "\n".join(steps)
        return plan_result

    def stop(self, app: AppContext) -> dict[str, Any]:
        existing = self._find(app)
        if existing is None:
            raise FunctionNotFoundError(
                f"no app {app.name} in {app.env} on the local engine (no container {container_name(app)})."
            )
        name = _name_of(existing)
        if _labels(existing).get(MANAGED_LABEL) != "true":
            raise DeployError(
                f"the container {name} was not started by theory-deploy; refusing to stop it.",
                remedy=f"Remove it yourself with `docker rm -f {name}` if it is yours.",
            )
        self._remove(name)
        return {
            "app": app.name,
            "env": app.env,
            "action": "stopped",
            "container_id": _short(existing.get("Id")),
            "digest": _labels(existing).get("theory.digest"),
            "summary": f"stopped {app.name} ({app.env}) and removed its container.",
        }

    def status(self, app: AppContext) -> dict[str, Any]:
        spec = app.processor.spec
        existing = self._find(app)
        pinned = spec.pins().get(self.platform)
        result: dict[str, Any] = {
            "app": app.name,
            "env": app.env,
            "ref": str(app.processor.ref),
            "pinned": pinned,
        }
        if existing is None:
            result.update(state="missing", digest=None, url=None, health=None, labels={})
            result["summary"] = f"{app.name} ({app.env}): missing (not started on the local engine)."
            return result
        state = _state(existing)
        labels = _labels(existing)
        engine, note = self._engine_digest(app, existing)
        port = _host_port(existing, spec.build.port)
        url = f"http://127.0.0.1:{port}" if port and state == "running" else None
        health: dict[str, Any] | None = self._healthz(url, spec.api.healthz) if url else None
        result.update(
            state=state,
            digest=engine,
            digest_note=note,
            deployed_digest=labels.get("theory.digest"),
            matches_pin=(digest_of(pinned) == engine) if pinned and engine else False,
            url=url,
            ws_url=f"ws://127.0.0.1:{port}{spec.api.path}" if url else None,
            health=health,
            container=_name_of(existing),
            container_id=_short(existing.get("Id")),
            managed=labels.get(MANAGED_LABEL) == "true",
            started_at=(existing.get("State") or {}).get("StartedAt"),
            labels={k: v for k, v in labels.items() if k.startswith("theory.")},
        )
        healthy = "healthy" if health and health.get("ok") is True else ("unhealthy" if health else "-")
        result["summary"] = "\n".join(
            [
                f"{app.name} ({app.env}): {state}, {healthy}",
                f"  digest:  {engine or '(unreadable: ' + str(note) + ')'}",
                f"  pinned:  {pinned or '(none for ' + self.platform + ')'}",
                f"  url:     {url or '-'}",
                f"  started: {result['started_at']}",
            ]
        )
        return result

    def logs(self, app: AppContext, *, follow: bool, tail: int) -> dict[str, Any]:
        existing = self._find(app)
        if existing is None:
            raise FunctionNotFoundError(f"no app {app.name} in {app.env} on the local engine.")
        # Every value the container could know is registered before a single line is printed.
        self._store(app).register_all()
        names, _required = app.processor.spec.secret_names()
        secret_values.read_from_environment(names)
        args = ["logs", "--tail", str(max(tail, 0)), *(["--follow"] if follow else []), _name_of(existing)]
        proc = self.docker.popen(args)
        lines: list[str] = []
        count = 0
        try:
            assert proc.stdout is not None
            if follow:
                for raw in proc.stdout:
                    sys.stdout.write(secret_values.scrub(raw.rstrip("\n")) + "\n")
                    sys.stdout.flush()
                    count += 1
            else:
                try:
                    text, _ = proc.communicate(timeout=DOCKER_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    raise DockerUnavailableError(
                        f"docker logs {app.name}: no answer within {DOCKER_TIMEOUT_S:.0f}s."
                    ) from None
                lines = [secret_values.scrub(line) for line in (text or "").splitlines()]
                count = len(lines)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        if proc.returncode not in (0, None, -9) and not follow:
            Docker.raise_if_daemon_down("\n".join(lines))
        result: dict[str, Any] = {"app": app.name, "env": app.env, "follow": follow, "line_count": count}
        if follow:
            result["summary"] = f"(end of logs of {app.name})"
        else:
            result["lines"] = lines
            result["summary"] = "\n".join(lines) if lines else f"(no log lines from {app.name})"
        return result

    def sync_secrets(
        self, app: AppContext, *, check: bool, fail_on_missing: bool, dry_run: bool = False
    ) -> dict[str, Any]:
        check = check or dry_run
        names, required = app.processor.spec.secret_names()
        found = secret_values.read_from_environment(names)
        missing_required = [n for n in required if n in found.missing]
        if fail_on_missing and missing_required:
            raise MissingSecretError(
                f"{app.name} ({app.env}): required secret(s) {', '.join(missing_required)} "
                "have no value in this "
                "process's environment; nothing was written.",
                remedy=f"Export {', '.join(missing_required)} and run `localctl sync-secrets {self._ctl(app)}`.",
                details={"missing": missing_required},
            )
        store = self._store(app)
        changes = {name: store.compare(name, pairs) for name, pairs in found.values.items()}
        if not check:
            for name, pairs in found.values.items():
                if changes[name] != "unchanged":
                    store.write(name, pairs)
        by = {kind: [n for n in names if changes.get(n) == kind] for kind in ("created", "updated", "unchanged")}
        kept = [n for n in found.missing if store.value(n) is not None]
        result: dict[str, Any] = {
            "app": app.name,
            "env": app.env,
            "store": str(store.dir),
            **by,
            "missing": found.missing,
            "missing_required": missing_required,
            "present": [n for n in names if n in found.values],
            "kept": kept,
            "check": check,
            "restarted": False,
        }
        container_note = self._apply_to_container(app, store, found.values if check else None, check, result)
        lines = [
            f"sync-secrets {app.name} ({app.env}){' (check: nothing written)' if check else ''}:",
            *(f"  {kind}: {', '.join(by[kind]) or '-'}" for kind in ("created", "updated", "unchanged")),
            f"  missing: {', '.join(found.missing) or '-'}",
        ]
        if kept:
            lines.append(f"  kept (not in this environment, stored value left as is): {', '.join(kept)}")
        if missing_required:
            lines.append(
                f"  required without a value: {', '.join(missing_required)}: export them and re-run sync-secrets."
            )
        lines.append(f"  container: {container_note}")
        result["summary"] = "\n".join(lines)
        return result

    def _apply_to_container(
        self,
        app: AppContext,
        store: SecretStore,
        overlay: dict[str, dict[str, str]] | None,
        check: bool,
        result: dict[str, Any],
    ) -> str:
        """Recreate the app's container (same digest) when its secret values differ from the store's."""
        try:
            existing = self._find(app)
        except DockerUnavailableError as err:
            result["container"] = None
            return f"not checked ({err.message}); values apply at the next start."
        if existing is None:
            result["container"] = None
            return "none running; values apply at the next start."
        labels = _labels(existing)
        if labels.get(MANAGED_LABEL) != "true":
            result["container"] = None
            return f"a container named {_name_of(existing)} exists that theory-deploy did not start; left alone."
        plan = self._secret_plan(app, store, overlay=overlay, create_key=not check)
        stale = plan.fingerprint is None or labels.get("theory.secrets") != plan.fingerprint
        result["container"] = {"id": _short(existing.get("Id")), "state": _state(existing), "stale": stale}
        if not stale:
            return f"{app.name} already runs with these values; not restarted."
        if check:
            result["would_restart"] = True
            return f"{app.name} would be recreated (same digest) to pick up the new values."
        image_text = labels.get("theory.image", "")
        try:
            image = ImageRef.parse_digest_ref(image_text, where=f"label theory.image of {app.name}")
        except TheoryDeployError:
            return f"its theory.image label {image_text!r} is not a digest ref; run start to apply the values."
        with self._locked(app):
            self._ensure_local(image)
            args, _config = self._run_args(app, image, plan)
            container = self._launch(app, image, plan, args, existing)
        result["restarted"] = True
        result["container"]["id"] = _short(container.get("Id"))
        return f"{app.name} recreated at the same digest {image.digest} with the new values."

    # --- readings --------------------------------------------------------------------------------------
    def _engine_digest(self, app: AppContext, container: dict[str, Any]) -> tuple[str | None, str]:
        """The registry digest the engine recorded for the container's image (RepoDigests), by repository."""
        image_id = container.get("Image")
        if not image_id:
            return None, "the engine reports no image for the container"
        image = self.docker.inspect_image(str(image_id))
        if image is None:
            return None, f"the container's image {image_id[:19]} is no longer in the engine"
        labels = _labels(container)
        repositories = {app.processor.spec.image.repository}
        with contextlib.suppress(TheoryDeployError):
            repositories.add(ImageRef.parse(labels.get("theory.image", "")).repository)
        repo_digests = [str(d) for d in image.get("RepoDigests") or []]
        digests = sorted(
            {d.rsplit("@", 1)[1] for d in repo_digests if "@" in d and d.rsplit("@", 1)[0] in repositories}
        )
        digests = [d for d in digests if DIGEST_RE.match(d)]
        if not digests:
            seen = ", ".join(repo_digests) or "none"
            return None, (
                f"image {image_id[:19]} has no registry digest for {', '.join(sorted(repositories))} "
                f"(RepoDigests: {seen}); it was not pulled from that registry (e.g. built locally)"
            )
        if len(digests) == 1:
            return digests[0], "from the engine's RepoDigests"
        # The same image content is known under several manifests of the repository: each is true.
        chosen = labels.get("theory.digest") if labels.get("theory.digest") in digests else digests[0]
        return chosen, f"the image is known under several digests: {', '.join(digests)}"

    def read_running_digests(self, app: AppContext, expected: ImageRef) -> DigestReadings:
        readings = DigestReadings(readings={"engine": None, "healthz": None})
        container = self._find(app)
        if container is None:
            why = f"no container named {container_name(app)}"
            readings.notes = {"engine": why, "healthz": why}
            return readings
        engine, note = self._engine_digest(app, container)
        readings.readings["engine"] = engine
        if engine is None:
            readings.notes["engine"] = note
        spec = app.processor.spec
        port = _host_port(container, spec.build.port)
        if _state(container) != "running" or port is None:
            readings.notes["healthz"] = f"container is {_state(container)}" + ("" if port else ", no published port")
            return readings
        health = self._healthz(f"http://127.0.0.1:{port}", spec.api.healthz)
        reported = health.get("digest")
        if isinstance(reported, str) and DIGEST_RE.match(reported):
            readings.readings["healthz"] = reported
        else:
            readings.notes["healthz"] = str(
                health.get("error") or f"{spec.api.healthz} reported no digest ({reported!r})"
            )
        return readings

    def endpoint(self, app: AppContext) -> Endpoint:
        spec = app.processor.spec
        container = self._find(app)
        if container is None:
            raise FunctionNotFoundError(f"no app {app.name} in {app.env} on the local engine.")
        if _state(container) != "running":
            raise NotRunningError(f"{app.name} ({app.env}) is {_state(container)}.")
        port = _host_port(container, spec.build.port)
        if port is None:
            raise NotRunningError(f"{app.name} ({app.env}) publishes no port for {spec.build.port}/tcp.")
        token = None
        if spec.api.auth_secret:
            value = self._store(app).value(spec.api.auth_secret)
            token = value[spec.api.auth_secret] if value else None
            if token:
                # Sent as `Authorization: Bearer ...`: refuse a value no header can carry, naming the secret.
                secret_values.check_header_value(
                    token, f"the secret {spec.api.auth_secret} (the endpoint's bearer token)", AuthRequiredError
                )
        base = f"http://127.0.0.1:{port}"
        return Endpoint(base_url=base, ws_url=f"ws://127.0.0.1:{port}{spec.api.path}", token=token)

    # --- dev cleanup -----------------------------------------------------------------------------------
    def list_apps(self, env: Environment) -> list[ListedApp]:
        """Every container labelled theory.env=<env> (running or not: `stop` removes containers)."""
        proc = self.docker.run(
            ["container", "ls", "--all", "--quiet", "--no-trunc", "--filter", f"label=theory.env={env}"],
            what="docker container ls",
        )
        listed = []
        for container_id in proc.stdout.split():
            container = self.docker.inspect_container(container_id)
            if container is None:
                continue  # removed since it was listed
            name = _name_of(container)
            # Reported by app name, as on Modal; `<app>.<env>` is only how this engine tells them apart.
            app_name = name.removesuffix(f".{env}")
            listed.append(ListedApp(app_name, _labels(container), address=name))
        return listed

    def stop_listed(self, env: Environment, listed: ListedApp) -> str | None:
        name = listed.address or listed.name
        container = self.docker.inspect_container(name)
        if container is None:
            return "left alone: no longer there (removed since it was listed)"
        declined = changed_since_listing(listed, _labels(container))
        if declined:
            return declined
        self._remove(name)
        return None
