"""theory_runtime: the server side of theory.run.v1 for processor images.

A processor is a handler plus its registry.yaml, which images carry as processor.json (exported
without the pins by `python -m theory_runtime.spec export`, see `spec.py`):

    from theory_runtime import create_app
    app = create_app(handler, "/app/processor.json")  # registry.yaml works too (source trees, tests)

See `server.py` for the handler contract and `frames.py` for the wire format.
"""

from __future__ import annotations

__version__ = "1.0.0"

from . import errors, frames
from .errors import (
    InputsError,
    MissingSecretError,
    ProviderError,
    RunError,
    RuntimeFailure,
    RunTimeout,
)
from .server import RunContext, create_app, env_fingerprint

__all__ = [
    "InputsError",
    "MissingSecretError",
    "ProviderError",
    "RunContext",
    "RunError",
    "RunTimeout",
    "RuntimeFailure",
    "__version__",
    "create_app",
    "env_fingerprint",
    "errors",
    "frames",
]
