"""registry.yaml: the model of one processor, its validation, and writing pins into it.

Reading: the file is parsed with ruamel.yaml's round-trip loader, which remembers where every key
and value stands, and then validated by one pydantic model. Every problem (pydantic's and our own
cross-field checks) is reported as `file:line:col: message`, all at once.

At scale (a thousand processors), that loader is the cost: milliseconds per file in pure Python.
So `check_file` first tries the fast reader (`bounded_yaml.fast_document`: libyaml's events, the
same limits, the same YAML 1.2 scalars) and runs the very same checks on its document; only a file
that passes them all is answered from there. Any problem, or any document the fast reader does not
vouch for, is read again by the exact reader above, which finds and places every problem as before.
JSON Schema checks of `inputs` are remembered per schema text, so a thousand copies of one schema
are checked once.

Writing pins: a pin write changes *only* the characters of the pin values. Instead of re-serialising
the document (which would reflow quoting, spacing and comments), the new digest is spliced into
the file's text at the position the parser recorded, and the result is re-parsed to prove nothing
else moved. Writes are atomic (temp file, fsync, rename) and serialised by an
exclusive lock on the processor's folder, so concurrent pinners never lose an update.

Reading pins out of a registry.yaml *text* (another revision's, a base branch's), their line numbers
and their history through git live next door, in registry_pins.py; the limits on what may be read
at all, in bounded_yaml.py.

Why one file of this size: the model, the cross-field checks and the pin splice all work from the
same parse and its recorded positions (`_position`, `Problem`); split apart, a check and the line
it reports, or a splice and the proof that nothing else moved, could read the file differently.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic import ValidationError as PydanticValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from .bounded_yaml import (
    MAX_DEPTH,
    Refused,
    check_yaml_limits,
    fast_document,
    read_registry_text,
    safe_yaml_text,
)
from .errors import (
    ImageUnpinnedError,
    ProcessorNotFoundError,
    TheoryDeployError,
    ValidationError,
)
from .files import atomic_write, exclusive_lock, remove_stale_temporaries
from .refs import PLATFORMS, ImageRef, Platform, ProcessorRef

REGISTRY_FILE = "registry.yaml"
SCHEMA_RELATIVE_PATH = "schema/registry.schema.json"

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
PinText = str


BuildPlatform = Literal["linux/amd64", "linux/arm64"]
_DEFAULT_PLATFORMS: tuple[BuildPlatform, ...] = ("linux/amd64", "linux/arm64")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildSpec(_Strict):
    context: str = Field(".", description="Build context, relative to the folder holding registry.yaml.")
    dockerfile: str = Field("Dockerfile", description="Dockerfile path, relative to the build context.")
    port: int = Field(8000, ge=1, le=65535, description="Port the processor's server listens on.")
    platforms: list[BuildPlatform] = Field(default_factory=lambda: list(_DEFAULT_PLATFORMS), min_length=1)


class PlatformPins(_Strict):
    amd64: PinText | None = Field(None, description="repository@sha256:<64 hex> of the linux/amd64 manifest.")
    arm64: PinText | None = Field(None, description="repository@sha256:<64 hex> of the linux/arm64 manifest.")


class ImageSpec(_Strict):
    repository: str = Field(description="Image repository without tag or digest, e.g. ghcr.io/org/llm-litellm.")
    platforms: PlatformPins = Field(default_factory=PlatformPins)


class RuntimeSpec(_Strict):
    cpu: float = Field(1.0, gt=0)
    memory_gb: float = Field(2.0, gt=0)
    timeout_s: int = Field(600, gt=0, le=86400)
    gpu: str | None = None


class SecretsSpec(_Strict):
    required: list[EnvName] = Field(default_factory=list)
    optional: list[EnvName] = Field(default_factory=list)


class ApiSpec(_Strict):
    protocol: Literal["ws"] = "ws"
    path: str = Field("/run", pattern=r"^/")
    healthz: str = Field("/healthz", pattern=r"^/")
    auth_secret: EnvName | None = Field(
        None, description="Name of a secret whose value is the bearer token the endpoints require."
    )


class ProcessorSpec(_Strict):
    ref: str = Field(description="ns/name@N, e.g. llm/litellm@1; must match the folder processors/ns/name.")
    build: BuildSpec = Field(default_factory=BuildSpec)
    image: ImageSpec
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    secrets: SecretsSpec = Field(default_factory=SecretsSpec)
    api: ApiSpec = Field(default_factory=ApiSpec)
    inputs: dict[str, Any] = Field(description="JSON Schema of the processor's inputs.")
    outputs: dict[str, Any] = Field(default_factory=dict)

    @property
    def processor_ref(self) -> ProcessorRef:
        return ProcessorRef.parse(self.ref, where="registry.yaml ref")

    def pins(self) -> dict[Platform, str | None]:
        return {"amd64": self.image.platforms.amd64, "arm64": self.image.platforms.arm64}

    def platform_names(self) -> list[Platform]:
        return [p.removeprefix("linux/") for p in self.build.platforms]  # type: ignore[misc]

    def secret_names(self) -> tuple[list[str], list[str]]:
        """(every secret the app is given, the required ones). A declared `api.auth_secret` is required:
        without it the endpoints stay locked."""
        auth = [self.api.auth_secret] if self.api.auth_secret else []
        required = list(dict.fromkeys([*self.secrets.required, *auth]))
        return list(dict.fromkeys([*required, *self.secrets.optional])), required


def json_schema() -> dict[str, Any]:
    schema = ProcessorSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "theory-deploy processor registry.yaml"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------------
# Problems and positions
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "col": self.col, "message": self.message}


def _position(doc: Any, loc: tuple[Any, ...], *, key: bool = False) -> tuple[int, int]:
    """1-based (line, col) of the node at `loc`, or of its closest existing ancestor."""
    node, line, col = doc, 1, 1
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            kl, kc = node.lc.key(part)
            vl, vc = node.lc.value(part)
            is_last = part == loc[-1]
            line, col = (kl, kc) if (key and is_last) else (vl, vc)
            line, col = line + 1, col + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            il, ic = node.lc.item(part)
            line, col = il + 1, ic + 1
            node = node[part]
        else:
            break
    return line, col


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    return yaml


class _RealPaths:
    """Where paths really lead, asked once per validation run: the working folder, the repository
    root and each registry.yaml are resolved once however many checks need them (each resolution is
    a chain of lstat calls). A new instance per run: nothing is remembered between runs."""

    def __init__(self) -> None:
        self._resolved: dict[str, Path] = {}
        self._real: dict[str, str] = {}

    def resolve(self, path: Path) -> Path:
        """`path.resolve()` (which also raises on a symlink loop)."""
        key = os.fspath(path)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolved[key] = path.resolve()
        return found

    def realpath(self, path: str) -> str:
        found = self._real.get(path)
        if found is None:
            found = self._real[path] = os.path.realpath(path)
        return found

    def cwd(self) -> Path:
        return self.resolve(Path(os.getcwd()))

    def join(self, real_base: Path, value: str) -> Path:
        """`realpath(real_base / value)` for a `real_base` that is already real (no symlink in it): a
        leading `..` of `value` is then its lexical parent, so `../../..` from a thousand processor
        folders is one resolution of the repository root."""
        base, rest = str(real_base), value
        if not os.path.isabs(value):
            parts = value.split("/")
            i = 0
            while i < len(parts) and parts[i] in ("..", ".", ""):
                if parts[i] == "..":
                    base = os.path.dirname(base)
                i += 1
            rest = "/".join(parts[i:])
        return Path(self.realpath(os.path.join(base, rest) if rest else base))


def _display(path: Path, paths: _RealPaths | None = None) -> str:
    """The path as the user knows it: relative to the working folder when inside it, symlinks kept
    (a registry.yaml symlinked elsewhere is reported under its own name)."""
    cwd = (paths or _RealPaths()).cwd()
    with contextlib.suppress(ValueError):
        return str(Path(os.path.abspath(path)).relative_to(cwd))
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        return str(path.resolve().relative_to(cwd))
    return str(path)


def _load_document(path: Path, text: str | None = None) -> tuple[Any, list[Problem]]:
    shown = _display(path)
    try:
        if text is None:
            text = read_registry_text(path)
        check_yaml_limits(text)
    except FileNotFoundError:
        return None, [Problem(shown, 1, 1, "file not found")]
    except Refused as refused:
        return None, [Problem(shown, refused.line, refused.col, refused.message)]
    except OSError as exc:
        return None, [Problem(shown, 1, 1, f"cannot read: {exc.strerror}")]
    try:
        doc = _yaml().load(text)
    except ReaderError as exc:  # a character YAML forbids: shown at its place, without ruamel's stream name
        index = int(exc.position)
        line, col = text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1
        # ruamel's reader gives the character as its code point when reading text (as here)
        what = f"#x{int(exc.character):04x}"
        return None, [Problem(shown, line, col, f"not valid YAML: unacceptable character {what}: {exc.reason}")]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Problem(shown, line, col, f"not valid YAML: {exc.problem or exc.context}")]
    # A scalar its tag cannot construct (`!!bool maybe`, `!!float` with no digits, `2001-02-30`) makes
    # ruamel's constructors raise without a position, and not always a YAMLError (KeyError,
    # IndexError, AttributeError): never a traceback; the value is found again to say where it is.
    except (YAMLError, ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        line, col, message = _unconstructable_value(text, exc)
        return None, [Problem(shown, line, col, f"not valid YAML: {message}")]
    except RecursionError:  # the limits above should make this unreachable; never a traceback
        return None, [Problem(shown, 1, 1, f"nested too deeply (limit {MAX_DEPTH} levels)")]
    if not isinstance(doc, CommentedMap):
        return None, [Problem(shown, 1, 1, "expected a mapping at the top level")]
    return doc, []


def _unconstructable_value(text: str, exc: Exception) -> tuple[int, int, str]:
    """Where a load failed without a position: the first scalar whose tag cannot construct it, with
    what is wrong with it; (1, 1, the error) when no single scalar is to blame."""
    yaml = _yaml()
    with contextlib.suppress(YAMLError):
        for node in _scalars(yaml.compose(text)):
            try:
                yaml.constructor.construct_object(node, deep=True)
            except (YAMLError, ValueError, KeyError, IndexError, AttributeError, TypeError) as node_exc:
                core = "tag:yaml.org,2002:"
                tag = str(node.tag)
                tag = "!!" + tag.removeprefix(core) if tag.startswith(core) else tag
                why = f" ({node_exc})" if isinstance(node_exc, ValueError) else ""
                mark = node.start_mark
                return mark.line + 1, mark.column + 1, f"{node.value!r} is not a valid {tag}{why}"
    return 1, 1, str(exc)


def _scalars(node: Node | None) -> Iterator[ScalarNode]:
    """Every scalar node of a composed document, keys included, in document order."""
    if isinstance(node, ScalarNode):
        yield node
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield from _scalars(key)
            yield from _scalars(value)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            yield from _scalars(item)


def _plain(node: Any) -> Any:
    """ruamel's round-trip containers → plain dicts/lists, for pydantic and jsonschema."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _pydantic_message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key {error['loc'][-1]!r}"
    if error["type"] == "missing":
        return f"missing required key {error['loc'][-1]!r}"
    if error["type"] == "string_pattern_mismatch" and "secrets" in error["loc"]:
        return f"{error['input']!r} is not a valid environment variable name (letters, digits, '_'; not starting with a digit)"
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}"


