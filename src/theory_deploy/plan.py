"""Which processors a change touches: the build and deploy matrices the workflows run.

`processorctl plan --base REV` diffs REV (its merge base with HEAD, so a pull request's base that
moved on does not count) against HEAD and maps every changed file to a processor:

- a file under `processors/<ns>/<name>/` belongs to that processor;
- a change to the shared runtime (`runtime/`) or to the product itself (`src/`, the lock files, the
  actions, the deploy workflows) touches every processor, since every image or every deploy may
  change with it;
- anything else (docs, tests, other workflows) touches none.

Bot loops: a change whose only edits are `image.platforms` pin lines in registry.yaml files, which
is exactly what the pin bot commits, builds nothing. `registry_pins.is_pin_only_change` decides that
for the whole change; per processor, a registry.yaml that differs only in its pins is likewise
"pinned, not changed". Such processors are still listed for *deploy* (in staging and main a pin
change is a promotion), never for *build*.

Cost in proportion to the change: a plan reads (and validates) only the registry.yaml files of the
processors it lists, so a one-processor change in a repository of a thousand reads one file. When
every processor is planned (runtime/ or theory-deploy changed, a new branch, `--all`) every file is
read, as the matrices need them all. Slugs must stay unique across the repository (`a-b/c@1` and
`a/b-c@1` are both `a-b-c-v1`): two processors can share a slug only when their folder names do
(`a-b` + `c`, `a` + `b-c`), so the folder names alone (one directory listing, no file read) say
which few processors to read and compare.

The result is plain data: `builds` (processors to build), `deploys` (processors to deploy), and
GitHub matrices: `build_matrix` (processor by platform, with the runner and whether QEMU is needed),
`build_processors_matrix` (the processors being built, one row each) and `deploy_matrix`.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from .errors import GitError, InvalidEnvError, ProcessorNotFoundError, UsageError, ValidationError
from .gitrun import Git
from .refs import ENVIRONMENTS, Environment, ProcessorRef, parse_platforms
from .registry_file import REGISTRY_FILE, LoadedProcessor, discover, load_path, slug_collisions
from .registry_pins import is_pin_only_change, is_pin_only_in_file

# Paths whose change touches every processor. Directories end with '/'.
SHARED_PATHS: tuple[str, ...] = ("runtime/",)
PRODUCT_PATHS: tuple[str, ...] = (
    "src/",
    "pyproject.toml",
    "requirements/",
    "action.yml",
    "actions/",
    "scripts/action-entrypoint",
    ".github/workflows/deploy.yml",
    ".github/workflows/pr-smoke.yml",
)
DEFAULT_RUNNER = "ubuntu-latest"
_ZERO_SHA = re.compile(r"^0+$")
_GIT_TIMEOUT_S = 60


def _touches(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p.rstrip("/") or (p.endswith("/") and path.startswith(p)) for p in prefixes)


def _processor_folder(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) >= 4 and parts[0] == "processors":
        return f"{parts[1]}/{parts[2]}"
    return None


def deploy_env(requested: str | None, branch: str | None) -> Environment:
    """The environment a run deploys to: the one asked for, else main/staging by branch, else dev.

    Staging and main deploy what that branch pins, so they only deploy from that branch: a dispatch
    of `env: main` from a feature branch would otherwise promote the feature branch's pins.
    """
    branch = (branch or "").removeprefix("refs/heads/")
    if requested:
        if requested not in ENVIRONMENTS:
            raise InvalidEnvError(f"env {requested!r} is not an environment; expected one of dev, staging, main.")
        if requested in ("staging", "main") and branch and branch != requested:
            raise InvalidEnvError(
                f"env {requested} deploys what branch {requested!r} pins, but this run is on branch {branch!r}.",
                remedy=f"Run the {requested} deploy from branch {requested} (promote by merging the pins into it).",
            )
        return requested
    if branch in ("staging", "main"):
        return branch  # type: ignore[return-value]
    return "dev"


def _registry_at(root: Path, folder: str) -> Path | None:
    """processors/<folder>/registry.yaml when `discover` would find it (the same glob, escaped)."""
    ns, _, name = folder.partition("/")
    if not ns or not name or "/" in name:
        return None
    pattern = f"{glob.escape(ns)}/{glob.escape(name)}/{REGISTRY_FILE}"
    return next(iter((root / "processors").glob(pattern)), None)


def _slug_stem(ns: str, name: str) -> str:
    """What a processor's slug is made of besides its version (refs.ProcessorRef.slug)."""
    return f"{ns}-{name}".replace("_", "-")


