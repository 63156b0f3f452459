"""The Modal target: deploy a processor's pinned linux/amd64 digest as a Modal web app, and prove what runs.

`modalctl` takes exactly `localctl`'s verbs; this module is what they do on Modal, through the
`modal` SDK (pinned exactly; tests/test_modal_sdk_surface.py guards every call made here).

Why one file of this size: it is one implementation of `base.Target`, verb by verb, the Modal
counterpart of targets/local.py; the generated deploy module lives apart, in modal_app.py.

**Every call names its environment.** `environment_name=` is passed explicitly to every SDK call
and to every `Secret.from_name` in the generated module; MODAL_ENVIRONMENT and profiles are never
consulted for it, so nothing can land in (or be read from) `main` by default.

**Every call has a deadline.** SDK calls run as their `.aio` variants under `asyncio.wait_for`:
THEORY_MODAL_TIMEOUT_S (default 60 s) each, the deploy itself THEORY_MODAL_DEPLOY_TIMEOUT_S
(default 1800 s: Modal pulls and builds the image; it only starts after earlier calls proved Modal
answers). A client pointed at nothing otherwise hangs ~57 s per call. No MODAL_TOKEN_ID/SECRET
(nor a ~/.modal.toml token) → ERR_MODAL_AUTH before any call.

**start.** Renders the deploy module (`modal_app.py`: `Image.from_registry(<repo@sha256>, secret=
REGISTRY_AUTH).env({IMAGE_DIGEST, THEORY_REF, THEORY_APP, THEORY_ENV})`, one `@modal.asgi_app()`
function serving the processor's `app:app`, cpu/memory/timeout/gpu from `runtime`, its secrets
bound by name), writes it into a temp folder, imports it and calls `app.deploy(name=, environment_name=,
tag=sha256-<40 hex>, strategy="rolling")`. Before deploying it:
  * reads the app's tags: same digest and same spec fingerprint (`theory.spec`, a hash of
    everything the module says) → `unchanged`, nothing is deployed;
  * makes sure REGISTRY_AUTH exists in the environment with REGISTRY_USERNAME/REGISTRY_PASSWORD
    (created from those variables when missing; otherwise ERR_MISSING_SECRET naming it);
  * makes sure every secret it binds exists, creating a *placeholder* for each missing one (its
    keys with empty values, which processors treat as unset; for `api.auth_secret` a random
    token nobody knows, so an endpoint that wants auth is locked, never open). An existing secret
    is never touched. So the documented order start → sync-secrets works with a brand-new
    secret; mock runs work at once, real runs answer ERR_MISSING_SECRET until synced.
`--dry-run` returns the plan and the module text and makes no call at all.

**What a deploy records** (app tags, so audits and cleanup never parse app names): theory.managed,
theory.ref, theory.env, theory.branch/theory.user (dev), theory.digest (split over .0/.1: 71
characters do not fit a 63-character tag), theory.image (the repository) and theory.spec. They are
sent with the deploy and then written with `App.set_tags`, documented to replace the whole set
(whether a publish merges tags into the old ones is undocumented).

**sync-secrets.** Values come from this process's environment (registered with the scrubber before
anything prints). A secret missing in Modal is created; an existing one is *updated*
(`Secret.update`, which overwrites the keys we send; `allow_existing=True` would keep the old
values). Modal never returns secret values, so whether a value changed cannot be known:
every existing secret with a value here is re-sent and reported `updated`; `unchanged` is always
empty on Modal (honest, not guessed). Keys we do not send are left as they are. `--check` only
looks; `--fail-on-missing` fails before changing anything when a required secret (REGISTRY_AUTH
included) has no value here. Nothing is redeployed or restarted: Modal injects secret values when a
container starts, so containers started after the sync see the new values and a warm container
keeps the old ones until it scales down (`stop` + `start` forces it at once).

**verify-digest** compares the pin (or --oci) with three readings, each None with a note when it
cannot be read (so verification fails closed): `deploy_record`, the digest the app's tags record;
`modal_image`, Modal's own record of the live function's image id against the id Modal gives the
definition `start` deploys for that digest (no value we injected; a mismatch names both ids); and
`healthz`, what the running processor reports at <web url>/healthz, read again while a rolling
deploy's old containers still answer (THEORY_MODAL_ROLLOUT_S). docs/modal.md says what each proves.

**The deploy lock** (`deploy_lock.py`: `--lock`, the pipeline) is the entry named after the app in
the `modal.Dict` `theory-deploy-locks` of the app's environment (`ModalLockStore`).

**cleanup-dev** (shared decisions in `base.Target.cleanup_dev`) lists the live apps of `dev` with
`Environment.from_name("dev").apps.list` (the SDK leaves stopped and disabled apps out), reads each
app's tags, and stops an app only when its recorded `theory.branch` is gone, after looking it up by
name in `dev` and re-reading its tags (a redeploy from an existing branch meanwhile leaves it alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from secrets import token_urlsafe
from typing import Any, ClassVar, TypeVar

import grpclib.exceptions
import modal
import modal.exception
from modal.config import config as modal_config

from .. import output, protocol, secret_values
from ..deploy_lock import DeployLock, LockRecord, LockStore
from ..errors import (
    AuthRequiredError,
    DeployError,
    FunctionNotFoundError,
    ImagePullError,
    InvalidEnvError,
    MissingSecretError,
    ModalAuthError,
    ModalTimeoutError,
    NotADigestError,
    NotRunningError,
    TheoryDeployError,
)
from ..refs import DIGEST_RE, Environment, ImageRef, Platform
from ..secret_values import REGISTRY_AUTH, REGISTRY_AUTH_KEYS, keys_for
from . import modal_app
from .base import AppContext, DigestReadings, Endpoint, ListedApp, Target, changed_since_listing, digest_of
from .modal_app import DIGEST_LABEL, FUNCTION_NAME, MANAGED_TAG, MODULE_NAME, SPEC_LABEL, DeployPlan

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_DEPLOY_TIMEOUT_S = 1800.0
DEFAULT_HEALTHZ_TIMEOUT_S = 150.0  # a scaled-to-zero web app cold-starts on the first request
DEFAULT_ROLLOUT_S = 120.0  # how long verify waits for old containers to stop answering /healthz
ROLLOUT_POLL_S = 2.0


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DeployError(f"{name}={raw!r} is not a number of seconds.", remedy=f"Set {name} to e.g. 60.") from None
    return value if value > 0 else default


class _Absent(TheoryDeployError):
    """Internal: a lookup found nothing (turned into False/None by the caller, never shown)."""


def _ctl(app: AppContext) -> str:
    return f"--ref {app.processor.ref} --env {app.env}"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else None


class ModalTarget(Target):
    kind: ClassVar[str] = "modal"

    def __init__(
        self,
        *,
        timeout_s: float | None = None,
        deploy_timeout_s: float | None = None,
        healthz_timeout_s: float | None = None,
        rollout_s: float | None = None,
    ) -> None:
        self.timeout_s = timeout_s or _seconds("THEORY_MODAL_TIMEOUT_S", DEFAULT_TIMEOUT_S)
        self.deploy_timeout_s = deploy_timeout_s or _seconds("THEORY_MODAL_DEPLOY_TIMEOUT_S", DEFAULT_DEPLOY_TIMEOUT_S)
        self.healthz_timeout_s = healthz_timeout_s or _seconds(
            "THEORY_MODAL_HEALTHZ_TIMEOUT_S", DEFAULT_HEALTHZ_TIMEOUT_S
        )
        self.rollout_s = rollout_s or _seconds("THEORY_MODAL_ROLLOUT_S", DEFAULT_ROLLOUT_S)

    @property
    def platform(self) -> Platform:
        return "amd64"

    # --- plumbing -------------------------------------------------------------------------------------
    def _require_credentials(self) -> None:
        token_id = os.environ.get("MODAL_TOKEN_ID") or modal_config.get("token_id")
        token_secret = os.environ.get("MODAL_TOKEN_SECRET") or modal_config.get("token_secret")
        secret_values.register_secret_value(token_id)
        secret_values.register_secret_value(token_secret)
        if not token_id or not token_secret:
            missing = [n for n, v in (("MODAL_TOKEN_ID", token_id), ("MODAL_TOKEN_SECRET", token_secret)) if not v]
            raise ModalAuthError(f"no Modal credentials: {' and '.join(missing)} not set (and no ~/.modal.toml token).")
        # Sent as request metadata (headers): refuse a value no header can carry, naming the variable.
        secret_values.check_header_value(str(token_id), "MODAL_TOKEN_ID", ModalAuthError)
        secret_values.check_header_value(str(token_secret), "MODAL_TOKEN_SECRET", ModalAuthError)

    @staticmethod
    def _server() -> str:
        return str(modal_config.get("server_url"))

    async def _call(
        self,
        what: str,
        awaitable: Awaitable[T],
        *,
        env: str,
        timeout: float | None = None,
        not_found: Callable[[str], TheoryDeployError] | None = None,
        on_error: Callable[[Exception, str], TheoryDeployError | None] | None = None,
    ) -> T:
        """One SDK call under a deadline, its failures turned into theory-deploy errors."""
        deadline = timeout or self.timeout_s
        try:
            return await asyncio.wait_for(awaitable, deadline)
        except TimeoutError:
            raise ModalTimeoutError(f"Modal ({self._server()}) did not answer {what} within {deadline:g}s.") from None
        except TheoryDeployError:
            raise
        except modal.exception.Error as exc:
            message = secret_values.scrub(str(exc).strip() or type(exc).__name__)
            mapped = on_error(exc, message) if on_error else None
            raise (mapped or self._translate(what, exc, message, env, not_found)) from None
        except (OSError, grpclib.exceptions.StreamTerminatedError, grpclib.exceptions.ProtocolError) as exc:
            raise ModalTimeoutError(f"cannot reach Modal ({self._server()}) for {what}: {exc}.") from None

    def _translate(
        self,
        what: str,
        exc: Exception,
        message: str,
        env: str,
        not_found: Callable[[str], TheoryDeployError] | None,
    ) -> TheoryDeployError:
        errors = modal.exception
        if isinstance(exc, (errors.AuthError, errors.PermissionDeniedError)):
            return ModalAuthError(f"Modal refused {what}: {message}")
        if isinstance(exc, errors.TimeoutError):
            return ModalTimeoutError(f"Modal timed out {what}: {message}")
        if isinstance(exc, errors.ConnectionError):
            return ModalTimeoutError(f"cannot reach Modal ({self._server()}) for {what}: {message}")
        if isinstance(exc, errors.NotFoundError):
            if message.lower().startswith("environment"):
                return InvalidEnvError(
                    f"the Modal workspace has no environment {env!r} ({what}: {message}).",
                    remedy=f"Create it once: `modal environment create {env}` "
                    "(theory-deploy uses dev, staging and main).",
                )
            if not_found is not None:
                return not_found(message)
            return FunctionNotFoundError(f"{what}: {message}")
        return DeployError(
            f"Modal failed {what}: {type(exc).__name__}: {message}",
            remedy="Read Modal's message; fix and re-run (start resumes: an unchanged deploy is skipped).",
        )

    def _missing_app(self, app: AppContext) -> Callable[[str], TheoryDeployError]:
        def make(message: str) -> TheoryDeployError:
            return FunctionNotFoundError(
                f"no deployed app {app.name} in the Modal environment {app.env} ({message}).",
                remedy=f"Check --env, then deploy it: `modalctl start {_ctl(app)}`.",
            )

        return make

    # --- deploy lock --------------------------------------------------------------------------------
    def deploy_lock(self, app: AppContext) -> DeployLock:
        self._require_credentials()
        return DeployLock(
            ModalLockStore(self, app.env),
            app.name,
            target=self.kind,
            env=app.env,
            app=app.name,
            ref=str(app.processor.ref),
        )

    # --- apps ---------------------------------------------------------------------------------------
    async def _lookup(self, app: AppContext) -> Any:
        return await self._call(
            f"looking up app {app.name} in {app.env}",
            modal.App.lookup.aio(app.name, environment_name=app.env),
            env=app.env,
            not_found=self._missing_app(app),
        )

    async def _find(self, app: AppContext) -> Any | None:
        try:
            return await self._lookup(app)
        except FunctionNotFoundError:
            return None

    async def _labels(self, app: AppContext, handle: Any) -> dict[str, str]:
        tags = await self._call(f"reading the tags of {app.name} in {app.env}", handle.get_tags.aio(), env=app.env)
        return modal_app.decode_tags(dict(tags))

    async def _info(self, app: AppContext, handle: Any) -> Any:
        return await self._call(f"reading {app.name} in {app.env}", handle.info.aio(refresh=True), env=app.env)

    def _missing_function(self, app: AppContext) -> Callable[[str], TheoryDeployError]:
        def make(message: str) -> TheoryDeployError:
            return FunctionNotFoundError(
                f"app {app.name} in {app.env} has no function {FUNCTION_NAME!r} ({message}); "
                "it was not deployed by theory-deploy.",
                remedy=f"Redeploy it: `modalctl start {_ctl(app)}`.",
            )

        return make

    async def _web_url(self, app: AppContext) -> str:
        function = modal.Function.from_name(app.name, FUNCTION_NAME, environment_name=app.env)
        url = await self._call(
            f"reading the web URL of {app.name} in {app.env}",
            function.get_web_url.aio(),
            env=app.env,
            not_found=self._missing_function(app),
        )
        if not url:
            raise NotRunningError(f"{app.name} ({app.env}) has no web URL.")
        return str(url).rstrip("/")

    def _token(self, app: AppContext) -> str | None:
        name = app.processor.spec.api.auth_secret
        if not name:
            return None
        source = "THEORY_AUTH_TOKEN" if os.environ.get("THEORY_AUTH_TOKEN") else name
        token = os.environ.get("THEORY_AUTH_TOKEN") or os.environ.get(name) or None
        secret_values.register_secret_value(token)
        if token:
            # Sent as `Authorization: Bearer ...`: refuse a value no header can carry, naming the variable.
            secret_values.check_header_value(token, source, AuthRequiredError)
        return token

    # --- secrets ------------------------------------------------------------------------------------
    async def _secret(self, env: str, name: str, required_keys: tuple[str, ...] = ()) -> Any | None:
        """The hydrated secret, or None when it (or one of `required_keys`) is missing in `env`."""
        handle = modal.Secret.from_name(name, environment_name=env, required_keys=list(required_keys))
        try:
            await self._call(
                f"looking up secret {name} in {env}",
                handle.hydrate.aio(),
                env=env,
                not_found=lambda message: _Absent(message),
            )
        except _Absent:
            return None
        return handle

    async def _create_secret(self, env: str, name: str, values: dict[str, str]) -> bool:
        """Create; False (and nothing written) when it already exists."""

        async def create() -> bool:
            try:
                await modal.Secret.objects.create.aio(name, values, environment_name=env)
            except modal.exception.AlreadyExistsError:
                return False
            return True

        return await self._call(f"creating secret {name} in {env}", create(), env=env)

    async def _update_secret(self, env: str, name: str, handle: Any, values: dict[str, str]) -> None:
        def gone(message: str) -> TheoryDeployError:
            return MissingSecretError(
                f"secret {name} vanished from {env} while it was updated ({message}).",
                remedy="Re-run sync-secrets.",
            )

        await self._call(f"updating secret {name} in {env}", handle.update.aio(values), env=env, not_found=gone)

    async def _ensure_registry_auth(self, app: AppContext, image: ImageRef) -> str:
        """Make REGISTRY_AUTH usable for this pull. Credentials exported now always replace what it
        holds: Modal cannot tell us whether a stored token still works, and a CI job's registry token
        (GITHUB_TOKEN) expires with the job that stored it, so a secret left as it was would fail the
        next deploy's pull. Without exported credentials, a secret holding both keys is kept."""
        env = app.env
        credentials = secret_values.registry_credentials()
        complete = await self._secret(env, REGISTRY_AUTH, REGISTRY_AUTH_KEYS)
        if complete is not None:
            if credentials is None:
                return "present"
            await self._update_secret(
                env, REGISTRY_AUTH, complete, dict(zip(REGISTRY_AUTH_KEYS, credentials, strict=True))
            )
            return "updated"
        existing = await self._secret(env, REGISTRY_AUTH)
        problem = f"lacks the keys {' and '.join(REGISTRY_AUTH_KEYS)}" if existing is not None else "does not exist"
        if credentials is None:
            raise MissingSecretError(
                f"{REGISTRY_AUTH} {problem} in the Modal environment {env}; Modal needs it to pull {image.repository}.",
                remedy=(
                    f"Export REGISTRY_USERNAME and REGISTRY_PASSWORD (a user and token that may read "
                    f"{image.repository}), then re-run start or `modalctl sync-secrets {_ctl(app)}`."
                ),
                details={"missing": [REGISTRY_AUTH]},
            )
        values = dict(zip(REGISTRY_AUTH_KEYS, credentials, strict=True))
        if existing is not None:
            await self._update_secret(env, REGISTRY_AUTH, existing, values)
            return "updated"
        if not await self._create_secret(env, REGISTRY_AUTH, values):
            handle = await self._secret(env, REGISTRY_AUTH)
            if handle is not None:
                await self._update_secret(env, REGISTRY_AUTH, handle, values)
            return "updated"
        return "created"

    def _placeholder(self, app: AppContext, name: str) -> dict[str, str]:
        if name == app.processor.spec.api.auth_secret:
            token = token_urlsafe(32)  # locks the endpoint until sync-secrets sets the real token
            secret_values.register_secret_value(token)
            return {name: token}
        return {key: "" for key in keys_for(name)}

    async def _ensure_app_secrets(self, app: AppContext, plan: DeployPlan) -> tuple[list[str], list[str]]:
        """(names created as placeholders, names that exist without their key). Never overwrites."""
        declared, lacking = [], []
        for name in plan.secret_names:
            if await self._secret(app.env, name, keys_for(name)) is not None:
                continue
            if await self._secret(app.env, name) is not None:
                lacking.append(name)  # exists, but without the variable the processor reads
            elif await self._create_secret(app.env, name, self._placeholder(app, name)):
                declared.append(name)
        return declared, lacking

    # --- start --------------------------------------------------------------------------------------
    def plan(self, app: AppContext, image: ImageRef) -> DeployPlan:
        if image.digest is None or image.tag is not None:
            raise NotADigestError(f"{image}: Modal deploys digest refs (repository@sha256:...) only.")
        spec = app.processor.spec
        names, _required = app.processor.spec.secret_names()
        return modal_app.make_plan(
            app_name=app.name,
            env=app.env,
            ref=str(app.processor.ref),
            image=image,
            labels=app.labels(),
            secret_names=names,
            cpu=spec.runtime.cpu,
            memory_gb=spec.runtime.memory_gb,
            timeout_s=spec.runtime.timeout_s,
            gpu=spec.runtime.gpu,
        )

    def start(self, app: AppContext, image: ImageRef, *, dry_run: bool = False) -> dict[str, Any]:
        plan = self.plan(app, image)
        module = modal_app.render_module(plan)
        if dry_run:
            return self._dry_run(app, plan, module)
        self._require_credentials()
        return asyncio.run(self._start(app, plan, module))

    def _dry_run(self, app: AppContext, plan: DeployPlan, module: str) -> dict[str, Any]:
        lines = [
            f"dry run: would deploy {plan.image} as {plan.app_name} in the Modal environment {plan.env} "
            "(unless its tags show this digest and spec already); nothing was called or changed.",
            f"  function {FUNCTION_NAME}: cpu {plan.cpu:g}, memory {plan.memory_mib} MiB, "
            f"timeout {plan.timeout_s}s, "
            f"gpu {plan.gpu or '-'}, max_inputs {plan.max_inputs}",
            f"  pull secret: {plan.registry_secret}; secrets bound by name: {', '.join(plan.secret_names) or '-'}",
            f"  deploy tag {plan.deploy_tag}, spec {plan.fingerprint}",
            "--- deploy module ---",
            module.rstrip("\n"),
        ]
        return {
            "app": plan.app_name,
            "env": plan.env,
            "target": self.kind,
            "action": "plan",
            "dry_run": True,
            "image": str(plan.image),
            "digest": plan.digest,
            "plan": plan.to_json(),
            "module": module,
            "summary": "\n".join(lines),
        }

    async def _start(self, app: AppContext, plan: DeployPlan, module: str) -> dict[str, Any]:
        handle = await self._find(app)
        previous: dict[str, Any] | None = None
        other_image: str | None = None
        if handle is not None:
            labels = await self._labels(app, handle)
            previous = {"digest": labels.get(DIGEST_LABEL), "spec": labels.get(SPEC_LABEL)}
            if previous == {"digest": plan.digest, "spec": plan.fingerprint}:
                # Tags are only what the last publish wrote (a hand deploy may leave ours in place):
                # unchanged also needs Modal's own record to show the function runs this definition.
                other_image = await self._other_image(app, handle, plan.image)
                if other_image is None:
                    info = await self._info(app, handle)
                    return await self._start_result(
                        app,
                        plan,
                        "unchanged",
                        "its tags show this digest and spec, and Modal runs the image it builds from them; "
                        "nothing was deployed",
                        info,
                        previous,
                        registry_auth=None,
                        declared=[],
                    )
        registry_auth = await self._ensure_registry_auth(app, plan.image)
        declared, lacking = await self._ensure_app_secrets(app, plan)
        await self._deploy(app, plan, module)
        handle = await self._lookup(app)
        # Killed between the deploy and this write, the tags still name the earlier digest: verify
        # fails (closed) and the next start, seeing that digest, deploys (a no-op for Modal) and records.
        await self._record(app, plan, handle)
        info = await self._info(app, handle)
        if previous is None:
            action, reason = "deployed", "no app of that name was deployed"
        elif other_image is not None:
            action, reason = "redeployed", f"its tags show this digest and spec, but {other_image}"
        elif previous.get("digest") != plan.digest:
            action, reason = "redeployed", f"it ran {previous.get('digest') or 'an unrecorded digest'}"
        else:
            action, reason = "redeployed", "same digest, changed spec (resources, secrets or labels)"
        return await self._start_result(app, plan, action, reason, info, previous, registry_auth, declared, lacking)

    async def _deploy(self, app: AppContext, plan: DeployPlan, module: str) -> None:
        def on_error(exc: Exception, message: str) -> TheoryDeployError | None:
            if isinstance(exc, modal.exception.RemoteError):  # incl. ImageBuildError
                return ImagePullError(
                    f"Modal could not build the image from {plan.image}: {message}",
                    remedy=f"Check the digest exists for linux/amd64 and that {REGISTRY_AUTH} may read "
                    f"{plan.image.repository} (`modalctl sync-secrets {_ctl(app)}`).",
                )
            if isinstance(exc, modal.exception.InvalidError) and "Registry Secret" in message:
                return MissingSecretError(
                    f"{REGISTRY_AUTH} in {app.env} does not hold exactly "
                    "REGISTRY_USERNAME and REGISTRY_PASSWORD: "
                    f"{message}",
                    remedy=f"Export both and run `modalctl sync-secrets {_ctl(app)}`.",
                )
            return None

        output.progress(f"deploying {plan.image} as {plan.app_name} in the Modal environment {plan.env}")
        with _imported(module) as module_obj:
            await self._call(
                f"deploying {plan.app_name} to {plan.env}",
                module_obj.app.deploy.aio(
                    name=plan.app_name, environment_name=plan.env, tag=plan.deploy_tag, strategy="rolling"
                ),
                env=plan.env,
                timeout=self.deploy_timeout_s,
                on_error=on_error,
            )

    async def _record(self, app: AppContext, plan: DeployPlan, handle: Any) -> None:
        """Write the deploy record: the app's whole tag set, replaced.

        The module's `modal.App(tags=...)` sends the tags with the deploy too, but whether a publish
        replaces an app's tags or merges them into the old ones is undocumented; `App.set_tags` is
        documented to replace them. A label the last deploy had and this one has not (a dev app's
        branch, a label removed from registry.yaml) must not outlive its deploy."""
        await self._call(
            f"recording the deploy in the tags of {plan.app_name} in {plan.env}",
            handle.set_tags.aio(plan.tags),
            env=plan.env,
        )

    async def _start_result(
        self,
        app: AppContext,
        plan: DeployPlan,
        action: str,
        reason: str,
        info: Any,
        previous: dict[str, Any] | None,
        registry_auth: str | None,
        declared: list[str],
        lacking: list[str] | None = None,
    ) -> dict[str, Any]:
        url: str | None
        url_note = None
        try:
            url = await self._web_url(app)
        except TheoryDeployError as err:
            url, url_note = None, err.message
        lifecycle = info.lifecycle
        result: dict[str, Any] = {
            "app": app.name,
            "env": app.env,
            "target": self.kind,
            "action": action,
            "reason": reason,
            "image": str(plan.image),
            "digest": plan.digest,
            "version": lifecycle.version,
            "deployed_at": _iso(lifecycle.deployed_at),
            "deployed_by": lifecycle.deployed_by,
            "previous": previous,
            "deploy_tag": plan.deploy_tag,
            "spec": plan.fingerprint,
            "url": url,
            "ws_url": protocol.ws_url_for(url, app.processor.spec.api.path) if url else None,
            "secrets": {
                "bound": list(plan.secret_names),
                "declared": declared,
                "lacking_key": lacking or [],
                "registry_auth": registry_auth,
            },
            "labels": plan.labels,
        }
        if url_note:
            result["url_note"] = url_note
        lines = [f"{action}: {app.name} ({app.env}) runs {plan.image}, version {lifecycle.version} ({reason})."]
        lines.append(f"  url: {url or '(unreadable: ' + str(url_note) + ')'}")
        if registry_auth in ("created", "updated"):
            lines.append(f"  {REGISTRY_AUTH} {registry_auth} from REGISTRY_USERNAME/REGISTRY_PASSWORD.")
        if declared:
            lines.append(
                f"  secret(s) {', '.join(declared)} were created empty (placeholders): "
                "export their values and run "
                f"`modalctl sync-secrets {_ctl(app)}`; mock runs work meanwhile."
            )
        if lacking:
            lines.append(
                f"  warning: secret(s) {', '.join(lacking)} exist without a key of the same name, so the "
                f"processor will not see them: export them and run `modalctl sync-secrets {_ctl(app)}` "
                "(it adds the key)."
            )
        result["summary"] = "\n".join(lines)
        return result

    # --- stop, status, logs -------------------------------------------------------------------------
    def stop(self, app: AppContext) -> dict[str, Any]:
        self._require_credentials()
        return asyncio.run(self._stop(app))

    async def _stop(self, app: AppContext) -> dict[str, Any]:
        handle = await self._lookup(app)
        labels = await self._labels(app, handle)
        if labels.get(MANAGED_TAG) != "true":
            raise DeployError(
                f"the app {app.name} in {app.env} was not deployed by theory-deploy (no {MANAGED_TAG} tag); "
                "refusing to stop it.",
                remedy=f"Stop it yourself if it is yours: `modal app stop {app.name} --env {app.env}`.",
            )
        await self._call(f"stopping {app.name} in {app.env}", handle.stop.aio(), env=app.env)
        return {
            "app": app.name,
            "env": app.env,
            "action": "stopped",
            "digest": labels.get(DIGEST_LABEL),
            "summary": f"stopped {app.name} ({app.env}); `start` deploys it again.",
        }

    def status(self, app: AppContext) -> dict[str, Any]:
        self._require_credentials()
        return asyncio.run(self._status(app))

    async def _status(self, app: AppContext) -> dict[str, Any]:
        pinned = app.processor.spec.pins().get(self.platform)
        result: dict[str, Any] = {
            "app": app.name,
            "env": app.env,
            "ref": str(app.processor.ref),
            "pinned": pinned,
        }
        handle = await self._find(app)
        if handle is None:
            result.update(state="missing", digest=None, url=None, labels={})
            result["summary"] = f"{app.name} ({app.env}): missing (no deployed app of that name in Modal)."
            return result
        info = await self._info(app, handle)
        labels = await self._labels(app, handle)
        url: str | None
        try:
            url = await self._web_url(app)
        except TheoryDeployError as err:
            url = None
            result["url_note"] = err.message
        lifecycle = info.lifecycle
        digest = labels.get(DIGEST_LABEL)
        result.update(
            state=lifecycle.state.name.lower(),
            version=lifecycle.version,
            deployed_at=_iso(lifecycle.deployed_at),
            deployed_by=lifecycle.deployed_by,
            digest=digest,
            image=f"{labels.get(modal_app.IMAGE_LABEL)}@{digest}" if digest else None,
            matches_pin=bool(pinned and digest and digest_of(pinned) == digest),
            spec=labels.get(SPEC_LABEL),
            url=url,
            ws_url=protocol.ws_url_for(url, app.processor.spec.api.path) if url else None,
            labels=labels,
        )
        result["summary"] = "\n".join(
            [
                f"{app.name} ({app.env}): {result['state']}, version {lifecycle.version}",
                f"  digest:   {digest or '(not recorded: not deployed by theory-deploy)'}",
                f"  pinned:   {pinned or '(none for amd64)'}"
                + ("" if not pinned else ("  (matches)" if result["matches_pin"] else "  (DIFFERS)")),
                f"  url:      {url or '-'}",
                f"  deployed: {result['deployed_at']} by {lifecycle.deployed_by}",
                "  (`verify-digest` also asks the running processor)",
            ]
        )
        return result

    def logs(self, app: AppContext, *, follow: bool, tail: int) -> dict[str, Any]:
        self._require_credentials()
        # Every value this process knows is registered before a single line is printed.
        names, _required = app.processor.spec.secret_names()
        secret_values.read_from_environment([*names, REGISTRY_AUTH])
        return asyncio.run(self._logs(app, follow, tail))

    async def _logs(self, app: AppContext, follow: bool, tail: int) -> dict[str, Any]:
        handle = await self._lookup(app)
        result: dict[str, Any] = {"app": app.name, "env": app.env, "follow": follow}
        if follow:
            idle = _seconds("THEORY_MODAL_FOLLOW_IDLE_S", 0.0) or None  # unset: until interrupted
            count = 0
            # --follow is human mode (the CLI refuses it with --json): lines go to stdout, scrubbed.
            async for entry in handle.logs.stream.aio(timeout=idle):
                for line in str(entry.message).splitlines():
                    sys.stdout.write(secret_values.scrub(line) + "\n")
                    count += 1
                sys.stdout.flush()
            result["line_count"] = count
            result["summary"] = f"(end of logs of {app.name})"
            return result

        async def collect() -> list[str]:
            return [str(entry.message) async for entry in handle.logs.tail.aio(max(tail, 0))]

        messages = await self._call(f"reading the logs of {app.name} in {app.env}", collect(), env=app.env)
        lines = [secret_values.scrub(line) for message in messages for line in message.splitlines()]
        result.update(lines=lines, line_count=len(lines))
        result["summary"] = "\n".join(lines) if lines else f"(no log lines from {app.name})"
        return result

    # --- secrets ------------------------------------------------------------------------------------
    def sync_secrets(
        self, app: AppContext, *, check: bool, fail_on_missing: bool, dry_run: bool = False
    ) -> dict[str, Any]:
        check = check or dry_run
        names, required = app.processor.spec.secret_names()
        all_names = [*names, REGISTRY_AUTH]
        found = secret_values.read_from_environment(all_names)  # registers every value with the scrubber
        missing_required = [n for n in [*required, REGISTRY_AUTH] if n in found.missing]
        if fail_on_missing and missing_required:
            raise MissingSecretError(
                f"{app.name} ({app.env}): required secret(s) {', '.join(missing_required)} have no value in "
                "this process's environment; nothing was sent to Modal.",
                remedy=f"Export {', '.join(_env_keys(missing_required))} and run `modalctl sync-secrets {_ctl(app)}`.",
                details={"missing": missing_required},
            )
        self._require_credentials()
        return asyncio.run(self._sync(app, all_names, found, missing_required, check))

    async def _sync(
        self,
        app: AppContext,
        names: list[str],
        found: secret_values.SecretValues,
        missing_required: list[str],
        check: bool,
    ) -> dict[str, Any]:
        env = app.env
        handles = {name: await self._secret(env, name) for name in names}
        created: list[str] = []
        updated: list[str] = []
        for name in names:
            values = found.values.get(name)
            if values is None:
                continue
            handle = handles[name]
            if handle is None:
                if check or await self._create_secret(env, name, values):
                    created.append(name)
                    continue
                handle = await self._secret(env, name)  # created meanwhile by someone else
                if handle is None:
                    raise MissingSecretError(f"secret {name} in {env} could neither be created nor found.")
            if not check:
                await self._update_secret(env, name, handle, values)
            updated.append(name)
        kept = [n for n in found.missing if handles.get(n) is not None]
        absent = [n for n in found.missing if handles.get(n) is None]
        result: dict[str, Any] = {
            "app": app.name,
            "env": env,
            "target": self.kind,
            "created": created,
            "updated": updated,
            "unchanged": [],
            "missing": found.missing,
            "missing_required": missing_required,
            "present": [n for n in names if n in found.values],
            "kept": kept,
            "absent": absent,
            "check": check,
            "restarted": False,
            "unchanged_note": "Modal never returns secret values, so every existing secret with a value "
            "here is "
            "re-sent and reported as updated.",
            "applies": "at container start: containers started after this see the new values; a running "
            "container keeps the old ones until it scales down (nothing is redeployed).",
        }
        verb = {"created": "would create", "updated": "would update"} if check else {}
        lines = [f"sync-secrets {app.name} ({env}){' (check: nothing sent)' if check else ''}:"]
        lines.append(f"  {verb.get('created', 'created')}: {', '.join(created) or '-'}")
        lines.append(f"  {verb.get('updated', 'updated')}: {', '.join(updated) or '-'}")
        lines.append("  unchanged: - (Modal never returns values, so existing secrets are always re-sent)")
        lines.append(f"  missing here: {', '.join(found.missing) or '-'}")
        if kept:
            lines.append(f"  kept (no value here, left as it is in Modal): {', '.join(kept)}")
        if absent:
            lines.append(f"  absent in Modal too (start creates placeholders): {', '.join(absent)}")
        if missing_required:
            lines.append(
                f"  required without a value here: {', '.join(missing_required)} "
                f"(export {', '.join(_env_keys(missing_required))})"
            )
        if not check and (created or updated):
            lines.append("  new values reach containers started from now on; warm containers keep the old ones.")
        result["summary"] = "\n".join(lines)
        return result

    # --- readings and endpoint ----------------------------------------------------------------------
    def read_running_digests(self, app: AppContext, expected: ImageRef) -> DigestReadings:
        self._require_credentials()
        return asyncio.run(self._readings(app, expected))

    async def _readings(self, app: AppContext, expected: ImageRef) -> DigestReadings:
        readings = DigestReadings(readings={"deploy_record": None, "modal_image": None, "healthz": None})
        handle = await self._lookup(app)  # a missing app is ERR_FUNCTION_NOT_FOUND, not a reading
        try:
            labels = await self._labels(app, handle)
        except TheoryDeployError as err:
            readings.notes["deploy_record"] = f"the app's tags could not be read: {err.message}"
        else:
            recorded = labels.get(DIGEST_LABEL)
            if recorded and DIGEST_RE.match(recorded):
                readings.readings["deploy_record"] = recorded
            else:
                readings.notes["deploy_record"] = (
                    f"the live deploy recorded no digest (tag {DIGEST_LABEL}: {recorded!r}); "
                    "it was not deployed by theory-deploy"
                )
        await self._read_modal_image(app, handle, expected, readings)
        await self._read_healthz(app, expected, readings)
        return readings

    async def _read_modal_image(
        self, app: AppContext, handle: Any, expected: ImageRef, readings: DigestReadings
    ) -> None:
        try:
            other = await self._other_image(app, handle, expected)
        except TheoryDeployError as err:
            readings.notes["modal_image"] = err.message
            return
        if other is None:
            readings.readings["modal_image"] = expected.digest
        else:
            readings.mismatches["modal_image"] = (
                f"{other} (someone deployed another image or definition under this app's name, or "
                "REGISTRY_AUTH was re-created since the deploy: `start` redeploys the pin)"
            )

    async def _other_image(self, app: AppContext, handle: Any, expected: ImageRef) -> str | None:
        """None when Modal's own record shows the live function runs the image Modal builds from the
        expected definition (the deploy module's `Image.from_registry(<pin>, secret=REGISTRY_AUTH)
        .env(...)`, built from the very module `start` would deploy); else what it runs instead.

        Modal gives an identical definition its existing image, so the two ids are equal exactly when
        the function runs that image; neither id comes from a value we told Modal to report."""
        running = await self._running_image_id(app)
        built = await self._expected_image_id(app, handle, expected)
        if running == built:
            return None
        return f"the function runs Modal image {running}, not {built}, the image Modal builds from {expected}"

    async def _running_image_id(self, app: AppContext) -> str:
        function = modal.Function.from_name(app.name, FUNCTION_NAME, environment_name=app.env)
        info = await self._call(
            f"reading the image of {app.name}'s function in {app.env}",
            function.info.aio(),
            env=app.env,
            not_found=self._missing_function(app),
        )
        image_id = info.image_info.image_id if info.image_info is not None else None
        if not image_id:
            raise DeployError(f"Modal reported no image id for the function of {app.name} in {app.env}.")
        return str(image_id)

    async def _expected_image_id(self, app: AppContext, handle: Any, expected: ImageRef) -> str:
        plan = self.plan(app, expected)
        with _imported(modal_app.render_module(plan)) as module_obj:
            image = module_obj.image
            await self._call(
                f"asking Modal for the image it builds from {expected} in {app.env}",
                image.build.aio(handle),
                env=app.env,
            )
            return str(image.object_id)

    async def _read_healthz(self, app: AppContext, expected: ImageRef, readings: DigestReadings) -> None:
        """What the running processor reports. Under the rolling strategy a container of the earlier
        deploy may keep answering for a while after a deploy: when every other reading shows the
        expected image, an older digest here is read again until the rollout is over (at most
        THEORY_MODAL_ROLLOUT_S); it never counts as a match, and after the wait it is a mismatch."""
        deadline = time.monotonic() + self.rollout_s
        while True:
            try:
                url = await self._web_url(app)
                answer: Any = protocol.fetch_health(
                    url, self._token(app), path=app.processor.spec.api.healthz, timeout_s=self.healthz_timeout_s
                )
                health: dict[str, Any] = await answer if inspect.isawaitable(answer) else answer
            except TheoryDeployError as err:
                readings.notes["healthz"] = err.message
                return
            reported = health.get("digest")
            if not (isinstance(reported, str) and DIGEST_RE.match(reported)):
                readings.notes["healthz"] = f"{app.processor.spec.api.healthz} reported no digest ({reported!r})"
                return
            readings.readings["healthz"] = reported
            others_agree = all(
                seen == expected.digest for source, seen in readings.readings.items() if source != "healthz"
            )
            if reported == expected.digest or not others_agree:
                return
            if time.monotonic() >= deadline:
                readings.notes["healthz"] = (
                    f"still answered by a container of an earlier deploy after {self.rollout_s:g}s, although "
                    "Modal runs the expected image: under the rolling strategy old containers serve until "
                    "they drain; verify again later, or `stop` and `start` to replace them at once"
                )
                return
            await asyncio.sleep(ROLLOUT_POLL_S)

    def endpoint(self, app: AppContext) -> Endpoint:
        self._require_credentials()

        async def url() -> str:
            await self._lookup(app)
            return await self._web_url(app)

        base = asyncio.run(url())
        return Endpoint(
            base_url=base,
            ws_url=protocol.ws_url_for(base, app.processor.spec.api.path),
            token=self._token(app),
        )

    # --- dev cleanup --------------------------------------------------------------------------------
    def list_apps(self, env: Environment) -> list[ListedApp]:
        self._require_credentials()
        return asyncio.run(self._list_apps(env))

    async def _list_apps(self, env: str) -> list[ListedApp]:
        # `Environment.apps.list` lists the live apps only (the SDK drops stopped and disabled ones).
        handles = await self._call(
            f"listing the apps in {env}", modal.Environment.from_name(env).apps.list.aio(), env=env
        )
        listed = []
        for handle in handles:
            name = handle.name
            if not name:
                listed.append(
                    ListedApp(str(handle.app_id), note="an ephemeral app (`modal run`/`serve`), not a deploy")
                )
                continue
            try:
                tags = await self._call(f"reading the tags of {name} in {env}", handle.get_tags.aio(), env=env)
            except TheoryDeployError as err:
                listed.append(ListedApp(name, note=f"its tags could not be read: {err.message}"))
                continue
            listed.append(ListedApp(name, modal_app.decode_tags(dict(tags))))
        return listed

    def stop_listed(self, env: Environment, listed: ListedApp) -> str | None:
        self._require_credentials()
        return asyncio.run(self._stop_listed(env, listed))

    async def _stop_listed(self, env: str, listed: ListedApp) -> str | None:
        try:
            handle = await self._call(
                f"looking up app {listed.name} in {env}",
                modal.App.lookup.aio(listed.name, environment_name=env),
                env=env,
                not_found=lambda message: _Absent(message),
            )
        except _Absent:
            return "left alone: no longer deployed (stopped or removed since it was listed)"
        tags = await self._call(f"reading the tags of {listed.name} in {env}", handle.get_tags.aio(), env=env)
        declined = changed_since_listing(listed, modal_app.decode_tags(dict(tags)))
        if declined:
            return declined
        await self._call(f"stopping {listed.name} in {env}", handle.stop.aio(), env=env)
        return None


