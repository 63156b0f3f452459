"""The deploy module `modalctl start` generates, and the app tags that record what was deployed.

Nothing here talks to Modal: it turns an app + image into (a) the text of a real Python module that
Modal imports twice, once here to deploy and once inside every container, and (b) the app tags
that record the deploy so that `status`, `verify-digest` and cleanup never parse app names.

**The module.** Its top-level imports are the standard library and `modal` only, because Modal
imports it inside the processor's image, which has neither theory-deploy nor our dependencies.
Every value is a Python literal written with `repr()`, so no input can inject code. Every Modal
object that has an environment names it (`ENV`), never relying on MODAL_ENVIRONMENT. The
function serves the processor's own FastAPI object (`app:app` in WORKDIR /app) with
`@modal.asgi_app()`, and `@modal.concurrent(max_inputs=N)` lets one container hold N WebSocket
connections at once (each connection is one Modal input).

**Tags.** Modal app tags allow 63 characters of `[A-Za-z0-9._-]` per key and value. A value is
quoted (`_XX`, the hex of each UTF-8 byte outside `[A-Za-z0-9.-]`; `_` itself is `_5f`) and, when
longer than 63 characters, split evenly over `key.0`, `key.1`, ... (a `sha256:` digest, 71
characters, becomes `theory.digest.0` + `theory.digest.1`). `decode_tags` reverses both.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..refs import ImageRef
from ..secret_values import REGISTRY_AUTH

TEMPLATE_VERSION = "1"  # bump when the module's shape changes: every app then redeploys once
MODULE_NAME = "theory_modal_app"  # stable: the module's name is part of Modal's function definition
FUNCTION_NAME = "web"
PROCESSOR_DIR = "/app"  # processors serve `app:app` from WORKDIR /app
DEFAULT_MAX_INPUTS = 100

TAG_MAX = 63
MANAGED_TAG = "theory.managed"
DIGEST_LABEL = "theory.digest"
IMAGE_LABEL = "theory.image"
SPEC_LABEL = "theory.spec"

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_ESCAPE_RE = re.compile(r"_([0-9a-f]{2})")
_CHUNK_KEY_RE = re.compile(r"^(?P<base>.+)\.(?P<index>[0-9]+)$")
DEPLOY_TAG_RE = re.compile(r"^[A-Za-z0-9._-]{1,50}$")


# ---------------------------------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------------------------------


def quote_tag(value: str) -> str:
    return "".join(chr(b) if b in _SAFE else f"_{b:02x}" for b in value.encode("utf-8"))


def unquote_tag(text: str) -> str:
    out = bytearray()
    i = 0
    while i < len(text):
        match = _ESCAPE_RE.match(text, i)
        if match:
            out.append(int(match[1], 16))
            i = match.end()
        else:
            out += text[i].encode("utf-8")
            i += 1
    return out.decode("utf-8", errors="replace")


def encode_tags(labels: dict[str, str]) -> dict[str, str]:
    """Labels → Modal app tags (quoted, split over `key.N` when longer than 63 characters)."""
    tags: dict[str, str] = {}
    for key, value in labels.items():
        quoted = quote_tag(value)
        if len(quoted) <= TAG_MAX:
            tags[key] = quoted
            continue
        parts = math.ceil(len(quoted) / TAG_MAX)
        size = math.ceil(len(quoted) / parts)
        for index in range(parts):
            tags[f"{key}.{index}"] = quoted[index * size : (index + 1) * size]
    for key in tags:
        if len(key) > TAG_MAX or not re.fullmatch(r"[A-Za-z0-9._-]+", key):
            raise ValueError(f"label key {key!r} cannot be a Modal tag key")
    return tags


def decode_tags(tags: dict[str, str]) -> dict[str, str]:
    """Modal app tags → labels (reassembling `key.0`, `key.1`, ...; unquoting)."""
    labels: dict[str, str] = {}
    chunks: dict[str, dict[int, str]] = {}
    for key, value in tags.items():
        match = _CHUNK_KEY_RE.match(key)
        if match and match["base"] not in tags:
            chunks.setdefault(match["base"], {})[int(match["index"])] = value
        else:
            labels[key] = unquote_tag(value)
    for base, parts in chunks.items():
        if sorted(parts) != list(range(len(parts))):
            continue  # a gap: not ours, or tampered; leave it unread rather than guess
        labels[base] = unquote_tag("".join(parts[i] for i in range(len(parts))))
    return labels


# ---------------------------------------------------------------------------------------------------
# The deploy plan and module
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployPlan:
    app_name: str
    env: str
    ref: str
    image: ImageRef  # repository@sha256:... (the amd64 manifest)
    secret_names: tuple[str, ...]  # bound to the function by name
    registry_secret: str
    cpu: float
    memory_mib: int
    timeout_s: int
    gpu: str | None
    max_inputs: int
    image_env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # decoded; includes theory.spec
    fingerprint: str = ""

    @property
    def digest(self) -> str:
        assert self.image.digest is not None
        return self.image.digest

    @property
    def tags(self) -> dict[str, str]:
        return encode_tags(self.labels)

    @property
    def deploy_tag(self) -> str:
        """≤50 characters of [A-Za-z0-9._-], from the digest: what `modal app history` shows."""
        tag = "sha256-" + self.digest.split(":", 1)[1][:40]
        assert DEPLOY_TAG_RE.match(tag)
        return tag

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app_name,
            "env": self.env,
            "ref": self.ref,
            "image": str(self.image),
            "digest": self.digest,
            "function": FUNCTION_NAME,
            "secrets": list(self.secret_names),
            "registry_secret": self.registry_secret,
            "resources": {
                "cpu": self.cpu,
                "memory_mib": self.memory_mib,
                "timeout_s": self.timeout_s,
                "gpu": self.gpu,
                "max_inputs": self.max_inputs,
            },
            "image_env": self.image_env,
            "labels": self.labels,
            "tags": self.tags,
            "deploy_tag": self.deploy_tag,
            "fingerprint": self.fingerprint,
        }


def make_plan(
    *,
    app_name: str,
    env: str,
    ref: str,
    image: ImageRef,
    labels: dict[str, str],
    secret_names: list[str],
    cpu: float,
    memory_gb: float,
    timeout_s: int,
    gpu: str | None,
    max_inputs: int = DEFAULT_MAX_INPUTS,
) -> DeployPlan:
    if image.digest is None or image.tag is not None:
        raise ValueError(f"{image}: Modal deploys digest refs only")
    image_env = {
        "IMAGE_DIGEST": image.digest,
        "THEORY_REF": ref,
        "THEORY_APP": app_name,
        "THEORY_ENV": env,
    }
    all_labels = {
        MANAGED_TAG: "true",
        **labels,
        DIGEST_LABEL: image.digest,
        IMAGE_LABEL: image.repository,
    }
    plan = DeployPlan(
        app_name=app_name,
        env=env,
        ref=ref,
        image=image,
        secret_names=tuple(dict.fromkeys(secret_names)),
        registry_secret=REGISTRY_AUTH,
        cpu=float(cpu),
        memory_mib=round(memory_gb * 1024),
        timeout_s=int(timeout_s),
        gpu=gpu,
        max_inputs=int(max_inputs),
        image_env=image_env,
        labels=all_labels,
    )
    # The fingerprint covers everything that defines the deploy except itself.
    basis = {**plan.to_json(), "template": TEMPLATE_VERSION, "module": MODULE_NAME}
    for key in ("tags", "fingerprint"):
        basis.pop(key)
    fingerprint = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]
    return DeployPlan(
        **{**plan.__dict__, "labels": {**all_labels, SPEC_LABEL: fingerprint}, "fingerprint": fingerprint}
    )


_TEMPLATE = """\
# Generated by theory-deploy (template {template}) for {ref} in the Modal environment {env}.
# Do not edit: `modalctl start` writes it afresh for each deploy. Modal imports it here to deploy and
# again inside every container, so its top-level imports are the standard library and `modal` only.
import sys

