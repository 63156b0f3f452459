"""The stand-in's in-memory record of Modal's control plane.

Everything here is plain data that tests read. The gRPC servicer (``servicer.py``) mutates it
while holding ``StandInState.lock``; tests that read it while an SDK call is in flight should
take the lock too (or read after the call returned, which is the usual case).

Secret *values* are stored in clear on purpose: this is a test-only store and tests must be
able to prove which values the product sent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

DEFAULT_ENVIRONMENTS = ("dev", "staging", "main")


@dataclass
class CallRecord:
    """One RPC as received. ``environment_name`` is None when the request has no such field."""

    method: str
    environment_name: str | None
    request: Message = field(repr=False)
    at: float
    token_id: str | None
    environment_from_app: bool = False  # the request had no environment_name but an app_id
    client_version: str = ""  # x-modal-client-version metadata
    status: str = "OK"  # grpclib Status name, e.g. "NOT_FOUND", when the stand-in failed the call
    error: str = ""


@dataclass
class SecretRecord:
    secret_id: str
    environment_name: str
    name: str  # "" for anonymous secrets (Secret.from_dict inside an app)
    values: dict[str, str]
    created_at: float
    created_by: str
    updated_at: float
    app_id: str = ""  # set for anonymous secrets owned by an app


@dataclass
class DictRecord:
    """A modal.Dict. Keys and values are kept exactly as the SDK serialized them (cloudpickle bytes):
    the service compares keys by those bytes, so two equal keys that pickle differently are two keys."""

    dict_id: str
    environment_name: str
    name: str  # "" for ephemeral Dicts
    created_at: float
    created_by: str
    entries: dict[bytes, bytes] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class MountRecord:
    mount_id: str
    environment_name: str
    deployment_name: str
    files: dict[str, str]  # filename -> sha256 hex (contents in StandInState.mount_blobs)


@dataclass
class ImageRecord:
    """One layer as sent by ImageGetOrCreate. ``spec`` resolves the whole chain."""

    image_id: str
    app_id: str
    dockerfile_commands: list[str]
    base_image_ids: list[str]
    registry_auth_type: int
    registry_secret_id: str
    secret_ids: list[str]
    proto: Message = field(repr=False)  # api_pb2.Image, as received
    builds: int = 0  # how many times a build was "run" (0 when every request was a cache hit)
    pulled_digest: str = ""  # the linux/amd64 manifest its FROM <registry ref> resolved to, once pulled


@dataclass
class PullRecord:
    """One pull of a ``from_registry`` reference by the stand-in's image builder (see registry_pull)."""

    image_id: str
    ref: str
    secret_id: str  # the registry secret attached ("" when none)
    username: str  # REGISTRY_USERNAME of that secret ("" when none); never the password
    auth: str  # how the manifest was finally fetched: "anonymous" | "basic" | "bearer"
    ok: bool
    error: str
    manifest_digest: str  # the linux/amd64 image manifest pulled ("" on failure)
    at: float


@dataclass
class ImageSpec:
    """The resolved image of a function: what a real engine would run."""

    image_id: str
    registry_ref: str | None  # the FROM reference of the registry base, e.g. "127.0.0.1:5000/x@sha256:..."
    registry_secret_id: str | None
    registry_secret_name: str | None
    registry_secret_environment: str | None
    env: dict[str, str]  # merged ENV layers, base first
    dockerfile_commands: list[list[str]]  # per layer, base first
    layer_ids: list[str]  # base first


@dataclass
class FunctionRecord:
    function_id: str
    app_id: str
    environment_name: str
    name: str
    definition_id: str
    image_id: str
    cpu: float | None  # cores (milli_cpu / 1000)
    memory_mb: int | None
    gpu: str | None  # e.g. "T4", "A100:2"
    timeout_secs: int
    secret_ids: list[str]
    secret_names: list[str]  # "<env>/<name>" for named secrets, the id for anonymous ones
    max_concurrent_inputs: int
    target_concurrent_inputs: int
    webhook_type: str | None  # "ASGI_APP", "WEB_SERVER", ... or None
    web_url: str
    mount_ids: list[str]
    module_name: str
    proto: Message = field(repr=False)  # api_pb2.Function (first ranked function), as received
    function_data: Message = field(repr=False)  # api_pb2.FunctionData as returned to the client


@dataclass
class DeployRecord:
    """One AppPublish of a deployment. A no-op deploy keeps the previous version (``noop=True``)."""

    app_id: str
    environment_name: str
    app_name: str
    version: int
    noop: bool
    deployment_tag: str
    app_tags: dict[str, str]
    deployed_at: float
    deployed_by: str
    strategy: str  # "rolling" unless the client then listed tasks to stop them ("recreate")
    functions: dict[str, FunctionRecord]
    images: dict[str, ImageSpec]  # function name -> resolved image
    commit_info: dict[str, Any]
    client_version: str


@dataclass
class AppRecord:
    app_id: str
    environment_name: str
    name: str  # deployment name ("" for ephemeral apps)
    description: str
    state: str  # "initializing" | "ephemeral" | "detached" | "deployed" | "stopped"
    created_at: float
    created_by: str
    tags: dict[str, str] = field(default_factory=dict)
    version: int = 0
    deployment_tag: str = ""
    deployed_at: float = 0.0
    deployed_by: str = ""
    stopped_at: float = 0.0
    stopped_by: str = ""
    functions: dict[str, FunctionRecord] = field(default_factory=dict)  # live (last published)
    pending_functions: dict[str, FunctionRecord] = field(default_factory=dict)  # created, not published
    deploys: list[DeployRecord] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    signature: Any = field(default=None, repr=False)  # what a no-op deploy must match

    @property
    def last_deploy(self) -> DeployRecord | None:
        return self.deploys[-1] if self.deploys else None


