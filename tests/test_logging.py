"""What mageflow logs about a task's run, on the in-process engine (the runtime logs it, the same
code for every engine): the final failure at ERROR, a retried attempt at WARNING, starts,
finishes and sent follow-ups at DEBUG, and nothing at WARNING or above for a plain success."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mageflow import Mageflow, TaskFailedError
from mageflow.errors import NonRetryableError

Msg = dict[str, Any]


async def join(client: Mageflow) -> None:
    """Wait (bounded) until no in-process task, callbacks included, is running."""
    await asyncio.wait_for(client.engine.join(), 10)  # type: ignore[attr-defined]


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """Messages logged by mageflow's loggers at exactly ``level``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and r.name.split(".")[0] == "mageflow"
    ]


async def test_final_failure_is_one_error_line_with_the_facts(
    mf: Mageflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mageflow")

    @mf.task(name="charge", retries=2)
    async def charge(msg: Msg) -> None:
        raise ValueError("card declined")

    sig = await mf.sign("charge")
    with pytest.raises(TaskFailedError):
        await sig.aio_run({}, timeout=10)
    await join(mf)

    errors = lines(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    line = errors[0]
    assert line.startswith(f"task 'charge' ({sig.key}) failed for good on attempt 3 of 3"), line
    assert line.endswith("ValueError: card declined"), line
    # The two attempts before it were retried, so they are warnings, not errors.
    warnings = lines(caplog, logging.WARNING)
    assert [("attempt 1 of 3" in w, "attempt 2 of 3" in w) for w in warnings] == [
        (True, False),
        (False, True),
    ], warnings
    error_record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert error_record.name == "mageflow.runtime"


async def test_non_retryable_failure_is_final_on_its_first_attempt(
    mf: Mageflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mageflow")

    @mf.task(name="refund", retries=3)
    async def refund(msg: Msg) -> None:
        raise NonRetryableError("account closed")

    sig = await mf.sign("refund")
    with pytest.raises(TaskFailedError):
        await sig.aio_run({}, timeout=10)
    await join(mf)

    assert lines(caplog, logging.WARNING) == []
    assert lines(caplog, logging.ERROR) == [
        f"task 'refund' ({sig.key}) failed for good on attempt 1 of 4 (not retryable): "
        "NonRetryableError: account closed"
    ]


async def test_a_retried_attempt_is_one_warning_line(
    mf: Mageflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mageflow")
    attempts: list[int] = []

    @mf.task(name="flaky", retries=1)
    async def flaky(msg: Msg) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("gateway busy")
        return "ok"

    sig = await mf.sign("flaky")
    assert await sig.aio_run({}, timeout=10) == "ok"
    await join(mf)

    assert len(attempts) == 2
    assert lines(caplog, logging.WARNING) == [
        f"task 'flaky' ({sig.key}) failed on attempt 1 of 2, will retry: "
        "ConnectionError: gateway busy"
    ]
    assert lines(caplog, logging.ERROR) == []


async def test_start_finish_and_sent_callbacks_are_debug_lines(
    mf: Mageflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mageflow")
    seen: list[Msg] = []

    @mf.task(name="add")
    async def add(msg: Msg) -> int:
        return int(msg["a"]) + int(msg["b"])

    @mf.task(name="on_sum")
    async def on_sum(msg: Msg) -> None:
        seen.append(msg)

    callback = await mf.sign("on_sum")
    sig = await mf.sign("add", success_callbacks=[callback])
    assert await sig.aio_run({"a": 1, "b": 2}, timeout=10) == 3
    await join(mf)
    assert seen == [{"results": 3}]

    debug = lines(caplog, logging.DEBUG)
    started = f"task 'add' ({sig.key}) started, attempt 1 of 1"
    assert started in debug, debug
    done = [d for d in debug if d.startswith(f"task 'add' ({sig.key}) done on attempt 1 of 1 in")]
    assert len(done) == 1, debug
    assert debug.index(started) < debug.index(done[0])
    assert f"sent task 'on_sum' ({callback.key})" in debug, debug
    assert f"task 'on_sum' ({callback.key}) started, attempt 1 of 1" in debug, debug


async def test_a_plain_success_logs_nothing_at_warning_or_above(
    mf: Mageflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    @mf.task(name="greet")
    async def greet(msg: Msg) -> str:
        return f"hello {msg['name']}"

    sig = await mf.sign("greet")
    assert await sig.aio_run({"name": "ada"}, timeout=10) == "hello ada"
    await join(mf)

    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [f"{r.name} {r.levelname}: {r.getMessage()}" for r in loud]
    # ...while the run itself was logged (at DEBUG), so the capture did work.
    assert any(m.startswith(f"task 'greet' ({sig.key}) done") for m in lines(caplog, logging.DEBUG))
