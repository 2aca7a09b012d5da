"""The spec's examples, retries and task contexts on the Hatchet engine, offline.

The client is the spec's ``hatchet = Mageflow(hatchet, redis)`` built on a real
``hatchet_sdk.Hatchet``; tasks are declared with ``@hatchet.task(input_validator=...)`` as the spec
writes them. Runs go out through the SDK's real trigger path to a loopback gRPC server
(``hatchet_app_fake``), which records them and executes each with the SDK's ``aio_mock_run`` under
Hatchet's retry rules, so every callback below ran from the envelope mageflow actually sent.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
import redis
from hatchet_app_fake import LoopbackHatchet
from hatchet_app_fixtures import drain, hatchet_fixture, loopback_fixture, serve  # noqa: F401
from hatchet_sdk import Context, NonRetryableException
from pydantic import BaseModel

import mageflow
from mageflow import Mageflow, NonRetryableError, SignatureStatus, TaskFailedError
from mageflow.models.message import ContextMessage, ReturnValue

# -- Task Signatures ------------------------------------------------------------------------------


class DataMessage(BaseModel):
    data: str


async def test_signature_by_name_and_by_function(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    @hatchet.task(name="process-data", input_validator=DataMessage)
    async def process_data(msg: DataMessage) -> str:
        return msg.data.upper()

    @hatchet.task(input_validator=DataMessage)
    async def my_task_function(msg: DataMessage) -> dict[str, str]:
        return {"reversed": msg.data[::-1]}

    signature = await mageflow.sign("process-data")
    assert await serve(loopback, hatchet, signature.aio_run(DataMessage(data="abc"))) == "ABC"

    signature = await hatchet.sign(my_task_function)
    await signature.aio_run_no_wait(DataMessage(data="abc"))
    await drain(loopback, hatchet)
    assert await signature.astatus() is SignatureStatus.DONE
    assert signature.result_value == {"reversed": "cba"}

    by_name, by_fn = loopback.triggered()
    assert by_name.name == "process-data" and by_name.status == "COMPLETED"
    assert by_name.output == {"result": "ABC"}  # a non-dict result, wrapped for Hatchet
    assert by_fn.name == "my_task_function" and by_fn.output == {"reversed": "cba"}
    assert by_fn.input["input"] == {"data": "abc"}


async def test_kwargs_are_merged_with_the_message(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    seen: list[ContextMessage] = []

    @hatchet.task(name="send-notification", input_validator=ContextMessage)
    async def send_notification(msg: ContextMessage) -> None:
        seen.append(msg)

    task_signature = await mageflow.sign(
        "send-notification", template="welcome_email", priority="high", retry_count=3
    )
    await task_signature.kwargs.aupdate(user_id="12345", processing_mode="batch")
    await task_signature.aio_run_no_wait({"base_data": {"to": "a@b.c"}})
    await drain(loopback, hatchet)

    (msg,) = seen
    extra = msg.model_extra or {}
    assert msg.base_data == {"to": "a@b.c"}
    assert extra["template"] == "welcome_email" and extra["retry_count"] == 3
    assert extra["user_id"] == "12345" and extra["processing_mode"] == "batch"
    # the kwargs travel in Redis, not in the Hatchet run input
    assert loopback.run_for(task_signature.key).input["input"] == {"base_data": {"to": "a@b.c"}}


# -- Success and Error Callbacks ------------------------------------------------------------------


class OrderMessage(BaseModel):
    order_id: str
    amount: int


class SuccessMessage(BaseModel):
    task_result: Annotated[Any, ReturnValue()]
    field_int: int


class ResultsMessage(BaseModel):
    results: str  # The return value of the function will be sent here
    field_int: int


async def test_success_callbacks_receive_the_return_value(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    got: dict[str, BaseModel] = {}

    @hatchet.task(name="process-order", input_validator=OrderMessage)
    async def process_order(msg: OrderMessage) -> dict[str, Any]:
        return {"order": msg.order_id, "charged": msg.amount * 2}

    @hatchet.task(name="send-success-email", input_validator=SuccessMessage)
    async def success_callback(msg: SuccessMessage) -> None:
        got["email"] = msg

    @hatchet.task(name="log-completion", input_validator=ResultsMessage)
    async def audit(msg: ResultsMessage) -> None:
        got["audit"] = msg

    @hatchet.task(name="describe", input_validator=OrderMessage)
    async def describe(msg: OrderMessage) -> str:
        return f"order {msg.order_id}"

    success = await mageflow.sign("send-success-email", field_int=1)
    main_task = await mageflow.sign("process-order", success_callbacks=[success])
    audit_cb = await mageflow.sign("log-completion", field_int=2)
    described = await mageflow.sign(describe, success_callbacks=[audit_cb])
    await main_task.aio_run_no_wait(OrderMessage(order_id="o-1", amount=21))
    await described.aio_run_no_wait(OrderMessage(order_id="o-2", amount=1))
    await drain(loopback, hatchet)

    assert got["email"] == SuccessMessage(task_result={"order": "o-1", "charged": 42}, field_int=1)
    assert got["audit"] == ResultsMessage(results="order o-2", field_int=2)
    # what mageflow sent Hatchet for the callback: its signature and the return value, no input
    sent = loopback.run_for(success.key)
    assert sent.name == "send-success-email"
    assert sent.input == {
        "sig": success.key,
        "input": {},
        "ret": {"order": "o-1", "charged": 42},
        "has_ret": True,
        "error": None,
    }
    assert sent.metadata["mageflow_signature"] == success.key
    # a root run of its own, although it was triggered from inside the main task's run
    assert sent.request.parent_id == "" and not sent.request.HasField("parent_id")
    for sig in (main_task, success, described, audit_cb):
        assert await sig.astatus() is SignatureStatus.DONE


class OriginalMessage(BaseModel):
    url: str


class ErrorMessage(OriginalMessage):
    additional_field1: int
    additional_field2: str


async def test_error_callbacks_receive_the_original_message(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    received: list[ErrorMessage] = []

    @hatchet.task(name="external-api-call", input_validator=OriginalMessage)
    async def external_api_call(msg: OriginalMessage) -> None:
        raise ConnectionError(f"{msg.url} is down")

    @hatchet.task(input_validator=ErrorMessage)
    async def error_callback(msg: ErrorMessage) -> None:
        received.append(msg)

    error_logger = await mageflow.sign(
        error_callback, additional_field1=12345, additional_field2="test"
    )
    signature = await mageflow.sign("external-api-call", error_callbacks=[error_logger])
    with pytest.raises(TaskFailedError) as failed:
        await serve(loopback, hatchet, signature.aio_run(OriginalMessage(url="https://x")))
    assert failed.value.error_type == "ConnectionError"

    (msg,) = received
    assert (msg.url, msg.additional_field1, msg.additional_field2) == ("https://x", 12345, "test")
    main_run = loopback.run_for(signature.key)
    assert main_run.status == "FAILED" and isinstance(main_run.error, NonRetryableException)
    sent = loopback.run_for(error_logger.key)
    assert sent.input["input"] == {"url": "https://x"}
    assert sent.input["error"]["type"] == "ConnectionError"
    assert await error_logger.astatus() is SignatureStatus.DONE


async def test_model_validators_override(hatchet: Mageflow, loopback: LoopbackHatchet) -> None:
    seen: list[Any] = []

    @hatchet.task(name="validate-data", input_validator=DataMessage)
    async def validate_data(msg: Any) -> None:
        seen.append(msg)

    validated_task = await mageflow.sign("validate-data", model_validators=ContextMessage)
    await validated_task.aio_run_no_wait({"anything": 1})
    await drain(loopback, hatchet)
    assert isinstance(seen[0], ContextMessage) and seen[0].model_extra == {"anything": 1}


# -- retries --------------------------------------------------------------------------------------


async def test_retry_attempts_follow_hatchet_retry_count(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    attempts: list[int] = []

    @hatchet.task(name="flaky", input_validator=DataMessage, retries=2)
    async def flaky(msg: DataMessage, ctx: Context) -> str:
        attempts.append(ctx.retry_count)
        if ctx.retry_count < 2:
            raise TimeoutError("not yet")
        return "ok"

    @hatchet.task(name="on-error", input_validator=ContextMessage)
    async def on_error(msg: ContextMessage) -> None:
        pass

    err = await hatchet.sign("on-error")
    sig = await hatchet.sign("flaky", error_callbacks=[err])
    assert await serve(loopback, hatchet, sig.aio_run(DataMessage(data="x"))) == "ok"
    run = loopback.run_for(sig.key)
    assert attempts == run.attempts == [0, 1, 2]
    assert run.status == "COMPLETED" and run.output == {"result": "ok"}
    assert loopback.triggered("on-error") == []  # the error callback was never sent


async def test_error_callback_fires_once_after_the_last_attempt(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    callbacks_seen_by_attempt: list[int] = []

    @hatchet.task(name="always-fails", input_validator=DataMessage, retries=2)
    async def always_fails(msg: DataMessage, ctx: Context) -> None:
        callbacks_seen_by_attempt.append(len(loopback.triggered("log-error")))
        raise ValueError(f"attempt {ctx.retry_count}")

    @hatchet.task(name="log-error", input_validator=ContextMessage)
    async def log_error(msg: ContextMessage) -> None:
        pass

    err = await hatchet.sign("log-error")
    sig = await hatchet.sign("always-fails", error_callbacks=[err])
    await sig.aio_run_no_wait(DataMessage(data="x"))
    await drain(loopback, hatchet)

    run = loopback.run_for(sig.key)
    assert run.attempts == [0, 1, 2] and run.status == "FAILED"
    assert callbacks_seen_by_attempt == [0, 0, 0]  # nothing fired before the last attempt ended
    assert len(loopback.triggered("log-error")) == 1
    assert isinstance(run.error, NonRetryableException)
    assert await sig.astatus() is SignatureStatus.FAILED
    assert sig.error is not None and sig.error.message == "attempt 2"
    assert await err.astatus() is SignatureStatus.DONE


@pytest.mark.parametrize("cause", ["invalid message", "NonRetryableError"])
async def test_final_failures_are_not_retried_by_hatchet(
    hatchet: Mageflow, loopback: LoopbackHatchet, cause: str
) -> None:
    calls: list[DataMessage] = []

    @hatchet.task(name="strict", input_validator=DataMessage, retries=3)
    async def strict(msg: DataMessage) -> None:
        calls.append(msg)
        raise NonRetryableError("bad data")

    @hatchet.task(name="strict-error", input_validator=ContextMessage)
    async def strict_error(msg: ContextMessage) -> None:
        pass

    err = await hatchet.sign("strict-error")
    sig = await hatchet.sign("strict", error_callbacks=[err])
    await sig.aio_run_no_wait({"wrong": 1} if cause == "invalid message" else {"data": "d"})
    await drain(loopback, hatchet)

    run = loopback.run_for(sig.key)
    assert run.attempts == [0]  # Hatchet stopped after NonRetryableException
    assert isinstance(run.error, NonRetryableException)
    expected = "MessageValidationError" if cause == "invalid message" else "NonRetryableError"
    assert str(run.error).startswith(expected)
    assert len(calls) == (0 if cause == "invalid message" else 1)
    assert len(loopback.triggered("strict-error")) == 1
    error = (await sig.aload()).error
    assert error is not None and error.type == expected


async def test_hatchet_non_retryable_exception_fails_at_once(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    """Hatchet's own NonRetryableException is final for mageflow too: one attempt, callbacks fired,
    the signature failed."""

    @hatchet.task(name="hatchet-style", input_validator=DataMessage, retries=1)
    async def hatchet_style(msg: DataMessage) -> None:
        raise NonRetryableException("stop")

    sig = await hatchet.sign("hatchet-style")
    await sig.aio_run_no_wait(DataMessage(data="d"))
    await drain(loopback, hatchet)
    run = loopback.run_for(sig.key)
    assert run.attempts == [0] and run.status == "FAILED"
    assert await sig.astatus() is SignatureStatus.FAILED
    assert sig.error is not None and sig.error.type == "NonRetryableException"


async def test_mageflow_timeout_fires_before_hatchets(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    @hatchet.task(name="slow", input_validator=DataMessage, execution_timeout="1s")
    async def slow(msg: DataMessage) -> None:
        await asyncio.sleep(30)

    sig = await hatchet.sign("slow")
    await sig.aio_run_no_wait(DataMessage(data="d"))
    await drain(loopback, hatchet)  # the loopback cuts attempts at Hatchet's declared timeout
    run = loopback.run_for(sig.key)
    assert run.status == "FAILED" and str(run.error).startswith("TimeoutError")
    assert await sig.astatus() is SignatureStatus.FAILED
    assert sig.error is not None and sig.error.type == "TimeoutError"


# -- the task context -----------------------------------------------------------------------------


async def test_with_context_passes_the_hatchet_context(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    contexts: dict[str, Any] = {}

    @hatchet.task(name="two-params", input_validator=DataMessage)
    async def two_params(msg: DataMessage, ctx: Context) -> None:
        contexts["inferred"] = ctx

    @hatchet.task(name="asks", input_validator=DataMessage, with_context=True)
    async def asks(msg: DataMessage, *args: Any) -> None:
        contexts["asked"] = args

    @hatchet.task(name="plain", input_validator=DataMessage)
    async def plain(msg: DataMessage, *args: Any) -> None:
        contexts["plain"] = args

    sigs = [await hatchet.sign(n) for n in ("two-params", "asks", "plain")]
    for sig in sigs:
        await sig.aio_run_no_wait(DataMessage(data="d"))
    await drain(loopback, hatchet)

    ctx = contexts["inferred"]
    assert isinstance(ctx, Context)
    assert ctx.additional_metadata["mageflow_signature"] == sigs[0].key
    assert ctx.retry_count == 0 and ctx.max_attempts == 1
    assert isinstance(contexts["asked"][0], Context)
    assert contexts["plain"] == ()


async def test_pass_context_config_hands_every_task_the_context(
    loopback: LoopbackHatchet, redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    client = Mageflow(
        loopback.client(),
        redis_url,
        config=mageflow.MageflowConfig(namespace=namespace, pass_context=True),
    )
    seen: list[Any] = []

    @client.task(name="ctx-everywhere", input_validator=DataMessage)
    async def ctx_everywhere(msg: DataMessage, *args: Any) -> None:
        seen.extend(args)

    try:
        sig = await client.sign("ctx-everywhere")
        await sig.aio_run_no_wait(DataMessage(data="d"))
        await drain(loopback, client)
        assert len(seen) == 1 and isinstance(seen[0], Context)
    finally:
        await client.close()
        sync_redis.delete(*sync_redis.scan_iter(f"{namespace}:*"))
