"""Building a processor's image once per platform with the local Docker engine.

Each platform is its own local image, tagged `theory-local/<slug>:<arch>`. Those tags are local
only: they never leave this machine and never end up in a pin (pins come from `push`, which
uploads by digest). The builder is `docker.find_builder()`: the docker client that push and the
local target use too, with `docker buildx build --platform linux/<arch> --load` when it has buildx,
else `DOCKER_BUILDKIT=1 docker build` (a client older than 23 using the engine's BuildKit).

Platforms are built one at a time; arm64 on an amd64 host runs its RUN steps under QEMU (binfmt).
With more than one platform the build passes `--pull`, so the second platform does not reuse the
first platform's cached base variant.

If the host has a CA bundle (`/etc/ssl/certs/ca-certificates.crt`, or `THEORY_BUILD_CA_BUNDLE`),
it is passed as the BuildKit secret `ca_bundle`; a Dockerfile may mount it for pip
(`RUN --mount=type=secret,id=ca_bundle ...`). Unused secrets are harmless.

Every build also gets the processor runtime (`theory_runtime`), so a processor builds the same in
any repository, theory-deploy's or a user's own, without the runtime's sources in its build context:
the BuildKit secret `theory_runtime` (a deterministic tar.gz of the package, made by
`runtime_bundle.ensure_bundle`) plus the build args THEORY_RUNTIME_SHA256 (the bundle's sha256) and
THEORY_RUNTIME_VERSION. The bundle is not secret: a secret mount is the only way to hand a build a
file from outside its context that works with the classic `DOCKER_BUILDKIT=1 docker build` (no
buildx, so no `--build-context`) as well as with buildx. Secret contents are not part of BuildKit's
cache key, hence the sha256 build arg: the Dockerfile's RUN line that installs the bundle uses it
(a new runtime re-runs that step) and checks the mounted file against it with `sha256sum -c`. Those
two build args are reserved: `--build-arg THEORY_RUNTIME_SHA256=...` is refused.

Reproducible images: every build gets `--build-arg SOURCE_DATE_EPOCH=0` (reserved too). The epoch is
fixed, not the commit time: a layer's digest must depend on its content only, so that an app commit
leaves the dependency layers' digests alone (a commit-time epoch would stamp pip's files with a new
time on every commit and re-upload them). The processor Dockerfiles declare it as an ARG (with
PYTHONHASHSEED=0 and PYTHONDONTWRITEBYTECODE=1) so their RUN steps see it: Python's py_compile, hence
pip's bytecode, is then hash-based (checked-hash .pyc: no source mtime inside), and a BuildKit new
enough to honour it (>= 0.11, buildx) stamps the config with it. The engine's built-in BuildKit (20.10)
ignores it for file mtimes and `created`, so `push` normalises what it uploads as well
(push.normalise_layer / push.normalise_config): the same source gives the same pushed digests
whatever the build cache or engine.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import build_inputs, output, runtime_bundle
from .docker import Builder, Docker, find_builder, inspect_image
from .errors import ImageBuildError, UsageError, ValidationError
from .gitrun import Git
from .refs import ProcessorRef, parse_platform

LOCAL_REPOSITORY = "theory-local"
REF_LABEL = "dev.theory.processor.ref"
DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_LOG_TAIL_LINES = 40
# The epoch of reproducible images (see the module docstring): build arg and push-time normalisation.
SOURCE_DATE_EPOCH = 0


@dataclass(frozen=True)
class BuiltImage:
    image_id: str  # the local engine's id (sha256:...): with the classic store, the config digest
    local_tag: str  # theory-local/<slug>:<arch>: local only, never pinned
    platform: str  # "amd64" | "arm64"


def local_tag(slug: str, platform: str) -> str:
    return f"{LOCAL_REPOSITORY}/{slug}:{parse_platform(platform)}"


# ---------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------


def _git_in(cwd: Path, *args: str) -> str | None:
    """git's answer for a label, or None (no git, not a checkout): a label is never worth a failure."""
    return Git(cwd, timeout=15).try_out(*args)


def source_url(repo_root: Path, environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    server, repo = env.get("GITHUB_SERVER_URL"), env.get("GITHUB_REPOSITORY")
    if server and repo:
        return f"{server.rstrip('/')}/{repo}"
    remote = _git_in(repo_root, "config", "--get", "remote.origin.url")
    if not remote:
        return None
    # Never put credentials from a remote URL into an image label.
    remote = re.sub(r"^(https?://)[^@/]+@", r"\1", remote)
    match = re.match(r"^(?:ssh://)?git@([^:/]+)[:/](.+?)(?:\.git)?$", remote)
    if match:
        return f"https://{match.group(1)}/{match.group(2)}"
    return remote.removesuffix(".git")


def source_revision(context: Path) -> str | None:
    """The last commit that changed the build context, ignoring registry.yaml files.

    Not plain HEAD: pins are committed into registry.yaml, and a revision label that moved with
    every pin commit would change the image, hence its digest, hence the pin: a bot loop.
    """
    return _git_in(context, "log", "-1", "--format=%H", "--", ".", ":(exclude,glob)**/registry.yaml")


def image_labels(ref: ProcessorRef, context: Path, repo_root: Path) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.title": ref.slug,
        "org.opencontainers.image.version": str(ref.version),
        REF_LABEL: str(ref),
    }
    url = source_url(repo_root)
    if url:
        labels["org.opencontainers.image.source"] = url
    revision = source_revision(context)
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    return labels


