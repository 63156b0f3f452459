"""The theory_runtime bundle: how every processor image gets the runtime, in any repository.

Processors are FastAPI apps on `theory_runtime` (runtime/theory_runtime in theory-deploy's tree).
Their Dockerfiles never copy it from a build context: the context is the processor's own
repository, which does not hold it. Instead `processorctl build` hands the runtime to every build:

    --secret id=theory_runtime,src=<bundle>             the bundle, mounted at /run/secrets/theory_runtime
    --build-arg THEORY_RUNTIME_SHA256=<sha256 hex>      what the bundle must hash to
    --build-arg THEORY_RUNTIME_VERSION=<__version__>    for messages and labels

**Why a secret.** The bundle is not secret. A BuildKit secret mount is the one way to give a build a
file from outside its context that works with both builders theory-deploy uses: `docker buildx
build` and the classic `DOCKER_BUILDKIT=1 docker build` of a client without buildx, which has no
named contexts (`--build-context`). A secret mount also never lands in a layer.

**Why the sha256 build arg.** BuildKit does not put a secret's contents in its cache key, so a new
bundle alone would hit the old cached layer. The RUN line that installs the bundle references
THEORY_RUNTIME_SHA256 (build args are part of a RUN's cache key), so a new runtime re-runs it, and
it checks the mounted file with `sha256sum -c`, so a bundle that is not the one named fails the build.
See src/theory_deploy/templates/processor/Dockerfile.

**The bundle.** A tar.gz of the package's `.py` files and `py.typed` (no `__pycache__`), paths
`theory_runtime/...`, entries sorted, mtime 0, uid/gid 0, no user or group names, modes 0644/0755,
gzip with mtime 0 and no file name: the same sources give the same bytes (with the same zlib, which
every CPython build ships unless a distribution swaps in zlib-ng). It is extracted into the image's
site-packages (`sysconfig.get_path("purelib")`); its dependencies (fastapi, uvicorn, websockets,
jsonschema, PyYAML) are the processor's requirements.txt, pinned there.

**Where it comes from.** theory-deploy's distribution carries `theory_runtime` as a second top-level
package (pyproject.toml maps it to runtime/theory_runtime), so it is found the same way in an
editable dev venv, the actions' venv (scripts/action-entrypoint) and a pip-installed wheel:
`importlib.util.find_spec("theory_runtime")`, which locates the package without importing it
(theory-deploy's venv need not have fastapi).

**The cache.** Bundles are written atomically to `<cache>/<sha256>.tar.gz` and reused, where
`<cache>` is `$THEORY_RUNTIME_CACHE_DIR`, else `$THEORY_STATE_DIR/runtime`, else
`$XDG_CACHE_HOME/theory-deploy/runtime`, else `~/.cache/theory-deploy/runtime`. The bundle is
always rebuilt in memory from the sources (a few milliseconds) to learn its sha256; a cached file
whose bytes do not hash to its name (corrupted, truncated) is replaced.

**Size.** BuildKit refuses secrets over 500 KiB (`MaxSecretSize`). Today's bundle is about 15 KB;
one over the limit is refused here (ERR_IMAGE_BUILD) rather than by a cryptic BuildKit error.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.util
import io
import os
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import files, output
from .errors import ImageBuildError

PACKAGE = "theory_runtime"
SECRET_ID = "theory_runtime"  # noqa: S105 - the BuildKit secret id of the bundle, not a password
SECRET_PATH = f"/run/secrets/{SECRET_ID}"
SHA_ARG = "THEORY_RUNTIME_SHA256"
VERSION_ARG = "THEORY_RUNTIME_VERSION"
RESERVED_BUILD_ARGS = (SHA_ARG, VERSION_ARG)
BUILDKIT_MAX_SECRET_BYTES = 500 * 1024
MAX_BUNDLE_BYTES = BUILDKIT_MAX_SECRET_BYTES
# What a runtime package must hold: create_app (__init__/server) and the spec export of the spec stage.
REQUIRED_MODULES = ("__init__.py", "server.py", "spec.py")
_DATA_FILES = ("py.typed",)
_SOURCE_FILE_LIMIT = 4 * 1024 * 1024  # one source file; the whole bundle is held to MAX_BUNDLE_BYTES


@dataclass(frozen=True)
class RuntimeBundle:
    path: Path  # <cache>/<sha256>.tar.gz
    sha256: str  # hex, no prefix
    version: str  # theory_runtime.__version__ as written in the sources ("unknown" if absent)
    size: int  # bytes
    source: Path  # the package folder the bundle was made from

    def secret_spec(self) -> str:
        """The value of docker's `--secret` flag."""
        return f"id={SECRET_ID},src={self.path}"

    def build_args(self) -> dict[str, str]:
        return {SHA_ARG: self.sha256, VERSION_ARG: self.version}

    def docker_flags(self) -> list[str]:
        """Every flag a `docker build` / `docker buildx build` needs to give a build the runtime."""
        flags = ["--secret", self.secret_spec()]
        for key, value in self.build_args().items():
            flags += ["--build-arg", f"{key}={value}"]
        return flags


# ---------------------------------------------------------------------------------------------------
# Locating the sources
# ---------------------------------------------------------------------------------------------------


def runtime_source_dir() -> Path:
    """The folder of the `theory_runtime` package next to this theory-deploy, found without importing it."""
    remedy = (
        "theory-deploy's installation is incomplete: reinstall it (`pip install --force-reinstall theory-deploy`, "
        "or scripts/bootstrap in a checkout); its distribution includes the theory_runtime package."
    )
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError) as e:
        raise ImageBuildError(f"cannot locate the {PACKAGE} package: {e}.", remedy=remedy) from None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location)
        if (folder / "__init__.py").is_file():
            check_source_dir(folder)
            return folder
    where = f" (found {spec.origin or locations})" if spec is not None else ""
    raise ImageBuildError(f"no {PACKAGE} package next to theory-deploy{where}.", remedy=remedy)


