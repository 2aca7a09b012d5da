"""Every code example of the "Call With Callback" spec, run as written on the in-process engine.

The spec's module-level ``hatchet = Mageflow(hatchet, redis)`` cannot be built at import time (each
test has its own namespace), so the client is the ``hatchet`` fixture; the tasks are registered on
it with ``@hatchet.task(...)`` exactly as the spec writes them. Lines marked "test:" are additions
that record what a task received so the test can assert it.
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
import redis
from pydantic import BaseModel

import mageflow
from mageflow import Mageflow, MageflowConfig, SignatureStatus, TaskFailedError
from mageflow.models.message import ContextMessage, ReturnValue, TaskError


@pytest.fixture
def hatchet(mf: Mageflow) -> Mageflow:
    """The spec's client (in-process engine, test namespace; ``mf`` cleans up the keys)."""
    return mf


async def join(client: Mageflow) -> None:
    """Wait until no in-process task (callbacks included) is running."""
    await client.engine.join()  # type: ignore[attr-defined]


# -- Task Signatures ------------------------------------------------------------------------------


class DataMessage(BaseModel):
    data: str


async def test_basic_signature_by_name_and_by_function(hatchet: Mageflow) -> None:
    seen: list[tuple[str, DataMessage]] = []

    @hatchet.task(name="process-data", input_validator=DataMessage)
    async def process_data(msg: DataMessage) -> str:
        seen.append(("process-data", msg))
        return msg.data.upper()

    @hatchet.task(input_validator=DataMessage)
    async def my_task_function(msg: DataMessage) -> str:
        seen.append(("my_task_function", msg))
        return msg.data[::-1]

    # Create a signature for a registered task
    signature = await mageflow.sign("process-data")
    assert signature.task_name == "process-data"
    assert await signature.aio_run(DataMessage(data="abc")) == "ABC"

    # Create a signature from a task function
    signature = await mageflow.sign(my_task_function)
    assert signature.task_name == "my_task_function"
    assert await signature.aio_run(DataMessage(data="abc")) == "cba"

    assert seen == [
        ("process-data", DataMessage(data="abc")),
        ("my_task_function", DataMessage(data="abc")),
    ]


