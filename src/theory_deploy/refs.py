"""Names: processor refs, environments, app names, and image refs.

A processor ref is `ns/name@N` (`llm/litellm@1`), its slug `llm-litellm-v1`. Each environment gets
an app name: `dev` apps carry the branch and user (`{branch}-{user}-{slug}`) so that every developer
gets their own; `staging` and `main` use the bare slug. Names must fit Modal's rules (at most 64
characters of `[A-Za-z0-9._-]`), so an over-long dev name is cut and ends with a hash of the uncut
name: two branches never share an app.

Image refs here are registry references. A *pin* is always `repository@sha256:<64 hex>`; tags are
accepted only where the caller explicitly allows them (never in a pin).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import GitContextError, InvalidEnvError, InvalidRefError, NotADigestError
from .gitrun import Git

# ---------------------------------------------------------------------------------------------------
# Processor refs
# ---------------------------------------------------------------------------------------------------

_SEGMENT = r"[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?"
_REF_RE = re.compile(rf"^(?P<ns>{_SEGMENT})/(?P<name>{_SEGMENT})@(?P<version>[1-9][0-9]{{0,5}})$")
REF_FORM = "ns/name@N (e.g. llm/litellm@1)"


@dataclass(frozen=True, order=True)
class ProcessorRef:
    namespace: str
    name: str
    version: int

    @classmethod
    def parse(cls, text: str, *, where: str = "--ref") -> ProcessorRef:
        match = _REF_RE.match(text or "")
        if not match:
            raise InvalidRefError(f"{where}: {text!r} is not a processor ref; expected {REF_FORM}.")
        ref = cls(match["ns"], match["name"], int(match["version"]))
        # The slug is the app name in staging and main, and Modal refuses longer names: refuse the ref
        # here rather than at its first deploy.
        if len(ref.slug) > APP_NAME_MAX:
            raise InvalidRefError(
                f"{where}: {text!r} names the app {ref.slug!r}, {len(ref.slug)} characters; Modal allows "
                f"{APP_NAME_MAX}. Shorten the namespace or the name by {len(ref.slug) - APP_NAME_MAX}."
            )
        return ref

    @property
    def slug(self) -> str:
        """`llm/litellm@1` → `llm-litellm-v1`: the Modal app name in staging and main."""
        return f"{self.namespace}-{self.name}-v{self.version}".replace("_", "-")

    @property
    def folder(self) -> str:
        """Where the processor lives below `processors/`."""
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"


# ---------------------------------------------------------------------------------------------------
# Environments and app names
# ---------------------------------------------------------------------------------------------------

Environment = Literal["dev", "staging", "main"]
ENVIRONMENTS: tuple[Environment, ...] = ("dev", "staging", "main")

APP_NAME_MAX = 64  # Modal's limit for app and secret names
_HASH_LEN = 8


def split_refs(text: str | None) -> list[str]:
    """`a@1, b@2` / one per line / space separated → ['a@1', 'b@2'] (order kept, no duplicates)."""
    items = [item for item in re.split(r"[\s,]+", text or "") if item]
    return list(dict.fromkeys(items))


def parse_env(text: str, *, where: str = "--env") -> Environment:
    if text not in ENVIRONMENTS:
        raise InvalidEnvError(f"{where}: {text!r} is not an environment; expected one of dev, staging, main.")
    return text  # type: ignore[return-value,unused-ignore]  # narrowed by the membership test above


def sanitize(text: str) -> str:
    """Lowercase; each run of characters outside [a-z0-9] becomes one '-'; no '-' at either end.

    `feat/complex_branch` → `feat-complex-branch`, `user.name` → `user-name`. Dashes count as
    separators too, so `a--b` becomes `a-b` and no doubled '-' can appear.
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass(frozen=True)
class DevIdentity:
    """Who and which branch a dev app belongs to; recorded at deploy time so cleanup never parses names."""

    branch: str
    user: str


def app_name(ref: ProcessorRef, env: Environment, identity: DevIdentity | None = None) -> str:
    if env != "dev":
        return ref.slug
    if identity is None:
        raise GitContextError("dev app names need a branch and a user.")
    branch, user = sanitize(identity.branch), sanitize(identity.user)
    if not branch or not user:
        raise GitContextError(
            f"branch {identity.branch!r} and user {identity.user!r} must each contain a letter or digit."
        )
    full = f"{branch}-{user}-{ref.slug}"
    if len(full) <= APP_NAME_MAX:
        return full
    # Keep the slug whole (it says which processor this is), cut branch+user, and end with a hash of
    # the uncut name so that two long branches sharing a prefix never collide.
    digest = hashlib.sha256(full.encode()).hexdigest()[:_HASH_LEN]
    room = APP_NAME_MAX - len(ref.slug) - len(digest) - 2
    head = f"{branch}-{user}"[: max(room, 0)].rstrip("-")
    if head:
        return f"{head}-{ref.slug}-{digest}"
    # A slug too long to stand whole beside the hash (refs allow slugs of up to 64 characters): cut the
    # slug, never the hash, so the name still fits and two branches still never share an app.
    return f"{ref.slug[: APP_NAME_MAX - len(digest) - 1].rstrip('-')}-{digest}"


def _git(args: list[str], cwd: Path | None) -> str | None:
    """git's answer, or None when there is none (no git, not a checkout, detached HEAD, unset)."""
    return Git(cwd or Path.cwd(), timeout=10).try_out(*args)


