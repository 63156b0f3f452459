"""The docker CLI in one place: which client, how every call runs, and `docker image inspect`.

**Which client.** `THEORY_DOCKER` (or `DOCKER`) names it. Otherwise the candidates are `docker` on
PATH, `/usr/bin/docker` and `/usr/local/bin/docker`, and the first one that can run a BuildKit
build wins:

1. one with the buildx plugin (`docker buildx version` works: GitHub runners, Docker Desktop), which
   builds with `docker buildx build --load`;
2. otherwise a client older than 23 with `DOCKER_BUILDKIT=1`, which uses the engine's built-in
   BuildKit (e.g. Debian's `/usr/bin/docker` 20.10). Newer clients without buildx refuse BuildKit.

Building, pushing and the local target all use that one client (`docker_client`), so a host with
two clients (say `/usr/local/bin/docker` 28 without buildx next to `/usr/bin/docker` 20.10) never
builds with one and pushes or runs with the other. When no client can build, pushing and running
(which need no BuildKit) use the first candidate; `find_builder` refuses.

**How it runs.** Through the CLI, not the Engine API: the CLI already honours everything a user may
have configured (DOCKER_HOST, TLS, ssh://) and passes registry credentials to the daemon. Every
call made by `Docker` has a timeout and reads stdin from /dev/null; a missing client, an engine
that does not answer in time, or one that cannot be reached is DockerUnavailableError (ERR_DOCKER).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import secret_values
from .errors import DeployError, DockerUnavailableError, ImageBuildError

DOCKER_TIMEOUT_S = 60.0
_PROBE_TIMEOUT_S = 30.0

_DAEMON_DOWN_MARKERS = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "error during connect",
    "permission denied while trying to connect to the docker daemon",
    "docker daemon is not running",
)


def tail_text(text: str, limit: int = 600) -> str:
    """The end of a docker call's output for an error message, scrubbed of secret values."""
    text = secret_values.scrub(text.strip())
    return text if len(text) <= limit else "..." + text[-limit:]


# ---------------------------------------------------------------------------------------------------
# Which client
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Builder:
    client: str  # path of the docker client
    mode: str  # "buildx" | "buildkit"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.mode == "buildkit":
            env["DOCKER_BUILDKIT"] = "1"
        return env