async def test_alternative_client_usage(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    # Create mageflow client (the spec's `Mageflow(hatchet, redis)`; None = in-process engine)
    hatchet = Mageflow(None, redis_url, config=MageflowConfig(namespace=namespace))
    try:
        seen: list[str] = []

        @hatchet.task(name="process-data", input_validator=DataMessage)
        async def process_data(msg: DataMessage) -> str:
            seen.append(msg.data)
            return "processed"

        @hatchet.task(input_validator=DataMessage)
        async def my_task_function(msg: DataMessage) -> str:
            seen.append(f"fn:{msg.data}")
            return "fn"

        # Use client to create signatures
        signature = await hatchet.sign("process-data")
        assert await signature.aio_run({"data": "x"}) == "processed"
        signature = await hatchet.sign(my_task_function)
        assert await signature.aio_run({"data": "y"}) == "fn"
        assert seen == ["x", "fn:y"]
    finally:
        await hatchet.close()
        keys = list(sync_redis.scan_iter(f"{namespace}:*"))
        if keys:
            sync_redis.delete(*keys)


# -- Attaching Data with kwargs -------------------------------------------------------------------


class NotificationMessage(BaseModel):
    user_email: str
    template: str
    priority: str
    retry_count: int


async def test_kwargs_are_merged_with_the_input_message(hatchet: Mageflow) -> None:
    seen: list[NotificationMessage] = []

    @hatchet.task(name="send-notification", input_validator=NotificationMessage)
    async def send_notification(msg: NotificationMessage) -> None:
        seen.append(msg)

    # Attach configuration data
    task_signature = await mageflow.sign(
        "send-notification", template="welcome_email", priority="high", retry_count=3
    )
    assert dict(task_signature.kwargs) == {
        "template": "welcome_email",
        "priority": "high",
        "retry_count": 3,
    }

    # The task will receive these values merged with the input message
    await task_signature.aio_run({"user_email": "a@example.com"})
    assert seen == [
        NotificationMessage(
            user_email="a@example.com", template="welcome_email", priority="high", retry_count=3
        )
    ]


class UserDataMessage(BaseModel):
    user_id: str
    preferences: dict[str, Any]
    processing_mode: str
    source: str


async def test_dynamic_kwargs_update(hatchet: Mageflow) -> None:
    seen: list[UserDataMessage] = []

    @hatchet.task(name="process-user-data", input_validator=UserDataMessage)
    async def process_user_data(msg: UserDataMessage) -> None:
        seen.append(msg)

    # Create signature
    user_task = await mageflow.sign("process-user-data")

    # Update kwargs dynamically
    await user_task.kwargs.aupdate(
        user_id="12345",
        preferences={"theme": "dark", "notifications": True},
        processing_mode="batch",
    )

    expected = {
        "user_id": "12345",
        "preferences": {"theme": "dark", "notifications": True},
        "processing_mode": "batch",
    }
    assert dict(user_task.kwargs) == expected
    assert dict((await mageflow.load_signature(user_task.key)).kwargs) == expected
    await user_task.aio_run({"source": "signup"})
    assert seen == [UserDataMessage(**expected, source="signup")]


# -- Success Callbacks ----------------------------------------------------------------------------


class OrderMessage(BaseModel):
    order_id: int


class EmailMessage(BaseModel):
    order: Annotated[Any, ReturnValue()]


class CompletionMessage(BaseModel):
    results: dict[str, Any]


async def test_success_callbacks_receive_the_return_value(hatchet: Mageflow) -> None:
    emails: list[EmailMessage] = []
    audits: list[CompletionMessage] = []

    @hatchet.task(name="send-success-email", input_validator=EmailMessage)
    async def send_success_email(msg: EmailMessage) -> None:
        emails.append(msg)

    @hatchet.task(name="log-completion", input_validator=CompletionMessage)
    async def log_completion(msg: CompletionMessage) -> None:
        audits.append(msg)

    @hatchet.task(name="process-order", input_validator=OrderMessage)
    async def process_order(msg: OrderMessage) -> dict[str, Any]:
        return {"order_id": msg.order_id, "total": 99.5}

    # Create callback tasks
    success_callback = await mageflow.sign("send-success-email")
    audit_callback = await mageflow.sign("log-completion")

    # Create main task with success callbacks
    main_task = await mageflow.sign(
        "process-order", success_callbacks=[success_callback, audit_callback]
    )

    result = await main_task.aio_run(OrderMessage(order_id=7))
    await join(hatchet)
    assert result == {"order_id": 7, "total": 99.5}
    assert emails == [EmailMessage(order=result)]
    assert audits == [CompletionMessage(results=result)]
    for cb in (success_callback, audit_callback):
        assert await (await mageflow.load_signature(cb.key)).astatus() is SignatureStatus.DONE


class SuccessMessage(BaseModel):
    task_result: Annotated[Any, ReturnValue()]
    field_int: int
    ...


async def test_return_value_is_injected_into_the_marked_field(hatchet: Mageflow) -> None:
    seen: list[tuple[Any, int]] = []

    @hatchet.task(input_validator=SuccessMessage)
    async def success_callback(msg: SuccessMessage) -> None:
        # msg.task_result contains the original task's return value
        result = msg.task_result
        seen.append((result, msg.field_int))  # test: record it

    @hatchet.task(name="process-order", input_validator=OrderMessage)
    async def process_order(msg: OrderMessage) -> list[int]:
        return [msg.order_id, msg.order_id + 1]

    callback = await mageflow.sign(success_callback, field_int=5)
    main_task = await mageflow.sign("process-order", success_callbacks=[callback])
    assert await main_task.aio_run(OrderMessage(order_id=1)) == [1, 2]
    await join(hatchet)
    assert seen == [([1, 2], 5)]


async def test_return_value_goes_to_results_without_a_marked_field(hatchet: Mageflow) -> None:
    class SuccessMessage(BaseModel):
        results: str  # The return value of the function will be sent here
        field_int: int

    seen: list[SuccessMessage] = []

    @hatchet.task(input_validator=SuccessMessage)
    async def success_callback(msg: SuccessMessage) -> None:
        seen.append(msg)

    @hatchet.task(name="process-order", input_validator=OrderMessage)
    async def process_order(msg: OrderMessage) -> str:
        return f"order-{msg.order_id}"

    callback = await mageflow.sign(success_callback, field_int=11)
    main_task = await mageflow.sign("process-order", success_callbacks=[callback])
    await main_task.aio_run(OrderMessage(order_id=3))
    await join(hatchet)
    assert seen == [SuccessMessage(results="order-3", field_int=11)]


# -- Error Callbacks ------------------------------------------------------------------------------


class ApiCallMessage(BaseModel):
    url: str
    attempt_id: int


class ApiErrorMessage(ApiCallMessage):
    error: TaskError


async def test_error_callbacks_each_run_once_with_the_original_message(hatchet: Mageflow) -> None:
    calls: dict[str, list[ApiErrorMessage]] = {}

    def handler(name: str) -> None:
        @hatchet.task(name=name, input_validator=ApiErrorMessage)
        async def on_error(msg: ApiErrorMessage) -> None:
            calls.setdefault(name, []).append(msg)

    for name in ("log-error", "alert-administrator", "schedule-retry"):
        handler(name)

    @hatchet.task(name="external-api-call", input_validator=ApiCallMessage)
    async def external_api_call(msg: ApiCallMessage) -> None:
        raise ConnectionError(f"{msg.url} is down")

    # Create error handling tasks
    error_logger = await mageflow.sign("log-error")
    notify_admin = await mageflow.sign("alert-administrator")
    retry_handler = await mageflow.sign("schedule-retry")

    # Create task with error callbacks
    risky_task = await mageflow.sign(
        "external-api-call", error_callbacks=[error_logger, notify_admin, retry_handler]
    )

    with pytest.raises(TaskFailedError) as info:
        await risky_task.aio_run(ApiCallMessage(url="https://api.example.com", attempt_id=4))
    assert info.value.key == risky_task.key
    assert info.value.error_type == "ConnectionError"
    await join(hatchet)

    assert sorted(calls) == ["alert-administrator", "log-error", "schedule-retry"]
    for received in calls.values():
        assert len(received) == 1
        (msg,) = received
        assert (msg.url, msg.attempt_id) == ("https://api.example.com", 4)
        assert msg.error.type == "ConnectionError"
        assert msg.error.message == "https://api.example.com is down"
        assert msg.error.key == risky_task.key
        assert msg.error.task_name == "external-api-call"
    assert await risky_task.astatus() is SignatureStatus.FAILED


class OriginalMessage(BaseModel):
    """The failing task's input (the spec leaves it to the user). The spec's error callback reads
    ``msg.task_result``, so the original message has that field."""

    order_id: int
    task_result: str = "none"


class ErrorMessage(OriginalMessage):
    additional_field1: int
    additional_field2: str
    ...


async def test_error_callback_model_extends_the_original_message(hatchet: Mageflow) -> None:
    seen: list[ErrorMessage] = []

    @hatchet.task(input_validator=ErrorMessage)
    async def error_callback(msg: ErrorMessage) -> None:
        # msg.task_result contains the original task's return value
        result = msg.task_result
        seen.append(msg)  # test: record it
        assert result == "partial"  # test

    @hatchet.task(name="task", input_validator=OriginalMessage)
    async def task(msg: OriginalMessage) -> None:
        raise RuntimeError(f"order {msg.order_id} failed")

    # Create error handling tasks
    error_logger = await mageflow.sign(
        error_callback, additional_field1=12345, additional_field2="test"
    )
    signature = await mageflow.sign("task", error_callbacks=[error_logger])

    with pytest.raises(TaskFailedError):
        await signature.aio_run(OriginalMessage(order_id=8, task_result="partial"))
    await join(hatchet)
    assert seen == [
        ErrorMessage(
            order_id=8, task_result="partial", additional_field1=12345, additional_field2="test"
        )
    ]
    assert await (await mageflow.load_signature(error_logger.key)).astatus() is (
        SignatureStatus.DONE
    )


# -- Advanced Signature Configuration -------------------------------------------------------------


class StrictData(BaseModel):
    value: int


async def test_model_validators_override_the_task_model(hatchet: Mageflow) -> None:
    seen: list[BaseModel] = []

    @hatchet.task(name="validate-data", input_validator=StrictData)
    async def validate_data(msg: BaseModel) -> str:
        seen.append(msg)
        return type(msg).__name__

    # Create signature with specific input validation
    validated_task = await mageflow.sign("validate-data", model_validators=ContextMessage)

    # ContextMessage keeps every field, even ones StrictData would reject.
    result = await validated_task.aio_run({"value": "not-an-int", "base_data": {"a": 1}})
    assert result == "ContextMessage"
    (msg,) = seen
    assert isinstance(msg, ContextMessage)
    assert msg.base_data == {"a": 1}
    assert msg.model_extra == {"value": "not-an-int"}

    # Without the override the task's own model applies.
    with pytest.raises(TaskFailedError) as info:
        await (await mageflow.sign("validate-data")).aio_run({"value": "not-an-int"})
    assert info.value.error_type == "MessageValidationError"
