"""Targets: where an app runs. `local` (the Docker engine, the embedded default) and `modal`,
behind the one interface in `base.Target`. Imported lazily so `localctl` never loads the Modal SDK."""

from __future__ import annotations

from .base import Target

TARGET_KINDS = ("local", "modal")


def get_target(kind: str) -> Target:
    if kind == "local":
        from .local import LocalTarget

        return LocalTarget()
    if kind == "modal":
        from .modal import ModalTarget

        return ModalTarget()
    raise ValueError(f"unknown target {kind!r}")
