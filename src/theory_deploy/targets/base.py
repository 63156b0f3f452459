"""The one interface every target (the local Docker engine, Modal) implements, and the logic they share.

A target knows how to start, stop, inspect and reach an app. What must behave identically on every
target lives here once: which image a start deploys (the pin, or a `--oci` verified in the registry
as this target's platform manifest), how
verify-digest compares the pin with independent readings of what runs (failing closed), how a run
talks theory.run.v1, how rollback finds an earlier pin in git history, and which dev apps
cleanup-dev stops (by the branch recorded on each app at deploy time, never by parsing its name).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .. import output, protocol
from ..deploy_lock import DeployLock
from ..errors import (
    DeployError,
    ImagePullError,
    InputsError,
    RegistryMismatchError,
    RevisionError,
    TheoryDeployError,
    UsageError,
    error_for_code,
)
from ..files import UnreadableFile, read_regular_file
from ..gitrun import Git, not_an_option
from ..oci import RegistryClients
from ..pin import verify_pin_candidate
from ..refs import (
    DIGEST_RE,
    DevIdentity,
    Environment,
    ImageRef,
    Platform,
    app_name,
    resolve_dev_identity,
)
from ..registry_file import LoadedProcessor, check_file
from ..registry_pins import pin_history


@dataclass(frozen=True)
class AppContext:
    """Everything that names one deployed app: processor, environment, app name and (dev) identity."""

    processor: LoadedProcessor
    env: Environment
    name: str
    identity: DevIdentity | None

    @classmethod
    def for_processor(cls, processor: LoadedProcessor, env: Environment) -> AppContext:
        identity = resolve_dev_identity(cwd=processor.repo_root) if env == "dev" else None
        return cls(processor, env, app_name(processor.ref, env, identity), identity)

    def labels(self) -> dict[str, str]:
        """Deploy-time facts recorded on the app, so cleanup and audits never parse names."""
        labels = {"theory.ref": str(self.processor.ref), "theory.env": self.env}
        if self.identity:
            labels["theory.branch"] = self.identity.branch
            labels["theory.user"] = self.identity.user
        return labels


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # http(s)://host[:port], where /healthz lives
    ws_url: str  # ws(s)://.../run
    token: str | None = None  # bearer token, when the processor requires one


@dataclass
class DigestReadings:
    """Independent readings of what runs. Each is a `sha256:...` digest, or None when it names none.

    A reading that is None is either unreadable (`notes` says why) or a proof that what runs is not
    the expected image although no digest can be named (`mismatches` says what was seen: Modal's
    image ids are its own, not registry digests). `notes` may also explain a reading that differs."""

    readings: dict[str, str | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    mismatches: dict[str, str] = field(default_factory=dict)


MANAGED_LABEL = "theory.managed"
ENV_LABEL = "theory.env"
BRANCH_LABEL = "theory.branch"
USER_LABEL = "theory.user"


@dataclass(frozen=True)
class ListedApp:
    """One live app found in an environment, with the labels its deploy recorded on it (Modal: the
    decoded app tags; local: the container labels). `note` says why its labels could not be read."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    # What the target addresses the app by, when that is not its name (local: the container).
    address: str | None = None


def digest_of(ref_or_digest: str | None) -> str | None:
    if not ref_or_digest:
        return None
    digest = ref_or_digest.rsplit("@", 1)[-1]
    return digest if DIGEST_RE.match(digest) else None


