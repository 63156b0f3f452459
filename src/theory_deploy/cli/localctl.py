"""`localctl`: the local target (Docker engine + registry), with exactly modalctl's verbs and flags."""

from __future__ import annotations

import argparse

from . import framework
from .target_cmds import build_parser


def parser() -> argparse.ArgumentParser:
    return build_parser(
        "localctl", "local", "Run processors on the local Docker engine, pinned by digest, as Modal would."
    )


main = framework.main_for(parser)


if __name__ == "__main__":
    main()