# Secret names a processor may not ask for. A processor secret's value is copied from the deployer's
# environment (sync-secrets) into the processor's container, so naming a variable that holds one of
# the deployer's own credentials (Modal token, registry password, GitHub token, the action's
# THEORY_IN_* inputs) would hand it to the processor; and the product itself sets some variables in
# every container (IMAGE_DIGEST, PORT, THEORY_REF/ENV/APP; the runtime reads THEORY_HEARTBEAT_S, ...),
# which a secret must not override. REGISTRY_AUTH is the Modal pull secret (REGISTRY_USERNAME and
# REGISTRY_PASSWORD), never a processor secret. Loader and interpreter variables (PATH, LD_*,
# PYTHON*) would change what code runs.
RESERVED_SECRET_PREFIXES: tuple[str, ...] = (
    "MODAL_",
    "REGISTRY_",
    "GITHUB_",
    "GH_",
    "GIT_",
    "ACTIONS_",
    "RUNNER_",
    "DOCKER_",
    "THEORY_IN_",
    "LD_",
    "DYLD_",
    "PYTHON",
    "PIP_",
)
RESERVED_SECRET_NAMES: frozenset[str] = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "SHELL",
        "PWD",
        "HOSTNAME",
        "TMPDIR",
        "PORT",
        "IMAGE_DIGEST",
        "CI",
        "THEORY_REF",
        "THEORY_ENV",
        "THEORY_APP",
        "THEORY_AUTH_TOKEN",
        "THEORY_HEARTBEAT_S",
        "THEORY_OPEN_TIMEOUT_S",
        "THEORY_WS_DENIAL",
        "THEORY_REPO_ROOT",
        "THEORY_STATE_DIR",
        "THEORY_DOCKER",
        "THEORY_BUILD_ARGS",
        "THEORY_BUILD_CA_BUNDLE",
        "THEORY_INPUTS_JSON",
    }
)