@dataclass
class LogRecord:
    entry_id: str
    timestamp: float
    data: str
    fd: str  # "stdout" | "stderr" | "system"
    function_id: str = ""
    task_id: str = ""


class StandInState:
    """All state of one stand-in. Keyed by environment name wherever Modal is."""

    def __init__(self, environments: tuple[str, ...] | list[str] = DEFAULT_ENVIRONMENTS) -> None:
        self.lock = threading.RLock()
        self.environments: list[str] = list(environments)
        self.calls: list[CallRecord] = []
        self.apps: dict[str, AppRecord] = {}  # app_id -> app (every app ever created, stopped ones too)
        self.secrets: dict[str, dict[str, SecretRecord]] = {e: {} for e in self.environments}
        self.secrets_by_id: dict[str, SecretRecord] = {}  # includes deleted and anonymous ones
        self.dicts: dict[str, dict[str, DictRecord]] = {e: {} for e in self.environments}  # live named Dicts
        self.dicts_by_id: dict[str, DictRecord] = {}  # includes deleted and ephemeral ones
        self.images: dict[str, ImageRecord] = {}
        self.pulls: list[PullRecord] = []  # every registry pull an image build made, in order
        self.mounts: dict[str, MountRecord] = {}
        self.mount_blobs: dict[str, bytes] = {}  # sha256 hex -> file content uploaded with MountPutFile
        self.functions: dict[str, FunctionRecord] = {}  # function_id -> latest definition

    # ---- apps ---------------------------------------------------------------------------
    def deployed_app(self, environment_name: str, name: str) -> AppRecord | None:
        """The live (deployed, not stopped) app of that name in that environment."""
        with self.lock:
            for app in self.apps.values():
                if app.environment_name == environment_name and app.name == name and app.state == "deployed":
                    return app
            return None

    def app(self, environment_name: str, name: str) -> AppRecord | None:
        """The most recently created app of that name in that environment, whatever its state."""
        with self.lock:
            found = [a for a in self.apps.values() if a.environment_name == environment_name and a.name == name]
            return max(found, key=lambda a: a.created_at) if found else None

    def apps_in(self, environment_name: str) -> list[AppRecord]:
        with self.lock:
            return [a for a in self.apps.values() if a.environment_name == environment_name]

    def deploys(self, environment_name: str, name: str) -> list[DeployRecord]:
        """Every publish of that app name in that environment, across stop/redeploy cycles."""
        with self.lock:
            out: list[DeployRecord] = []
            for a in sorted(self.apps.values(), key=lambda a: a.created_at):
                if a.environment_name == environment_name and a.name == name:
                    out.extend(a.deploys)
            return out

    # ---- secrets ------------------------------------------------------------------------
    def secret(self, environment_name: str, name: str) -> SecretRecord | None:
        with self.lock:
            return self.secrets.get(environment_name, {}).get(name)

    def secret_values(self, environment_name: str, name: str) -> dict[str, str] | None:
        with self.lock:
            rec = self.secret(environment_name, name)
            return dict(rec.values) if rec else None

    def secret_names(self, environment_name: str) -> list[str]:
        with self.lock:
            return sorted(self.secrets.get(environment_name, {}))

    def put_secret(self, environment_name: str, name: str, values: dict[str, str]) -> SecretRecord:
        """Seed a secret directly (as if created earlier on the dashboard)."""
        from .ids import new_id

        with self.lock:
            now = time.time()
            rec = SecretRecord(new_id("st"), environment_name, name, dict(values), now, "seed", now)
            self.secrets.setdefault(environment_name, {})[name] = rec
            self.secrets_by_id[rec.secret_id] = rec
            return rec

    # ---- dicts --------------------------------------------------------------------------
    def dict_named(self, environment_name: str, name: str) -> DictRecord | None:
        with self.lock:
            return self.dicts.get(environment_name, {}).get(name)

    def dict_items(self, environment_name: str, name: str) -> dict[Any, Any] | None:
        """The entries of a named Dict, unpickled (test data only), or None when there is no such Dict."""
        import pickle

        with self.lock:
            rec = self.dict_named(environment_name, name)
            if rec is None:
                return None
            return {pickle.loads(k): pickle.loads(v) for k, v in rec.entries.items()}  # our own test data

    def dict_names(self, environment_name: str) -> list[str]:
        with self.lock:
            return sorted(self.dicts.get(environment_name, {}))

    # ---- mounts -------------------------------------------------------------------------
    def mount_file(self, mount_id: str, filename: str) -> bytes | None:
        """The uploaded content of one file of a mount (e.g. the deploy module), or None."""
        with self.lock:
            rec = self.mounts.get(mount_id)
            sha = rec.files.get(filename) if rec else None
            return self.mount_blobs.get(sha) if sha else None

    # ---- calls --------------------------------------------------------------------------
    def calls_to(self, method: str) -> list[CallRecord]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def environment_names_seen(self) -> list[str | None]:
        """The environment_name of every call that carried one, in order."""
        with self.lock:
            return [c.environment_name for c in self.calls if c.environment_name is not None]

    def failed_calls(self) -> list[CallRecord]:
        with self.lock:
            return [c for c in self.calls if c.status != "OK"]
