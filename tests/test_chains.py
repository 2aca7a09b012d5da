"""Chains: steps run one after another, each receiving the previous step's result.

Every task here records what it received, so the tests check the exact messages, the order of
runs and callbacks, and the statuses left in Redis, not only the final value.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

import mageflow
from mageflow import (
    ChainSignature,
    ConfigurationError,
    Mageflow,
    ReturnValue,
    SignatureStatus,
    TaskError,
    TaskFailedError,
)


async def join(mf: Mageflow) -> None:
    """Wait until no in-process task (callbacks included) is running."""
    await mf.engine.join()


async def status_of(mf: Mageflow, key: str) -> SignatureStatus:
    return await (await mf.load_signature(key)).astatus()


async def statuses(mf: Mageflow, keys: list[str]) -> list[SignatureStatus]:
    return [await status_of(mf, k) for k in keys]


class Start(BaseModel):
    value: int
    offset: int


class Prev(BaseModel):
    prev: Annotated[int, ReturnValue()]
    amount: int = 0


class Final(BaseModel):
    prev: Annotated[Any, ReturnValue()]


class StepMsg(BaseModel):
    name: str
    results: Any = None


class StepError(StepMsg):
    error: TaskError


# -- result flow ----------------------------------------------------------------------------------


async def test_result_flows_through_four_steps_with_kwargs(mf: Mageflow) -> None:
    seen: list[tuple[str, BaseModel]] = []

    @mf.task
    async def begin(msg: Start) -> int:
        seen.append(("begin", msg))
        return msg.value + msg.offset

    @mf.task
    async def add(msg: Prev) -> int:
        seen.append(("add", msg))
        return msg.prev + msg.amount

    @mf.task
    async def times(msg: Prev) -> int:
        seen.append(("times", msg))
        return msg.prev * msg.amount

    @mf.task
    async def show(msg: Final) -> str:
        seen.append(("show", msg))
        return f"result={msg.prev}"

    steps = [
        begin,
        await mf.sign(add, amount=10),
        await mf.sign(times, amount=3),
        await mf.sign(show),
    ]
    chain = await mageflow.achain(steps, offset=5)
    assert isinstance(chain, ChainSignature)
    assert len(chain.tasks) == 4

    assert await chain.aio_run({"value": 2}) == "result=51"
    assert seen == [
        ("begin", Start(value=2, offset=5)),
        ("add", Prev(prev=7, amount=10)),
        ("times", Prev(prev=17, amount=3)),
        ("show", Final(prev=51)),
    ]
    assert await chain.astatus() is SignatureStatus.DONE
    assert chain.result_value == "result=51"
    assert await statuses(mf, chain.tasks) == [SignatureStatus.DONE] * 4


async def test_chain_kwargs_and_run_message_reach_the_first_step_only(mf: Mageflow) -> None:
    received: dict[str, dict[str, Any]] = {}

    def recorder(name: str) -> Any:
        @mf.task(name=name)
        async def step(msg: dict[str, Any]) -> str:
            received[name] = dict(msg)
            return f"{name}-out"

        return step

    first, second, third = recorder("first"), recorder("second"), recorder("third")
    chain = await mf.chain(
        [first, await mf.sign(second, own="bound"), third], marker="chain-kw", shared="chain"
    )
    assert await chain.aio_run({"run_field": 1, "shared": "run"}) == "third-out"
    assert received == {
        # Chain kwargs sit on top of the run message.
        "first": {"run_field": 1, "shared": "chain", "marker": "chain-kw"},
        "second": {"results": "first-out", "own": "bound"},
        "third": {"results": "second-out"},
    }


async def test_chain_of_names_decorated_tasks_and_signatures(mf: Mageflow) -> None:
    order: list[str] = []

    @mf.task(name="by-name")
    async def by_name(msg: dict[str, Any]) -> list[str]:
        order.append("by-name")
        return [*msg.get("items", msg.get("results", [])), "name"]

    @mf.task
    async def decorated(msg: dict[str, Any]) -> list[str]:
        order.append("decorated")
        return [*msg["results"], "decorated"]

    @mf.task
    async def signed(msg: dict[str, Any]) -> list[str]:
        order.append("signed")
        return [*msg["results"], msg["suffix"]]

    sig = await mf.sign(signed, suffix="sig")
    chain = await mf.chain(["by-name", decorated, sig, "by-name"])
    # The signature handle follows its signature into the chain.
    assert chain.tasks[2] == sig.key
    result = await chain.aio_run({"items": ["start"]})
    assert result == ["start", "name", "decorated", "sig", "name"]
    assert order == ["by-name", "decorated", "signed", "by-name"]


async def test_empty_chain_is_rejected(mf: Mageflow) -> None:
    with pytest.raises(ConfigurationError):
        await mf.chain([])


# -- failure --------------------------------------------------------------------------------------


async def test_failure_stops_the_chain_and_fires_error_callbacks_in_order(mf: Mageflow) -> None:
    calls: list[str] = []
    events: list[tuple[str, StepError]] = []

    @mf.task
    async def step(msg: StepMsg) -> str:
        calls.append(msg.name)
        if msg.name == "b":
            raise ValueError("b broke")
        return msg.name

    @mf.task
    async def step_error(msg: StepError) -> None:
        events.append(("step_error", msg))

    @mf.task
    async def chain_error(msg: StepError) -> None:
        events.append(("chain_error", msg))

    @mf.task
    async def chain_ok(msg: Final) -> None:
        events.append(("chain_ok", StepError(name="", error=TaskError(type="", message=""))))

    a = await mf.sign(step, name="a")
    b = await mf.sign(step, name="b", error_callbacks=[await mf.sign(step_error)])
    c = await mf.sign(step, name="c")
    d = await mf.sign(step, name="d")
    chain = await mf.chain(
        [a, b, c, d], error=await mf.sign(chain_error), success=await mf.sign(chain_ok)
    )
    assert chain.tasks == [a.key, b.key, c.key, d.key]

    with pytest.raises(TaskFailedError) as info:
        await chain.aio_run()
    assert info.value.key == b.key
    assert info.value.error_type == "ValueError"
    assert info.value.error_message == "b broke"
    await join(mf)
    await asyncio.sleep(0.1)  # room for a wrongly launched step to show up
    await join(mf)

    assert calls == ["a", "b"]
    assert [name for name, _ in events] == ["step_error", "chain_error"]
    for _, msg in events:
        # Both callbacks get the failed step's message plus the error.
        assert msg.name == "b"
        assert msg.results == "a"
        assert msg.error.type == "ValueError"
        assert msg.error.message == "b broke"
        assert msg.error.key == b.key
        assert msg.error.task_name == "step"
    assert await statuses(mf, chain.tasks) == [
        SignatureStatus.DONE,
        SignatureStatus.FAILED,
        SignatureStatus.PENDING,
        SignatureStatus.PENDING,
    ]
    assert await chain.astatus() is SignatureStatus.FAILED
    assert chain.error is not None and chain.error.key == b.key


async def test_first_step_failure_gives_chain_error_callback_the_run_message(
    mf: Mageflow,
) -> None:
    calls: list[str] = []
    errors: list[StepError] = []

    @mf.task
    async def explode(msg: StepMsg) -> None:
        calls.append(msg.name)
        raise RuntimeError(f"no {msg.name}")

    @mf.task
    async def after(msg: dict[str, Any]) -> None:
        calls.append("after")

    @mf.task
    async def on_error(msg: StepError) -> None:
        errors.append(msg)

    chain = await mf.chain([explode, after], error_callbacks=[await mf.sign(on_error)])
    with pytest.raises(TaskFailedError) as info:
        await chain.aio_run({"name": "first"})
    await join(mf)
    assert info.value.key == chain.tasks[0]
    assert calls == ["first"]
    assert len(errors) == 1
    assert errors[0].name == "first"
    assert errors[0].error.message == "no first"
    assert errors[0].error.key == chain.tasks[0]
    assert await statuses(mf, chain.tasks) == [SignatureStatus.FAILED, SignatureStatus.PENDING]


async def test_step_retry_inside_a_chain_does_not_fail_it(mf: Mageflow) -> None:
    attempts: list[int] = []
    errors: list[StepError] = []

    @mf.task(retries=2)
    async def flaky(msg: dict[str, Any]) -> int:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return 40

    @mf.task
    async def plus_two(msg: Prev) -> int:
        return msg.prev + 2

    @mf.task
    async def on_error(msg: StepError) -> None:
        errors.append(msg)

    chain = await mf.chain([flaky, plus_two], error=await mf.sign(on_error))
    assert await chain.aio_run() == 42
    await join(mf)
    assert attempts == [0, 1, 2]
    assert errors == []


# -- success callbacks ----------------------------------------------------------------------------


async def test_chain_and_step_success_callbacks(mf: Mageflow) -> None:
    events: list[tuple[str, Any]] = []

    @mf.task
    async def double(msg: dict[str, Any]) -> int:
        value = int(msg.get("results", msg.get("value", 0)))
        events.append(("double", value))
        return value * 2

    def callback(name: str) -> Any:
        @mf.task(name=name)
        async def cb(msg: Final) -> None:
            events.append((name, msg.prev))

        return cb

    step_ok, chain_ok1, chain_ok2, chain_ok3 = (
        callback(n) for n in ("step_ok", "chain_ok1", "chain_ok2", "chain_ok3")
    )
    middle = await mf.sign(double, success_callbacks=[await mf.sign(step_ok)])
    chain = await mf.chain(
        [double, middle, double],
        success=await mf.sign(chain_ok3),
        success_callbacks=[await mf.sign(chain_ok1), await mf.sign(chain_ok2)],
    )
    assert await chain.aio_run({"value": 3}) == 24
    await join(mf)

    names = [name for name, _ in events]
    assert sorted(names) == sorted(
        ["double", "double", "double", "step_ok", "chain_ok1", "chain_ok2", "chain_ok3"]
    )
    values = dict(events)
    assert values["step_ok"] == 12  # the middle step's own result
    for name in ("chain_ok1", "chain_ok2", "chain_ok3"):
        assert values[name] == 24  # the chain's final result
    # Chain callbacks run only after the last step.
    last_double = max(i for i, n in enumerate(names) if n == "double")
    assert all(names.index(n) > last_double for n in ("chain_ok1", "chain_ok2", "chain_ok3"))
    assert names.index("step_ok") > names.index("double")


async def test_chain_error_callback_not_fired_on_success_and_vice_versa(mf: Mageflow) -> None:
    events: list[str] = []

    @mf.task
    async def fine(msg: dict[str, Any]) -> str:
        return "ok"

    @mf.task
    async def on_ok(msg: Final) -> None:
        events.append("ok")

    @mf.task
    async def on_err(msg: dict[str, Any]) -> None:
        events.append("err")

    ok_cb, err_cb = await mf.sign(on_ok), await mf.sign(on_err)
    chain = await mf.chain([fine, fine], success=ok_cb, error=err_cb)
    assert await chain.aio_run() == "ok"
    await join(mf)
    assert events == ["ok"]
    assert await status_of(mf, ok_cb.key) is SignatureStatus.DONE
    assert await status_of(mf, err_cb.key) is SignatureStatus.PENDING
