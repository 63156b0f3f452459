"""`theory-deploy init`: make a repository a theory-deploy consumer.

It writes the three caller workflows (deploy on push and by hand with an env choice, PR smoke,
nightly drift), each a few lines that call theory-deploy's reusable workflows at one ref, and a
first processor from the template. Then it says which secrets, environments and settings the
repository needs on GitHub.

Writing is all or nothing and never destroys anything: every file is compared first. A file that
is already there with the same text is left alone (so a second run changes nothing); one with
other text is a conflict, and any conflict stops the run before a single file is written, unless
`--force`. Each file is written atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import FileConflictError, UsageError
from .files import atomic_write
from .gitrun import Git
from .refs import ProcessorRef
from .templates import render_processor_template

DEFAULT_THEORY_DEPLOY = "theory-deploy/theory-deploy"
DEFAULT_THEORY_DEPLOY_REF = "v1"
DEFAULT_PROCESSOR = "demo/echo@1"
WORKFLOW_TEMPLATES = ("theory-deploy.yml", "theory-deploy-pr-smoke.yml", "theory-deploy-drift.yml")
ENVIRONMENTS = ("dev", "staging", "main")
_REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# What a `uses:` ref may be: a tag, a branch or a commit SHA; nothing that could break the YAML line.
_USES_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


@dataclass(frozen=True)
class PlannedFile:
    path: Path  # relative to the repository
    text: str
    state: str  # new | unchanged | conflict


@dataclass(frozen=True)
class InitRequest:
    root: Path
    processor: ProcessorRef | None  # None: no processor (--no-processor)
    theory_deploy: str  # owner/name of the theory-deploy repository
    theory_deploy_ref: str  # the @ref the callers use
    image_repository: str | None  # None: derived from the git remote
    force: bool = False
    dry_run: bool = False  # say what would be written, write nothing


def parse_theory_deploy(text: str, *, where: str = "--theory-deploy") -> tuple[str, str]:
    """`owner/name@ref` (or `owner/name`, meaning @v1) → (owner/name, ref)."""
    repository, _, ref = text.partition("@")
    ref = ref or DEFAULT_THEORY_DEPLOY_REF
    if not _REPOSITORY_RE.match(repository) or not _USES_REF_RE.match(ref) or ".." in ref:
        raise UsageError(
            f"{where} {text!r} is not owner/name@ref.",
            remedy=f"Give the theory-deploy repository and the ref to call, e.g. {DEFAULT_THEORY_DEPLOY}@v1.",
        )
    return repository, ref


def github_owner(root: Path) -> str | None:
    """The owner of the repository's `origin` on github.com, when it is one."""
    url = Git(root, timeout=15).try_out("config", "--get", "remote.origin.url") or ""
    match = re.match(r"^(?:https://(?:[^@/]+@)?github\.com/|git@github\.com:|ssh://git@github\.com/)([^/]+)/", url)
    return match.group(1).lower() if match else None


def default_image_repository(root: Path, ref: ProcessorRef) -> tuple[str, str]:
    """Where the first processor's images go, and why: GHCR under the origin's owner, else the local
    registry of the embedded local target (localhost:5000), which needs no account at all."""
    owner = github_owner(root)
    name = f"{ref.namespace}-{ref.name}".replace("_", "-")
    if owner:
        return f"ghcr.io/{owner}/{name}", "GHCR, under the owner of your origin remote"
    return f"localhost:5000/{name}", "the local registry (no GitHub origin found); change it before deploying to Modal"


def workflow_files(theory_deploy: str, ref: str) -> dict[str, str]:
    folder = resources.files("theory_deploy.templates").joinpath("workflows")
    files = {}
    for name in WORKFLOW_TEMPLATES:
        text = folder.joinpath(name).read_text(encoding="utf-8")
        text = text.replace("@THEORY_DEPLOY_REPOSITORY@", theory_deploy).replace("@THEORY_DEPLOY_REF@", ref)
        files[f".github/workflows/{name}"] = text
    return files


def processor_files(ref: ProcessorRef, image_repository: str) -> dict[str, str]:
    rendered = render_processor_template(namespace=ref.namespace, name=ref.name, repository=image_repository)
    return {f"processors/{ref.namespace}/{ref.name}/{relative}": text for relative, text in rendered.items()}


