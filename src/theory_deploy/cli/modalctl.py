"""`modalctl`: the Modal target, with exactly localctl's verbs and flags."""

from __future__ import annotations

import argparse

from . import framework
from .target_cmds import build_parser


def parser() -> argparse.ArgumentParser:
    return build_parser("modalctl", "modal", "Deploy processors to Modal by amd64 digest, and prove what runs.")


main = framework.main_for(parser)


if __name__ == "__main__":
    main()