class Target(ABC):
    kind: ClassVar[str]

    # --- what each target implements -----------------------------------------------------------------
    @property
    @abstractmethod
    def platform(self) -> Platform:
        """The platform whose pin this target runs (Modal: amd64; local: the host's)."""

    @abstractmethod
    def start(self, app: AppContext, image: ImageRef, *, dry_run: bool = False) -> dict[str, Any]: ...

    @abstractmethod
    def stop(self, app: AppContext) -> dict[str, Any]: ...

    @abstractmethod
    def status(self, app: AppContext) -> dict[str, Any]: ...

    @abstractmethod
    def logs(self, app: AppContext, *, follow: bool, tail: int) -> dict[str, Any]: ...

    @abstractmethod
    def sync_secrets(
        self, app: AppContext, *, check: bool, fail_on_missing: bool, dry_run: bool = False
    ) -> dict[str, Any]: ...

    @abstractmethod
    def read_running_digests(self, app: AppContext, expected: ImageRef) -> DigestReadings:
        """Read what runs. `expected` is the image verify-digest compares with: a reading that can
        only answer "is it this image?" (Modal's image id) needs it; the others ignore it."""

    @abstractmethod
    def endpoint(self, app: AppContext) -> Endpoint: ...

    @abstractmethod
    def list_apps(self, env: Environment) -> list[ListedApp]:
        """Every live app in `env`, whoever made it, with the labels recorded on it (read-only)."""

    @abstractmethod
    def stop_listed(self, env: Environment, listed: ListedApp) -> str | None:
        """Stop an app `list_apps(env)` returned, after re-reading its labels; None when stopped, else
        why it was left alone (gone meanwhile, or `changed_since_listing` says it was redeployed)."""

    def deploy_lock(self, app: AppContext) -> DeployLock:
        """The app's deploy lock, kept in this target (deploy_lock.py): what keeps two runs from
        interleaving between start and verify. Every real target implements it (local: a file in the
        state folder; Modal: a modal.Dict in the app's environment). Not abstract only so that test
        doubles which never deploy need not."""
        raise NotImplementedError(f"the {self.kind} target keeps no deploy lock")

    # --- shared behaviour ----------------------------------------------------------------------------
    def verify_image(self, oci: ImageRef, *, credentials_host: str | None = None) -> ImageRef:
        """Prove `oci` is (or, for an index, lists) this target's platform manifest; return the manifest ref.

        The registry is asked, with REGISTRY_USERNAME/REGISTRY_PASSWORD when both are set and belong
        to its host (`credentials_host`: the processor's image registry), and what it serves is
        hashed (`pin.verify_pin_candidate`)."""
        if oci.digest is None:
            raise ImagePullError(f"{oci}: not a digest ref.")
        clients = RegistryClients(credentials_host=credentials_host)
        try:
            return verify_pin_candidate(str(oci), self.platform, clients).ref
        finally:
            clients.close()

    def image_to_deploy(self, app: AppContext, oci: str | None) -> ImageRef:
        """The pin for this target's platform, or `--oci` once proven to be that platform's manifest."""
        if oci:
            return self.verify_image(ImageRef.parse_digest_ref(oci), credentials_host=_image_registry(app))
        return app.processor.pin_for(self.platform)

    def verify_digest(self, app: AppContext, oci: str | None = None) -> dict[str, Any]:
        expected_ref = ImageRef.parse_digest_ref(oci) if oci else app.processor.pin_for(self.platform)
        expected = expected_ref.digest
        readings = self.read_running_digests(app, expected_ref)
        if not readings.readings:
            raise RegistryMismatchError(
                f"{app.name} ({app.env}): nothing could be read about what runs; failing closed."
            )
        problems = []
        for source, seen in readings.readings.items():
            note = readings.notes.get(source)
            if source in readings.mismatches:
                problems.append(f"{source}: {readings.mismatches[source]}")
            elif seen is None:
                problems.append(f"{source}: could not be read ({note or 'unreadable'})")
            elif seen != expected:
                problems.append(f"{source}: {seen}" + (f" ({note})" if note else ""))
        result = {
            "app": app.name,
            "env": app.env,
            "expected": str(expected_ref),
            "readings": readings.readings,
            "verified": not problems,
        }
        if problems:
            raise RegistryMismatchError(
                f"{app.name} ({app.env}) does not verify: expected {expected}; " + "; ".join(problems) + ".",
                details=result,
            )
        result["summary"] = f"verified: {app.name} ({app.env}) runs {expected} ({', '.join(readings.readings)})"
        return result

    def run(
        self,
        app: AppContext,
        *,
        mode: str,
        inputs: dict[str, Any],
        timeout_s: float,
        execution_id: str | None = None,
        stream_tokens: bool = True,
    ) -> dict[str, Any]:
        endpoint = self.endpoint(app)

        def on_frame(frame: dict[str, Any]) -> None:
            if not stream_tokens:
                return
            kind, content = frame.get("kind"), frame.get("content")
            if kind == protocol.TOKEN and isinstance(content, dict):
                sys.stderr.write(str(content.get("text", "")))
                sys.stderr.flush()
            elif kind == protocol.LOG and isinstance(content, dict):
                output.progress(f"[log] {content.get('message', '')}")

        envelope = asyncio.run(
            protocol.run_processor(
                endpoint.ws_url,
                mode=mode,
                inputs=inputs,
                execution_id=execution_id or f"exec-{uuid.uuid4().hex[:12]}",
                timeout_s=timeout_s,
                token=endpoint.token,
                on_frame=on_frame,
            )
        )
        if stream_tokens:
            sys.stderr.write("\n")
        if envelope.get("status") != "success":
            # A run that ends in an error envelope is a failed verb: its own code and exit code, and
            # the whole envelope (execution id, meta) kept in the error's details.
            error = envelope.get("error") or {}
            err = error_for_code(str(error.get("code", "ERR_RUNTIME")), f"{app.name}: {error.get('message', '')}")
            err.details = {**err.details, "envelope": envelope}
            raise err
        return {
            "app": app.name,
            "env": app.env,
            "envelope": envelope,
            "summary": json.dumps(envelope.get("outputs"), indent=2),
        }

    def cleanup_dev(self, existing_branches: Iterable[str], *, dry_run: bool = False) -> dict[str, Any]:
        """Stop every dev app theory-deploy deployed whose recorded branch is not in `existing_branches`.

        Only the `dev` environment is read or touched. The branch is the one recorded on the app at
        deploy time (label/tag `theory.branch`), never derived from the app's name: names are sanitised
        and may be cut, so no branch can be read back from one. Apps not managed by theory-deploy, or without a recorded branch, are skipped and never stopped.
        """
        branches = {b for b in existing_branches if b}
        if not branches:
            raise UsageError(
                "cleanup-dev: the list of existing branches is empty; refusing, because every dev app "
                "would be stopped.",
                remedy="Check the command that lists the branches (e.g. `git ls-remote --heads origin`) "
                "succeeded and wrote one branch name per line.",
            )
        env: Environment = "dev"
        stopped: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for listed in sorted(self.list_apps(env), key=lambda a: a.name):
            reason = _not_cleanable(listed, env)
            if reason:
                skipped.append({"app": listed.name, "reason": reason})
                continue
            entry = {
                "app": listed.name,
                "branch": listed.labels[BRANCH_LABEL],
                "user": listed.labels.get(USER_LABEL),
            }
            if entry["branch"] in branches:
                kept.append(entry)
                continue
            if dry_run:
                stopped.append(entry)
                continue
            try:
                declined = self.stop_listed(env, listed)
            except TheoryDeployError as err:
                failed.append({**entry, "code": err.code, "error": err.message})
                continue
            if declined:
                skipped.append({"app": listed.name, "reason": declined})
            else:
                stopped.append(entry)
        result: dict[str, Any] = {
            "env": env,
            "target": self.kind,
            "branches": len(branches),
            "stopped": stopped,
            "kept": kept,
            "skipped": skipped,
            "dry_run": dry_run,
        }
        if failed:
            result["failed"] = failed
        result["summary"] = _cleanup_summary(result, failed)
        if failed:
            raise DeployError(
                f"cleanup-dev: {len(failed)} dev app(s) could not be stopped: "
                + "; ".join(f"{f['app']} ({f['code']}: {f['error']})" for f in failed)
                + f". {len(stopped)} stopped meanwhile.",
                remedy="Read the errors, fix, and re-run cleanup-dev (it only stops what is still running).",
                details=result,
            )
        return result

    def rollback(self, app: AppContext, to: str, *, dry_run: bool = False) -> dict[str, Any]:
        target = earlier_pin(app.processor, self.platform, to)
        image = self.verify_image(target, credentials_host=_image_registry(app))
        result = self.start(app, image, dry_run=dry_run)
        result["rolled_back_to"] = str(image)
        verb = "would roll back" if dry_run else "rolled back"
        result["summary"] = f"{verb} {app.name} ({app.env}) to {image}. " + str(result.get("summary", ""))
        return result


