"""`processorctl`: processors from source to pins — validate, build, push, pin, the bot PR, plan."""

from __future__ import annotations

import argparse

from . import framework, image_cmds, plan_cmds, pr_cmds, registry_cmds


def parser() -> argparse.ArgumentParser:
    parser, subparsers, parent = framework.new_tool(
        "processorctl", "Build, push and pin processor images by digest; validate registry.yaml."
    )
    registry_cmds.register(subparsers, parent)
    image_cmds.register(subparsers, parent)
    plan_cmds.register(subparsers, parent)
    pr_cmds.register(subparsers, parent)
    return parser


main = framework.main_for(parser)


if __name__ == "__main__":
    main()
