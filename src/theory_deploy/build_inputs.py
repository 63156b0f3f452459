"""What an image is built from, as one digest, so that an unchanged build is not asked of the engine.

A warm `processorctl build` (nothing the image depends on changed) used to run `docker build` and let
BuildKit find every step in its cache: per platform, a context upload and a cache lookup per step,
about as long as the whole docker-CLI script the pipeline replaces. Instead, each build's inputs are
hashed into a *fingerprint*, and the image id the build gave is recorded under it, in
`$THEORY_BUILD_RECORDS_DIR`, else `$THEORY_STATE_DIR/builds/`, else `~/.cache/theory-deploy/builds/`. A later build with the same
fingerprint reuses that image when the engine still has it: one `docker image inspect`, no build.

The fingerprint covers everything `docker build` is given:

- the command itself (build.build_command's, but for its throwaway `--iidfile`): client, platform,
  Dockerfile and context paths, tag, labels, build args (SOURCE_DATE_EPOCH and the runtime bundle's
  sha256 among them), `--pull`; the builder's mode and the variables that pick an engine or a buildx
  builder (DOCKER_HOST, DOCKER_CONTEXT, BUILDX_BUILDER, ...);
- the Dockerfile's bytes, and each `--secret` file's (the CA bundle, the runtime bundle: its RUN
  steps read them);
- every entry of the build context the engine receives: the context walked with the ignore file
  BuildKit uses (`<Dockerfile>.dockerignore` beside the Dockerfile, else `<context>/.dockerignore`),
  matched as moby/patternmatcher matches (`IgnoreRules`); per entry its path, type and permission
  bits, and a file's bytes or a symlink's target. registry.yaml files are hashed with their pins
  blanked: pins never reach an image (the processor Dockerfiles drop `image` in their spec stage, and
  a pin commit that changed the image would need a new pin, forever: see build.source_revision), so
  the pin stage's own commit does not make the next build a miss;
- each image the Dockerfile names (FROM, `COPY --from`, `RUN --mount=…,from=`): a digest reference
  is its own fingerprint; a tag is resolved to the engine's local image id.

When the inputs cannot be fingerprinted with certainty, there is no fingerprint and the build runs as
before: a parser directive (`# escape=`, or `# syntax=` not pinned by digest), an ignore pattern with
syntax this module does not interpret (`[…]`, `\\`), an image name with an ARG it cannot resolve,
`ADD` of a URL or a git repository, an image by tag that the engine does not have or that `--pull`
may move, and `--no-cache`. A fingerprint never under-counts: a miss only costs a cached build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.error import YAMLError

from . import output
from .docker import Builder, Docker
from .errors import TheoryDeployError
from .files import atomic_write
from .registry_file import REGISTRY_FILE, splice_values
from .registry_pins import pins_in_text

# Bump when what the fingerprint covers changes: records of another version are never reused.
FINGERPRINT_VERSION = "b1"
# The variables that choose which engine or buildx builder runs a build.
_BUILDER_ENV = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "BUILDX_BUILDER")
_CHUNK = 1024 * 1024


# ---------------------------------------------------------------------------------------------------
# The ignore file (moby/patternmatcher, as BuildKit applies it to the context)
# ---------------------------------------------------------------------------------------------------


class UnsupportedInput(Exception):
    """An input this module cannot fingerprint with certainty: the build runs, nothing is reused."""


@dataclass(frozen=True)
class _Pattern:
    text: str  # cleaned: slash-separated, no leading '/', no '!'
    reinclude: bool  # a `!pattern` line
    regex: re.Pattern[str]


def _go_clean(path: str) -> str:
    """Go's filepath.Clean for slash paths (what BuildKit applies to each pattern)."""
    rooted = path.startswith("/")
    cleaned = posixpath.normpath(path) if path else "."
    if rooted and cleaned.startswith("//"):
        cleaned = cleaned[1:]
    return cleaned


