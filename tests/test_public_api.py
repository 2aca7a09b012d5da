"""The public API: ``mageflow.__all__`` is pinned here, so a change to it is a deliberate one."""

from __future__ import annotations

import importlib

import pytest

import mageflow
import mageflow.models.message

PUBLIC_API = [
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


def test_all_is_pinned_and_sorted() -> None:
    assert sorted(mageflow.__all__) == mageflow.__all__
    assert mageflow.__all__ == PUBLIC_API
    assert len(set(mageflow.__all__)) == len(mageflow.__all__)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_is_importable(name: str) -> None:
    module = importlib.import_module("mageflow")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from mageflow import {name}", namespace)
    assert namespace[name] is getattr(mageflow, name)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from mageflow import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC_API)


def test_message_module_exports_the_spec_names() -> None:
    from mageflow.models.message import ContextMessage, ReturnValue

    assert ReturnValue is mageflow.ReturnValue
    assert ContextMessage is mageflow.ContextMessage
    assert mageflow.models.message.ReturnValue is ReturnValue
    assert mageflow.models.message.TaskError is mageflow.TaskError
    assert mageflow.models.message.ErrorValue is mageflow.ErrorValue


def test_sign_helpers_are_the_same_function() -> None:
    assert mageflow.asign is mageflow.sign
    assert isinstance(mageflow.__version__, str) and mageflow.__version__