def reserved_secret_reason(name: str) -> str | None:
    """Why `name` may not be a processor secret, or None when it may."""
    upper = name.upper()
    if upper in RESERVED_SECRET_NAMES:
        return "the deployer or the runtime sets or reads that variable itself"
    for prefix in RESERVED_SECRET_PREFIXES:
        if upper.startswith(prefix):
            return f"names starting with {prefix} hold the deployer's own credentials or configuration"
    return None


def _repo_root_of(path: Path) -> Path | None:
    """The repository a registry.yaml belongs to, read from where it *stands* (symlinks not followed):
    processors/<ns>/<name>/registry.yaml under it, else the nearest folder upwards with processors/."""
    absolute = Path(os.path.abspath(path))
    parents = absolute.parents
    if len(parents) >= 4 and parents[2].name == "processors":
        return parents[3]
    for folder in parents:
        if (folder / "processors").is_dir():
            return folder
    return None


def _outside(resolved: Path, root: Path) -> bool:
    return resolved != root and root not in resolved.parents


def _location_problem(path: Path, shown: str, root: Path | None, paths: _RealPaths) -> Problem | None:
    """A registry.yaml (or its processor folder) that is a symlink leading out of the repository."""
    if root is None:
        return None
    real_root = paths.resolve(root)
    real = Path(paths.realpath(os.fspath(path)))
    if _outside(real, real_root):
        return Problem(
            shown,
            1,
            1,
            f"resolves to {real}, outside the repository {real_root} (a symlinked file or processor folder?); "
            "registry.yaml and its processor folder must be inside the repository",
        )
    return None


