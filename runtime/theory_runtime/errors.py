"""Errors a handler raises; the runtime maps them to envelope error codes.

Anything else a handler raises becomes ERR_RUNTIME (its type name and a scrubbed message);
`TimeoutError` becomes ERR_TIMEOUT. Messages pass through the secret scrubber before they are sent
or logged, but handlers should still never put a secret value into one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RunError(Exception):
    code: ClassVar[str] = "ERR_RUNTIME"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class RuntimeFailure(RunError):
    code = "ERR_RUNTIME"


class InputsError(RunError):
    code = "ERR_INPUTS"


class MissingSecretError(RunError):
    code = "ERR_MISSING_SECRET"


class ProviderError(RunError):
    code = "ERR_PROVIDER"


class RunTimeout(RunError):
    code = "ERR_TIMEOUT"


class ProtocolViolation(RunError):
    code = "ERR_WS_PROTOCOL"


class Unauthorized(RunError):
    code = "ERR_UNAUTHORIZED"