def _image_registry(app: AppContext) -> str | None:
    """The registry host of the processor's image.repository: where registry credentials belong."""
    try:
        return ImageRef.parse(app.processor.spec.image.repository, where="image.repository").registry
    except TheoryDeployError:
        return None


def _not_cleanable(listed: ListedApp, env: Environment) -> str | None:
    """Why cleanup-dev must leave this app alone, or None when its recorded branch decides."""
    if listed.note:
        return listed.note
    labels = listed.labels
    if labels.get(MANAGED_LABEL) != "true":
        return f"not deployed by theory-deploy (no {MANAGED_LABEL}=true)"
    if labels.get(ENV_LABEL) != env:
        return f"its recorded environment is {labels.get(ENV_LABEL)!r}, not {env!r}"
    if not labels.get(BRANCH_LABEL):
        return f"no branch recorded at deploy time (no {BRANCH_LABEL})"
    return None


def changed_since_listing(listed: ListedApp, labels_now: dict[str, str]) -> str | None:
    """For `stop_listed`: why the app, read again just before stopping, must no longer be stopped."""
    now = ListedApp(listed.name, labels_now)
    reason = _not_cleanable(now, "dev")
    if reason:
        return f"left alone: re-read before stopping, {reason}"
    if labels_now.get(BRANCH_LABEL) != listed.labels.get(BRANCH_LABEL):
        return (
            f"left alone: redeployed from branch {labels_now.get(BRANCH_LABEL)!r} since it was listed "
            f"(was {listed.labels.get(BRANCH_LABEL)!r})"
        )
    return None


