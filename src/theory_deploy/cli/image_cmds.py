"""processorctl verbs for images: build, push, pin, publish (being written)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    return None