def _strings(node: Any, loc: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], str]]:
    """Every (location, string) in a plain document, keys included (at their own location)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*loc, key), str(key)
            yield from _strings(value, (*loc, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, (*loc, i))
    elif isinstance(node, str):
        yield loc, node


_VALID_SCHEMAS_MAX = 256
_valid_schemas: dict[str, None] = {}  # JSON texts of `inputs` schemas that passed check_schema


def _input_schema_error(inputs: dict[str, Any]) -> Any:
    """jsonschema's SchemaError for `inputs` (checked against its dialect's metaschema), or None.
    A schema that passed is remembered by its JSON text (key order kept): the check is a pure
    function of that value, and processors copied from one template share one schema."""
    try:
        key: str | None = json.dumps(inputs, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        key = None  # a value JSON cannot spell (a date, say): checked every time
    if key is not None and key in _valid_schemas:
        return None
    import jsonschema  # imported on first use: verbs that read no registry.yaml never pay for it

    try:
        validator_cls = jsonschema.validators.validator_for(inputs, default=jsonschema.Draft202012Validator)
        validator_cls.check_schema(inputs)
    except jsonschema.SchemaError as err:
        return err
    if key is not None:
        if len(_valid_schemas) >= _VALID_SCHEMAS_MAX:
            _valid_schemas.clear()
        _valid_schemas[key] = None
    return None


def _cross_checks(
    data: dict[str, Any],
    doc: Any,
    path: Path,
    shown: str,
    repo_root: Path | None = None,
    paths: _RealPaths | None = None,
    *,
    may_hold_nul: bool = True,
) -> list[Problem]:
    """Checks across fields, run on the raw document so they report even when pydantic also failed.
    `may_hold_nul=False` says the text has neither a NUL nor a backslash, so no string can hold a NUL
    (only a double-quoted escape or the character itself can put one there)."""
    problems: list[Problem] = []
    paths = paths or _RealPaths()

    def at(loc: tuple[Any, ...], message: str) -> None:
        line, col = _position(doc, loc)
        problems.append(Problem(shown, line, col, message))

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    ref_text = data.get("ref")
    if isinstance(ref_text, str):
        try:
            ref = ProcessorRef.parse(ref_text, where="ref")
        except TheoryDeployError as err:
            at(("ref",), err.message)
        else:
            folder = paths.resolve(path).parent
            if folder.parent.parent.name == "processors":
                actual = f"{folder.parent.name}/{folder.name}"
                if actual != ref.folder:
                    at(("ref",), f"ref {ref_text!r} does not match its folder processors/{actual}; expected {actual}@N")

    image = section("image")
    repository: ImageRef | None = None
    if isinstance(image.get("repository"), str):
        try:
            repository = ImageRef.parse(image["repository"], where="image.repository")
            if repository.tag or repository.digest:
                at(("image", "repository"), "image.repository must have no tag and no digest")
                repository = None
        except TheoryDeployError as err:
            at(("image", "repository"), err.message)

    pins: dict[str, Any] = image["platforms"] if isinstance(image.get("platforms"), dict) else {}
    for platform in PLATFORMS:
        pin = pins.get(platform)
        if not isinstance(pin, str):
            continue
        loc = ("image", "platforms", platform)
        # an invalid or missing repository is reported on its own; the pin's hint must not repeat it
        named = repository.repository if repository is not None else "<image.repository>"
        expected_form = f"{named}@sha256:<64 lowercase hex>"
        match = re.fullmatch(r"(?P<repo>.+)@sha256:(?P<hex>[0-9a-f]{64})", pin)
        if not match:
            at(loc, f"pin {pin!r} is not a digest ref; expected exactly {expected_form} (no tags, no placeholders)")
        elif repository is not None and match["repo"] != repository.repository:
            at(loc, f"pin names repository {match['repo']!r}, but image.repository is {repository.repository!r}")

    inputs = data.get("inputs")
    if isinstance(inputs, dict) and "$schema" in inputs and not isinstance(inputs["$schema"], str):
        at(("inputs", "$schema"), "inputs.$schema must be a string naming a JSON Schema dialect (a URI)")
    elif isinstance(inputs, dict):
        schema_error = _input_schema_error(inputs)
        if schema_error is not None:
            pointer = "/".join(str(p) for p in schema_error.absolute_path)
            at(
                ("inputs", *schema_error.absolute_path),
                f"inputs is not a valid JSON Schema at /{pointer}: {schema_error.message}",
            )

    secrets = section("secrets")
    required, optional = secrets.get("required"), secrets.get("optional")
    if isinstance(required, list) and isinstance(optional, list):
        for name in sorted(set(map(str, required)) & set(map(str, optional))):
            at(("secrets", "optional"), f"secret {name!r} is listed as both required and optional")

    for key in ("required", "optional"):
        names = secrets.get(key)
        for i, name in enumerate(names if isinstance(names, list) else []):
            reason = reserved_secret_reason(str(name))
            if reason:
                at(
                    ("secrets", key, i),
                    f"secrets.{key}: {name!r} is a reserved name and cannot be a processor secret: {reason} "
                    "(its value would be handed to the processor); rename the secret",
                )
    auth_secret = section("api").get("auth_secret")
    if isinstance(auth_secret, str) and (reason := reserved_secret_reason(auth_secret)):
        at(
            ("api", "auth_secret"),
            f"api.auth_secret: {auth_secret!r} is a reserved name and cannot be a processor secret: {reason}; "
            "rename the secret",
        )

    nul_fields: set[tuple[Any, ...]] = set()
    for loc, value in _strings(data) if may_hold_nul else ():
        if "\0" in value:
            nul_fields.add(loc)
            field = ".".join(str(p) for p in loc)
            at(loc, f"{field} contains a NUL byte (\\0), which no path, name or value in registry.yaml may hold")

    build = section("build")
    if repo_root is not None:
        real_root = paths.resolve(repo_root)
        real_folder = Path(paths.realpath(os.fspath(path))).parent
        context_value = build.get("context", ".")
        dockerfile_value = build.get("dockerfile", "Dockerfile")
        context: Path | None = None
        for field, value in (("context", context_value), ("dockerfile", dockerfile_value)):
            if not isinstance(value, str) or ("build", field) in nul_fields:
                continue
            base = real_folder if field == "context" else context
            if base is None:
                continue
            try:
                resolved = paths.join(base, value)
            except (OSError, ValueError) as exc:
                at(("build", field), f"build.{field} {value!r} cannot be resolved: {exc}")
                continue
            if field == "context":
                context = resolved
            if _outside(resolved, real_root):
                at(
                    ("build", field),
                    f"build.{field} {value!r} resolves to {resolved}, outside the repository {real_root}; "
                    f"build.{field} must stay inside the repository (symlinks are followed)",
                )
    return problems


def check_files(
    files: Iterable[Path], repo_root: Path | None = None
) -> tuple[list[tuple[Path, ProcessorSpec]], list[Problem]]:
    """`check_file` of each file, then `slug_collisions` of the valid ones: (valid files and their
    specs, every problem in file order). Paths are resolved once for the whole run."""
    paths = _RealPaths()
    valid: list[tuple[Path, ProcessorSpec]] = []
    problems: list[Problem] = []
    for path in files:
        spec, found = check_file(path, repo_root=repo_root, paths=paths)
        problems += found
        if spec is not None:
            valid.append((path, spec))
    problems += slug_collisions(valid, paths=paths)
    return valid, problems


def check_file(
    path: Path, text: str | None = None, repo_root: Path | None = None, *, paths: _RealPaths | None = None
) -> tuple[ProcessorSpec | None, list[Problem]]:
    """Every problem in one registry.yaml, and the spec when there are none. `text`, when given, is
    checked as if it were the file's content (e.g. the file at an earlier git revision). Paths
    (the file itself, build.context, build.dockerfile) must stay inside `repo_root` (default: the
    repository the file stands in; none when it stands in none)."""
    paths = paths or _RealPaths()
    shown = _display(path, paths)
    root = repo_root if repo_root is not None else _repo_root_of(path)
    outside = _location_problem(path, shown, root, paths)
    if outside is not None:
        return None, [outside]  # never read (nor quote) a file outside the repository
    if text is None:
        try:
            text = read_registry_text(path)
        except (OSError, Refused):
            text = None  # the exact reader below reads it again and reports why it cannot
    if text is not None:
        spec = _fast_spec(text, path, shown, root, paths)
        if spec is not None:
            return spec, []
    return _exact_check(path, shown, text, root, paths)


def _fast_spec(text: str, path: Path, shown: str, root: Path | None, paths: _RealPaths) -> ProcessorSpec | None:
    """The spec when the fast reader vouches for the document and it passes every check; None when
    anything is off (the exact reader then finds and places the problems)."""
    data = fast_document(text)
    if data is None:
        return None
    try:
        spec = ProcessorSpec.model_validate(data)
    except PydanticValidationError:
        return None
    may_hold_nul = "\0" in text or "\\" in text
    if _cross_checks(data, None, path, shown, root, paths, may_hold_nul=may_hold_nul):
        return None
    return spec


def _exact_check(
    path: Path, shown: str, text: str | None, root: Path | None, paths: _RealPaths
) -> tuple[ProcessorSpec | None, list[Problem]]:
    """check_file with the round-trip loader: every problem at its line and column."""
    doc, problems = _load_document(path, text)
    if doc is None:
        return None, problems
    try:
        data = _plain(doc)
    except RecursionError:
        return None, [Problem(shown, 1, 1, f"nested too deeply (limit {MAX_DEPTH} levels)")]
    spec: ProcessorSpec | None = None
    try:
        spec = ProcessorSpec.model_validate(data)
    except PydanticValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            line, col = _position(doc, loc, key=error["type"] == "extra_forbidden")
            problems.append(Problem(shown, line, col, _pydantic_message(error)))
    problems += _cross_checks(data, doc, path, shown, root, paths)
    return (None if problems else spec), sorted(problems, key=lambda p: (p.line, p.col))


# ---------------------------------------------------------------------------------------------------
# Finding processors
# ---------------------------------------------------------------------------------------------------


def find_repo_root(start: Path | None = None) -> Path:
    """THEORY_REPO_ROOT, else the nearest folder upwards that has a `processors/` folder."""
    configured = os.environ.get("THEORY_REPO_ROOT")
    if configured:
        return Path(configured).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "processors").is_dir():
            return folder
    raise ProcessorNotFoundError(
        f"no processors/ folder in {here} or above.",
        remedy="Run from your repository (it holds processors/<ns>/<name>/registry.yaml) or set THEORY_REPO_ROOT.",
    )


def discover(repo_root: Path) -> list[Path]:
    return sorted((repo_root / "processors").glob(f"*/*/{REGISTRY_FILE}"))


@dataclass(frozen=True)
class LoadedProcessor:
    ref: ProcessorRef
    spec: ProcessorSpec
    path: Path  # the registry.yaml
    repo_root: Path

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def registry(self) -> str:
        """The registry host of image.repository: where this processor's pins live, and the host
        REGISTRY_USERNAME/REGISTRY_PASSWORD are bound to unless THEORY_REGISTRY_HOST says otherwise."""
        return ImageRef.parse(self.spec.image.repository, where="image.repository").registry

    def pin_for(self, platform: Platform) -> ImageRef:
        """The pinned digest ref for a platform; ERR_IMAGE_UNPINNED (with file:line) if there is none."""
        pin = self.spec.pins()[platform]
        if pin is None:
            doc, _ = _load_document(self.path)
            line, _col = _position(doc, ("image", "platforms", platform)) if doc is not None else (1, 1)
            raise ImageUnpinnedError(
                f"{_display(self.path)}:{line}: {self.ref} has no {platform} pin (image.platforms.{platform} is null).",
                details={"file": _display(self.path), "line": line},
            )
        return ImageRef.parse_digest_ref(pin, where=f"{_display(self.path)} image.platforms.{platform}")


def pin_line(path_or_text: os.PathLike[str] | str, platform: str) -> int | None:
    """1-based line of `image.platforms.<platform>`'s value (for annotations), or None when there is
    none or the file cannot be read. A path (`Path`, any `os.PathLike`) is read from disk; a `str` is
    the registry.yaml text itself. `platform` may be `amd64` or `linux/amd64`."""
    if isinstance(path_or_text, os.PathLike):
        try:
            text = read_registry_text(Path(path_or_text))
        except (OSError, Refused):
            return None
    else:
        text = path_or_text
    if safe_yaml_text(text) is None:
        return None
    try:
        doc = _yaml().load(text)
    except (YAMLError, ValueError, RecursionError):
        return None
    image = doc.get("image") if isinstance(doc, CommentedMap) else None
    platforms = image.get("platforms") if isinstance(image, CommentedMap) else None
    short = platform.removeprefix("linux/")
    if not isinstance(platforms, CommentedMap) or short not in platforms:
        return None
    return int(platforms.lc.value(short)[0]) + 1


def load_path(path: Path, repo_root: Path | None = None) -> LoadedProcessor:
    spec, problems = check_file(path, repo_root=repo_root)
    if problems or spec is None:
        first = problems[0]
        raise ValidationError(
            "\n".join(str(p) for p in problems),
            details={"file": first.file, "line": first.line, "problems": [p.to_json() for p in problems]},
        )
    root = repo_root or path.resolve().parent.parent.parent.parent
    return LoadedProcessor(spec.processor_ref, spec, path, root)


def slug_collisions(checked: Iterable[tuple[Path, ProcessorSpec]], *, paths: _RealPaths | None = None) -> list[Problem]:
    """Processors whose refs share a slug (`a-b/c@1` and `a/b-c@1` are both `a-b-c-v1`): the slug names
    the Modal app, the pin branch and the CI artifacts, so two processors with one slug would
    overwrite each other. One problem per later file, at its `ref` line, naming the earlier file."""
    first: dict[str, tuple[Path, ProcessorSpec]] = {}
    problems: list[Problem] = []
    seen: set[Path] = set()
    paths = paths or _RealPaths()
    for path, spec in checked:
        real = Path(paths.realpath(os.fspath(path)))
        if real in seen:
            continue
        seen.add(real)
        try:
            slug = spec.processor_ref.slug
        except TheoryDeployError:
            continue
        if slug not in first:
            first[slug] = (path, spec)
            continue
        other_path, other_spec = first[slug]
        doc, _ = _load_document(path)
        line, col = _position(doc, ("ref",)) if doc is not None else (1, 1)
        problems.append(
            Problem(
                _display(path),
                line,
                col,
                f"ref {spec.ref!r} has the slug {slug!r}, as does {_display(other_path)} (ref {other_spec.ref!r}); "
                "the slug names the Modal app, the pin branch and the build artifacts, so it must be unique: "
                "rename one of the two processors",
            )
        )
    return problems


def load_processor(ref: ProcessorRef, repo_root: Path | None = None) -> LoadedProcessor:
    root = repo_root or find_repo_root()
    path = root / "processors" / ref.namespace / ref.name / REGISTRY_FILE
    if not path.is_file():
        raise ProcessorNotFoundError(f"{ref}: no {path}.")
    loaded = load_path(path, root)
    if loaded.ref != ref:
        raise ValidationError(f"{_display(path)}: declares ref {loaded.spec.ref}, not {ref}.")
    return loaded


# ---------------------------------------------------------------------------------------------------
# Writing pins
# ---------------------------------------------------------------------------------------------------


def _render_scalar(value: str | None, old_token: str) -> str:
    if value is None:
        return "null"
    if old_token[:1] in ("'", '"'):
        return f"{old_token[0]}{value}{old_token[0]}"
    return value


def splice_values(text: str, values: dict[tuple[str, ...], str | None]) -> str:
    """Return `text` with the scalar at each key path replaced, and nothing else changed.

    Where each value sits comes from the composed node tree, whose marks span a scalar exactly: a
    quoted value continued on the next line is replaced whole, a comment or a flow separator after it
    is kept. An empty value (`amd64:`) has no extent (the parser marks it where the next token
    starts, possibly lines below), so the new value goes right after its key's colon."""
    root = _yaml().compose(text)
    edits: list[tuple[int, int, str]] = []
    for loc, value in values.items():
        key, node = _key_and_value(root, loc)
        if key is None:
            raise ValidationError(
                f"registry.yaml has no {'.'.join(loc)} key to write into.",
                remedy="Add `platforms: {amd64: null, arm64: null}` under `image:` (as in the sample processor).",
            )
        if not isinstance(node, ScalarNode):
            held = "a mapping" if isinstance(node, MappingNode) else "a list"
            raise ValidationError(
                f"registry.yaml's {'.'.join(loc)} holds {held}, not a single value to write into.",
                remedy=f"Write it as `{loc[-1]}: null` (as in the sample processor).",
            )
        start, end = node.start_mark.index, node.end_mark.index
        old_token = text[start:end].rstrip()  # a block scalar's extent runs into the next line
        if old_token:
            edits.append((start, start + len(old_token), _render_scalar(value, old_token)))
        else:
            colon = text.index(":", key.end_mark.index) + 1
            # `{amd64: , arm64: }`: the gap before a flow comma goes, or the pin would read `pin ,`
            after = colon + len(text[colon:]) - len(text[colon:].lstrip(" \t"))
            gap_end = after if text[after : after + 1] == "," else colon
            edits.append((colon, gap_end, " " + _render_scalar(value, "")))
    # Splice from the end backwards so earlier offsets stay valid when two values share a line.
    for start, end, token in sorted(edits, reverse=True):
        text = text[:start] + token + text[end:]
    return text


