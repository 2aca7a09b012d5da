"""mageflow: compose async tasks (signatures, callbacks, chains, swarms) over task engines.

The public API is what this module exports; ``tests/test_public_api.py`` pins it.
"""

from mageflow.api import (
    achain,
    amap,
    asign,
    aswarm,
    cancel,
    chain,
    interrupt,
    load_signature,
    map,
    resume,
    sign,
    suspend,
    swarm,
)
from mageflow.client import Mageflow, current_client
from mageflow.config import MageflowConfig, SwarmConfig, TTLConfig
from mageflow.containers import ChainSignature, SwarmSignature, is_failed_result
from mageflow.errors import (
    CallbackModelError,
    ConfigurationError,
    DispatchError,
    EmbeddedRedisError,
    InvalidArgumentError,
    InvalidSettingError,
    InvalidTransitionError,
    InvalidValueError,
    MageflowError,
    MessageValidationError,
    NonRetryableError,
    NotARecordError,
    PoisonMessageError,
    RedisUnavailableError,
    SerializationError,
    SignatureNotFoundError,
    SwarmClosedError,
    SwarmFullError,
    TaskAlreadyRunningError,
    TaskCanceledError,
    TaskFailedError,
    UnknownActionError,
    UnknownTaskError,
)
from mageflow.models.message import ContextMessage, ErrorValue, ReturnValue, TaskError
from mageflow.scheduling import RateLimit
from mageflow.scopes import abounded_field
from mageflow.signature import Signature, TaskSignature
from mageflow.status import SignatureStatus
from mageflow.tasks import MageflowTask

__version__ = "0.1.0"

__all__ = [
    "CallbackModelError",
    "ChainSignature",
    "ConfigurationError",
    "ContextMessage",
    "DispatchError",
    "EmbeddedRedisError",
    "ErrorValue",
    "InvalidArgumentError",
    "InvalidSettingError",
    "InvalidTransitionError",
    "InvalidValueError",
    "Mageflow",
    "MageflowConfig",
    "MageflowError",
    "MageflowTask",
    "MessageValidationError",
    "NonRetryableError",
    "NotARecordError",
    "PoisonMessageError",
    "RateLimit",
    "RedisUnavailableError",
    "ReturnValue",
    "SerializationError",
    "Signature",
    "SignatureNotFoundError",
    "SignatureStatus",
    "SwarmClosedError",
    "SwarmConfig",
    "SwarmFullError",
    "SwarmSignature",
    "TTLConfig",
    "TaskAlreadyRunningError",
    "TaskCanceledError",
    "TaskError",
    "TaskFailedError",
    "TaskSignature",
    "UnknownActionError",
    "UnknownTaskError",
    "__version__",
    "abounded_field",
    "achain",
    "amap",
    "asign",
    "aswarm",
    "cancel",
    "chain",
    "current_client",
    "interrupt",
    "is_failed_result",
    "load_signature",
    "map",
    "resume",
    "sign",
    "suspend",
    "swarm",
]
