"""`processorctl`: processors from source to pins — validate, build, push, pin, the bot PR, plan.

Start-up is loaded per verb: `processorctl validate` or `plan` imports what those verbs need
(registry.yaml and git) and not the build, push and target machinery of the other verbs (HTTP
clients, the pipeline). `VERB_MODULES` says which module registers each verb; a word it does not
know (`--help`, a typo) builds the whole parser, so help and usage errors list every verb.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import framework

MODULES = ("registry_cmds", "image_cmds", "plan_cmds", "pr_cmds")  # in the order `--help` lists them
VERB_MODULES = {
    "validate": "registry_cmds",
    "schema": "registry_cmds",
    "set-repository": "registry_cmds",
    "build": "image_cmds",
    "push": "image_cmds",
    "pin": "image_cmds",
    "publish": "image_cmds",
    "merge": "image_cmds",
    "plan": "plan_cmds",
    "pr": "pr_cmds",
}


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every verb; given the command line, only of the verb it names (when known)."""
    parser, subparsers, parent = framework.new_tool(
        "processorctl", "Build, push and pin processor images by digest; validate registry.yaml."
    )
    verb_module = VERB_MODULES.get(argv[0]) if argv else None
    for name in (verb_module,) if verb_module else MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers, parent)
    return parser


def main() -> None:
    argv = sys.argv[1:]
    sys.exit(framework.run_tool(parser(argv), argv))


if __name__ == "__main__":
    main()
