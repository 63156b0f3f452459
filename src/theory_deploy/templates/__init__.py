"""The processor template: the files `theory-deploy init` writes into a consumer's repository.

`processor_template_files()` returns them as {relative path: text}, to be written under
`processors/<namespace>/<name>/` after replacing each placeholder with `str.replace`:

    {{namespace}}   the processor's namespace, e.g. acme        (ref: {{namespace}}/{{name}}@1)
    {{name}}        the processor's name, e.g. echo
    {{repository}}  the image repository without tag or digest, e.g. ghcr.io/acme/acme-echo

`render_processor_template(namespace=..., name=..., repository=...)` does exactly that and checks that
no placeholder is left. The files (package data under templates/processor/): registry.yaml, Dockerfile
(build context: the processor folder; the runtime comes from `processorctl build`, see
runtime_bundle.py), Dockerfile.dockerignore, requirements.txt (the runtime's dependencies, pinned),
app.py and handler.py (an offline, deterministic echo processor, mock and real mode).
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

PLACEHOLDERS = ("namespace", "name", "repository")
TEMPLATE_PACKAGE = "theory_deploy.templates"
TEMPLATE_FOLDER = "processor"
_PLACEHOLDER_RE = re.compile(r"\{\{[A-Za-z_]+\}\}")


def processor_template_files() -> dict[str, str]:
    """{relative path: text} of every file of the processor template, placeholders unreplaced."""
    root = resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_FOLDER)
    found: dict[str, str] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
                continue
            rel = f"{prefix}{entry.name}"
            if entry.is_dir():
                walk(entry, rel + "/")
            else:
                found[rel] = entry.read_text(encoding="utf-8")

    walk(root, "")
    return dict(sorted(found.items()))


def render_processor_template(*, namespace: str, name: str, repository: str) -> dict[str, str]:
    """The template with every placeholder replaced; ValueError if one is left (a template bug)."""
    values = {"namespace": namespace, "name": name, "repository": repository}
    rendered: dict[str, str] = {}
    for rel, text in processor_template_files().items():
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        left = _PLACEHOLDER_RE.findall(text)
        if left:
            raise ValueError(f"template file {rel} still holds {', '.join(sorted(set(left)))} after rendering")
        rendered[rel] = text
    return rendered