# ---------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------


def ca_bundle() -> Path | None:
    configured = os.environ.get("THEORY_BUILD_CA_BUNDLE")
    if configured:
        return Path(configured) if Path(configured).is_file() else None
    default = Path(DEFAULT_CA_BUNDLE)
    return default if default.is_file() else None


def build_command(
    builder: Builder,
    *,
    platform: str,
    context: Path,
    dockerfile: Path,
    tag: str,
    iidfile: Path,
    labels: Mapping[str, str],
    build_args: Mapping[str, str],
    pull: bool,
    ca: Path | None,
    runtime: runtime_bundle.RuntimeBundle | None = None,
    no_cache: bool = False,
) -> list[str]:
    cmd = [builder.client]
    cmd += ["buildx", "build", "--load"] if builder.mode == "buildx" else ["build"]
    cmd += ["--platform", f"linux/{platform}", "--progress", "plain", "-f", str(dockerfile), "-t", tag]
    cmd += ["--iidfile", str(iidfile)]
    if pull:
        cmd.append("--pull")
    if no_cache:
        cmd.append("--no-cache")
    if builder.mode == "buildx":
        # No provenance/SBOM attestations: they are what puts unknown/unknown entries in indexes.
        cmd += ["--provenance=false", "--sbom=false"]
    for key, value in labels.items():
        cmd += ["--label", f"{key}={value}"]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    # Reproducible builds (module docstring); after the caller's args, which may not set it anyway.
    cmd += ["--build-arg", f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}"]
    if ca is not None:
        cmd += ["--secret", f"id=ca_bundle,src={ca}"]
    if runtime is not None:
        # The runtime as a BuildKit secret (the only file channel without buildx) + its sha256 as a build
        # arg, because secret contents are not in BuildKit's cache key (see the module docstring).
        cmd += runtime.docker_flags()
    cmd.append(str(context))
    return cmd


