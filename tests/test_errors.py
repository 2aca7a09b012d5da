"""Bad input: unknown names, invalid messages, unusable models, unreachable Redis, bad results."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import redis
from pydantic import BaseModel

import mageflow
import mageflow.errors
from mageflow import (
    CallbackModelError,
    ConfigurationError,
    ContextMessage,
    InvalidArgumentError,
    InvalidSettingError,
    InvalidTransitionError,
    Mageflow,
    MageflowConfig,
    MageflowError,
    MessageValidationError,
    RedisUnavailableError,
    SerializationError,
    SignatureNotFoundError,
    SignatureStatus,
    SwarmConfig,
    TaskError,
    TaskFailedError,
    TTLConfig,
    UnknownActionError,
    UnknownTaskError,
)
from mageflow.config import KindTTL
from mageflow.lifecycle import control
from mageflow.store.keys import KeySchema

UNREACHABLE = "redis://127.0.0.1:1/0"


async def join(client: Mageflow) -> None:
    """Wait until no in-process task (callbacks included) is running."""
    await client.engine.join()  # type: ignore[attr-defined]


def sig_keys(sync_redis: redis.Redis, namespace: str) -> list[str]:
    return sorted(sync_redis.scan_iter(f"{namespace}:sig:*"))


class Item(BaseModel):
    item_id: int


class Failure(ContextMessage):
    """An error callback's model that keeps whatever message the failed task had."""

    error: TaskError


class NoPlace(BaseModel):
    """A success callback model with nowhere to put a return value."""

    label: str


def register_basics(mf: Mageflow) -> None:
    @mf.task(name="sink")
    async def sink(msg: ContextMessage) -> None:
        return None

    @mf.task(name="alpha")
    async def alpha(msg: Item) -> int:
        return msg.item_id

    @mf.task(name="beta")
    async def beta(msg: Item) -> int:
        return -msg.item_id


# -- unknown names --------------------------------------------------------------------------------


async def test_unknown_task_name_lists_known_tasks_and_writes_nothing(
    mf: Mageflow, sync_redis: redis.Redis, namespace: str
) -> None:
    register_basics(mf)
    with pytest.raises(UnknownTaskError) as info:
        await mageflow.sign("gamma")
    assert info.value.task_name == "gamma"
    assert "'gamma'" in str(info.value)
    assert "alpha" in str(info.value) and "beta" in str(info.value)
    assert info.value.known == ["alpha", "beta", "sink"]
    assert sig_keys(sync_redis, namespace) == []


@pytest.mark.parametrize("where", ["success_callbacks", "error_callbacks"])
async def test_unknown_callback_name_writes_nothing(
    mf: Mageflow, sync_redis: redis.Redis, namespace: str, where: str
) -> None:
    register_basics(mf)
    with pytest.raises(UnknownTaskError) as info:
        await mageflow.sign("alpha", **{where: ["sink", "no-such-callback"]})
    assert info.value.task_name == "no-such-callback"
    assert sig_keys(sync_redis, namespace) == []


async def test_missing_signature_and_duplicate_task_name(mf: Mageflow) -> None:
    register_basics(mf)
    with pytest.raises(SignatureNotFoundError) as info:
        await mageflow.load_signature(f"{mf.keys.namespace}:sig:{{nope}}:nope")
    assert info.value.key.endswith(":nope")
    with pytest.raises(ConfigurationError, match="alpha"):

        @mf.task(name="alpha")
        async def again(msg: Item) -> None:
            return None


# -- invalid messages -----------------------------------------------------------------------------


async def test_invalid_message_fails_the_task_and_fires_error_callbacks(mf: Mageflow) -> None:
    calls: list[Item] = []
    failures: list[Failure] = []

    @mf.task(retries=3)
    async def strict(msg: Item) -> int:
        calls.append(msg)
        return msg.item_id

    @mf.task
    async def on_error(msg: Failure) -> None:
        failures.append(msg)

    sig = await mf.sign(strict, error_callbacks=[await mf.sign(on_error)], bound="b")
    with pytest.raises(TaskFailedError) as info:
        await sig.aio_run({"item_id": "not-a-number"})
    await join(mf)
    assert calls == []  # the function never ran, and a bad message is not retried
    assert info.value.key == sig.key
    assert info.value.error_type == "MessageValidationError"
    assert "item_id" in info.value.error_message
    assert await sig.astatus() is SignatureStatus.FAILED
    assert sig.error is not None and sig.error.type == "MessageValidationError"
    assert len(failures) == 1
    assert failures[0].error.type == "MessageValidationError"
    assert failures[0].model_extra == {"item_id": "not-a-number", "bound": "b"}