def _compile(pattern: str) -> re.Pattern[str]:
    """patternmatcher's regexp: `**` any number of directories, `*` and `?` within one."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern[i : i + 1] == "/":
                i += 1
            if i >= len(pattern):
                out += ".*"
            elif i == 2:  # a leading `**x`: patternmatcher tests it as a plain suffix, not as a regexp
                raise UnsupportedInput(f"ignore pattern {pattern!r} (a leading `**` not followed by `/`)")
            else:
                out += "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + r"\Z", re.DOTALL)


class IgnoreRules:
    """The lines of a .dockerignore: a path is left out when the last pattern matching it (or one of
    its parent directories) is not a `!` pattern."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.patterns: list[_Pattern] = []
        for raw in lines:
            if raw.startswith("#"):
                continue
            line = raw.strip()
            if not line:
                continue
            reinclude = line.startswith("!")
            if reinclude:
                line = line[1:].strip()
            if any(c in line for c in "[]\\"):
                raise UnsupportedInput(f"ignore pattern {raw.strip()!r} (character classes and escapes)")
            cleaned = _go_clean(line)
            if len(cleaned) > 1 and cleaned.startswith("/"):
                cleaned = cleaned[1:]
            self.patterns.append(_Pattern(cleaned, reinclude, _compile(cleaned)))

    @classmethod
    def for_build(cls, context: Path, dockerfile: Path) -> IgnoreRules:
        for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
            if candidate.is_file():
                return cls(candidate.read_text(encoding="utf-8", errors="replace").splitlines())
        return cls([])

    def excluded(self, path: str) -> bool:
        """Whether `path` (relative to the context, slash-separated) stays out of the context."""
        parents = path.split("/")[:-1]
        ancestors = ["/".join(parents[: i + 1]) for i in range(len(parents))]
        matched = False
        for pattern in self.patterns:
            if pattern.reinclude != matched:  # cannot change the answer
                continue
            if pattern.regex.match(path) or any(pattern.regex.match(a) for a in ancestors):
                matched = not pattern.reinclude
        return matched

    def may_reinclude_under(self, directory: str) -> bool:
        """Whether a `!` pattern could bring back something under an excluded `directory`: if not, the
        walk need not enter it (as BuildKit's own walk skips it)."""
        for pattern in self.patterns:
            if not pattern.reinclude:
                continue
            literal = re.split(r"[*?]", pattern.text, maxsplit=1)[0]
            if not literal or (directory + "/").startswith(literal) or literal.startswith(directory + "/"):
                return True
        return False


# ---------------------------------------------------------------------------------------------------
# The context
# ---------------------------------------------------------------------------------------------------


def _entries(context: Path, rules: IgnoreRules) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry the engine receives, relative to `context`, in a stable order (symlinks unfollowed)."""
    stack = [""]
    while stack:
        folder = stack.pop()
        with os.scandir(context / folder if folder else context) as it:
            names = sorted(entry.name for entry in it)
        for name in names:
            rel = f"{folder}/{name}" if folder else name
            info = os.lstat(context / rel)
            is_dir = stat.S_ISDIR(info.st_mode)
            if rules.excluded(rel):
                if is_dir and rules.may_reinclude_under(rel):
                    stack.append(rel)
                continue
            yield rel, info
            if is_dir:
                stack.append(rel)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _registry_file_digest(path: Path) -> str:
    """A registry.yaml's digest with its pins blanked (module docstring); as written when unreadable."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
        pins = pins_in_text(text)
        if pins:
            text = splice_values(text, {("image", "platforms", arch): None for arch in pins})
        data = text.encode()
    except (UnicodeDecodeError, TheoryDeployError, YAMLError):
        pass  # an unreadable file is hashed byte for byte: at worst a miss, never a false hit
    return hashlib.sha256(data).hexdigest()


