"""processorctl verbs about registry.yaml itself: `validate` and `schema`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .. import gha, output
from ..errors import ValidationError
from ..files import atomic_write
from ..refs import ProcessorRef
from ..registry_file import (
    SCHEMA_RELATIVE_PATH,
    Problem,
    check_files,
    discover,
    find_repo_root,
    json_schema_text,
    load_processor,
    set_repository,
)


def cmd_validate(args: argparse.Namespace) -> dict[str, Any]:
    paths = [Path(p) for p in args.paths] or discover(find_repo_root())
    problems: list[Problem]
    _valid, problems = check_files(paths)
    for problem in problems:
        gha.annotate(
            "error", problem.message, file=problem.file, line=problem.line, col=problem.col, title="registry.yaml"
        )
    if problems:
        if not args.json:
            for problem in problems:
                output.progress(str(problem))
        raise ValidationError(
            f"{len(problems)} problem(s) in {len({p.file for p in problems})} file(s)"
            + ("" if not args.json else ": " + "; ".join(str(p) for p in problems)),
            details={"problems": [p.to_json() for p in problems]},
        )
    names = [str(p) for p in paths]
    return {"files": names, "problems": [], "summary": f"ok: {len(names)} file(s) valid"}


def cmd_schema(args: argparse.Namespace) -> dict[str, Any]:
    text = json_schema_text()
    if args.write:
        target = find_repo_root() / SCHEMA_RELATIVE_PATH
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, text)
        return {"written": str(target), "summary": f"wrote {target}"}
    return {"schema": json.loads(text), "summary": text.rstrip()}


def cmd_set_repository(args: argparse.Namespace) -> dict[str, Any]:
    processor = load_processor(ProcessorRef.parse(args.ref))
    result = set_repository(processor.path, args.repository)
    result["file"] = str(processor.path)
    if not result["changed"]:
        result["summary"] = f"unchanged: {processor.ref} already uses {result['new']}"
    else:
        cleared = ", ".join(result["cleared_pins"]) or "none"
        result["summary"] = (
            f"{processor.ref}: image.repository {result['old']} -> {result['new']} (pins cleared: {cleared})"
        )
    return result


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from .framework import add_verb

    validate = add_verb(
        subparsers,
        parent,
        "validate",
        cmd_validate,
        "check every processors/*/*/registry.yaml (or the given files); list every problem as file:line:col",
    )
    validate.add_argument("paths", nargs="*", metavar="PATH", help="registry.yaml files (default: every processor)")
    schema = add_verb(subparsers, parent, "schema", cmd_schema, "print the JSON Schema of registry.yaml")
    move = add_verb(
        subparsers,
        parent,
        "set-repository",
        cmd_set_repository,
        "point a processor at another image repository (clears its pins, which named the old one)",
    )
    move.add_argument("--ref", required=True, help="processor ref, e.g. llm/litellm@1")
    move.add_argument("--repository", required=True, help="bare repository, e.g. 127.0.0.1:5000/theory/llm-litellm")
    schema.add_argument("--write", action="store_true", help=f"write it to {SCHEMA_RELATIVE_PATH} in the repository")