def plan(request: InitRequest) -> tuple[list[PlannedFile], dict[str, Any]]:
    facts: dict[str, Any] = {}
    wanted = workflow_files(request.theory_deploy, request.theory_deploy_ref)
    if request.processor is not None:
        if request.image_repository:
            repository, why = request.image_repository, "--image-repository"
        else:
            repository, why = default_image_repository(request.root, request.processor)
        facts["image_repository"] = {"repository": repository, "why": why}
        wanted.update(processor_files(request.processor, repository))
    planned = []
    for relative, text in wanted.items():
        path = request.root / relative
        if path.is_symlink() or (path.exists() and not path.is_file()):
            state = "conflict"
        elif not path.exists():
            state = "new"
        else:
            state = "unchanged" if path.read_text(encoding="utf-8", errors="replace") == text else "conflict"
        planned.append(PlannedFile(Path(relative), text, state))
    return planned, facts


def init(request: InitRequest) -> dict[str, Any]:
    if not request.root.is_dir():
        raise UsageError(
            f"--dir {request.root}: no such folder.", remedy="Create the repository first (git init), or pass its path."
        )
    if request.processor is not None and request.processor.version != 1:
        raise UsageError(
            f"--processor {request.processor}: a new processor starts at version 1.",
            remedy=f"Pass --processor {request.processor.namespace}/{request.processor.name}@1.",
        )
    planned, facts = plan(request)
    conflicts = [f for f in planned if f.state == "conflict"]
    if request.dry_run:
        return _report(request, planned, [], facts)
    if conflicts and not request.force:
        listing = "\n  - ".join(str(f.path) for f in conflicts)
        raise FileConflictError(
            f"init: {len(conflicts)} file(s) already exist with other content; nothing was written:\n  - {listing}",
            remedy="Compare them with `theory-deploy init --dry-run --json`, move them aside, or re-run with --force to overwrite them.",
        )
    written = []
    for item in planned:
        if item.state == "unchanged":
            continue
        target = request.root / item.path
        if target.is_symlink():  # --force replaces the link itself, never the file it points to
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, item.text)
        written.append(str(item.path))
    return _report(request, planned, written, facts)


def _report(
    request: InitRequest, planned: list[PlannedFile], written: list[str], facts: dict[str, Any]
) -> dict[str, Any]:
    conflict_state = "conflict" if request.dry_run or not request.force else "overwritten"
    states = {str(f.path): (conflict_state if f.state == "conflict" else f.state) for f in planned}
    secret_names: list[str] = []
    if request.processor is not None:
        secret_names = _template_secret_names(planned)
    next_steps = [
        f"Create the GitHub environments {', '.join(ENVIRONMENTS)} (Settings → Environments), and the branches "
        "staging and main: staging and main deploy what their branch pins.",
        "In each environment, add the secrets MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (that environment's Modal token).",
        "In each environment, add PROCESSOR_SECRETS: one NAME=value line per processor secret, in your own names"
        + (f" (the template's: {', '.join(secret_names)})" if secret_names else "")
        + "; values may differ per environment.",
        "Optional: REGISTRY_USERNAME and REGISTRY_PASSWORD for a registry other than GHCR, and a read token Modal pulls with.",
        "Settings → Actions → General: allow GitHub Actions to create pull requests (the pin bot's PRs).",
        "Commit and push: the push runs theory-deploy in dev.",
    ]
    summary_lines = [f"{state:>11}  {path}" for path, state in states.items()]
    summary = "\n".join(summary_lines + ["", "Next:"] + [f"  {i}. {step}" for i, step in enumerate(next_steps, 1)])
    return {
        "root": str(request.root),
        "theory_deploy": f"{request.theory_deploy}@{request.theory_deploy_ref}",
        "files": states,
        "written": written,
        "changed": bool(written),
        "dry_run": request.dry_run,
        "secrets": {"modal": ["MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"], "processor": secret_names},
        "environments": list(ENVIRONMENTS),
        "next_steps": next_steps,
        **facts,
        "summary": summary,
    }


def _template_secret_names(planned: list[PlannedFile]) -> list[str]:
    from ruamel.yaml import YAML

    for item in planned:
        if item.path.name == "registry.yaml":
            doc = YAML(typ="safe").load(item.text) or {}
            secrets = doc.get("secrets") or {}
            names = list(secrets.get("required") or []) + list(secrets.get("optional") or [])
            auth = (doc.get("api") or {}).get("auth_secret")
            return sorted(set(names + ([auth] if auth else [])))
    return []