def _slug_suspects(root: Path) -> list[str]:
    """Folders ('ns/name') whose folder names alone could give the same slug as another folder's:
    the only processors that can collide. Reads directory listings only."""
    by_stem: dict[str, list[str]] = {}
    try:
        namespaces = [e for e in os.scandir(root / "processors") if e.is_dir()]
    except OSError:
        return []
    for ns in namespaces:
        try:
            names = [e.name for e in os.scandir(ns.path) if e.is_dir()]
        except OSError:
            continue
        for name in names:
            by_stem.setdefault(_slug_stem(ns.name, name), []).append(f"{ns.name}/{name}")
    return sorted(f for group in by_stem.values() if len(group) > 1 for f in group)


def _load_folders(root: Path, folders: list[str]) -> dict[str, LoadedProcessor]:
    """folder → processor (validated) for each of `folders` that holds a registry.yaml, checked for
    slug collisions with every processor of the repository."""
    wanted = set(folders) | set(_slug_suspects(root))
    paths = sorted(p for p in (_registry_at(root, f) for f in wanted) if p is not None)
    return _validated(root, paths, keep=set(folders))


def _processors(root: Path) -> dict[str, LoadedProcessor]:
    """folder ('ns/name') → processor, for every registry.yaml in the work tree (validated)."""
    return _validated(root, discover(root), keep=None)


def _validated(root: Path, paths: list[Path], keep: set[str] | None) -> dict[str, LoadedProcessor]:
    found: dict[str, LoadedProcessor] = {}
    for path in paths:
        loaded = load_path(path, root)
        found[loaded.ref.folder] = loaded
    collisions = slug_collisions((p.path, p.spec) for p in found.values())
    if collisions:
        first = collisions[0]
        raise ValidationError(
            "\n".join(str(p) for p in collisions),
            details={"file": first.file, "line": first.line, "problems": [p.to_json() for p in collisions]},
        )
    return found if keep is None else {folder: p for folder, p in found.items() if folder in keep}


