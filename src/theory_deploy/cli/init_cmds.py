"""`theory-deploy init`: the caller workflows and a first processor, written into a repository."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..consumer_init import DEFAULT_PROCESSOR, DEFAULT_THEORY_DEPLOY, InitRequest, init, parse_theory_deploy
from ..refs import ProcessorRef, parse_repository
from . import framework


def cmd_init(args: argparse.Namespace) -> dict[str, Any]:
    theory_deploy, ref = parse_theory_deploy(args.theory_deploy)
    root = Path(args.dir).resolve()
    if args.no_processor:
        processor = None
    elif args.processor:
        processor = ProcessorRef.parse(args.processor, where="--processor")
    else:  # the template processor only for a repository that has none yet: a re-run adds nothing
        processor = None if any(root.glob("processors/*/*/registry.yaml")) else ProcessorRef.parse(DEFAULT_PROCESSOR)
    image_repository = (
        str(parse_repository(args.image_repository, where="--image-repository")) if args.image_repository else None
    )
    request = InitRequest(
        root=root,
        processor=processor,
        theory_deploy=theory_deploy,
        theory_deploy_ref=ref,
        image_repository=image_repository,
        force=args.force,
        dry_run=args.dry_run,
    )
    return init(request)


def add_init_verb(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    verb = framework.add_verb(
        subparsers,
        parent,
        "init",
        cmd_init,
        "write the caller workflows (deploy, PR smoke, drift) and a first processor into a repository",
    )
    verb.add_argument("--dir", default=".", help="the repository (default: the current folder)")
    verb.add_argument(
        "--processor",
        help=f"write a processor from the template with this ref (default: {DEFAULT_PROCESSOR}, "
        "when the repository has no processor yet)",
    )
    verb.add_argument("--no-processor", action="store_true", help="write the workflows only")
    verb.add_argument(
        "--theory-deploy",
        default=f"{DEFAULT_THEORY_DEPLOY}@v1",
        metavar="OWNER/NAME@REF",
        help=f"the theory-deploy repository and ref the workflows call (default: {DEFAULT_THEORY_DEPLOY}@v1)",
    )
    verb.add_argument(
        "--image-repository",
        help="where the processor's images go (default: ghcr.io/<origin owner>/<slug>, else localhost:5000/<slug>)",
    )
    verb.add_argument("--force", action="store_true", help="overwrite files that exist with other content")
    verb.add_argument("--dry-run", action="store_true", help="say what would be written and write nothing")
