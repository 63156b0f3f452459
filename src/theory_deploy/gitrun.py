"""The one way theory-deploy runs git.

`Git(cwd)` runs `git` in one folder with a fixed configuration, whoever calls it:

- a scrubbed environment: variables that would point git at another repository, index or object
  store (`GIT_DIR`, `GIT_WORK_TREE`, `GIT_INDEX_FILE`, ...; set for instance when a git hook runs
  us) are dropped, output is in the C locale, and git never prompts (`GIT_TERMINAL_PROMPT=0`);
- hooks disabled (`core.hooksPath=/dev/null`), no signing, no auto-gc, no LFS smudging;
- stdin from /dev/null and a timeout on every call (a longer one for calls that reach a remote);
- failures raised as a typed error (`GitError` unless the caller names another, e.g. rollback's
  `RevisionError`), with anything shaped like a token masked in the message.

Values a user supplies (a revision, a branch, a remote) must never be read as an option:
`rev`, `blob` and `show` refuse a value starting with `-`, and `not_an_option` does the same for a
caller that puts such a value on a command line itself.

`try_out` is for best-effort readings (the branch name, a label): it returns None instead of raising.

Authenticating to an http(s) remote with a token (`with_http_token`): the pin bot pushes with the
token it uses for GitHub's API, not with whatever actions/checkout persisted. The token is handed to
git only in the environment of the calls that reach a remote (`network=True`), as command-scope
config (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`, git 2.31+):
`http.<remote url>.extraheader` is first set empty, which resets the list of extra headers (so an
`AUTHORIZATION` header that actions/checkout persisted for that server is not sent as well), then to
`AUTHORIZATION: basic base64(x-access-token:<token>)`, as actions/checkout itself does. Never in
argv (visible to every process on the machine) and never written to a config file. The key names
the remote's exact URL, which is at least as specific as any persisted `http.<url>.*` entry and
comes last (command scope), so it wins over them.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from . import secret_values as _secrets
from .errors import GitError, TheoryDeployError

LOCAL_TIMEOUT_S = 120
# A fetch that brings only the refs it names: no tags, no FETCH_HEAD left behind, no submodules.
QUIET_FETCH = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules")
NETWORK_TIMEOUT_S = 300

# Variables that would point git at another repository, index or object store than the one we name.
_ENV_DROP = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
    "GIT_PREFIX",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_SHALLOW_FILE",
    "GIT_GRAFT_FILE",
    "GIT_REPLACE_REF_BASE",
)

_CONFIG = (
    "core.hooksPath=/dev/null",
    "commit.gpgsign=false",
    "tag.gpgsign=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "log.showSignature=false",
    "rebase.updateRefs=false",
    "rebase.autoStash=false",
    "core.quotePath=false",
    "advice.detachedHead=false",
)


class Identity(Protocol):
    """Who commits: the author and committer name and email of every commit the runner makes."""

    @property
    def name(self) -> str: ...

    @property
    def email(self) -> str: ...


# ---------------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------------

_TOKEN_PATTERNS = (
    re.compile(r"\bgh[pousr]_[A-Za-z0-9_]{16,}"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),  # JWTs
    re.compile(r"(?i)(?<=authorization: )(?:token|bearer|basic) \S+"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in URLs
    re.compile(r"(?<=x-access-token:)[^@\s]+"),
)


def mask_tokens(text: str, *secret_values: str | None) -> str:
    """Replace the given secret values and anything shaped like a GitHub token or JWT with `***`."""
    for value in sorted((v for v in secret_values if v), key=len, reverse=True):
        text = text.replace(value, "***")
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub("***", text)
    return _secrets.scrub(text)


# ---------------------------------------------------------------------------------------------------
# Values that must not become options
# ---------------------------------------------------------------------------------------------------


def not_an_option(value: str, what: str, error: type[TheoryDeployError] = GitError) -> str:
    """Return `value`, or raise `error` when git would read it as an option (or it is empty)."""
    if not value:
        raise error(f"{what} is empty.")
    if value.startswith("-"):
        raise error(
            f"{what} {value!r} starts with '-', so git would read it as an option; refusing it.",
            remedy=f"Pass a real {what} (a name or a commit sha, not starting with '-').",
        )
    return value


# ---------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------


class Git:
    """Runs git in one folder with a fixed, hook-free, prompt-free configuration."""

    def __init__(
        self,
        cwd: Path,
        identity: Identity | None = None,
        *,
        timeout: float = LOCAL_TIMEOUT_S,
        error: type[TheoryDeployError] = GitError,
        network_env: Mapping[str, str] | None = None,
    ) -> None:
        self.cwd = Path(cwd)
        self.identity = identity
        self.timeout = timeout
        self.error = error
        # Added to the environment of calls that reach a remote only (see with_http_token).
        self.network_env: dict[str, str] = dict(network_env or {})
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
        env.update(
            LC_ALL="C",
            LANGUAGE="C",
            GIT_TERMINAL_PROMPT="0",
            GCM_INTERACTIVE="never",
            GIT_LFS_SKIP_SMUDGE="1",
            GIT_OPTIONAL_LOCKS="0",
        )
        if identity is not None:
            env.update(
                GIT_AUTHOR_NAME=identity.name,
                GIT_AUTHOR_EMAIL=identity.email,
                GIT_COMMITTER_NAME=identity.name,
                GIT_COMMITTER_EMAIL=identity.email,
            )
        self.env = env

    def with_cwd(self, cwd: Path) -> Git:
        return Git(cwd, self.identity, timeout=self.timeout, error=self.error, network_env=self.network_env)

    def with_http_token(self, token: str, urls: Iterable[str]) -> Git:
        """A runner whose calls that reach a remote authenticate to each http(s) URL of `urls` with
        `token` (GitHub's `x-access-token` Basic credential), overriding persisted credentials for
        those URLs. Other URLs (ssh, local paths) are left to git's own configuration."""
        _secrets.register_secret_value(token)
        header_value = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        _secrets.register_secret_value(header_value)
        env = dict(self.network_env)
        count = _config_count(self.env, env)
        for url in dict.fromkeys(_config_url(u) for u in urls if re.match(r"(?i)https?://", u)):
            for value in ("", f"AUTHORIZATION: basic {header_value}"):  # reset, then ours
                env[f"GIT_CONFIG_KEY_{count}"] = f"http.{url}.extraheader"
                env[f"GIT_CONFIG_VALUE_{count}"] = value
                count += 1
            env["GIT_CONFIG_COUNT"] = str(count)
        return Git(self.cwd, self.identity, timeout=self.timeout, error=self.error, network_env=env)

    def remote_urls(self, remote: str) -> list[str]:
        """The URLs git fetches from and pushes to for `remote` (insteadOf rewrites applied); a
        remote that is no configured name is taken as the URL itself."""
        not_an_option(remote, "remote", self.error)
        urls = []
        for push in ((), ("--push",)):
            proc = self.run("remote", "get-url", *push, "--all", remote, check=False)
            urls += proc.stdout.split() if proc.returncode == 0 else []
        return list(dict.fromkeys(urls)) or [remote]

    def run(
        self, *args: str, check: bool = True, network: bool = False, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `git ARGS`; raise `self.error` when git is missing, times out, or (with check) fails."""
        argv = ["git"]
        for setting in _CONFIG:
            argv += ["-c", setting]
        argv += args
        limit = timeout or (max(self.timeout, NETWORK_TIMEOUT_S) if network else self.timeout)
        try:
            proc = subprocess.run(
                argv,
                cwd=self.cwd,
                env={**self.env, **self.network_env} if network else self.env,
                capture_output=True,
                text=True,
                timeout=limit,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            if not self.cwd.is_dir():
                raise self.error(f"{self.cwd} is not a folder; cannot run git there.") from exc
            raise self.error("git is not installed (no `git` on PATH).", remedy="Install git.") from exc
        except OSError as exc:
            raise self.error(f"cannot run git in {self.cwd}: {exc.strerror or exc}.") from exc
        except subprocess.TimeoutExpired as exc:
            raise self.error(
                mask_tokens(f"`git {' '.join(args[:2])}` in {self.cwd} did not finish in {exc.timeout:.0f}s."),
                remedy="Check network access to the git remote and re-run; nothing was changed in your work tree.",
            ) from None
        if check and proc.returncode != 0:
            raise self.error(
                mask_tokens(
                    f"`git {' '.join(args)}` failed in {self.cwd} (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()}"
                )
            )
        return proc

    def out(self, *args: str, network: bool = False) -> str:
        """Stripped stdout of a call that must succeed."""
        return self.run(*args, network=network).stdout.strip()

    def ok(self, *args: str) -> bool:
        return self.run(*args, check=False).returncode == 0

    def try_out(self, *args: str) -> str | None:
        """Stripped stdout, or None when git is missing, fails, times out or prints nothing."""
        try:
            proc = self.run(*args, check=False)
        except TheoryDeployError:
            return None
        out = proc.stdout.strip()
        return out if proc.returncode == 0 and out else None

    def rev(self, spec: str) -> str | None:
        """The commit sha `spec` names, or None when it names none. Refuses an option-like value."""
        not_an_option(spec, "revision", self.error)
        proc = self.run("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
        sha = proc.stdout.strip()
        return sha if proc.returncode == 0 and sha else None

    def blob(self, rev: str, path: str) -> str | None:
        """The blob id of `path` at `rev` (`:0` is the index), or None when there is no such file."""
        not_an_option(rev, "revision", self.error)
        proc = self.run("rev-parse", "--verify", "--quiet", f"{rev}:{path}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def blob_bytes(self, sha: str) -> bytes:
        """The exact bytes of blob `sha` (text calls would decode them; an upload must not)."""
        not_an_option(sha, "object", self.error)
        argv = ["git"]
        for setting in _CONFIG:
            argv += ["-c", setting]
        argv += ["cat-file", "blob", sha]
        try:
            proc = subprocess.run(
                argv,
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self.error(f"cannot read blob {sha} in {self.cwd}: {exc}.") from None
        if proc.returncode != 0:
            raise self.error(
                f"`git cat-file blob {sha}` failed in {self.cwd}: {proc.stderr.decode(errors='replace').strip()}"
            )
        return proc.stdout

    def show(self, rev: str, path: str, *, max_bytes: int | None = None) -> str | None:
        """The text of `path` at `rev`, or None when the revision or the file does not exist.

        The object's size is asked first and a file over `max_bytes` (default THEORY_GIT_MAX_SHOW_BYTES,
        8 MiB) is refused, so a huge blob at a user-given revision is never read into memory."""
        not_an_option(rev, "revision", self.error)
        limit = max_bytes if max_bytes is not None else max_show_bytes()
        sized = self.run("cat-file", "-s", f"{rev}:{path}", check=False)
        if sized.returncode != 0:
            return None
        size = sized.stdout.strip()
        if not size.isdigit() or int(size) > limit:
            raise self.error(
                f"{path} at revision {rev!r} is {size or 'of unknown size'} bytes, over the {limit}-byte "
                "limit for reading a file from git history.",
                remedy=f"Pick another revision, or raise the limit with {MAX_SHOW_BYTES_ENV}=<bytes>.",
            )
        proc = self.run("show", f"{rev}:{path}", check=False)
        return proc.stdout if proc.returncode == 0 else None


def _config_count(*envs: Mapping[str, str]) -> int:
    """How many GIT_CONFIG_KEY_n entries are already set (by the caller's environment or by us):
    ours are appended after them, never over them."""
    for env in reversed(envs):
        raw = env.get("GIT_CONFIG_COUNT", "").strip()
        if raw:
            return int(raw) if raw.isdigit() else 0
    return 0


def _config_url(url: str) -> str:
    """The URL as an `http.<url>.*` config key: a password in it is dropped (it is no part of how
    git matches the key, and must not be copied around), the user name is kept (it is)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/@:]*)(:[^/@]*)?@", r"\1\2@", url)


MAX_SHOW_BYTES_ENV = "THEORY_GIT_MAX_SHOW_BYTES"
DEFAULT_MAX_SHOW_BYTES = 8 * 1024 * 1024


def max_show_bytes() -> int:
    """The most `Git.show` reads: THEORY_GIT_MAX_SHOW_BYTES when a positive whole number, else 8 MiB."""
    raw = os.environ.get(MAX_SHOW_BYTES_ENV, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_SHOW_BYTES