def _cleanup_summary(result: dict[str, Any], failed: list[dict[str, Any]]) -> str:
    verb = "would stop" if result["dry_run"] else "stopped"
    lines = [
        f"cleanup-dev ({result['target']}, {result['env']}): {verb} {len(result['stopped'])}, "
        f"kept {len(result['kept'])}, skipped {len(result['skipped'])}"
        + (f", failed {len(failed)}" if failed else "")
        + f" ({result['branches']} existing branch(es) given)"
        + (" (dry run: nothing was stopped)" if result["dry_run"] else "")
    ]
    for entry in result["stopped"]:
        lines.append(f"  {verb}: {entry['app']} (branch {entry['branch']!r} is gone; user {entry['user']})")
    for entry in result["kept"]:
        lines.append(f"  kept:    {entry['app']} (branch {entry['branch']!r} exists)")
    for entry in result["skipped"]:
        lines.append(f"  skipped: {entry['app']}: {entry['reason']}")
    for entry in failed:
        lines.append(f"  FAILED:  {entry['app']}: {entry['code']}: {entry['error']}")
    return "\n".join(lines)


def read_branches(path: str) -> list[str]:
    """The existing branch names, one a line, from `path` (`-`: stdin). Blank lines are ignored and a
    `refs/heads/` prefix is dropped; a line with whitespace inside (e.g. raw `git ls-remote` output,
    `<sha>\\trefs/heads/x`) is refused, since no branch could match it and every app would be stopped."""
    where = "--existing-branches-file " + path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8 text.") from None
    branches = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if any(ch.isspace() for ch in line):
            raise UsageError(
                f"{where}: line {number} ({line[:80]!r}) is not a branch name (it contains whitespace).",
                remedy="Write one branch name per line, e.g. `git ls-remote --heads origin | sed 's#.*refs/heads/##'`.",
            )
        branches.append(line.removeprefix("refs/heads/"))
    return branches


def earlier_pin(processor: LoadedProcessor, platform: Platform, to: str) -> ImageRef:
    """`--to` as a digest (it must have been this platform's pin at some revision of registry.yaml) or
    a git revision (read that revision's pin). Failures are RevisionError."""
    not_an_option(to, "--to", RevisionError)  # never let git read it as an option (e.g. --output=FILE)
    relative = processor.path.resolve().relative_to(processor.repo_root.resolve()).as_posix()
    git = Git(processor.repo_root, timeout=30, error=RevisionError)
    digest = digest_of(to) or (to if DIGEST_RE.match(to) else None)
    if digest:
        for state in pin_history(git, relative):
            pinned = state.pins.get(platform)
            if pinned and digest_of(pinned) == digest:
                return ImageRef.parse_digest_ref(pinned, where=f"--to (pinned at {state.rev[:12]})")
        raise RevisionError(
            f"--to {to}: registry.yaml never pinned {platform} to that digest ({relative} git history).",
        )
    text = git.show(to, relative)
    if text is None:
        raise RevisionError(f"--to {to}: no {relative} at that revision (or no such revision).")
    spec, problems = check_file(processor.path, text)
    if spec is None:
        raise RevisionError(
            f"--to {to}: {relative} at that revision is not valid: {problems[0].message if problems else ''}"
        )
    pin = spec.pins()[platform]
    if not pin:
        raise RevisionError(f"--to {to}: {relative} had no {platform} pin at that revision.")
    return ImageRef.parse_digest_ref(pin, where=f"--to {to}")


