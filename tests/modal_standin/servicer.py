"""A grpclib servicer for Modal's control plane (``modal.client.ModalClient``), stateful where we care.

Sources: Modal's docs (https://modal.com/docs/guide/secrets, /guide/existing-images, the
``modal.Secret`` / ``modal.Image.from_registry`` reference) and the pinned SDK's own code
(``modal/secret.py``, ``modal/_image.py``, ``modal/mount.py``, ``modal/_utils/name_utils.py``,
``modal/_grpc_client.py`` for how statuses map to exceptions). Where a rule below is not documented,
it says "assumption".

Every call is recorded (``StandInState.calls``) before anything else happens, and a refused call
keeps the gRPC status and message it was refused with. The rules, in order:

1. **Auth.** The token in the metadata must match (else UNAUTHENTICATED: ``AuthError``).
2. **Environments.** A request with an ``environment_name`` field must name one of the stand-in's
   environments: empty -> INVALID_ARGUMENT (``InvalidError``), unknown -> NOT_FOUND
   (``NotFoundError``). The real server falls back to the workspace's default environment for an
   empty name; the stand-in refuses, so tests prove the product never relies on that fallback.
   (EnvironmentGetOrCreate carries the name in ``deployment_name``; App lookups by app id ignore the
   environment, as the SDK documents; objects owned by an app, such as the anonymous mount of the
   deploy module, are sent with an app_id and no environment: they take the app's, and the call is
   recorded with ``environment_from_app=True``.) ``EnvironmentCreate`` adds one (ALREADY_EXISTS for a
   name in use); ``EnvironmentDelete`` removes one (NOT_FOUND for an unknown name) with its objects,
   as ``Environment.objects.delete`` documents ("will transitively delete all objects in the
   Environment"): its named secrets and Dicts are deleted, its apps stopped.
3. **Unknown RPCs answer UNIMPLEMENTED** ("stand-in: <Name> is not implemented";
   ``modal.exception.UnimplementedError``), unary and streaming alike: an RPC is answered only by
   a real implementation (``_do_<Name>`` / ``_stream_<Name>``), never by an empty success, so a
   product that starts depending on a new RPC fails loudly here instead of reading an empty reply.
   The deploy path's mount RPCs are real: ``MountBatchedCheckExistence`` reports the hashes the
   stand-in has not received, ``MountPutFile`` stores inline file content after checking it hashes
   to its ``sha256_hex`` (INVALID_ARGUMENT otherwise) and says whether the content exists,
   ``MountGetOrCreate`` refuses (INVALID_ARGUMENT) files whose content was never uploaded
   (assumption: the real status is undocumented). Blob uploads (files over the inline limit) are
   UNIMPLEMENTED. ``AppRollback`` is UNIMPLEMENTED on purpose (a paid-plan feature).
4. **Image builds pull what they reference** (``_stream_ImageJoinStreaming``). A layer whose
   Dockerfile starts ``FROM <registry ref>`` (``Image.from_registry``) is built by fetching that
   reference from the real registry (``registry_pull``: Docker Registry API v2, anonymous first,
   then Basic or Bearer-token auth on a challenge), with the ``REGISTRY_USERNAME`` /
   ``REGISTRY_PASSWORD`` of the secret ``image_registry_config.secret_id`` names (looked up by id:
   assumption, the id is all the request carries, so a secret of another environment is not
   refused). The build fails (``GenericResult`` FAILURE, which the SDK raises as ``ImageBuildError``
   "Image build for im-... failed with the exception: failed to pull <ref>: <why>") when: the
   manifest does not exist (404, "manifest unknown"); the registry asks for credentials and no
   secret is attached ("unauthorized: authentication required"); the registry refuses the
   secret's credentials (401/403, or a token realm that refuses them); the secret is deleted or
   unknown, or lacks either key; the reference is not ``linux/amd64`` (an index without such an
   entry, or a config of another platform: Modal documents that from_registry images must be
   linux/amd64); a layer blob is missing. The wording of these messages is an assumption (Modal's
   is undocumented; Docker's is followed). AWS/GCP registry auth are not implemented (the build
   fails saying so); only loopback registries are contacted (any other host fails the build:
   nothing here may send elsewhere). A successful build is cached by image definition, as Modal's
   ``ImageGetOrCreate`` documents, so the same definition is not pulled twice; a failed one is
   retried on the next deploy. ``owner.image_build_hook`` (Modal's workers, played by a test) runs
   only after the pull succeeded. Every pull is recorded in ``StandInState.pulls``.
5. **Secrets follow Modal's documented limits** (docs "Secrets" > "Limits"): key names contain only
   letters, digits and underscores and do not start with a digit, at most 16,384 characters;
   values at most 32,768 characters. Refused with INVALID_ARGUMENT (``InvalidError``; assumption:
   the status, as for every validation error the SDK raises itself) on SecretGetOrCreate (every
   kind that sends values) and SecretUpdate, never echoing a value. Empty values are accepted
   (assumption: undocumented; the CLI's ``modal secret create NAME KEY=`` sends one and the SDK
   never refuses it; the product's placeholders rely on it). Named creation kinds also check the
   object-name rule of ``check_object_name`` (``[A-Za-z0-9._-]``, at most 64 characters, not shaped
   like an App ID): the SDK checks it client-side, the stand-in checks it again at the wire. A
   lookup of an invalid name is simply NOT_FOUND (assumption).
6. **A secret lives in one environment.** SecretGetOrCreate resolves names in the request's
   environment only. ``SecretUpdateRequest``, ``SecretGetInfoRequest`` and ``SecretDeleteRequest``
   carry no environment (only ``secret_id``; tests/test_modal_standin.py pins this), so the id is
   the environment handle: it must be live (NOT_FOUND for an unknown id, a deleted secret, or one
   replaced by a newer secret of the same name), and it only ever reaches its own record.
7. **Dicts** (the deploy lock) are per environment, as documented: see the section below.
8. **Image ids come from the definition, never handed out freely.** ``ImageGetOrCreate`` derives the
   id from the image definition it is sent (its Dockerfile commands, base images, registry secret id
   and environment values, serialized deterministically) and the request's ``builder_version``, and
   an identical definition gets the existing image back, as ``Image.build``'s docstring documents.
   That the id depends on exactly these inputs is an assumption (Modal does not document its id
   scheme; the pull secret's id and the builder version are named as inputs in
   ../shared/reference/platform-facts.md). A function's ``image_id`` is the one its ``FunctionCreate``
   carried, and ``FunctionGet`` returns it in ``ranked_functions[].function`` as Modal does.
9. **A publish merges the app's tags** into the ones it already has (assumption: whether it merges
   or replaces is undocumented; merging is the choice a client that relies on replacement fails
   on). ``AppSetTags`` replaces them all, as ``App.set_tags`` documents.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import json
import re
import shlex
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpclib.const
from google.protobuf import empty_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpclib import GRPCError, Status
from modal_proto import api_grpc, api_pb2

from . import registry_pull
from .ids import content_id, new_id
from .state import (
    AppRecord,
    CallRecord,
    DeployRecord,
    DictRecord,
    FunctionRecord,
    ImageRecord,
    ImageSpec,
    LogRecord,
    MountRecord,
    PullRecord,
    SecretRecord,
    StandInState,
)

if TYPE_CHECKING:
    import grpclib.server

_APP_STATE_TO_PROTO = {
    "initializing": api_pb2.APP_STATE_INITIALIZING,
    "ephemeral": api_pb2.APP_STATE_EPHEMERAL,
    "detached": api_pb2.APP_STATE_DETACHED,
    "deployed": api_pb2.APP_STATE_DEPLOYED,
    "stopping": api_pb2.APP_STATE_STOPPING,
    "stopped": api_pb2.APP_STATE_STOPPED,
}
_PROTO_TO_APP_STATE = {
    api_pb2.APP_STATE_INITIALIZING: "initializing",
    api_pb2.APP_STATE_EPHEMERAL: "ephemeral",
    api_pb2.APP_STATE_DETACHED: "detached",
    api_pb2.APP_STATE_DEPLOYED: "deployed",
}
_FD = {
    "stdout": api_pb2.FILE_DESCRIPTOR_STDOUT,
    "stderr": api_pb2.FILE_DESCRIPTOR_STDERR,
    "system": api_pb2.FILE_DESCRIPTOR_INFO,
}


# Modal's documented limits for Secrets (https://modal.com/docs/guide/secrets, "Limits"): key names
# are environment variable names of at most 16,384 characters; values at most 32,768 characters.
SECRET_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_KEY_MAX_CHARS = 16_384
SECRET_VALUE_MAX_CHARS = 32_768
# The SDK's object-name rule (modal/_utils/name_utils.py, check_object_name), which Modal's docs state
# for every named object: [A-Za-z0-9._-], at most 64 characters, not shaped like an App ID.
OBJECT_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
APP_ID_RE = re.compile(r"^ap-[A-Za-z0-9]{22}$")
REGISTRY_KEYS = ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")
_CREATING = (
    api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
    api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
    api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS,
)


def _is_app_id(s: str) -> bool:
    return s.startswith("ap-") and len(s) == 25 and s[3:].isalnum()


def _is_repeated(f: FieldDescriptor) -> bool:
    rep = getattr(f, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return f.label == FieldDescriptor.LABEL_REPEATED  # older protobuf


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def function_to_data(fn: api_pb2.Function) -> api_pb2.FunctionData:
    """Build the FunctionData a real server returns for a Function definition (same-named fields)."""
    fd = api_pb2.FunctionData()
    src_fields = {f.name: f for f in fn.DESCRIPTOR.fields}
    for f in fd.DESCRIPTOR.fields:
        if f.name == "ranked_functions":
            continue
        g = src_fields.get(f.name)
        if g is None or g.type != f.type or _is_repeated(g) != _is_repeated(f):
            continue
        if f.message_type is not None and f.message_type.full_name != g.message_type.full_name:
            continue
        src, name = getattr(fn, f.name), f.name
        if _is_map(f):
            dst = getattr(fd, name)
            value_field = f.message_type.fields_by_name["value"]
            for k, v in src.items():
                if value_field.message_type is not None:
                    dst[k].CopyFrom(v)
                else:
                    dst[k] = v
        elif _is_repeated(f):
            getattr(fd, name).extend(src)
        elif f.message_type is not None:
            if fn.HasField(name):
                getattr(fd, name).CopyFrom(src)
        else:
            setattr(fd, name, src)
    fd.ranked_functions.add(rank=0).function.CopyFrom(fn)
    return fd


def _definition_id(fn: api_pb2.Function) -> str:
    """Content hash of a definition; order-insensitive where the client's ordering is not stable."""
    norm = api_pb2.Function()
    norm.CopyFrom(fn)
    norm.web_url = ""
    mounts = sorted(norm.mount_ids)
    del norm.mount_ids[:]
    norm.mount_ids.extend(mounts)
    deps = sorted(norm.object_dependencies, key=lambda d: d.SerializeToString(deterministic=True))
    deps_copy = [type(d)() for d in deps]
    for dst, src in zip(deps_copy, deps, strict=True):
        dst.CopyFrom(src)
    del norm.object_dependencies[:]
    norm.object_dependencies.extend(deps_copy)
    return content_id("de", norm.SerializeToString(deterministic=True))


