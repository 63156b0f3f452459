"""The one interface every target (the local Docker engine, Modal) implements, and the logic they share.

A target knows how to start, stop, inspect and reach an app. What must behave identically on every
target lives here once: which image a start deploys (the pin, or a verified `--oci`), how
verify-digest compares the pin with independent readings of what runs (failing closed), how a run
talks theory.run.v1, and how rollback finds an earlier pin in git history.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .. import output, protocol
from ..errors import (
    InputsError,
    RegistryMismatchError,
    RevisionError,
    error_for_code,
)
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
    """Independent readings of what runs. Each is a `sha256:...` digest, or None when unreadable."""

    readings: dict[str, str | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # why a reading is missing


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
    def verify_image(self, oci: ImageRef) -> ImageRef:
        """Prove `oci` is this target's platform manifest in the registry; return the manifest ref."""

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
    def read_running_digests(self, app: AppContext) -> DigestReadings: ...

    @abstractmethod
    def endpoint(self, app: AppContext) -> Endpoint: ...

    # --- shared behaviour ----------------------------------------------------------------------------
    def image_to_deploy(self, app: AppContext, oci: str | None) -> ImageRef:
        """The pin for this target's platform, or `--oci` once proven to be that platform's manifest."""
        if oci:
            return self.verify_image(ImageRef.parse_digest_ref(oci))
        return app.processor.pin_for(self.platform)

    def verify_digest(self, app: AppContext, oci: str | None = None) -> dict[str, Any]:
        expected_ref = ImageRef.parse_digest_ref(oci) if oci else app.processor.pin_for(self.platform)
        expected = expected_ref.digest
        readings = self.read_running_digests(app)
        if not readings.readings:
            raise RegistryMismatchError(f"{app.name} ({app.env}): nothing could be read about what runs; failing closed.")
        problems = []
        for source, seen in readings.readings.items():
            if seen is None:
                why = readings.notes.get(source, "unreadable")
                problems.append(f"{source}: could not be read ({why})")
            elif seen != expected:
                problems.append(f"{source}: {seen}")
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
        result: dict[str, Any] = {"app": app.name, "env": app.env, "envelope": envelope}
        if envelope.get("status") != "success":
            error = envelope.get("error") or {}
            err = error_for_code(str(error.get("code", "ERR_RUNTIME")), str(error.get("message", "")))
            result["_exit_code"] = err.exit_code
            result["summary"] = f"run failed: {error.get('code')}: {error.get('message')}"
        else:
            result["summary"] = json.dumps(envelope.get("outputs"), indent=2)
        return result

    def rollback(self, app: AppContext, to: str, *, dry_run: bool = False) -> dict[str, Any]:
        target = earlier_pin(app.processor, self.platform, to)
        image = self.verify_image(target)
        result = self.start(app, image, dry_run=dry_run)
        result["rolled_back_to"] = str(image)
        result["summary"] = f"rolled back {app.name} ({app.env}) to {image}. " + str(result.get("summary", ""))
        return result


def _git(repo_root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RevisionError(f"git {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    return proc.stdout


def earlier_pin(processor: LoadedProcessor, platform: Platform, to: str) -> ImageRef:
    """`--to` as a digest (must have been pinned in git history) or a git revision (read its pin)."""
    relative = processor.path.resolve().relative_to(processor.repo_root.resolve()).as_posix()
    digest = digest_of(to) or (to if DIGEST_RE.match(to) else None)
    if digest:
        history = _git(processor.repo_root, "log", "-p", "--format=", "--", relative)
        for line in history.splitlines():
            if line.startswith(("+", "-")) and f"{platform}:" in line and digest in line:
                candidate = line.split(f"{platform}:", 1)[1].split("#", 1)[0].strip().strip("'\"")
                return ImageRef.parse_digest_ref(candidate, where="--to")
        raise RevisionError(
            f"--to {to}: registry.yaml never pinned {platform} to that digest ({relative} git history).",
        )
    text = _git(processor.repo_root, "show", f"{to}:{relative}")
    spec, problems = check_file(processor.path, text)
    if spec is None:
        raise RevisionError(f"--to {to}: {relative} at that revision is not valid: {problems[0].message if problems else ''}")
    pin = spec.pins()[platform]
    if not pin:
        raise RevisionError(f"--to {to}: {relative} had no {platform} pin at that revision.")
    return ImageRef.parse_digest_ref(pin, where=f"--to {to}")


def parse_inputs(inputs_json: str | None, inputs_file: str | None) -> dict[str, Any]:
    if inputs_json and inputs_file:
        raise InputsError("give --inputs-json or --inputs-file, not both.")
    where, text = ("--inputs-json", inputs_json) if inputs_json else ("--inputs-file", None)
    if inputs_file:
        try:
            text = Path(inputs_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputsError(f"--inputs-file {inputs_file}: {exc.strerror}.") from None
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputsError(f"{where}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    if not isinstance(value, dict):
        raise InputsError(f"{where}: expected a JSON object.")
    return value