INPUTS_MAX_BYTES_ENV = "THEORY_MAX_INPUTS_BYTES"
INPUTS_MAX_DEPTH_ENV = "THEORY_MAX_INPUTS_DEPTH"
DEFAULT_INPUTS_MAX_BYTES = 1024 * 1024  # 1 MiB
DEFAULT_INPUTS_MAX_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _positive_int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a whole number.") from None
    if value <= 0:
        raise UsageError(f"{name}={raw!r} must be a positive whole number.")
    return value


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """True when `text` nests arrays/objects deeper than `limit` (brackets inside strings don't count).

    Checked before json.loads, whose recursive parser would raise RecursionError on deep input."""
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _read_inputs_file(path: str, cap: int) -> str:
    """At most `cap` bytes of a regular file (never a FIFO, device or folder: those could block or
    never end); UTF-8 text."""
    where = f"--inputs-file {path}"
    try:
        data = read_regular_file(path, cap)
    except OSError as exc:
        raise InputsError(f"{where}: {exc.strerror}.") from None
    except UnreadableFile as exc:
        if exc.kind is not None:
            raise InputsError(
                f"{where}: not a regular file; --inputs-file reads regular files only (not a FIFO, device or folder).",
                remedy="Write the inputs to a file, or pass them with --inputs-json.",
            ) from None
        raise InputsError(
            f"{where}: larger than the {cap}-byte limit for inputs.",
            remedy=f"Pass smaller inputs, or raise the limit with {INPUTS_MAX_BYTES_ENV}=<bytes>.",
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputsError(f"{where}: not UTF-8 text.") from None


def parse_inputs(inputs_json: str | None, inputs_file: str | None) -> dict[str, Any]:
    """The run's inputs: a JSON object from --inputs-json or --inputs-file, at most
    THEORY_MAX_INPUTS_BYTES (1 MiB) and THEORY_MAX_INPUTS_DEPTH (64) levels of nesting."""
    if inputs_json and inputs_file:
        raise InputsError("give --inputs-json or --inputs-file, not both.")
    max_bytes = _positive_int_env(INPUTS_MAX_BYTES_ENV, DEFAULT_INPUTS_MAX_BYTES)
    max_depth = _positive_int_env(INPUTS_MAX_DEPTH_ENV, DEFAULT_INPUTS_MAX_DEPTH)
    where, text = ("--inputs-json", inputs_json) if inputs_json else (f"--inputs-file {inputs_file}", None)
    if inputs_file:
        text = _read_inputs_file(inputs_file, max_bytes)
    if text is None:
        return {}
    if where == "--inputs-json" and len(text.encode("utf-8", errors="surrogatepass")) > max_bytes:
        raise InputsError(
            f"--inputs-json: larger than the {max_bytes}-byte limit for inputs.",
            remedy=f"Pass smaller inputs, or raise the limit with {INPUTS_MAX_BYTES_ENV}=<bytes>.",
        )
    if _json_depth_exceeds(text, max_depth):
        raise InputsError(
            f"{where}: nested deeper than the limit of {max_depth} levels of arrays/objects.",
            remedy=f"Flatten the inputs, or raise the limit with {INPUTS_MAX_DEPTH_ENV}=<levels>.",
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputsError(f"{where}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    except RecursionError:
        raise InputsError(f"{where}: nested too deeply to parse.") from None
    if not isinstance(value, dict):
        raise InputsError(f"{where}: expected a JSON object.")
    return value
