"""One error hierarchy for every verb.

Each failure a user can meet is a subclass of `TheoryDeployError` with a stable `ERR_*` code, its own
process exit code and a default remedy. The CLI turns any of them into a one-line human message (or
`{"status":"error","error":{"code","message"}}` under --json) and never shows a traceback unless
--debug is given. The README's error table is generated from `ALL_ERRORS` and a test keeps it in sync.

Exit code 2 is reserved for usage errors (argparse's own convention), 1 for bugs (`ERR_INTERNAL`).
Codes that processors and earlier deploy tooling already emit (ERR_IMAGE_UNPINNED, ERR_MISSING_SECRET,
ERR_WS_PROTOCOL, ...) keep their meaning, so scripts that match on them keep working.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TheoryDeployError(Exception):
    code: ClassVar[str] = "ERR_INTERNAL"
    exit_code: ClassVar[int] = 1
    remedy: ClassVar[str] = "This is a bug in theory-deploy: re-run with --debug and report the traceback."

    def __init__(self, message: str, *, remedy: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if remedy is not None:
            self.remedy = remedy  # type: ignore[misc]  # per-instance remedy overrides the class default
        self.details: dict[str, Any] = details or {}

    def render(self) -> str:
        """The message plus how to fix it, as one string for humans and JSON alike."""
        if self.remedy and self.remedy not in self.message:
            return f"{self.message} Fix: {self.remedy}"
        return self.message

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.render()}
        if self.details:
            error["details"] = self.details
        return {"status": "error", "error": error}


class UsageError(TheoryDeployError):
    code = "ERR_USAGE"
    exit_code = 2
    remedy = "See --help for the verb's flags."


# --- Inputs: refs, environments, registry.yaml --------------------------------------------------------
class InvalidRefError(TheoryDeployError):
    code = "ERR_INVALID_REF"
    exit_code = 3
    remedy = "Write the ref as ns/name@N, e.g. llm/litellm@1 (lowercase letters, digits, '-' and '_')."


class InvalidEnvError(TheoryDeployError):
    code = "ERR_INVALID_ENV"
    exit_code = 4
    remedy = "Use --env dev, --env staging or --env main."


class ValidationError(TheoryDeployError):
    code = "ERR_VALIDATION"
    exit_code = 5
    remedy = "Fix each file:line:col listed above; `processorctl validate` re-checks them all."


class ProcessorNotFoundError(TheoryDeployError):
    code = "ERR_PROCESSOR_NOT_FOUND"
    exit_code = 6
    remedy = "Check the ref; processors live in processors/<ns>/<name>/registry.yaml (see `processorctl validate`)."


class GitContextError(TheoryDeployError):
    code = "ERR_GIT_CONTEXT"
    exit_code = 7
    remedy = "Set GIT_BRANCH and GIT_USER (dev app names are {branch}-{user}-{slug})."


class InputsError(TheoryDeployError):
    code = "ERR_INPUTS"
    exit_code = 8
    remedy = "Make --inputs-json / --inputs-file match the processor's `inputs` schema in registry.yaml."


# --- Images and registries -----------------------------------------------------------------------------
class ImageUnpinnedError(TheoryDeployError):
    code = "ERR_IMAGE_UNPINNED"
    exit_code = 10
    remedy = (
        "Pin it first: `processorctl pin --ref R --platform amd64 --oci REPO@sha256:...` (or `processorctl publish`)."
    )


class ImageBuildError(TheoryDeployError):
    code = "ERR_IMAGE_BUILD"
    exit_code = 11
    remedy = "Read the build log above; re-run `processorctl build --ref R --debug` for the full docker output."


class ImagePushError(TheoryDeployError):
    code = "ERR_IMAGE_PUSH"
    exit_code = 12
    remedy = "Check that the repository exists and that REGISTRY_USERNAME/REGISTRY_PASSWORD may push to it."


class ImagePullError(TheoryDeployError):
    code = "ERR_IMAGE_PULL"
    exit_code = 13
    remedy = "Check the digest and registry auth (REGISTRY_USERNAME/REGISTRY_PASSWORD)."


class ImageUnavailableError(TheoryDeployError):
    code = "ERR_IMAGE_UNAVAILABLE"
    exit_code = 14
    remedy = "The registry does not have that digest: push it first (`processorctl push`) or check the repository."


class RegistryAuthError(TheoryDeployError):
    code = "ERR_REGISTRY_AUTH"
    exit_code = 15
    remedy = "Set REGISTRY_USERNAME and REGISTRY_PASSWORD to a user/token that may read (and push) the repository."


class RegistryUnreachableError(TheoryDeployError):
    code = "ERR_REGISTRY_UNREACHABLE"
    exit_code = 16
    remedy = "The registry kept failing after retries: check it is up and reachable, then re-run (re-runs resume)."


class NotADigestError(TheoryDeployError):
    code = "ERR_NOT_A_DIGEST"
    exit_code = 17
    remedy = "Pass a digest ref REPO@sha256:<64 hex>, not a tag; `processorctl push --json` prints them."


class ConfigDigestError(TheoryDeployError):
    code = "ERR_CONFIG_DIGEST"
    exit_code = 18
    remedy = "That digest is an image config, which cannot be pulled: pass the manifest digest from `processorctl push --json`."


class PlatformMismatchError(TheoryDeployError):
    code = "ERR_PLATFORM_MISMATCH"
    exit_code = 19
    remedy = "Pass the digest built for that platform (see `platforms` in `processorctl push --json`)."


class DigestIntegrityError(TheoryDeployError):
    code = "ERR_DIGEST_INTEGRITY"
    exit_code = 20
    remedy = "The registry served a body whose sha256 is not the digest asked for: do not trust it; check the registry or proxy."


class RepositoryMismatchError(TheoryDeployError):
    code = "ERR_REPOSITORY_MISMATCH"
    exit_code = 28
    remedy = (
        "Pin a digest from the processor's image.repository, or move the processor on purpose first: "
        "`processorctl set-repository --ref R --repository REPO`."
    )


class RegistryMismatchError(TheoryDeployError):
    code = "ERR_REGISTRY_MISMATCH"
    exit_code = 21
    remedy = "What runs is not what is pinned: re-run `start` to deploy the pin, or pin what should run."


# --- Secrets, runs, processors -------------------------------------------------------------------------
class MissingSecretError(TheoryDeployError):
    code = "ERR_MISSING_SECRET"
    exit_code = 22
    remedy = "Export each named variable and run `sync-secrets --ref R --env E`."


class ProviderError(TheoryDeployError):
    code = "ERR_PROVIDER"
    exit_code = 23
    remedy = "The model provider failed: check the key, the model name and LITELLM_API_BASE."


class RuntimeFailureError(TheoryDeployError):
    code = "ERR_RUNTIME"
    exit_code = 24
    remedy = "Read the processor's logs (`logs --ref R --env E`)."


class RunTimeoutError(TheoryDeployError):
    code = "ERR_TIMEOUT"
    exit_code = 25
    remedy = "Raise --timeout, or check the processor's logs for where it stalled."


class ProtocolError(TheoryDeployError):
    code = "ERR_WS_PROTOCOL"
    exit_code = 26
    remedy = "Client and processor disagree on theory.run.v1: rebuild the processor with the current runtime."


class AuthRequiredError(TheoryDeployError):
    code = "ERR_UNAUTHORIZED"
    exit_code = 27
    remedy = "The endpoint requires a bearer token: set THEORY_AUTH_TOKEN to the value of the app's auth secret."


# --- Targets ------------------------------------------------------------------------------------------
class FunctionNotFoundError(TheoryDeployError):
    code = "ERR_FUNCTION_NOT_FOUND"
    exit_code = 30
    remedy = "No such app in that environment: check --env and run `start --ref R --env E` first."


class ModalAuthError(TheoryDeployError):
    code = "ERR_MODAL_AUTH"
    exit_code = 31
    remedy = "Set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (modal.com > Settings > API Tokens)."


class ModalTimeoutError(TheoryDeployError):
    code = "ERR_MODAL_TIMEOUT"
    exit_code = 32
    remedy = "Modal did not answer in time: check network access to Modal (or MODAL_SERVER_URL) and retry."


class DeployError(TheoryDeployError):
    code = "ERR_DEPLOY"
    exit_code = 33
    remedy = "The target refused the deploy: read the message, fix, and re-run `start` (it resumes)."


class DockerUnavailableError(TheoryDeployError):
    code = "ERR_DOCKER"
    exit_code = 34
    remedy = "Start a Docker engine (`sudo scripts/dev-services up`) or set DOCKER_HOST."


class NotRunningError(TheoryDeployError):
    code = "ERR_NOT_RUNNING"
    exit_code = 35
    remedy = "Start it: `start --ref R --env E`."


class SecretStoreError(TheoryDeployError):
    code = "ERR_SECRET_STORE"
    exit_code = 36
    remedy = (
        "The local secret store ($THEORY_STATE_DIR/secrets/<env>, default ~/.local/state/theory-deploy) must be "
        "a private folder (0700, yours) outside the repository: fix its permissions or point THEORY_STATE_DIR elsewhere."
    )


class DeployLockedError(TheoryDeployError):
    code = "ERR_DEPLOY_LOCKED"
    exit_code = 37
    remedy = (
        "Another run holds this app's deploy lock (start → verify must not interleave): wait for it, raise "
        "--lock-wait, or if that run is gone, see who holds it with `lock --ref R --env E` and clear a stale lock "
        "with `lock --ref R --env E --break` (a lease also expires on its own)."
    )


# --- Git and GitHub -----------------------------------------------------------------------------------
class GitError(TheoryDeployError):
    code = "ERR_GIT"
    exit_code = 40
    remedy = "Read git's message above; the work tree was left as it was."


class PushConflictError(TheoryDeployError):
    code = "ERR_PUSH_CONFLICT"
    exit_code = 41
    remedy = "The pin branch kept moving or holds commits the bot did not make: merge or close that PR, then re-run."


class GitHubError(TheoryDeployError):
    code = "ERR_GITHUB"
    exit_code = 42
    remedy = "Check GITHUB_TOKEN's permissions (contents: write, pull-requests: write) and GITHUB_REPOSITORY."


class RevisionError(TheoryDeployError):
    code = "ERR_REVISION"
    exit_code = 43
    remedy = (
        "Pass a digest or a git revision at which registry.yaml pinned the platform (`git log -p -- <registry.yaml>`)."
    )


class LockTimeoutError(TheoryDeployError):
    code = "ERR_LOCK_TIMEOUT"
    exit_code = 44
    remedy = "Another theory-deploy process holds the file lock; wait for it or remove a stale one after checking."


class FileConflictError(TheoryDeployError):
    code = "ERR_FILE_CONFLICT"
    exit_code = 45
    remedy = "A file is already there with other content and was left as it was: move it aside, or pass --force."


ALL_ERRORS: tuple[type[TheoryDeployError], ...] = (
    TheoryDeployError,
    UsageError,
    InvalidRefError,
    InvalidEnvError,
    ValidationError,
    ProcessorNotFoundError,
    GitContextError,
    InputsError,
    ImageUnpinnedError,
    ImageBuildError,
    ImagePushError,
    ImagePullError,
    ImageUnavailableError,
    RegistryAuthError,
    RegistryUnreachableError,
    NotADigestError,
    ConfigDigestError,
    PlatformMismatchError,
    DigestIntegrityError,
    RepositoryMismatchError,
    RegistryMismatchError,
    MissingSecretError,
    ProviderError,
    RuntimeFailureError,
    RunTimeoutError,
    ProtocolError,
    AuthRequiredError,
    FunctionNotFoundError,
    ModalAuthError,
    ModalTimeoutError,
    DeployError,
    DockerUnavailableError,
    NotRunningError,
    SecretStoreError,
    DeployLockedError,
    GitError,
    PushConflictError,
    GitHubError,
    RevisionError,
    LockTimeoutError,
    FileConflictError,
)

BY_CODE: dict[str, type[TheoryDeployError]] = {cls.code: cls for cls in ALL_ERRORS}


def error_for_code(code: str, message: str) -> TheoryDeployError:
    """Rebuild a typed error from a code that crossed a wire (a run envelope), for its exit code."""
    cls = BY_CODE.get(code, RuntimeFailureError)
    err = cls(message)
    if cls is RuntimeFailureError and code != RuntimeFailureError.code:
        err.details = {"processor_code": code}
    return err


def markdown_table() -> str:
    """The README's table of every code, its exit code and remedy (kept in sync by a test)."""
    rows = ["| code | exit | what to do |", "|---|---|---|"]
    for cls in sorted(ALL_ERRORS, key=lambda c: c.exit_code):
        rows.append(f"| `{cls.code}` | {cls.exit_code} | {cls.remedy.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