def context_digest(context: Path, dockerfile: Path) -> str:
    """One digest of what the engine receives from `context` for a build of `dockerfile`."""
    rules = IgnoreRules.for_build(context, dockerfile)
    digest = hashlib.sha256()
    for rel, info in _entries(context, rules):
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            line = f"d {mode:o} {rel}"
        elif stat.S_ISLNK(info.st_mode):
            line = f"l {rel} -> {os.readlink(context / rel)}"
        elif stat.S_ISREG(info.st_mode):
            path = context / rel
            body = _registry_file_digest(path) if path.name == REGISTRY_FILE else _file_digest(path)
            line = f"f {mode:o} {body} {rel}"  # no size: a registry.yaml's is that of its pins
        else:
            raise UnsupportedInput(f"{rel} is neither a file, a folder nor a symlink")
        digest.update(line.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# The images a Dockerfile names
# ---------------------------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>:[-+][^}]*)?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        if whole:
            word, _, rest = whole.partition(" ")
            yield word.upper(), rest.strip()
    if pending.strip():
        word, _, rest = pending.strip().partition(" ")
        yield word.upper(), rest.strip()


def _directives(text: str) -> dict[str, str]:
    """The parser directives at the top of a Dockerfile (`# syntax=...`, `# escape=...`)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$", line)
        if not match:
            break
        found[match.group(1).lower()] = match.group(2)
    return found


def _expand(value: str, args: Mapping[str, str | None]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        modifier = match.group("modifier") or ""
        known = args.get(name)
        if modifier.startswith(":-"):
            return known if known else modifier[2:]
        if modifier.startswith(":+"):
            return modifier[2:] if known else ""
        if known is None:
            raise UnsupportedInput(f"${name} has no value")
        return known

    expanded = _VARIABLE.sub(one, value)
    if "$" in expanded:
        raise UnsupportedInput(f"{value!r}: a variable this module does not expand")
    return expanded


def _arg_values(words: str, into: dict[str, str | None], build_args: Mapping[str, str]) -> None:
    for word in words.split():
        name, eq, default = word.partition("=")
        into[name] = build_args.get(name, default.strip("\"'") if eq else None)


def named_images(dockerfile_text: str, build_args: Mapping[str, str]) -> list[str]:
    """The images (not stages) a Dockerfile builds from, with the build args applied."""
    directives = _directives(dockerfile_text)
    if "escape" in directives:
        raise UnsupportedInput("an `# escape=` parser directive")
    images: list[str] = []
    if "syntax" in directives:
        # The frontend image BuildKit runs: resolved in its registry on every build, never locally.
        if not re.search(r"@sha256:[0-9a-f]{64}$", directives["syntax"]):
            raise UnsupportedInput(f"`# syntax={directives['syntax']}` is not pinned by digest")
        images.append(directives["syntax"])
    global_args: dict[str, str | None] = {}
    stages: list[str] = []
    seen_from = False

    def external(name: str) -> bool:
        lowered = name.lower()
        return not (lowered == "scratch" or lowered in stages or (name.isdigit() and int(name) < len(stages)))

    for instruction, rest in _instructions(dockerfile_text):
        if instruction == "ARG" and not seen_from:
            _arg_values(rest, global_args, build_args)
        elif instruction == "FROM":
            seen_from = True
            words = [w for w in rest.split() if not w.startswith("--")]
            if not words:
                raise UnsupportedInput("a FROM without an image")
            image = _expand(words[0], global_args)
            if external(image):
                images.append(image)
            stages.append(words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else f"#{len(stages)}")
        elif instruction in ("COPY", "ADD", "RUN"):
            for source in re.findall(r"--from=(\S+)|--mount=\S*?\bfrom=([^,\s]+)", rest):
                image = _expand(source[0] or source[1], global_args)
                if external(image):
                    images.append(image)
            if instruction == "ADD" and re.search(r"(^|\s)(\S+://|git@)", rest):
                raise UnsupportedInput("ADD of a URL or a git repository")
    return images


def _image_identity(docker: Docker, image: str, *, pull: bool) -> str:
    """A digest reference stands for itself; a tag for the engine's image id of it (unless --pull may
    move it to whatever its registry holds now)."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return image
    if pull:
        raise UnsupportedInput(f"{image} is a tag and the build pulls it (--pull)")
    record = docker.inspect_image(image)
    if not record or not record.get("Id"):
        raise UnsupportedInput(f"{image} is a tag the engine does not have yet")
    return f"{image} {record['Id']}"


# ---------------------------------------------------------------------------------------------------
# The fingerprint and its record
# ---------------------------------------------------------------------------------------------------