def build_platform_images(
    spec: Any,
    repo_root: Path,
    platforms: Sequence[str] | None,
    build_args: Mapping[str, str] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    registry_path: Path | None = None,
    debug: bool = False,
    pull: bool | None = None,
    builder: Builder | None = None,
    progress: Callable[[str], None] = output.progress,
    no_cache: bool = False,
) -> dict[str, BuiltImage]:
    """Build `spec` once per platform; return {arch: BuiltImage}.

    `spec` is a registry_file.ProcessorSpec; paths resolve against `registry_path`'s folder (default:
    processors/<ns>/<name>/ under `repo_root`). `labels` are added to the standard ones. `no_cache`
    runs every step again (`--no-cache`), as a build on an empty cache would.
    """
    ref = ProcessorRef.parse(spec.ref, where="registry.yaml ref")
    folder = registry_path.parent if registry_path is not None else repo_root / "processors" / ref.namespace / ref.name
    shown = f"{folder / 'registry.yaml'}"
    for field, value in (("context", spec.build.context), ("dockerfile", spec.build.dockerfile)):
        if "\0" in value:
            raise ValidationError(f"{shown}: build.{field} contains a NUL byte (\\0), which no path may hold.")
    context = (folder / spec.build.context).resolve()
    dockerfile = (context / spec.build.dockerfile).resolve()
    # validate refuses these already; checked again here, right before docker sees the paths, so no
    # file outside the repository is ever sent to the engine (nor quoted back in a build error).
    root = repo_root.resolve()
    for field, value, resolved in (
        ("context", spec.build.context, context),
        ("dockerfile", spec.build.dockerfile, dockerfile),
    ):
        if resolved != root and root not in resolved.parents:
            raise ValidationError(
                f"{shown}: build.{field} {value!r} resolves to {resolved}, outside the repository {root}.",
                remedy=f"Point build.{field} at a path inside the repository (symlinks are followed).",
            )
    if not context.is_dir():
        raise ImageBuildError(
            f"{ref}: build.context {spec.build.context!r} is not a folder ({context}).",
            remedy="Fix build.context in registry.yaml (it is relative to the file's folder).",
        )
    if not dockerfile.is_file():
        raise ImageBuildError(
            f"{ref}: build.dockerfile {spec.build.dockerfile!r} does not exist ({dockerfile}).",
            remedy="Fix build.dockerfile in registry.yaml (it is relative to build.context).",
        )
    archs = [parse_platform(p) for p in (platforms or spec.build.platforms)]
    archs = list(dict.fromkeys(archs))
    if "SOURCE_DATE_EPOCH" in (build_args or {}):
        raise UsageError(
            f"--build-arg SOURCE_DATE_EPOCH: set by processorctl build itself (to {SOURCE_DATE_EPOCH}), and push "
            "normalises every layer's timestamps to that epoch; another value could only break reproducibility.",
            remedy="Drop --build-arg SOURCE_DATE_EPOCH=...",
        )
    reserved = sorted(set(build_args or {}) & set(runtime_bundle.RESERVED_BUILD_ARGS))
    if reserved:
        raise UsageError(
            f"--build-arg {', '.join(reserved)}: set by processorctl build itself, for the theory_runtime "
            "bundle it hands every build; a value given here could only name another bundle.",
            remedy=f"Drop --build-arg {reserved[0]}=...; the runtime comes from the installed theory-deploy.",
        )
    runtime = runtime_bundle.ensure_bundle(progress=progress)
    progress(
        f"runtime: theory_runtime {runtime.version} (bundle sha256 {runtime.sha256[:12]}, {runtime.size} bytes, "
        f"from {runtime.source})"
    )
    builder = builder or find_builder()
    all_labels = {**image_labels(ref, context, repo_root), **(labels or {})}
    pull = len(archs) > 1 if pull is None else pull
    ca = ca_bundle()
    # An unchanged build is not run again (build_inputs: what the fingerprint covers, and when none is made).
    fingerprints = build_inputs.Fingerprints(builder, context, dockerfile, progress=progress)
    records = build_inputs.BuildRecords()
    built: dict[str, BuiltImage] = {}
    for arch in archs:
        tag = local_tag(ref.slug, arch)
        with tempfile.TemporaryDirectory(prefix="theory-build-") as tmp:
            iidfile = Path(tmp) / "iid"
            cmd = build_command(
                builder,
                platform=arch,
                context=context,
                dockerfile=dockerfile,
                tag=tag,
                iidfile=iidfile,
                labels=all_labels,
                build_args=dict(build_args or {}),
                pull=pull,
                ca=ca,
                runtime=runtime,
                no_cache=no_cache,
            )
            fingerprint = fingerprints.of(cmd, arch)
            reused = fingerprint and build_inputs.reusable_image(records, fingerprint, builder, tag, arch)
            if reused:
                built[arch] = BuiltImage(image_id=reused, local_tag=tag, platform=arch)
                progress(f"linux/{arch}: nothing it is built from changed: {tag} is still {reused} (not rebuilt)")
                continue
            progress(f"building {ref} for linux/{arch} with {builder.client} ({builder.mode}) -> {tag}")
            _run_build(cmd, builder, arch, ref, debug=debug, progress=progress)
            image_id = iidfile.read_text().strip() if iidfile.exists() else ""
        if not image_id:
            image_id = inspect_image(builder.client, tag)["Id"]
        actual = inspect_image(builder.client, image_id)
        if actual.get("Architecture") != arch or actual.get("Os") != "linux":
            raise ImageBuildError(
                f"{ref}: the linux/{arch} build produced a "
                f"{actual.get('Os')}/{actual.get('Architecture')} image ({image_id}).",
                remedy="Check the Dockerfile's FROM: it must be a multi-arch base "
                "(or `FROM --platform=$TARGETPLATFORM`).",
            )
        built[arch] = BuiltImage(image_id=image_id, local_tag=tag, platform=arch)
        if fingerprint:
            records.remember(fingerprint, image_id, arch)
        progress(f"built {tag} ({image_id})")
    return built


_BUILD_STEP = re.compile(r"^#\d+ (\[[^\]]+\] .+)$")


def _run_build(
    cmd: list[str],
    builder: Builder,
    arch: str,
    ref: ProcessorRef,
    *,
    debug: bool,
    progress: Callable[[str], None],
) -> None:
    tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
    assert cmd[0] == builder.client
    proc = Docker(builder.client).popen(cmd[1:], env=builder.env())
    assert proc.stdout is not None
    # On a terminal, show the build step BuildKit is on (`#8 [deps 3/6] RUN pip install ...`) as one
    # live line; --debug prints every line instead.
    live = not debug and output.stderr_is_tty()
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        if debug:
            progress(line)
        elif live and (step := _BUILD_STEP.match(line)):
            output.status_line(f"linux/{arch}: {step.group(1)}")
    if live:
        output.status_line(None)
    code = proc.wait()
    if code != 0:
        log = "\n".join(f"  | {line}" for line in tail)
        raise ImageBuildError(
            f"{ref}: docker build for linux/{arch} failed (exit {code}); last {len(tail)} lines:\n{log}",
            details={"platform": arch, "exit_code": code},
        )