async def test_invalid_message_without_waiting_does_not_crash(mf: Mageflow) -> None:
    @mf.task
    async def strict(msg: Item) -> int:
        return msg.item_id

    sig = await mf.sign(strict)
    await sig.aio_run_no_wait({"wrong": 1})
    await join(mf)
    assert await sig.astatus() is SignatureStatus.FAILED
    assert sig.error is not None and sig.error.type == "MessageValidationError"
    # The client keeps working.
    assert await strict.aio_run(Item(item_id=2)) == 2


async def test_message_of_the_wrong_type_does_not_use_up_the_signature(mf: Mageflow) -> None:
    @mf.task
    async def strict(msg: Item) -> int:
        return msg.item_id

    sig = await mf.sign(strict)
    bad: Any = "not a message"
    with pytest.raises((TypeError, MageflowError)):
        await sig.aio_run(bad)
    assert await sig.astatus() is SignatureStatus.PENDING
    assert await sig.aio_run(Item(item_id=6)) == 6


class Needs(BaseModel):
    results: int
    required: str


async def test_invalid_callback_message_fails_only_the_callback(mf: Mageflow) -> None:
    @mf.task
    async def produce(msg: Item) -> int:
        return msg.item_id

    @mf.task
    async def consume(msg: Needs) -> None:
        return None

    cb = await mf.sign(consume)  # `required` is never bound
    sig = await mf.sign(produce, success_callbacks=[cb])
    assert await sig.aio_run(Item(item_id=1)) == 1
    await join(mf)
    assert await sig.astatus() is SignatureStatus.DONE
    assert await cb.astatus() is SignatureStatus.FAILED
    assert cb.error is not None and cb.error.type == "MessageValidationError"


# -- models that cannot work ----------------------------------------------------------------------


async def test_success_callback_without_a_return_field_fails_at_sign(
    mf: Mageflow, sync_redis: redis.Redis, namespace: str
) -> None:
    register_basics(mf)

    @mf.task(name="no-place")
    async def no_place(msg: NoPlace) -> None:
        return None

    with pytest.raises(CallbackModelError) as info:
        await mageflow.sign("alpha", success_callbacks=["no-place"])
    assert (info.value.callback_task, info.value.model_name) == ("no-place", "NoPlace")
    assert "ReturnValue" in str(info.value)
    assert sig_keys(sync_redis, namespace) == []

    cb = await mageflow.sign(no_place, label="x")
    with pytest.raises(CallbackModelError):
        await mageflow.sign("alpha", success_callbacks=[cb])
    assert sig_keys(sync_redis, namespace) == [cb.key]
    # The same model is fine for an error callback.
    assert (await mageflow.sign("alpha", error_callbacks=[cb])).error_callbacks


# -- configuration and Redis ----------------------------------------------------------------------


async def test_unreachable_redis_raises_redis_unavailable(namespace: str) -> None:
    client = Mageflow(None, UNREACHABLE, config=MageflowConfig(namespace=namespace))

    @client.task
    async def anything(msg: Item) -> None:
        return None

    with pytest.raises(RedisUnavailableError) as info:
        await mageflow.sign(anything)
    assert "127.0.0.1:1" in info.value.url
    assert "127.0.0.1:1" in str(info.value)
    with pytest.raises(RedisUnavailableError):
        await client.load_signature(f"{namespace}:sig:{{x}}:x")
    await client.close()


async def test_sync_redis_client_is_a_configuration_error(
    namespace: str, sync_redis: redis.Redis
) -> None:
    # Raised when the client is built or, at the latest, when it is first used.
    with pytest.raises(ConfigurationError, match=r"redis\.asyncio"):
        client = Mageflow(None, sync_redis, config=MageflowConfig(namespace=namespace))

        @client.task
        async def nothing(msg: Item) -> None:
            return None

        await client.sign(nothing)


def test_every_error_derives_from_mageflow_error() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(mageflow.errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == "mageflow.errors"
    ]
    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, MageflowError), cls
    for name in mageflow.__all__:
        obj = getattr(mageflow, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, MageflowError), name
    assert issubclass(MessageValidationError, MageflowError)
    assert issubclass(InvalidTransitionError, MageflowError)


