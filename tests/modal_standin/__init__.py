"""A local stand-in for Modal's control plane (gRPC), driven by the real ``modal`` SDK.

Never imported by ``src/``. See ``standin.ModalStandIn`` for the API, ``state`` for the layout,
``servicer`` for the rules it enforces, ``registry_pull`` for how image builds pull their
``from_registry`` reference, and ``images`` for pushing tiny real images for tests to deploy.
"""

from .servicer import StandInServicer
from .standin import ModalStandIn, reset_sdk_client
from .state import (
    DEFAULT_ENVIRONMENTS,
    AppRecord,
    CallRecord,
    DeployRecord,
    DictRecord,
    FunctionRecord,
    ImageRecord,
    ImageSpec,
    LogRecord,
    PullRecord,
    SecretRecord,
    StandInState,
)

__all__ = [
    "DEFAULT_ENVIRONMENTS",
    "AppRecord",
    "CallRecord",
    "DeployRecord",
    "DictRecord",
    "FunctionRecord",
    "ImageRecord",
    "ImageSpec",
    "LogRecord",
    "ModalStandIn",
    "PullRecord",
    "SecretRecord",
    "StandInServicer",
    "StandInState",
    "reset_sdk_client",
]
