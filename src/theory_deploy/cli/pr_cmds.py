"""`processorctl pr`: put the pins written in the work tree up for review as one bot PR per processor.

git fetches and pushes with the GitHub token the PR is opened with (GITHUB_TOKEN / GH_TOKEN, or a
GitHub App's installation token), also with --no-pr when one is set; without one, with git's own
credentials (see gitpr, "Which credentials git uses")."""

from __future__ import annotations

import argparse
from typing import Any

from .. import gitpr
from ..refs import ProcessorRef
from ..registry_file import load_processor
from .framework import add_verb


def cmd_pr(args: argparse.Namespace) -> dict[str, Any]:
    processors = [load_processor(ProcessorRef.parse(text)) for text in args.ref]
    return gitpr.propose_pins(processors, base=args.base, remote=args.remote, open_pr=not args.no_pr)


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    pr = add_verb(
        subparsers,
        parent,
        "pr",
        cmd_pr,
        "commit the work tree's pins to theory-deploy/pin/<slug> and open or update that one PR (per processor)",
    )
    pr.add_argument("--ref", required=True, action="append", help="processor ref (repeatable)")
    pr.add_argument("--base", required=True, help="branch the PR targets, e.g. main")
    pr.add_argument("--remote", default="origin", help="git remote to push to (default: origin)")
    pr.add_argument(
        "--no-pr",
        action="store_true",
        help="push the bot branch but open no PR (no GitHub token needed; one that is set is pushed with)",
    )