# -- bad results ----------------------------------------------------------------------------------


class Opaque:
    """Not JSON serialisable."""


async def test_unserialisable_return_value_fails_the_task_clearly(mf: Mageflow) -> None:
    ok: list[Any] = []
    failures: list[Failure] = []

    @mf.task
    async def opaque(msg: Item) -> Opaque:
        return Opaque()

    @mf.task
    async def on_ok(msg: ContextMessage) -> None:
        ok.append(msg)

    @mf.task
    async def on_error(msg: Failure) -> None:
        failures.append(msg)

    sig = await mf.sign(
        opaque,
        success_callbacks=[await mf.sign(on_ok)],
        error_callbacks=[await mf.sign(on_error)],
    )
    with pytest.raises(TaskFailedError) as info:
        await sig.aio_run(Item(item_id=1))
    await join(mf)
    assert info.value.key == sig.key
    assert "serializ" in info.value.error_message.lower()
    assert "Opaque" in info.value.error_message
    assert await sig.astatus() is SignatureStatus.FAILED
    assert ok == []
    assert len(failures) == 1 and failures[0].model_extra == {"item_id": 1}


async def test_running_a_finished_signature_again_is_refused(mf: Mageflow) -> None:
    @mf.task
    async def once(msg: Item) -> int:
        return msg.item_id

    sig = await mf.sign(once)
    assert await sig.aio_run(Item(item_id=1)) == 1
    with pytest.raises(InvalidTransitionError) as info:
        await sig.aio_run(Item(item_id=2))
    assert info.value.key == sig.key
    again = await mageflow.load_signature(sig.key)
    with pytest.raises(InvalidTransitionError):
        await again.aio_run_no_wait(Item(item_id=3))


# -- input validation at the edges ----------------------------------------------------------------


async def test_signing_something_that_is_not_a_task_is_an_invalid_argument(
    mf: Mageflow, sync_redis: redis.Redis, namespace: str
) -> None:
    register_basics(mf)
    bad: Any = 123
    with pytest.raises(InvalidArgumentError) as info:
        await mf.sign(bad)
    assert isinstance(info.value, MageflowError) and isinstance(info.value, TypeError)
    assert info.value.argument == "a task" and info.value.value_type == "int"
    assert "@mf.task" in str(info.value) and "not int" in str(info.value)
    with pytest.raises(InvalidArgumentError):
        await mageflow.sign("alpha", success_callbacks=[bad])
    assert sig_keys(sync_redis, namespace) == []


async def test_a_message_that_is_not_a_model_or_dict_is_an_invalid_argument(
    mf: Mageflow, sync_redis: redis.Redis, namespace: str
) -> None:
    @mf.task
    async def strict(msg: Item) -> int:
        return msg.item_id

    bad: Any = [1, 2]
    with pytest.raises(InvalidArgumentError) as info:
        await strict.aio_run(bad)
    assert isinstance(info.value, MageflowError) and isinstance(info.value, TypeError)
    assert info.value.value_type == "list"
    assert "pydantic model, a dict or None" in str(info.value)
    assert sig_keys(sync_redis, namespace) == []  # refused before a signature was stored
    sig = await mf.sign(strict)
    with pytest.raises(InvalidArgumentError):
        await sig.aio_run_no_wait(bad)
    assert await sig.aio_run({"item_id": 4}) == 4


@pytest.mark.parametrize("value", [object(), {1, 2}, {"deep": [frozenset({1})]}])
async def test_a_bound_kwarg_that_is_not_json_able_is_a_serialization_error(
    mf: Mageflow, sync_redis: redis.Redis, namespace: str, value: Any
) -> None:
    register_basics(mf)
    with pytest.raises(SerializationError) as info:
        await mf.sign("alpha", x=value)
    assert isinstance(info.value, MageflowError) and isinstance(info.value, TypeError)
    assert isinstance(info.value, ValueError)
    assert info.value.field == "x" and info.value.where == "bound kwarg"
    assert "'x'" in str(info.value) and "JSON-able" in str(info.value)
    assert sig_keys(sync_redis, namespace) == []
    sig = await mf.sign("alpha")
    with pytest.raises(SerializationError, match="'y'"):
        await sig.kwargs.aupdate(y=value)
    with pytest.raises(SerializationError, match="message field 'z'"):
        await sig.aio_run_no_wait({"item_id": 1, "z": value})
    assert await sig.aio_run({"item_id": 7}) == 7  # the refused message did not use it up