def check_source_dir(folder: Path) -> None:
    missing = [name for name in REQUIRED_MODULES if not (folder / name).is_file()]
    if missing:
        raise ImageBuildError(
            f"{folder} is not a {PACKAGE} package: {', '.join(missing)} missing.",
            remedy="Point at (or reinstall) the theory_runtime sources that ship with theory-deploy.",
        )


def runtime_version(folder: Path) -> str:
    """`__version__` as assigned in the package's __init__.py, read without importing it."""
    try:
        tree = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return "unknown"
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return "unknown"


# ---------------------------------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------------------------------


def bundle_members(folder: Path) -> list[tuple[str, Path]]:
    """(archive name, file) for every file of the bundle, sorted by name: `theory_runtime/**/*.py` and
    `py.typed`, nothing under `__pycache__` or a hidden folder."""
    members: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            if not (name.endswith(".py") or name in _DATA_FILES) or name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_file():
                members.append(((Path(PACKAGE) / rel / name).as_posix(), path))
    return sorted(members)


def _tarinfo(name: str, *, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def bundle_bytes(folder: Path) -> bytes:
    """The deterministic tar.gz of the package in `folder` (see the module docstring)."""
    members = bundle_members(folder)
    if not any(name == f"{PACKAGE}/__init__.py" for name, _ in members):
        raise ImageBuildError(f"{folder} has no __init__.py: not a {PACKAGE} package.")
    folders = sorted({Path(name).parent.as_posix() for name, _ in members})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        entries: list[tuple[str, Path | None]] = [(d, None) for d in folders] + [(n, p) for n, p in members]
        for name, path in sorted(entries, key=lambda entry: entry[0]):
            if path is None:
                tar.addfile(_tarinfo(name, directory=True))
                continue
            try:
                data = files.read_regular_file(path, _SOURCE_FILE_LIMIT)
            except (OSError, files.UnreadableFile) as e:
                raise ImageBuildError(f"cannot read {path} for the {PACKAGE} bundle: {e}.") from None
            tar.addfile(_tarinfo(name, size=len(data)), io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


# ---------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("THEORY_RUNTIME_CACHE_DIR"):
        return Path(env["THEORY_RUNTIME_CACHE_DIR"])
    if env.get("THEORY_STATE_DIR"):
        return Path(env["THEORY_STATE_DIR"]) / "runtime"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "theory-deploy" / "runtime"


def _cached_sha256(path: Path, max_bytes: int) -> str | None:
    """sha256 hex of the cached file, or None when there is none; a non-file is an error."""
    try:
        return hashlib.sha256(files.read_regular_file(path, max_bytes)).hexdigest()
    except FileNotFoundError:
        return None
    except files.UnreadableFile as e:
        if e.kind is not None:
            raise ImageBuildError(
                f"the runtime bundle cache entry {path} is {e.kind}.",
                remedy="Remove it, or set THEORY_RUNTIME_CACHE_DIR to another folder.",
            ) from None
        return "oversized"  # anything over the limit is not a bundle we wrote: replace it
    except OSError as e:
        raise ImageBuildError(
            f"cannot read the runtime bundle cache entry {path}: {e.strerror or e}.",
            remedy="Fix its permissions, or set THEORY_RUNTIME_CACHE_DIR to another folder.",
        ) from None


def ensure_bundle(
    source: Path | None = None,
    cache_dir: Path | None = None,
    *,
    max_bytes: int = MAX_BUNDLE_BYTES,
    progress: Callable[[str], None] = output.progress,
) -> RuntimeBundle:
    """The bundle of `source` (default: the theory_runtime next to this theory-deploy), written to
    `cache_dir` (default: `default_cache_dir()`) unless an intact copy is already there."""
    folder = Path(source) if source is not None else runtime_source_dir()
    check_source_dir(folder)
    data = bundle_bytes(folder)
    if len(data) > max_bytes:
        raise ImageBuildError(
            f"the {PACKAGE} bundle from {folder} is {len(data)} bytes, over the limit of {max_bytes} bytes: "
            f"BuildKit refuses build secrets over {BUILDKIT_MAX_SECRET_BYTES} bytes, and the runtime reaches "
            f"image builds as the build secret {SECRET_ID!r}.",
            remedy=f"Keep only code in {folder} (the bundle holds its .py files and py.typed): move data files "
            "out of the runtime package, or make them the processor's own files.",
            details={"bundle_bytes": len(data), "limit_bytes": max_bytes},
        )
    sha = hashlib.sha256(data).hexdigest()
    folder_cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder_cache / f"{sha}.tar.gz"
    cached = _cached_sha256(path, max_bytes)
    if cached != sha:
        if cached is not None:
            progress(f"runtime bundle {path} does not hash to its name (corrupted?): writing it again")
        try:
            folder_cache.mkdir(parents=True, exist_ok=True)
            files.atomic_write(path, data, mode=0o644)
        except OSError as e:
            raise ImageBuildError(
                f"cannot write the runtime bundle to {path}: {e.strerror or e}.",
                remedy="Set THEORY_RUNTIME_CACHE_DIR to a writable folder.",
            ) from None
    return RuntimeBundle(path=path, sha256=sha, version=runtime_version(folder), size=len(data), source=folder)