LOCK_DICT = "theory-deploy-locks"
TAKEOVER_SETTLE_S = 1.0


class ModalLockStore(LockStore):
    """Deploy locks as entries of the `modal.Dict` LOCK_DICT in one environment: key the app name,
    value the record's JSON text. Reads never create the Dict (a missing Dict holds no lock); the
    first write creates it (`create_if_missing=True`).

    create is atomic: `put(key, value, skip_if_exists=True)` writes only when the key is absent and
    says whether it did. A Dict has no compare-and-swap, so:
      * replace reads, compares with the record the caller last read, writes, then re-reads to
        confirm its own record is there;
      * delete reads, compares, then `pop`s (atomic: it returns what it removed); when what it
        removed is not the record compared (changed in between), it puts that back with
        skip_if_exists, so a live lock is never deleted for good by a stale compare.
    The race left: two takers replacing the same EXPIRED record at the same moment (both read it,
    both see it expired, both write) can both see their own record on the re-read if one writes
    after the other has re-read. Taking over an expired lease therefore waits TAKEOVER_SETTLE_S
    (1 s, far longer than the read→write gap of one call) before the confirming re-read, so the
    later write is seen by the earlier writer, who then backs off (so does renewing one's own expired
    lease, which a taker may race). Renewals of a live lease by its own holder have no competing writer (everybody else waits), and a free lock is taken by the
    atomic create. Expiry is judged by the clocks of the machines involved (CI runners keep NTP
    time); leases last minutes, so seconds of skew do not matter.
    """

    def __init__(self, target: ModalTarget, env: str, *, settle_s: float = TAKEOVER_SETTLE_S) -> None:
        self.target, self.env, self.settle_s = target, env, settle_s
        self.where = f"Modal Dict {LOCK_DICT} in the environment {env}"
        self._handles: dict[bool, Any] = {}

    def _handle(self, create: bool) -> Any:
        if create not in self._handles:
            self._handles[create] = modal.Dict.from_name(LOCK_DICT, environment_name=self.env, create_if_missing=create)
        return self._handles[create]

    def _run(self, what: str, call: Callable[[Any], Awaitable[T]], *, create: bool) -> T:
        """One Dict call under the target's deadline; a missing Dict raises _Absent."""

        async def go() -> T:
            return await self.target._call(
                f"{what} in the Modal Dict {LOCK_DICT} ({self.env})",
                call(self._handle(create)),
                env=self.env,
                not_found=lambda message: _Absent(message),
            )

        return asyncio.run(go())

    def _read(self, key: str) -> Any:
        try:
            return self._run(f"reading {key}", lambda d: d.get.aio(key), create=False)
        except _Absent:
            return None

    def read(self, key: str) -> LockRecord | None:
        value = self._read(key)
        return None if value is None else LockRecord.loads(str(value))

    def _put(self, key: str, value: str, *, skip_if_exists: bool) -> bool:
        return bool(
            self._run(f"writing {key}", lambda d: d.put.aio(key, value, skip_if_exists=skip_if_exists), create=True)
        )

    def create(self, key: str, record: LockRecord) -> bool:
        return self._put(key, record.dumps(), skip_if_exists=True)

    def replace(self, key: str, old: LockRecord, new: LockRecord) -> bool:
        if self.read(key) != old:
            return False
        self._put(key, new.dumps(), skip_if_exists=False)
        if old.expired() and self.settle_s > 0:
            time.sleep(self.settle_s)  # an expired lease, which others may take too: let their put land first
        return self.read(key) == new

    def delete(self, key: str, old: LockRecord) -> bool:
        if self.read(key) != old:
            return False
        try:
            popped = self._run(f"removing {key}", lambda d: d.pop.aio(key, None), create=False)
        except _Absent:
            return False
        if popped is None:
            return False  # removed meanwhile by someone else
        if LockRecord.loads(str(popped)) != old:
            self._put(key, str(popped), skip_if_exists=True)  # not the record compared: put it back
            return False
        return True


def _env_keys(names: list[str]) -> list[str]:
    return [key for name in names for key in keys_for(name)]


@contextlib.contextmanager
def _imported(module: str) -> Iterator[Any]:
    """The generated deploy module, imported from a temporary file as Modal imports it (its name is
    part of Modal's function definition); sys.modules is restored afterwards."""
    previous = sys.modules.get(MODULE_NAME)
    with tempfile.TemporaryDirectory(prefix="theory-modal-") as folder:
        path = Path(folder) / f"{MODULE_NAME}.py"
        path.write_text(module, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
        assert spec is not None and spec.loader is not None
        module_obj = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module_obj
        try:
            spec.loader.exec_module(module_obj)
            yield module_obj
        finally:
            if previous is None:
                sys.modules.pop(MODULE_NAME, None)
            else:
                sys.modules[MODULE_NAME] = previous