def test_invalid_config_values_are_configuration_errors() -> None:
    with pytest.raises(InvalidSettingError) as info:
        SwarmConfig(max_concurrency=0)
    err = info.value
    assert isinstance(err, ConfigurationError) and isinstance(err, MageflowError)
    assert isinstance(err, ValueError)
    assert (err.setting, err.value) == ("SwarmConfig.max_concurrency", 0)
    assert "greater than 0" in err.rule and "SwarmConfig.max_concurrency" in str(err)
    with pytest.raises(InvalidSettingError) as info:
        MageflowConfig(ttl={"chain": {"done_ttl": 0}}, pass_context="maybe")  # type: ignore[arg-type]
    settings = [s for s, _v, _r in info.value.problems]
    assert settings == ["MageflowConfig.ttl.chain.done_ttl", "MageflowConfig.pass_context"]
    with pytest.raises(InvalidSettingError, match="stop_after_n_failures"):
        SwarmConfig.model_validate({"stop_after_n_failures": -1})
    # Valid input builds the models as before.
    assert SwarmConfig(max_concurrency=2, max_task_allowed=5).max_task_allowed == 5
    assert MageflowConfig(namespace="a.b-c:d_1", lease_seconds=1).lease_seconds == 1


@pytest.mark.parametrize("namespace_value", ["", "x\n", "has space", "a{b}"])
def test_a_bad_namespace_is_a_configuration_error(namespace_value: str) -> None:
    with pytest.raises(InvalidSettingError) as info:
        MageflowConfig(namespace=namespace_value)
    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, ValueError)
    assert info.value.value == namespace_value and "letters, digits" in info.value.rule
    with pytest.raises(InvalidSettingError) as info:
        KeySchema(namespace_value)
    assert info.value.setting == "namespace"


async def test_an_unknown_lifecycle_action_is_refused(mf: Mageflow) -> None:
    register_basics(mf)
    sig = await mf.sign("alpha")
    with pytest.raises(UnknownActionError) as info:
        await control(mf, sig.key, "pause")
    err = info.value
    assert isinstance(err, MageflowError) and isinstance(err, ValueError)
    assert err.action == "pause" and "suspend" in err.allowed
    assert "'pause'" in str(err) and "cancel" in str(err)
    assert await sig.astatus() is SignatureStatus.PENDING


@pytest.mark.parametrize("key", [None, 42, b"bytes"])
async def test_a_key_that_is_not_a_string_is_refused_before_redis(namespace: str, key: Any) -> None:
    # The client cannot reach Redis: the key is refused before it would try.
    client = Mageflow(None, UNREACHABLE, config=MageflowConfig(namespace=namespace))
    with pytest.raises(InvalidArgumentError) as info:
        await client.load_signature(key)
    assert isinstance(info.value, MageflowError) and isinstance(info.value, TypeError)
    assert "Signature.key" in str(info.value)
    with pytest.raises(InvalidArgumentError):
        await mageflow.cancel(key)
    await client.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"active_ttl": 0.5},
        {"done_ttl": 0},
        {"task": {"active_ttl": 0.9}},
        {"swarm": {"done_ttl": -1}},
    ],
)
def test_ttls_below_one_second_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidSettingError) as info:
        TTLConfig(**settings)
    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, ValueError)
    assert "the minimum is 1 second" in str(info.value)
    with pytest.raises(InvalidSettingError, match=r"lease_seconds.*the minimum is 0.1 second"):
        MageflowConfig(lease_seconds=0.05)
    assert TTLConfig(active_ttl=1, done_ttl=1, chain=KindTTL(done_ttl=1)).done_ttl == 1


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_task_name_is_a_configuration_error(mf: Mageflow, name: str) -> None:
    with pytest.raises(InvalidSettingError) as info:

        @mf.task(name=name)
        async def nameless(msg: Item) -> None:
            return None

    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, ValueError)
    assert info.value.setting == "task name" and "must not be empty" in str(info.value)
    assert mf.tasks == {}
    bad: Any = 5
    with pytest.raises(InvalidArgumentError):
        mf.durable_task(name=bad)(lambda msg: None)