def _probe(cmd: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    """Ask a client what it can do; None when it cannot be run or does not answer (never raises)."""
    try:
        return subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


# client → (build mode or None, client major version or None); only answers that came back are kept.
_build_modes: dict[str, tuple[str | None, int | None]] = {}


def _build_mode(client: str) -> tuple[str | None, int | None]:
    """How `client` can run a BuildKit build ("buildx", "buildkit", or None), and its major version."""
    if client in _build_modes:
        return _build_modes[client]
    buildx = _probe([client, "buildx", "version"])
    if buildx is not None and buildx.returncode == 0:
        _build_modes[client] = ("buildx", None)
        return _build_modes[client]
    version = _probe([client, "version", "--format", "{{.Client.Version}}"])
    match = re.match(r"(\d+)\.", version.stdout.strip()) if version is not None else None
    major = int(match.group(1)) if match else None
    answer = ("buildkit" if major is not None and major < 23 else None, major)
    if buildx is not None and version is not None:
        _build_modes[client] = answer
    return answer


def client_candidates() -> list[str]:
    """`THEORY_DOCKER`/`DOCKER` alone when set; else the installed clients, in the order they are tried."""
    named = os.environ.get("THEORY_DOCKER") or os.environ.get("DOCKER")
    if named:
        return [named]
    found: list[str] = []
    on_path = shutil.which("docker")
    for candidate in (on_path, "/usr/bin/docker", "/usr/local/bin/docker"):
        if candidate and os.path.exists(candidate) and candidate not in found:
            found.append(candidate)
    return found


def _no_client() -> DockerUnavailableError:
    return DockerUnavailableError("no docker client found (PATH, /usr/bin/docker); set THEORY_DOCKER.")


def docker_client() -> str:
    """The client every docker call uses: the first that can build (see the module docstring), else the
    first candidate. DockerUnavailableError when there is none at all."""
    candidates = client_candidates()
    if not candidates:
        raise _no_client()
    for client in candidates:
        mode, _major = _build_mode(client)
        if mode is not None:
            return client
    return candidates[0]


def find_builder() -> Builder:
    """The first docker client that can run a BuildKit build here, once its engine answers."""
    candidates = client_candidates()
    if not candidates:
        raise _no_client()
    tried = []
    for client in candidates:
        mode, major = _build_mode(client)
        if mode is not None:
            builder = Builder(client, mode)
            break
        tried.append(f"{client} (client {major or '?'}, no buildx plugin)")
    else:
        raise DockerUnavailableError(
            "no docker client here can build with BuildKit: " + "; ".join(tried) + ".",
            remedy="Install the buildx plugin, or point THEORY_DOCKER at a client older than 23 "
            "(e.g. /usr/bin/docker).",
        )
    info = _probe([builder.client, "version", "--format", "{{.Server.Version}}"])
    if info is None or info.returncode != 0 or not info.stdout.strip():
        raise DockerUnavailableError(f"{builder.client} cannot reach a Docker engine.")
    return builder


# ---------------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------------


class Docker:
    """The docker CLI: every call has a timeout; an unreachable daemon is DockerUnavailableError.

    `binary` defaults to `docker_client()`, looked up on first use (so making a Docker costs nothing).
    """

    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary

    @property
    def binary(self) -> str:
        if self._binary is None:
            try:
                self._binary = docker_client()
            except DockerUnavailableError:
                self._binary = "docker"  # nothing installed: the first call says so (ERR_DOCKER)
        return self._binary

    def _missing(self) -> DockerUnavailableError:
        return DockerUnavailableError(
            f"no docker client at {self.binary!r}.",
            remedy="Install the docker CLI, or set THEORY_DOCKER to its path.",
        )

    def run(
        self,
        args: list[str],
        *,
        timeout: float = DOCKER_TIMEOUT_S,
        env: dict[str, str] | None = None,
        check: bool = True,
        what: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        what = what or f"docker {args[0]}"
        try:
            proc = subprocess.run(
                [self.binary, *args],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                env=env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError:
            raise self._missing() from None
        except subprocess.TimeoutExpired:
            raise DockerUnavailableError(f"{what}: the Docker engine did not answer within {timeout:.0f}s.") from None
        except OSError as exc:
            raise DockerUnavailableError(f"cannot run {self.binary}: {exc.strerror}.") from None
        if proc.returncode != 0:
            self.raise_if_daemon_down(proc.stderr)
            if check:
                raise DeployError(f"{what} failed (exit {proc.returncode}): {tail_text(proc.stderr)}")
        return proc

    def popen(self, args: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start a long docker call (a build, `logs --follow`) whose output is read as it comes:
        stdout and stderr merged, text. The caller owns the deadline and the exit code."""
        try:
            return subprocess.Popen(
                [self.binary, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env=env,
            )
        except FileNotFoundError:
            raise self._missing() from None
        except OSError as exc:
            raise DockerUnavailableError(f"cannot run {self.binary}: {exc.strerror}.") from None

    @staticmethod
    def raise_if_daemon_down(stderr: str) -> None:
        lowered = stderr.lower()
        if any(marker in lowered for marker in _DAEMON_DOWN_MARKERS):
            raise DockerUnavailableError(f"the Docker engine is not reachable: {tail_text(stderr, 300)}")

    def _inspect(self, args: list[str], name: str, what: str) -> dict[str, Any] | None:
        proc = self.run([*args, "--", name], check=False, what=what)
        if proc.returncode != 0:
            if "no such" in proc.stderr.lower():
                return None
            raise DeployError(f"{what} failed: {tail_text(proc.stderr)}")
        data = json.loads(proc.stdout or "[]")
        return data[0] if data else None

    def inspect_container(self, name: str) -> dict[str, Any] | None:
        """The engine's record of a container; None when there is none by that name or id."""
        return self._inspect(["container", "inspect"], name, f"docker inspect {name}")

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        """The engine's record of a local image; None when the engine does not have it."""
        return self._inspect(["image", "inspect"], ref, f"docker image inspect {ref}")


def inspect_image(client: str, name: str) -> dict[str, Any]:
    """`docker image inspect` of an image that must be there (build, push): ImageBuildError otherwise."""
    proc = Docker(client).run(["image", "inspect", "--", name], check=False, what=f"docker image inspect {name}")
    if proc.returncode != 0:
        raise ImageBuildError(
            f"no local image {name}: {proc.stderr.strip()[:300]}",
            remedy="Build it first: `processorctl build --ref R`.",
        )
    data = json.loads(proc.stdout)
    return data[0] if isinstance(data, list) and data else {}