def resolve_dev_identity(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> DevIdentity:
    """Branch: GIT_BRANCH, else GITHUB_HEAD_REF, else GITHUB_REF_NAME (Actions), else git's branch.
    User: GIT_USER, else GITHUB_ACTOR, else git's user.name. Never the repository's owner: a dev app
    belongs to whoever deploys it.
    """
    env = os.environ if environ is None else environ
    in_actions = env.get("GITHUB_ACTIONS") == "true"
    branch = env.get("GIT_BRANCH") or (
        (env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME")) if in_actions else None
    )
    if not branch:
        current = _git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd)
        branch = current
    user = env.get("GIT_USER") or env.get("GITHUB_ACTOR") or _git(["config", "user.name"], cwd)
    missing = []
    if not branch:
        missing.append("the branch (HEAD is detached or this is not a git checkout): set GIT_BRANCH")
    if not user:
        missing.append("the user (no GIT_USER, GITHUB_ACTOR or git user.name): set GIT_USER")
    if missing:
        raise GitContextError("Cannot name the dev app: missing " + "; ".join(missing) + ".")
    assert branch is not None and user is not None
    return DevIdentity(branch=branch, user=user)


# ---------------------------------------------------------------------------------------------------
# Image refs
# ---------------------------------------------------------------------------------------------------

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPO_PATH_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_RE = re.compile(
    r"(?:localhost|[A-Za-z0-9.-]+\.[A-Za-z0-9.-]+|[A-Za-z0-9.-]+:[0-9]+|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
)


# A registry host (253) + a repository path (255) + a tag (128) + a digest (71) fit well within this.
_MAX_IMAGE_REF_LEN = 1024


def _describe_char(ch: str) -> str:
    """`a newline (U+000A)`: names a character without printing it raw."""
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space"}
    return f"{names.get(ch, 'a whitespace or control character')} (U+{ord(ch):04X})"


@dataclass(frozen=True)
class ImageRef:
    """`registry/path[:tag][@sha256:...]`, split into parts. `registry` is the host[:port]."""

    registry: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        return f"{self.registry}/{self.path}"

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.path, None, digest)

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @classmethod
    def parse(cls, text: str, *, where: str = "--oci") -> ImageRef:
        text = (text or "").strip(" ")
        bad = next((ch for ch in text if ch.isspace() or not ch.isprintable()), None)
        if bad is not None:
            # A newline or control character would otherwise reach a URL or an HTTP request line.
            raise InvalidRefError(
                f"{where}: the image ref contains {_describe_char(bad)} at position {text.index(bad) + 1}; "
                "image refs may not contain whitespace or control characters.",
                remedy=f"Pass {where} as one line, e.g. ghcr.io/org/name@sha256:<64 hex> (check for a stray newline).",
            )
        if len(text) > _MAX_IMAGE_REF_LEN:
            raise InvalidRefError(
                f"{where}: the image ref is {len(text)} characters, over the {_MAX_IMAGE_REF_LEN} limit."
            )
        rest, _, digest_part = text.partition("@")
        digest = digest_part if "@" in text else None
        if digest is not None and not DIGEST_RE.match(digest):
            raise NotADigestError(
                f"{where}: {text!r} has digest {digest!r}; expected sha256: followed by 64 lowercase hex."
            )
        first, _, remainder = rest.partition("/")
        if not remainder or not _HOST_RE.fullmatch(first):
            raise InvalidRefError(
                f"{where}: {text!r} does not name a registry host; expected e.g. ghcr.io/org/name@sha256:<64 hex>.",
                remedy="Write the full repository, including the registry host (ghcr.io/..., 127.0.0.1:5000/...).",
            )
        path, tag = remainder, None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, tag = path.rsplit(":", 1)
            if not _TAG_RE.match(tag):
                raise InvalidRefError(f"{where}: {text!r} has an invalid tag {tag!r}.")
        if not _REPO_PATH_RE.match(path):
            raise InvalidRefError(
                f"{where}: {text!r} has an invalid repository path {path!r}; use lowercase letters, digits, '.', '_', '-' and '/'."
            )
        return cls(first, path, tag, digest)

    @classmethod
    def parse_digest_ref(cls, text: str, *, where: str = "--oci") -> ImageRef:
        """A pin-shaped ref: repository@sha256:<64 hex>, no tag."""
        ref = cls.parse(text, where=where)
        if ref.digest is None or ref.tag is not None:
            raise NotADigestError(
                f"{where}: {text!r} is not a digest ref; expected REPOSITORY@sha256:<64 lowercase hex> with no tag."
            )
        return ref


def parse_repository(text: str, *, where: str = "--repository") -> ImageRef:
    """A bare repository (no tag, no digest), as in `image.repository` or `--repository`."""
    ref = ImageRef.parse(text, where=where)
    if ref.tag or ref.digest:
        raise InvalidRefError(
            f"{where}: {text!r} must be a repository without a tag or digest, e.g. ghcr.io/org/llm-litellm."
        )
    return ref


PLATFORMS = ("amd64", "arm64")
Platform = Literal["amd64", "arm64"]


def parse_platform(text: str, *, where: str = "--platform") -> Platform:
    """Accept `amd64` or `linux/amd64` (and likewise arm64); return the short architecture name."""
    short = text.removeprefix("linux/")
    if short not in PLATFORMS:
        raise InvalidRefError(
            f"{where}: {text!r} is not a supported platform; expected amd64, arm64, linux/amd64 or linux/arm64.",
            remedy="Use --platform amd64 or --platform arm64.",
        )
    return short  # type: ignore[return-value]  # narrowed by the membership test above


def parse_platforms(text: str, *, where: str = "--platforms") -> list[Platform]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise InvalidRefError(f"{where}: empty; expected e.g. linux/amd64,linux/arm64.")
    platforms = [parse_platform(item, where=where) for item in items]
    return list(dict.fromkeys(platforms))