class StandInServicer(api_grpc.ModalClientBase):
    """Serves every ModalClient RPC: the implemented ones for real, the rest UNIMPLEMENTED (see the
    module docstring). Configure through the owning ``ModalStandIn``."""

    def __init__(self, owner: Any, state: StandInState) -> None:
        self.owner = owner  # ModalStandIn: token, user, web_url_for, image_build_hook, port
        self.state = state
        self._handlers = {k.rsplit("/", 1)[1]: h for k, h in self.__mapping__().items()}
        self._last_created = 0.0
        self._log_seq = 0
        self._current_client_version = ""  # of the call being handled (handlers run one at a time)

    # ------------------------------------------------------------------ dispatch
    async def _dispatch(self, name: str, stream: grpclib.server.Stream) -> None:
        handler = self._handlers[name]
        req = await stream.recv_message()
        assert req is not None
        env, from_app = self._request_environment(name, req)
        token_id = stream.metadata.get("x-modal-token-id") if stream.metadata else None
        token_secret = stream.metadata.get("x-modal-token-secret") if stream.metadata else None
        client_version = (stream.metadata.get("x-modal-client-version") if stream.metadata else None) or ""
        call = CallRecord(
            name,
            env,
            req,
            time.time(),
            token_id,
            environment_from_app=from_app,
            client_version=client_version,
        )
        self._current_client_version = client_version
        with self.state.lock:
            self.state.calls.append(call)
        try:
            if (token_id, token_secret) != (self.owner.token_id, self.owner.token_secret):
                raise GRPCError(Status.UNAUTHENTICATED, "stand-in: token id/secret do not match")
            if env is not None:
                self._check_environment(env)
            if handler.cardinality == grpclib.const.Cardinality.UNARY_STREAM:
                impl = getattr(self, f"_stream_{name}", None)
                if impl is None:
                    raise GRPCError(Status.UNIMPLEMENTED, f"stand-in: {name} is not implemented")
                async for msg in impl(req):
                    await stream.send_message(msg)
                return
            impl = getattr(self, f"_do_{name}", None)
            if impl is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"stand-in: {name} is not implemented")
            if inspect.iscoroutinefunction(impl):
                reply = await impl(req)
            else:
                with self.state.lock:
                    reply = impl(req)
            await stream.send_message(reply)
        except GRPCError as exc:
            call.status, call.error = exc.status.name, exc.message or ""
            raise

    def _request_environment(self, name: str, req: Message) -> tuple[str | None, bool]:
        """(environment name, whether it was taken from the request's app_id)."""
        if name == "EnvironmentGetOrCreate":
            return req.deployment_name, False
        if name == "AppGetOrCreate" and _is_app_id(req.app_name):
            return None, False  # lookup by app id ignores the environment
        fields = req.DESCRIPTOR.fields_by_name
        if "environment_name" not in fields:
            return None, False
        if not req.environment_name and "app_id" in fields and req.app_id:
            # Objects owned by an app (anonymous mounts, ...) are sent without an environment:
            # they live in the app's.
            with self.state.lock:
                app = self.state.apps.get(req.app_id)
            if app is not None:
                return app.environment_name, True
        return req.environment_name, False

    def _check_environment(self, env: str) -> None:
        if not env:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                "stand-in: environment_name is empty; there is no default environment here",
            )
        if env not in self.state.environments:
            raise GRPCError(Status.NOT_FOUND, f"Environment '{env}' not found")

    # ------------------------------------------------------------------ helpers
    def _now_created(self) -> float:
        """A creation time strictly greater than the last one (list pagination relies on order)."""
        now = time.time()
        if now <= self._last_created:
            now = self._last_created + 1e-6
        self._last_created = now
        return now

    def _app(self, app_id: str) -> AppRecord:
        app = self.state.apps.get(app_id)
        if app is None:
            raise GRPCError(Status.NOT_FOUND, f"App '{app_id}' not found")
        return app

    def _lifecycle(self, app: AppRecord) -> api_pb2.AppLifecycle:
        return api_pb2.AppLifecycle(
            app_state=_APP_STATE_TO_PROTO.get(app.state, api_pb2.APP_STATE_UNSPECIFIED),
            created_at=app.created_at,
            created_by=app.created_by,
            deployed_at=app.deployed_at,
            deployed_by=app.deployed_by,
            version=app.version,
            stopped_at=app.stopped_at,
            stopped_by=app.stopped_by,
        )

    def _handle_metadata(self, app: AppRecord) -> api_pb2.AppHandleMetadata:
        return api_pb2.AppHandleMetadata(
            description=app.description,
            app_id=app.app_id,
            environment_name=app.environment_name,
            lifecycle=self._lifecycle(app),
            functions={n: f.function_id for n, f in app.functions.items()},
        )

    def web_url(self, app_name: str, env: str, function_name: str, function: FunctionRecord | None = None) -> str:
        """Ask ``owner.web_url_for`` (if set). Keywords ``function_name`` and ``function`` (the
        FunctionRecord, None at precreate) are passed when the hook's signature takes them."""
        hook: Callable[..., str] | None = self.owner.web_url_for
        if hook is None:
            return f"http://127.0.0.1:{self.owner.port}/{env}/{app_name}"
        try:
            params = inspect.signature(hook).parameters
        except (TypeError, ValueError):
            params = {}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        extra = {k: v for k, v in (("function_name", function_name), ("function", function)) if var_kw or k in params}
        return hook(app_name, env, **extra)

    def _refresh_web_url(self, app: AppRecord, rec: FunctionRecord) -> None:
        if rec.webhook_type:
            rec.web_url = self.web_url(app.name or app.description, app.environment_name, rec.name, rec)
            rec.function_data.web_url = rec.web_url

    def _function_handle_metadata(self, rec: FunctionRecord) -> api_pb2.FunctionHandleMetadata:
        fn = rec.proto
        return api_pb2.FunctionHandleMetadata(
            function_name=rec.name,
            function_type=fn.function_type,
            web_url=rec.web_url,
            is_method=fn.is_method,
            definition_id=rec.definition_id,
            function_schema=fn.function_schema,
            supported_input_formats=fn.supported_input_formats,
            supported_output_formats=fn.supported_output_formats,
            app_id=rec.app_id,
        )

    def image_spec(self, image_id: str) -> ImageSpec:
        """Resolve an image chain: registry ref + pull secret of the base, ENV layers merged."""
        chain: list[ImageRecord] = []
        cur: str | None = image_id
        while cur and cur in self.state.images and len(chain) < 100:
            rec = self.state.images[cur]
            chain.append(rec)
            cur = rec.base_image_ids[0] if rec.base_image_ids else None
        chain.reverse()  # base first
        registry_ref = secret_id = None
        env: dict[str, str] = {}
        for rec in chain:
            for cmd in rec.dockerfile_commands:
                word, _, rest = cmd.strip().partition(" ")
                if word.upper() == "FROM" and rest.strip() != "base":
                    registry_ref = rest.strip().split()[0]
                    secret_id = rec.registry_secret_id or None
                elif word.upper() == "ENV" and "=" in rest:
                    key, _, raw = rest.partition("=")
                    parts = shlex.split(raw) if raw.strip() else [""]
                    env[key.strip()] = parts[0] if parts else ""
        secret = self.state.secrets_by_id.get(secret_id) if secret_id else None
        return ImageSpec(
            image_id=image_id,
            registry_ref=registry_ref,
            registry_secret_id=secret_id,
            registry_secret_name=secret.name if secret else None,
            registry_secret_environment=secret.environment_name if secret else None,
            env=env,
            dockerfile_commands=[list(r.dockerfile_commands) for r in chain],
            layer_ids=[r.image_id for r in chain],
        )

    # ------------------------------------------------------------------ client / auth
    def _do_ClientHello(self, req: empty_pb2.Empty) -> api_pb2.ClientHelloResponse:
        return api_pb2.ClientHelloResponse(image_builder_version=self.owner.image_builder_version)

    def _do_AuthTokenGet(self, req: api_pb2.AuthTokenGetRequest) -> api_pb2.AuthTokenGetResponse:
        def b64(d: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

        token = f"{b64({'alg': 'none'})}.{b64({'exp': int(time.time()) + 3600})}.standin"
        return api_pb2.AuthTokenGetResponse(token=token)

    # ------------------------------------------------------------------ environments
    def _env_metadata(self, name: str) -> api_pb2.EnvironmentMetadata:
        return api_pb2.EnvironmentMetadata(
            name=name,
            settings=api_pb2.EnvironmentSettings(
                image_builder_version=self.owner.image_builder_version, webhook_suffix="modal.run"
            ),
        )

    def _do_EnvironmentGetOrCreate(self, req: api_pb2.EnvironmentGetOrCreateRequest):
        return api_pb2.EnvironmentGetOrCreateResponse(
            environment_id=content_id("en", req.deployment_name.encode()),
            metadata=self._env_metadata(req.deployment_name),
        )

    def _do_EnvironmentList(self, req: empty_pb2.Empty) -> api_pb2.EnvironmentListResponse:
        return api_pb2.EnvironmentListResponse(
            items=[
                api_pb2.EnvironmentListItem(
                    name=e,
                    environment_id=content_id("en", e.encode()),
                    webhook_suffix="modal.run",
                    default=False,
                    image_builder_version=self.owner.image_builder_version,
                )
                for e in self.state.environments
            ]
        )

    def _do_EnvironmentCreate(self, req: api_pb2.EnvironmentCreateRequest) -> empty_pb2.Empty:
        if req.name in self.state.environments:
            raise GRPCError(Status.ALREADY_EXISTS, f"Environment '{req.name}' already exists")
        self.state.environments.append(req.name)
        self.state.secrets.setdefault(req.name, {})
        self.state.dicts.setdefault(req.name, {})
        return empty_pb2.Empty()

    def _do_EnvironmentDelete(self, req: api_pb2.EnvironmentDeleteRequest) -> empty_pb2.Empty:
        if req.name not in self.state.environments:
            raise GRPCError(Status.NOT_FOUND, f"Environment '{req.name}' not found")
        self.state.environments.remove(req.name)
        # Transitive, as `Environment.objects.delete` documents: the environment's named secrets and
        # its Dicts go (their ids die with them), its apps stop; a re-created namesake starts empty.
        self.state.secrets.pop(req.name, None)
        self.state.dicts.pop(req.name, None)
        for rec in self.state.dicts_by_id.values():
            if rec.environment_name == req.name:
                rec.deleted = True
        for app in self.state.apps_in(req.name):
            if app.state != "stopped":
                app.state, app.stopped_at, app.stopped_by = "stopped", time.time(), self.owner.user
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ apps
    def _new_app(self, env: str, name: str, description: str, state: str, tags: dict[str, str]) -> AppRecord:
        app = AppRecord(
            app_id=new_id("ap"),
            environment_name=env,
            name=name,
            description=description,
            state=state,
            created_at=self._now_created(),
            created_by=self.owner.user,
            tags=dict(tags),
        )
        self.state.apps[app.app_id] = app
        return app

    def _do_AppCreate(self, req: api_pb2.AppCreateRequest) -> api_pb2.AppCreateResponse:
        state = _PROTO_TO_APP_STATE.get(req.app_state, "ephemeral")
        app = self._new_app(req.environment_name, "", req.description, state, dict(req.tags))
        return api_pb2.AppCreateResponse(
            app_id=app.app_id,
            app_page_url=f"https://modal.com/apps/standin/{app.environment_name}/{app.app_id}",
            app_logs_url=f"https://modal.com/apps/standin/{app.environment_name}/{app.app_id}/logs",
        )

    def _do_AppGetByDeploymentName(self, req: api_pb2.AppGetByDeploymentNameRequest):
        app = self.state.deployed_app(req.environment_name, req.name)
        if app is None:
            return api_pb2.AppGetByDeploymentNameResponse()
        return api_pb2.AppGetByDeploymentNameResponse(
            app_id=app.app_id, environment_name=app.environment_name, lifecycle=self._lifecycle(app)
        )

    def _do_AppGetLayout(self, req: api_pb2.AppGetLayoutRequest) -> api_pb2.AppGetLayoutResponse:
        app = self._app(req.app_id)
        layout = api_pb2.AppLayout(function_ids={n: f.function_id for n, f in app.functions.items()})
        for rec in app.functions.values():
            layout.objects.add(object_id=rec.function_id).function_handle_metadata.CopyFrom(
                self._function_handle_metadata(rec)
            )
        return api_pb2.AppGetLayoutResponse(app_layout=layout)

    def _do_AppGetOrCreate(self, req: api_pb2.AppGetOrCreateRequest) -> api_pb2.AppGetOrCreateResponse:
        if _is_app_id(req.app_name):
            app = self._app(req.app_name)
        else:
            app = self.state.deployed_app(req.environment_name, req.app_name)
            if app is None:
                if req.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                    raise GRPCError(
                        Status.NOT_FOUND,
                        f"App '{req.app_name}' not found in environment '{req.environment_name}'",
                    )
                app = self._new_app(req.environment_name, req.app_name, req.app_name, "deployed", {})
        return api_pb2.AppGetOrCreateResponse(app_id=app.app_id, handle_metadata=self._handle_metadata(app))

    def _do_AppGetInfo(self, req: api_pb2.AppGetInfoRequest) -> api_pb2.AppGetInfoResponse:
        return api_pb2.AppGetInfoResponse(info=self._handle_metadata(self._app(req.app_id)))

    def _do_AppGetLifecycle(self, req: api_pb2.AppGetLifecycleRequest):
        return api_pb2.AppGetLifecycleResponse(lifecycle=self._lifecycle(self._app(req.app_id)))

    def _do_AppGetTags(self, req: api_pb2.AppGetTagsRequest) -> api_pb2.AppGetTagsResponse:
        return api_pb2.AppGetTagsResponse(tags=self._app(req.app_id).tags)

    def _do_AppSetTags(self, req: api_pb2.AppSetTagsRequest) -> empty_pb2.Empty:
        self._app(req.app_id).tags = dict(req.tags)
        return empty_pb2.Empty()

    def _do_AppHeartbeat(self, req: api_pb2.AppHeartbeatRequest) -> empty_pb2.Empty:
        self._app(req.app_id)
        return empty_pb2.Empty()

    def _do_AppClientDisconnect(self, req: api_pb2.AppClientDisconnectRequest) -> empty_pb2.Empty:
        app = self.state.apps.get(req.app_id)
        if app is not None and app.state in ("initializing", "ephemeral"):
            app.state, app.stopped_at, app.stopped_by = "stopped", time.time(), self.owner.user
            app.pending_functions.clear()
        return empty_pb2.Empty()

    def _do_AppStop(self, req: api_pb2.AppStopRequest) -> empty_pb2.Empty:
        app = self._app(req.app_id)
        if app.state != "stopped":
            app.state, app.stopped_at, app.stopped_by = "stopped", time.time(), self.owner.user
        return empty_pb2.Empty()

    def _do_AppList(self, req: api_pb2.AppListRequest) -> api_pb2.AppListResponse:
        resp = api_pb2.AppListResponse()
        for app in sorted(self.state.apps_in(req.environment_name), key=lambda a: a.created_at):
            resp.apps.add(
                app_id=app.app_id,
                description=app.description,
                state=_APP_STATE_TO_PROTO.get(app.state, api_pb2.APP_STATE_UNSPECIFIED),
                created_at=app.created_at,
                stopped_at=app.stopped_at,
                name=app.name,
                metadata=self._handle_metadata(app),
            )
        return resp

    def _do_AppDeploymentHistory(self, req: api_pb2.AppDeploymentHistoryRequest):
        app = self._app(req.app_id)
        resp = api_pb2.AppDeploymentHistoryResponse(production_app_version=app.version)
        for d in app.deploys:
            if d.noop:
                continue
            resp.app_deployment_histories.add(
                app_id=d.app_id,
                version=d.version,
                client_version=d.client_version,
                deployed_at=d.deployed_at,
                deployed_by=d.deployed_by,
                tag=d.deployment_tag,
                rollback_allowed=False,
            )
        return resp

    def _do_AppRollback(self, req: api_pb2.AppRollbackRequest):
        raise GRPCError(Status.UNIMPLEMENTED, "stand-in: rollback is not supported (it needs a paid plan on Modal)")

    def _do_AppPublish(self, req: api_pb2.AppPublishRequest) -> api_pb2.AppPublishResponse:
        app = self._app(req.app_id)
        env = app.environment_name
        functions: dict[str, FunctionRecord] = {}
        for tag, fid in req.function_ids.items():
            rec = self.state.functions.get(fid)
            if rec is None:
                raise GRPCError(Status.NOT_FOUND, f"Function '{fid}' not found")
            functions[tag] = rec
        app.pending_functions.clear()
        url = f"https://modal.com/apps/standin/{env}/deployed/{req.name or app.description}"
        if req.app_state != api_pb2.APP_STATE_DEPLOYED:
            app.functions = functions
            if req.app_state in _PROTO_TO_APP_STATE:
                app.state = _PROTO_TO_APP_STATE[req.app_state]
            return api_pb2.AppPublishResponse(url=url)

        name = req.name
        other = self.state.deployed_app(env, name)
        if other is not None and other.app_id != app.app_id:  # a second app takes over the name
            other.state, other.stopped_at, other.stopped_by = "stopped", time.time(), self.owner.user
        signature = (
            tuple(sorted((t, f.definition_id) for t, f in functions.items())),
            tuple(sorted(req.class_ids.items())),
            tuple(sorted(req.tags.items())),
            req.deployment_tag,
        )
        last = app.last_deploy
        noop = (
            self.owner.detect_noop_deploys
            and app.state == "deployed"
            and last is not None
            and app.signature == signature
        )
        app.name = name
        if noop:
            deployed_at_reply = 0.0
        else:
            app.version += 1
            app.deployed_at = time.time()
            app.deployed_by = self.owner.user
            app.deployment_tag = req.deployment_tag
            app.tags = {**app.tags, **req.tags}  # rule 9: merged (AppSetTags replaces)
            app.functions = functions
            app.state = "deployed"
            app.signature = signature
            deployed_at_reply = app.deployed_at
        for rec in app.functions.values():
            self._refresh_web_url(app, rec)
        commit = req.commit_info
        app.deploys.append(
            DeployRecord(
                app_id=app.app_id,
                environment_name=env,
                app_name=name,
                version=app.version,
                noop=noop,
                deployment_tag=req.deployment_tag,
                app_tags=dict(req.tags),
                deployed_at=app.deployed_at,
                deployed_by=app.deployed_by,
                strategy="rolling",
                functions=dict(functions),
                images={t: self.image_spec(f.image_id) for t, f in functions.items()},
                commit_info={
                    "vcs": commit.vcs,
                    "branch": commit.branch,
                    "commit_hash": commit.commit_hash,
                    "dirty": commit.dirty,
                    "repo_url": commit.repo_url,
                }
                if req.HasField("commit_info")
                else {},
                client_version=req.client_version or self._current_client_version,
            )
        )
        return api_pb2.AppPublishResponse(url=url, deployed_at=deployed_at_reply)

    def _do_TaskList(self, req: api_pb2.TaskListRequest) -> api_pb2.TaskListResponse:
        # `strategy="recreate"` is not on the wire: after a (non-noop) publish the client lists the
        # app's old containers to stop them. That is the only trace it leaves.
        app = self.state.apps.get(req.app_id)
        if app is not None and app.last_deploy is not None and not app.last_deploy.noop:
            app.last_deploy.strategy = "recreate"
        return api_pb2.TaskListResponse()

    # ------------------------------------------------------------------ functions
    def _do_FunctionPrecreate(self, req: api_pb2.FunctionPrecreateRequest):
        app = self._app(req.app_id)
        fid = req.existing_function_id or new_id("fu")
        web_url = ""
        if req.webhook_config.type != api_pb2.WEBHOOK_TYPE_UNSPECIFIED:
            web_url = self.web_url(app.name or app.description, app.environment_name, req.function_name)
        return api_pb2.FunctionPrecreateResponse(
            function_id=fid,
            handle_metadata=api_pb2.FunctionHandleMetadata(
                function_name=req.function_name,
                function_type=req.function_type,
                web_url=web_url,
                function_schema=req.function_schema,
                supported_input_formats=req.supported_input_formats,
                supported_output_formats=req.supported_output_formats,
                app_id=app.app_id,
            ),
        )

    def _do_FunctionCreate(self, req: api_pb2.FunctionCreateRequest) -> api_pb2.FunctionCreateResponse:
        app = self._app(req.app_id)
        if req.HasField("function_data"):
            data = api_pb2.FunctionData()
            data.CopyFrom(req.function_data)
            fn = api_pb2.Function()
            fn.CopyFrom(data.ranked_functions[0].function)
        else:
            fn = api_pb2.Function()
            fn.CopyFrom(req.function)
            data = function_to_data(fn)
        name = fn.function_name
        fid = req.existing_function_id or new_id("fu")
        definition_id = _definition_id(fn)
        res = fn.resources
        gpus = [
            rf.function.resources.gpu_config for rf in data.ranked_functions if rf.function.resources.gpu_config.count
        ]
        gpu = ",".join(g.gpu_type + (f":{g.count}" if g.count > 1 else "") for g in gpus) or None
        webhook_type = (
            api_pb2.WebhookType.Name(fn.webhook_config.type).removeprefix("WEBHOOK_TYPE_")
            if fn.webhook_config.type != api_pb2.WEBHOOK_TYPE_UNSPECIFIED
            else None
        )
        secret_names = []
        for sid in fn.secret_ids:
            s = self.state.secrets_by_id.get(sid)
            secret_names.append(f"{s.environment_name}/{s.name}" if s and s.name else sid)
        rec = FunctionRecord(
            function_id=fid,
            app_id=app.app_id,
            environment_name=app.environment_name,
            name=name,
            definition_id=definition_id,
            image_id=fn.image_id,
            cpu=res.milli_cpu / 1000 if res.milli_cpu else None,
            memory_mb=res.memory_mb or None,
            gpu=gpu,
            timeout_secs=fn.timeout_secs,
            secret_ids=list(fn.secret_ids),
            secret_names=secret_names,
            max_concurrent_inputs=fn.max_concurrent_inputs,
            target_concurrent_inputs=fn.target_concurrent_inputs,
            webhook_type=webhook_type,
            web_url="",
            mount_ids=list(fn.mount_ids),
            module_name=fn.module_name,
            proto=fn,
            function_data=data,
        )
        self._refresh_web_url(app, rec)
        self.state.functions[fid] = rec
        app.pending_functions[name] = rec
        return api_pb2.FunctionCreateResponse(
            function_id=fid,
            function=fn,
            handle_metadata=self._function_handle_metadata(rec),
            function_data=data,
        )

    def _do_FunctionGet(self, req: api_pb2.FunctionGetRequest) -> api_pb2.FunctionGetResponse:
        app = self.state.deployed_app(req.environment_name, req.app_name)
        if app is None:
            raise GRPCError(Status.NOT_FOUND, f"App '{req.app_name}' not found in environment '{req.environment_name}'")
        functions = app.functions
        if req.app_version:
            found = [d for d in app.deploys if d.version == req.app_version and not d.noop]
            if not found:
                raise GRPCError(Status.NOT_FOUND, f"App '{req.app_name}' has no version {req.app_version}")
            functions = found[-1].functions
        rec = functions.get(req.object_tag)
        if rec is None:
            raise GRPCError(Status.NOT_FOUND, f"Function '{req.object_tag}' not found in app '{req.app_name}'")
        self._refresh_web_url(app, rec)
        return api_pb2.FunctionGetResponse(
            function_id=rec.function_id,
            handle_metadata=self._function_handle_metadata(rec),
            function=rec.function_data,
        )

    def _do_FunctionGetById(self, req: api_pb2.FunctionGetByIdRequest):
        rec = self.state.functions.get(req.function_id)
        if rec is None:
            raise GRPCError(Status.NOT_FOUND, f"Function '{req.function_id}' not found")
        app = self.state.apps.get(rec.app_id)
        if app is not None:
            self._refresh_web_url(app, rec)
        return api_pb2.FunctionGetByIdResponse(
            function=rec.function_data, handle_metadata=self._function_handle_metadata(rec)
        )

    # ------------------------------------------------------------------ images and mounts
    def _image_metadata(self) -> api_pb2.ImageMetadata:
        return api_pb2.ImageMetadata(
            python_version_info="Python 3.11.2 (stand-in)",
            image_builder_version=self.owner.image_builder_version,
            workdir="/",
        )

    def _do_ImageGetOrCreate(self, req: api_pb2.ImageGetOrCreateRequest):
        image = req.image
        image_id = content_id("im", req.builder_version.encode() + b"\0" + image.SerializeToString(deterministic=True))
        rec = self.state.images.get(image_id)
        if rec is not None and rec.builds > 0 and not req.force_build:
            return api_pb2.ImageGetOrCreateResponse(
                image_id=image_id,
                result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
                metadata=self._image_metadata(),
            )
        if rec is None:
            self.state.images[image_id] = ImageRecord(
                image_id=image_id,
                app_id=req.app_id,
                dockerfile_commands=list(image.dockerfile_commands),
                base_image_ids=[b.image_id for b in image.base_images],
                registry_auth_type=image.image_registry_config.registry_auth_type,
                registry_secret_id=image.image_registry_config.secret_id,
                secret_ids=list(image.secret_ids),
                proto=image,
            )
        return api_pb2.ImageGetOrCreateResponse(image_id=image_id)  # not built yet: client joins

    def _registry_base(self, rec: ImageRecord) -> str | None:
        """The registry reference a layer is built FROM (None for a layer built FROM its base image)."""
        base_tags = {b.docker_tag for b in rec.proto.base_images}
        for cmd in rec.dockerfile_commands:
            word, _, rest = cmd.strip().partition(" ")
            if word.upper() == "FROM":
                target = rest.strip().split()[0] if rest.strip() else ""
                return None if not target or target in base_tags or target == "base" else target
        return None

    def _registry_credentials(self, rec: ImageRecord) -> tuple[tuple[str, str] | None, str, str]:
        """(credentials, username, error) for pulling a layer's registry base, from its attached secret."""
        kind = rec.registry_auth_type
        if kind in (api_pb2.REGISTRY_AUTH_TYPE_AWS, api_pb2.REGISTRY_AUTH_TYPE_GCP):
            what = "AWS ECR" if kind == api_pb2.REGISTRY_AUTH_TYPE_AWS else "GCP Artifact Registry"
            return None, "", f"stand-in: {what} registry authentication is not implemented"
        if not rec.registry_secret_id:
            if kind == api_pb2.REGISTRY_AUTH_TYPE_STATIC_CREDS:
                return (
                    None,
                    "",
                    "Registry authentication by username and password needs a registry Secret; none is attached",
                )
            return None, "", ""  # anonymous pull
        secret = self.state.secrets_by_id.get(rec.registry_secret_id)
        live = secret is not None and (
            not secret.name or self.state.secret(secret.environment_name, secret.name) is secret
        )
        if secret is None or not live:
            return None, "", f"Registry Secret '{rec.registry_secret_id}' not found (it was deleted or never existed)"
        missing = [k for k in REGISTRY_KEYS if k not in secret.values]
        if missing:
            label = f"'{secret.name}' ({secret.environment_name})" if secret.name else f"'{secret.secret_id}'"
            return (
                None,
                "",
                f"Registry Secret {label} lacks the key(s) {', '.join(missing)}: it must hold REGISTRY_USERNAME "
                "and REGISTRY_PASSWORD",
            )
        user, password = (secret.values[k] for k in REGISTRY_KEYS)
        return (user, password), user, ""

    async def _stream_ImageJoinStreaming(self, req: api_pb2.ImageJoinStreamingRequest) -> AsyncIterator[Message]:
        loop = asyncio.get_running_loop()
        with self.state.lock:
            rec = self.state.images.get(req.image_id)
            if rec is None:
                raise GRPCError(Status.NOT_FOUND, f"Image '{req.image_id}' not found")
            spec = self.image_spec(req.image_id)
            ref = self._registry_base(rec)
            credentials, username, problem = self._registry_credentials(rec) if ref else (None, "", "")
        error = ""
        if ref is not None:
            # What Modal's builder does first: pull the FROM reference, with the registry secret.
            if problem:
                outcome = registry_pull.PullOutcome(ok=False, error=f"failed to pull {ref}: {problem}")
            else:
                outcome = await loop.run_in_executor(None, registry_pull.pull, ref, credentials)
            with self.state.lock:
                self.state.pulls.append(
                    PullRecord(
                        image_id=rec.image_id,
                        ref=ref,
                        secret_id=rec.registry_secret_id,
                        username=username,
                        auth=outcome.auth,
                        ok=outcome.ok,
                        error=outcome.error,
                        manifest_digest=outcome.manifest_digest,
                        at=time.time(),
                    )
                )
                if outcome.ok:
                    rec.pulled_digest = outcome.manifest_digest
            error = outcome.error
        hook = self.owner.image_build_hook
        if not error and hook is not None:  # Modal's workers, played by the test: after a pull succeeded
            try:
                await loop.run_in_executor(None, hook, spec)
            except Exception as exc:
                error = f"{exc}"
        if error:
            result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE, exception=error)
        else:
            result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
            with self.state.lock:
                rec.builds += 1
        yield api_pb2.ImageJoinStreamingResponse(result=result, entry_id="1", eof=True, metadata=self._image_metadata())

    def _do_ImageFromId(self, req: api_pb2.ImageFromIdRequest) -> api_pb2.ImageFromIdResponse:
        if req.image_id not in self.state.images:
            raise GRPCError(Status.NOT_FOUND, f"Image '{req.image_id}' not found")
        return api_pb2.ImageFromIdResponse(image_id=req.image_id, metadata=self._image_metadata())

    def _do_MountBatchedCheckExistence(self, req: api_pb2.MountBatchedCheckExistenceRequest):
        # The client uploads (MountPutFile) exactly the files reported missing here.
        resp = api_pb2.MountBatchedCheckExistenceResponse(
            missing_sha256_hex_hashes=[h for h in req.sha256_hex_hashes if h not in self.state.mount_blobs]
        )
        resp.checked_at.FromNanoseconds(time.time_ns())
        return resp

    def _do_MountPutFile(self, req: api_pb2.MountPutFileRequest) -> api_pb2.MountPutFileResponse:
        if req.data_blob_id:
            raise GRPCError(
                Status.UNIMPLEMENTED, "stand-in: blob uploads (files over the inline size) are not implemented"
            )
        if req.HasField("data"):
            if hashlib.sha256(req.data).hexdigest() != req.sha256_hex:
                raise GRPCError(Status.INVALID_ARGUMENT, f"File content does not match its sha256 {req.sha256_hex}")
            self.state.mount_blobs[req.sha256_hex] = bytes(req.data)
        return api_pb2.MountPutFileResponse(exists=req.sha256_hex in self.state.mount_blobs)

    def _do_MountGetOrCreate(self, req: api_pb2.MountGetOrCreateRequest):
        files = {f.filename: f.sha256_hex for f in req.files}
        never = sorted(n for n, h in files.items() if h not in self.state.mount_blobs)
        if never:
            raise GRPCError(Status.INVALID_ARGUMENT, f"Mount files were never uploaded: {', '.join(never[:5])}")
        key = json.dumps([req.deployment_name, req.namespace, sorted(files.items())]).encode()
        mount_id = content_id("mo", key)
        env, _from_app = self._request_environment("MountGetOrCreate", req)
        self.state.mounts.setdefault(mount_id, MountRecord(mount_id, env or "", req.deployment_name, files))
        checksum = content_id("", key)[1:]
        return api_pb2.MountGetOrCreateResponse(
            mount_id=mount_id,
            handle_metadata=api_pb2.MountHandleMetadata(content_checksum_sha256_hex=checksum),
        )

    # ------------------------------------------------------------------ secrets
    def _secret_metadata(self, rec: SecretRecord) -> api_pb2.SecretMetadata:
        return api_pb2.SecretMetadata(
            name=rec.name,
            creation_info=api_pb2.CreationInfo(created_at=rec.created_at, created_by=rec.created_by),
            keys=sorted(rec.values),
            environment_name=rec.environment_name,
        )

    def _live_secret(self, secret_id: str) -> SecretRecord:
        rec = self.state.secrets_by_id.get(secret_id)
        named = rec is not None and rec.name and self.state.secret(rec.environment_name, rec.name) is rec
        if rec is None or (rec.name and not named):
            raise GRPCError(Status.NOT_FOUND, f"Secret '{secret_id}' not found")
        return rec

    def _create_secret(self, env: str, name: str, values: dict[str, str], app_id: str = "") -> SecretRecord:
        now = self._now_created()
        rec = SecretRecord(new_id("st"), env, name, dict(values), now, self.owner.user, now, app_id)
        if name:
            self.state.secrets.setdefault(env, {})[name] = rec
        self.state.secrets_by_id[rec.secret_id] = rec
        return rec

    @staticmethod
    def _check_secret_entries(items: list[tuple[str, str]]) -> None:
        """Modal's documented key and value limits (never echoing a value: it is a secret)."""
        for key, value in items:
            shown = key if len(key) <= 64 else key[:61] + "..."
            if not SECRET_KEY_RE.match(key):
                raise GRPCError(
                    Status.INVALID_ARGUMENT,
                    f"Invalid Secret key {shown!r}: key names must contain only letters, digits and underscores, "
                    "and cannot start with a digit",
                )
            if len(key) > SECRET_KEY_MAX_CHARS:
                raise GRPCError(
                    Status.INVALID_ARGUMENT,
                    f"Secret key {shown!r} is {len(key)} characters long; the limit is {SECRET_KEY_MAX_CHARS}",
                )
            if len(value) > SECRET_VALUE_MAX_CHARS:
                raise GRPCError(
                    Status.INVALID_ARGUMENT,
                    f"The value of Secret key {shown!r} is {len(value)} characters long; "
                    f"the limit is {SECRET_VALUE_MAX_CHARS}",
                )

    @staticmethod
    def _check_object_name(name: str, kind: str) -> None:
        if not OBJECT_NAME_RE.match(name) or APP_ID_RE.match(name):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"Invalid {kind} name: '{name}'. Names may contain only alphanumeric characters, dashes, periods, "
                "and underscores, must be at most 64 characters long, and cannot conflict with App ID strings.",
            )

    def _do_SecretGetOrCreate(self, req: api_pb2.SecretGetOrCreateRequest):
        env, name, kind = req.environment_name, req.deployment_name, req.object_creation_type
        values = dict(req.env_dict)
        if kind in _CREATING:
            self._check_object_name(name, "Secret")
        if kind != api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:  # a lookup sends no values
            self._check_secret_entries(list(values.items()))
        if kind in (
            api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP,
            api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL,
        ):
            rec = self._create_secret(env, "", values, req.app_id)
        else:
            rec = self.state.secret(env, name)
            if kind == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
                if rec is None:
                    raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found in environment '{env}'")
            elif kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                if rec is None:
                    rec = self._create_secret(env, name, values)
            elif kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS:
                if rec is not None:
                    raise GRPCError(Status.ALREADY_EXISTS, f"Secret '{name}' already exists in environment '{env}'")
                rec = self._create_secret(env, name, values)
            elif kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS:
                if rec is None:
                    rec = self._create_secret(env, name, values)
                else:
                    rec.values, rec.updated_at = values, time.time()
            else:
                raise GRPCError(Status.INVALID_ARGUMENT, f"unsupported object_creation_type {kind}")
        missing = [k for k in req.required_keys if k not in rec.values]
        if missing:
            raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' is missing required keys: {', '.join(sorted(missing))}")
        return api_pb2.SecretGetOrCreateResponse(secret_id=rec.secret_id, metadata=self._secret_metadata(rec))

    def _do_SecretGetInfo(self, req: api_pb2.SecretGetInfoRequest) -> api_pb2.SecretGetInfoResponse:
        return api_pb2.SecretGetInfoResponse(metadata=self._secret_metadata(self._live_secret(req.secret_id)))

    def _do_SecretUpdate(self, req: api_pb2.SecretUpdateRequest) -> empty_pb2.Empty:
        # SecretUpdateRequest names no environment (only secret_id and updates): the id alone says
        # which environment's record changes, and it must be live there (not deleted, not replaced).
        rec = self._live_secret(req.secret_id)
        self._check_secret_entries([(u.key, u.value) for u in req.updates])
        for u in req.updates:
            rec.values[u.key] = u.value
        rec.updated_at = time.time()
        return empty_pb2.Empty()

    def _do_SecretDelete(self, req: api_pb2.SecretDeleteRequest) -> empty_pb2.Empty:
        rec = self._live_secret(req.secret_id)
        if rec.name:
            del self.state.secrets[rec.environment_name][rec.name]
        return empty_pb2.Empty()

    def _do_SecretList(self, req: api_pb2.SecretListRequest) -> api_pb2.SecretListResponse:
        recs = sorted(
            self.state.secrets.get(req.environment_name, {}).values(),
            key=lambda r: r.created_at,
            reverse=True,
        )
        if req.pagination.created_before:
            recs = [r for r in recs if r.created_at < req.pagination.created_before]
        if req.pagination.max_objects:
            recs = recs[: req.pagination.max_objects]
        resp = api_pb2.SecretListResponse(environment_name=req.environment_name)
        for r in recs:
            resp.items.add(
                label=r.name,
                created_at=r.created_at,
                environment_name=r.environment_name,
                secret_id=r.secret_id,
                metadata=self._secret_metadata(r),
            )
        return resp

    # ------------------------------------------------------------------ dicts
    # As Modal documents them: a named Dict lives in one environment; looking one up without
    # create_if_missing fails NOT_FOUND; `put(..., skip_if_exists=True)` (DictUpdate with
    # if_not_exists) writes only an absent key and says whether it did; keys are compared by their
    # serialized bytes. Every Dict RPC is answered here (none falls through to an empty reply).
    def _dict_metadata(self, rec: DictRecord) -> api_pb2.DictMetadata:
        return api_pb2.DictMetadata(
            name=rec.name, creation_info=api_pb2.CreationInfo(created_at=rec.created_at, created_by=rec.created_by)
        )

    def _live_dict(self, dict_id: str) -> DictRecord:
        rec = self.state.dicts_by_id.get(dict_id)
        if rec is None or rec.deleted:
            raise GRPCError(Status.NOT_FOUND, f"Dict '{dict_id}' not found")
        return rec

    def _create_dict(self, env: str, name: str, data: Any) -> DictRecord:
        rec = DictRecord(new_id("di"), env, name, self._now_created(), self.owner.user)
        for entry in data:
            rec.entries[bytes(entry.key)] = bytes(entry.value)
        if name:
            self.state.dicts.setdefault(env, {})[name] = rec
        self.state.dicts_by_id[rec.dict_id] = rec
        return rec

    def _do_DictGetOrCreate(self, req: api_pb2.DictGetOrCreateRequest) -> api_pb2.DictGetOrCreateResponse:
        env, name, kind = req.environment_name, req.deployment_name, req.object_creation_type
        if kind == api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL:
            rec = self._create_dict(env, "", req.data)
        else:
            if not name:
                raise GRPCError(Status.INVALID_ARGUMENT, "Dict name is empty")
            rec = self.state.dict_named(env, name)
            if kind == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
                if rec is None:
                    raise GRPCError(Status.NOT_FOUND, f"Dict '{name}' not found in environment '{env}'")
            elif kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                if rec is None:
                    rec = self._create_dict(env, name, req.data)
            elif kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS:
                if rec is not None:
                    raise GRPCError(Status.ALREADY_EXISTS, f"Dict '{name}' already exists in environment '{env}'")
                rec = self._create_dict(env, name, req.data)
            else:
                raise GRPCError(Status.INVALID_ARGUMENT, f"unsupported object_creation_type {kind}")
        return api_pb2.DictGetOrCreateResponse(dict_id=rec.dict_id, metadata=self._dict_metadata(rec))

    def _do_DictGetById(self, req: api_pb2.DictGetByIdRequest) -> api_pb2.DictGetByIdResponse:
        rec = self._live_dict(req.dict_id)
        return api_pb2.DictGetByIdResponse(dict_id=rec.dict_id, metadata=self._dict_metadata(rec))

    def _do_DictUpdate(self, req: api_pb2.DictUpdateRequest) -> api_pb2.DictUpdateResponse:
        rec = self._live_dict(req.dict_id)
        created = True
        for entry in req.updates:
            key = bytes(entry.key)
            if req.if_not_exists and key in rec.entries:
                created = False
                continue
            rec.entries[key] = bytes(entry.value)
        return api_pb2.DictUpdateResponse(created=created)

    def _do_DictGet(self, req: api_pb2.DictGetRequest) -> api_pb2.DictGetResponse:
        value = self._live_dict(req.dict_id).entries.get(bytes(req.key))
        if value is None:
            return api_pb2.DictGetResponse(found=False)
        return api_pb2.DictGetResponse(found=True, value=value)

    def _do_DictPop(self, req: api_pb2.DictPopRequest) -> api_pb2.DictPopResponse:
        value = self._live_dict(req.dict_id).entries.pop(bytes(req.key), None)
        if value is None:
            return api_pb2.DictPopResponse(found=False)
        return api_pb2.DictPopResponse(found=True, value=value)

    def _do_DictContains(self, req: api_pb2.DictContainsRequest) -> api_pb2.DictContainsResponse:
        return api_pb2.DictContainsResponse(found=bytes(req.key) in self._live_dict(req.dict_id).entries)

    def _do_DictLen(self, req: api_pb2.DictLenRequest) -> api_pb2.DictLenResponse:
        return api_pb2.DictLenResponse(len=min(len(self._live_dict(req.dict_id).entries), 100_000))

    def _do_DictClear(self, req: api_pb2.DictClearRequest) -> empty_pb2.Empty:
        self._live_dict(req.dict_id).entries.clear()
        return empty_pb2.Empty()

    def _do_DictHeartbeat(self, req: api_pb2.DictHeartbeatRequest) -> empty_pb2.Empty:
        self._live_dict(req.dict_id)
        return empty_pb2.Empty()

    def _do_DictDelete(self, req: api_pb2.DictDeleteRequest) -> empty_pb2.Empty:
        rec = self._live_dict(req.dict_id)
        rec.deleted = True
        if rec.name and self.state.dict_named(rec.environment_name, rec.name) is rec:
            del self.state.dicts[rec.environment_name][rec.name]
        return empty_pb2.Empty()

    def _do_DictList(self, req: api_pb2.DictListRequest) -> api_pb2.DictListResponse:
        recs = sorted(self.state.dicts.get(req.environment_name, {}).values(), key=lambda r: r.created_at, reverse=True)
        if req.pagination.created_before:
            recs = [r for r in recs if r.created_at < req.pagination.created_before]
        if req.pagination.max_objects:
            recs = recs[: req.pagination.max_objects]
        resp = api_pb2.DictListResponse(environment_name=req.environment_name)
        for r in recs:
            resp.dicts.add(name=r.name, created_at=r.created_at, dict_id=r.dict_id, metadata=self._dict_metadata(r))
        return resp

    async def _stream_DictContents(self, req: api_pb2.DictContentsRequest) -> AsyncIterator[Message]:
        with self.state.lock:
            entries = list(self._live_dict(req.dict_id).entries.items())
        for key, value in entries:
            yield api_pb2.DictEntry(key=key if req.keys else b"", value=value if req.values else b"")

    # ------------------------------------------------------------------ logs
    def add_log(self, app: AppRecord, data: str, fd: str = "stdout", at: float | None = None) -> LogRecord:
        self._log_seq += 1
        rec = LogRecord(f"{self._log_seq:012d}", at if at is not None else time.time(), data, fd)
        app.logs.append(rec)
        return rec

    def _log_batch(self, app: AppRecord, recs: list[LogRecord]) -> api_pb2.TaskLogsBatch:
        batch = api_pb2.TaskLogsBatch(task_id="ta-standin", entry_id=recs[-1].entry_id if recs else "")
        for r in recs:
            batch.items.add(
                data=r.data,
                timestamp=r.timestamp,
                file_descriptor=_FD.get(r.fd, api_pb2.FILE_DESCRIPTOR_STDOUT),
                timestamp_ns=int(r.timestamp * 1e9),
            )
        return batch

    @staticmethod
    def _ts(ts: Any) -> float:
        return ts.seconds + ts.nanos / 1e9

    def _logs_in(self, app: AppRecord, since: float, until: float, source: int, search: str) -> list[LogRecord]:
        return [
            r
            for r in app.logs
            if since <= r.timestamp < until
            and (not source or _FD.get(r.fd) == source)
            and (not search or search in r.data)
        ]

    def _do_AppFetchLogs(self, req: api_pb2.AppFetchLogsRequest) -> api_pb2.AppFetchLogsResponse:
        app = self._app(req.app_id)
        until = self._ts(req.until) if req.HasField("until") else time.time() + 1
        recs = self._logs_in(app, self._ts(req.since), until, req.source, req.search_text)
        if req.limit:
            recs = recs[-req.limit :]
        return api_pb2.AppFetchLogsResponse(batches=[self._log_batch(app, recs)] if recs else [])

    def _do_AppCountLogs(self, req: api_pb2.AppCountLogsRequest) -> api_pb2.AppCountLogsResponse:
        app = self._app(req.app_id)
        since, until = self._ts(req.since), self._ts(req.until)
        step = req.bucket_secs or 60
        resp = api_pb2.AppCountLogsResponse(app_id=app.app_id)
        start = since - (since % step)
        while start < until:
            b = resp.buckets.add()
            b.bucket_start_at.seconds = int(start)
            for r in self._logs_in(app, max(start, since), min(start + step, until), req.source, req.search_text):
                if r.fd == "stderr":
                    b.stderr_logs += 1
                elif r.fd == "system":
                    b.system_logs += 1
                else:
                    b.stdout_logs += 1
            start += step
        return resp

    async def _stream_AppGetLogs(self, req: api_pb2.AppGetLogsRequest) -> AsyncIterator[Message]:
        with self.state.lock:
            app = self._app(req.app_id)
            recs = [r for r in app.logs if r.entry_id > req.last_entry_id]
            done = app.state == "stopped"
        if recs:
            yield self._log_batch(app, recs)
        else:
            await asyncio.sleep(0.2)  # long-poll a little so a streaming client does not spin
        if done:
            yield api_pb2.TaskLogsBatch(app_done=True)


def _install_handlers() -> None:
    def make(name: str):
        async def handler(self: StandInServicer, stream: grpclib.server.Stream) -> None:
            await self._dispatch(name, stream)

        handler.__name__ = name
        return handler

    for name in sorted(api_grpc.ModalClientBase.__abstractmethods__):
        setattr(StandInServicer, name, make(name))
    StandInServicer.__abstractmethods__ = frozenset()


_install_handlers()