def _matrices(
    processors: list[LoadedProcessor],
    builds: list[LoadedProcessor],
    *,
    platforms: list[str] | None,
    runner: str,
    arm_runner: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    deploy_rows = [
        {
            "ref": str(p.ref),
            "slug": p.ref.slug,
            "folder": f"processors/{p.ref.folder}",
            "registry": f"processors/{p.ref.folder}/{REGISTRY_FILE}",
        }
        for p in processors
    ]
    build_rows: list[dict[str, Any]] = []
    for p in builds:
        for arch in p.spec.platform_names():
            if platforms is not None and arch not in platforms:
                continue
            native = arch == "amd64" or (arch == "arm64" and bool(arm_runner))
            build_rows.append(
                {
                    "ref": str(p.ref),
                    "slug": p.ref.slug,
                    "platform": f"linux/{arch}",
                    "arch": arch,
                    "runner": (arm_runner if arch == "arm64" and arm_runner else runner),
                    "qemu": not native,
                }
            )
    return deploy_rows, build_rows


def compute_plan(
    repo_root: Path,
    *,
    base: str | None = None,
    head: str = "HEAD",
    refs: list[str] | None = None,
    all_processors: bool = False,
    platforms: str | None = None,
    runner: str = DEFAULT_RUNNER,
    arm_runner: str | None = None,
) -> dict[str, Any]:
    """The plan as plain data (see the module docstring). Exactly one of base / refs / all."""
    chosen = sum(bool(x) for x in (base, refs, all_processors))
    if chosen != 1:
        raise UsageError("plan needs exactly one of --base REV, --refs REFS or --all.")
    root = repo_root.resolve()
    wanted_platforms = [str(p) for p in parse_platforms(platforms)] if platforms else None

    def everything() -> list[LoadedProcessor]:
        return sorted(_processors(root).values(), key=lambda p: p.ref)

    changed: list[str] = []
    pin_only = False
    resolved_base: str | None = None

    if refs:
        asked = [ProcessorRef.parse(text, where="--refs") for text in refs]
        by_folder = _load_folders(root, [ref.folder for ref in asked])
        picked: list[LoadedProcessor] = []
        for ref in asked:
            loaded = by_folder.get(ref.folder)
            if loaded is None or loaded.ref != ref:
                raise ProcessorNotFoundError(
                    f"--refs: no processor {ref} (no processors/{ref.folder}/{REGISTRY_FILE} declaring it)."
                )
            picked.append(loaded)
        deploys = builds = sorted({p.ref: p for p in picked}.values(), key=lambda p: p.ref)
        reason = "the processors asked for"
    elif all_processors:
        deploys = builds = everything()
        reason = "all processors (asked for)"
    else:
        assert base is not None
        git = Git(root, timeout=_GIT_TIMEOUT_S)
        head_sha = git.rev(head)
        if head_sha is None:
            raise GitError(f"{head!r} is not a commit in {root}.")
        if _ZERO_SHA.match(base):
            deploys = builds = everything()
            reason = "a new branch (no earlier commit to compare with): all processors"
        else:
            base_sha = git.rev(base)
            if base_sha is None:
                raise GitError(
                    f"--base {base!r} is not a commit in {root}.",
                    remedy="Fetch enough history (actions/checkout with `fetch-depth: 0`), or pass --all.",
                )
            merge_base = git.run("merge-base", base_sha, head_sha, check=False).stdout.strip() or base_sha
            resolved_base = merge_base
            listing = git.run("diff", "--name-only", "--no-renames", "-z", merge_base, head_sha).stdout
            changed = sorted(f for f in listing.split("\0") if f)
            pin_only = bool(changed) and is_pin_only_change(root, merge_base, head_sha)
            if any(_touches(f, SHARED_PATHS) for f in changed) and not pin_only:
                deploys = builds = everything()
                reason = "the shared runtime (runtime/) changed: all processors"
            elif any(_touches(f, PRODUCT_PATHS) for f in changed) and not pin_only:
                deploys = builds = everything()
                reason = "theory-deploy itself changed: all processors"
            else:
                in_folders: dict[str, list[str]] = {}
                for f in changed:
                    folder = _processor_folder(f)
                    if folder is not None:
                        in_folders.setdefault(folder, []).append(f)
                by_folder = _load_folders(root, list(in_folders))  # only what changed (and slug suspects)
                touched = {folder: files for folder, files in in_folders.items() if folder in by_folder}
                deploys, builds = [], []
                for folder, files in sorted(touched.items()):
                    loaded = by_folder[folder]
                    deploys.append(loaded)
                    only_pins = pin_only or all(
                        Path(f).name == REGISTRY_FILE and is_pin_only_in_file(git, merge_base, head_sha, f)
                        for f in files
                    )
                    if not only_pins:
                        builds.append(loaded)
                deploys.sort(key=lambda p: p.ref)
                builds.sort(key=lambda p: p.ref)
                if pin_only:
                    reason = "only pin lines changed (the pin bot's commits): nothing to build"
                elif not deploys:
                    reason = "no processor's files changed"
                else:
                    reason = "the processors whose files changed"

    deploy_rows, build_rows = _matrices(
        deploys, builds, platforms=wanted_platforms, runner=runner, arm_runner=arm_runner
    )
    deploy_refs = [str(p.ref) for p in deploys]
    build_refs = sorted({row["ref"] for row in build_rows})
    built_rows = [
        row
        for row in _matrices(builds, [], platforms=None, runner=runner, arm_runner=None)[0]
        if row["ref"] in build_refs
    ]
    return {
        "base": resolved_base or base,
        "reason": reason,
        "pin_only": pin_only,
        "changed_files": changed,
        "deploys": deploy_refs,
        "builds": build_refs,
        "deploy_matrix": {"include": deploy_rows},
        "build_matrix": {"include": build_rows},
        "build_processors_matrix": {"include": built_rows},
        "summary": (
            f"plan: {reason}. build: {', '.join(build_refs) or 'nothing'}; "
            f"deploy: {', '.join(deploy_refs) or 'nothing'}"
        ),
    }
