"""A local stand-in for Modal's control plane (gRPC), driven by the real ``modal`` SDK.

Never imported by ``src/``. See ``standin.ModalStandIn`` for the API and ``state`` for the layout.
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
    "SecretRecord",
    "StandInServicer",
    "StandInState",
    "reset_sdk_client",
]