import modal

ENV = {env!r}  # every Modal object below names its environment explicitly
APP_NAME = {app_name!r}
IMAGE_REF = {image_ref!r}
PROCESSOR_DIR = {processor_dir!r}

image = modal.Image.from_registry(
    IMAGE_REF,
    secret=modal.Secret.from_name({registry_secret!r}, environment_name=ENV),
).env({image_env!r})

app = modal.App(APP_NAME, tags={tags!r})


@app.function(
    image=image,
    cpu={cpu!r},
    memory={memory!r},
    timeout={timeout!r},
    gpu={gpu!r},
    secrets=[modal.Secret.from_name(name, environment_name=ENV) for name in {secrets!r}],
)
@modal.concurrent(max_inputs={max_inputs!r})
@modal.asgi_app()
def {function}():
    # The processor's FastAPI object: `app:app`, served from its image's WORKDIR.
    if PROCESSOR_DIR not in sys.path:
        sys.path.insert(0, PROCESSOR_DIR)
    from app import app as processor_app

    return processor_app
"""


def render_module(plan: DeployPlan) -> str:
    return _TEMPLATE.format(
        template=TEMPLATE_VERSION,
        ref=plan.ref,
        env=plan.env,
        app_name=plan.app_name,
        image_ref=str(plan.image),
        processor_dir=PROCESSOR_DIR,
        registry_secret=plan.registry_secret,
        image_env=plan.image_env,
        tags=plan.tags,
        cpu=plan.cpu,
        memory=plan.memory_mib,
        timeout=plan.timeout_s,
        gpu=plan.gpu,
        secrets=list(plan.secret_names),
        max_inputs=plan.max_inputs,
        function=FUNCTION_NAME,
    )