def _key_and_value(root: Node | None, loc: tuple[str, ...]) -> tuple[Node | None, Node | None]:
    """The key node and value node at a key path of a composed document; (None, None) if absent."""
    key: Node | None = None
    node = root
    for part in loc:
        if not isinstance(node, MappingNode):
            return None, None
        key, node = next(((k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value == part), (None, None))
    return key, node


def write_pins(path: Path, pins: dict[Platform, str | None]) -> dict[Platform, tuple[str | None, str | None]]:
    """Write pins; return {platform: (old, new)} for the platforms that changed. Unchanged: no write."""
    for platform in pins:
        if platform not in PLATFORMS:
            raise ValidationError(f"unknown platform {platform!r}; expected one of {', '.join(PLATFORMS)}.")
    with exclusive_lock(path.parent, what=f"{_display(path)} (another pin is being written)"):
        remove_stale_temporaries(path)
        loaded = load_path(path)
        repository = loaded.spec.image.repository
        for platform, pin in pins.items():
            if pin is not None and not re.fullmatch(rf"{re.escape(repository)}@sha256:[0-9a-f]{{64}}", pin):
                raise ValidationError(
                    f"refusing to pin {platform} to {pin!r}: a pin must be exactly {repository}@sha256:<64 lowercase hex>."
                )
        current = loaded.spec.pins()
        changed = {p: (current[p], new) for p, new in pins.items() if current[p] != new}
        if not changed:
            return {}
        text = read_registry_text(path)  # not read_text: universal newlines would turn CRLF into LF
        edits: dict[tuple[str, ...], str | None] = {
            ("image", "platforms", p): new for p, (_old, new) in changed.items()
        }
        _write_edits(path, text, edits)
        return changed


def set_repository(path: Path, repository: str) -> dict[str, Any]:
    """Move a processor to another image repository. Its pins name the old repository, so they are
    cleared in the same atomic write: a pin never names a repository the file does not declare."""
    new_repo = ImageRef.parse(repository, where="--repository")
    if new_repo.tag or new_repo.digest:
        raise ValidationError(f"--repository {repository!r} must have no tag and no digest.")
    with exclusive_lock(path.parent, what=f"{_display(path)} (another pin is being written)"):
        remove_stale_temporaries(path)
        loaded = load_path(path)
        old = loaded.spec.image.repository
        if old == new_repo.repository:
            return {"old": old, "new": old, "changed": False, "cleared_pins": []}
        cleared = [p for p, pin in loaded.spec.pins().items() if pin is not None]
        edits: dict[tuple[str, ...], str | None] = {("image", "repository"): new_repo.repository}
        edits.update({("image", "platforms", p): None for p in cleared})
        _write_edits(path, read_registry_text(path), edits)
        return {"old": old, "new": new_repo.repository, "changed": True, "cleared_pins": cleared}


def _write_edits(path: Path, text: str, edits: dict[tuple[str, ...], str | None]) -> None:
    new_text = splice_values(text, edits)
    _prove_only_these_moved(path, text, new_text, edits)
    atomic_write(path, new_text)


def _prove_only_these_moved(path: Path, old_text: str, new_text: str, edits: dict[tuple[str, ...], str | None]) -> None:
    """Re-parse the spliced text: it must equal the old document with exactly these values changed."""
    expected = _plain(_yaml().load(old_text))
    for loc, value in edits.items():
        node = expected
        for part in loc[:-1]:
            node = node[part]
        node[loc[-1]] = value
    try:
        spliced = _plain(_yaml().load(io.StringIO(new_text)))
    except YAMLError:
        spliced = None
    if spliced != expected:
        raise TheoryDeployError(
            f"{_display(path)}: the splice would change more than {len(edits)} value(s); refusing to write."
        )