def _flag_values(cmd: Sequence[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, word in enumerate(cmd[:-1]) if word == flag]


class Fingerprints:
    """Fingerprints of one processor's builds (one per platform); the context is walked once."""

    def __init__(
        self, builder: Builder, context: Path, dockerfile: Path, *, progress: Callable[[str], None] = output.progress
    ) -> None:
        self.builder, self.context, self.dockerfile, self.progress = builder, context, dockerfile, progress
        self._files: str | None = None

    def of(self, cmd: Sequence[str], platform: str) -> str | None:
        """The fingerprint of the build `cmd` (build.build_command's, but for its --iidfile), or None
        (and why, on the progress stream) when it cannot be trusted."""
        if "--no-cache" in cmd:
            return None
        try:
            document = self._document(cmd, platform)
        except UnsupportedInput as why:
            self.progress(f"linux/{platform}: building without a fingerprint: {why}")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.progress(f"linux/{platform}: building without a fingerprint: {exc}")
            return None
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()

    def _document(self, cmd: Sequence[str], platform: str) -> dict[str, Any]:
        given = list(cmd)
        for i, word in enumerate(given[:-1]):
            if word == "--iidfile":
                given[i + 1] = ""  # a new temporary file per build
        build_args = dict(arg.partition("=")[::2] for arg in _flag_values(cmd, "--build-arg"))
        text = self.dockerfile.read_text(encoding="utf-8")
        docker = Docker(self.builder.client)
        images = [_image_identity(docker, i, pull="--pull" in cmd) for i in named_images(text, build_args)]
        # Secrets are files the build reads (the CA bundle, the runtime bundle): their bytes are inputs.
        secrets = []
        for spec in _flag_values(cmd, "--secret"):
            source = dict(part.partition("=")[::2] for part in spec.split(",")).get("src")
            secrets.append([spec, _file_digest(Path(source)) if source else None])
        if self._files is None:
            self._files = context_digest(self.context, self.dockerfile)
        return {
            "version": FINGERPRINT_VERSION,
            "command": given,
            "builder": [self.builder.mode, *(os.environ.get(v, "") for v in _BUILDER_ENV)],
            "platform": platform,
            "dockerfile": hashlib.sha256(text.encode()).hexdigest(),
            "secrets": secrets,
            "images": images,
            "files": self._files,
        }


def default_records_dir() -> Path:
    explicit = os.environ.get("THEORY_BUILD_RECORDS_DIR")
    if explicit:
        return Path(explicit)
    state = os.environ.get("THEORY_STATE_DIR")
    return Path(state) / "builds" if state else Path.home() / ".cache" / "theory-deploy" / "builds"


class BuildRecords:
    """fingerprint -> the image id its build gave: small JSON files, written atomically.

    Every build with new inputs adds one, so the folder is kept to the `keep` records used last (a
    reuse counts as a use): without a bound it would only grow, by one file per source change, for as
    long as the machine builds. A pruned record only costs one cached build."""

    KEEP = 2000

    def __init__(self, root: Path | None = None, *, keep: int = KEEP) -> None:
        self.root = root or default_records_dir()
        self.keep = keep

    def _path(self, fingerprint: str) -> Path:
        return self.root / f"{fingerprint}.json"

    def image_for(self, fingerprint: str) -> str | None:
        path = self._path(fingerprint)
        try:
            record: Any = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        image_id = record.get("image_id") if isinstance(record, dict) else None
        if not (isinstance(image_id, str) and image_id.startswith("sha256:")):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last to be pruned
        return image_id

    def remember(self, fingerprint: str, image_id: str, platform: str) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path(fingerprint), json.dumps({"image_id": image_id, "platform": platform}))
        except OSError as exc:  # a record that cannot be written only costs the next build's speed
            output.progress(f"warning: cannot write the build record in {self.root}: {exc.strerror}")
            return
        self._prune()

    def _prune(self) -> None:
        """Delete all but the `keep` records used last. Two processes may prune at once: a record
        the other one deleted first is simply gone."""
        records = []
        try:
            for entry in os.scandir(self.root):
                if entry.name.endswith(".json"):
                    with contextlib.suppress(OSError):
                        records.append((entry.stat().st_mtime_ns, entry.path))
        except OSError:
            return
        records.sort()
        for _mtime, path in records[: max(len(records) - self.keep, 0)]:
            with contextlib.suppress(OSError):
                os.unlink(path)


def reusable_image(records: BuildRecords, fingerprint: str, builder: Builder, tag: str, platform: str) -> str | None:
    """The image an earlier build with this fingerprint gave, if the engine still holds it for this
    platform; `tag` is pointed at it (another build may have moved the tag since)."""
    image_id = records.image_for(fingerprint)
    if image_id is None:
        return None
    docker = Docker(builder.client)
    tagged = docker.inspect_image(tag)
    record = tagged if tagged is not None and tagged.get("Id") == image_id else docker.inspect_image(image_id)
    if record is None or (record.get("Architecture"), record.get("Os")) != (platform, "linux"):
        return None
    if record is not tagged:
        docker.run(["tag", image_id, tag], what=f"docker tag {tag}")
    return image_id
