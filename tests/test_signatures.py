"""Signatures: bound kwargs, callbacks, retries, timeouts, statuses and ways of running a task."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
import redis
from pydantic import BaseModel

import mageflow
from mageflow import (
    ErrorValue,
    Mageflow,
    MageflowTask,
    ReturnValue,
    SignatureStatus,
    TaskError,
    TaskFailedError,
)
from mageflow.engines.inproc import InProcContext

Msg = dict[str, Any]


async def join(client: Mageflow) -> None:
    """Wait until no in-process task (callbacks included) is running."""
    await client.engine.join()  # type: ignore[attr-defined]


class Item(BaseModel):
    item_id: int


class ItemFailed(Item):
    error: Annotated[TaskError, ErrorValue()]


def recorder(mf: Mageflow, name: str, into: list[Msg]) -> None:
    """Register a model-less task ``name`` that records every message it receives."""

    @mf.task(name=name)
    async def record(msg: Msg) -> str:
        into.append(msg)
        return name


# -- bound kwargs ---------------------------------------------------------------------------------


async def test_bound_kwargs_are_merged_over_the_message(mf: Mageflow) -> None:
    seen: list[Msg] = []
    recorder(mf, "t", seen)
    sig = await mageflow.sign("t", b=20, c=30)
    await sig.aio_run({"a": 1, "b": 2})
    odd_names = await mf.sign("t", kwargs={"nested": True}, msg="hello", key="k")
    await odd_names.aio_run({})
    assert seen == [
        {"a": 1, "b": 20, "c": 30},
        {"kwargs": {"nested": True}, "msg": "hello", "key": "k"},
    ]


async def test_aupdate_changes_what_the_task_receives(mf: Mageflow) -> None:
    seen: list[Msg] = []
    recorder(mf, "t", seen)
    sig = await mageflow.sign("t", mode="slow", keep=1)
    await sig.kwargs.aupdate(mode="fast", added=[1, 2])
    assert dict(sig.kwargs) == {"mode": "fast", "keep": 1, "added": [1, 2]}
    loaded = await mageflow.load_signature(sig.key)
    assert dict(loaded.kwargs) == {"mode": "fast", "keep": 1, "added": [1, 2]}
    await sig.aio_run({"mode": "from-message", "extra": "x"})
    assert seen == [{"mode": "fast", "keep": 1, "added": [1, 2], "extra": "x"}]


@pytest.mark.parametrize("name", ["kwargs", "msg", "self", "task", "key", "owner"])
async def test_aupdate_accepts_any_kwarg_name(mf: Mageflow, name: str) -> None:
    seen: list[Msg] = []
    recorder(mf, "t", seen)
    sig = await mageflow.sign("t")
    await sig.kwargs.aupdate(**{name: "bound"})
    assert sig.kwargs == {name: "bound"}
    await sig.aio_run({"other": 1})
    assert seen == [{"other": 1, name: "bound"}]


# -- success callbacks ----------------------------------------------------------------------------


class Doubled(BaseModel):
    value: ReturnValue[int]
    label: str


class WithResults(BaseModel):
    results: int


async def test_return_value_short_form_and_results_fallback(mf: Mageflow) -> None:
    short: list[Doubled] = []
    fallback: list[WithResults] = []
    plain: list[Msg] = []

    @mf.task
    async def double(msg: Item) -> int:
        return msg.item_id * 2

    @mf.task
    async def on_short(msg: Doubled) -> None:
        short.append(msg)

    @mf.task
    async def on_results(msg: WithResults) -> None:
        fallback.append(msg)

    recorder(mf, "on_plain", plain)
    callbacks = [
        await mf.sign(on_short, label="x"),
        await mf.sign(on_results),
        await mf.sign("on_plain", bound=True),
    ]
    sig = await mf.sign(double, success_callbacks=callbacks)
    assert await sig.aio_run(Item(item_id=21)) == 42
    await join(mf)
    assert short == [Doubled(value=42, label="x")]
    assert fallback == [WithResults(results=42)]
    assert plain == [{"results": 42, "bound": True}]


async def test_callback_chain_of_depth_two(mf: Mageflow) -> None:
    seen: list[tuple[str, Any]] = []

    @mf.task
    async def first(msg: Item) -> int:
        return msg.item_id + 1

    @mf.task
    async def second(msg: WithResults) -> int:
        seen.append(("second", msg.results))
        return msg.results * 10

    @mf.task
    async def third(msg: WithResults) -> None:
        seen.append(("third", msg.results))

    last = await mf.sign(third)
    middle = await mf.sign(second, success_callbacks=[last])
    middle_key_before = middle.key
    root = await mf.sign(first, success_callbacks=[middle])
    assert await root.aio_run(Item(item_id=1)) == 2
    await join(mf)
    assert seen == [("second", 2), ("third", 20)]
    # Every handle still resolves, to the signature that ran.
    assert (await mf.load_signature(middle.key)).result_value == 20
    assert await (await mf.load_signature(last.key)).astatus() is SignatureStatus.DONE
    # A key handed out before the attach forwards, as it does for a leaf callback.
    assert (await mf.load_signature(middle_key_before)).key == middle.key


def produce_and_collect(mf: Mageflow, seen: list[int]) -> tuple[MageflowTask, MageflowTask]:
    @mf.task
    async def produce(msg: Item) -> int:
        return msg.item_id

    @mf.task
    async def collect(msg: WithResults) -> None:
        seen.append(msg.results)

    return produce, collect


async def test_same_callback_attached_to_two_tasks_runs_for_each(mf: Mageflow) -> None:
    seen: list[int] = []
    produce, collect = produce_and_collect(mf, seen)
    cb = await mf.sign(collect)
    one = await mf.sign(produce, success_callbacks=[cb])
    two = await mf.sign(produce, success_callbacks=[cb])
    assert set(one.success_callbacks).isdisjoint(two.success_callbacks)
    await one.aio_run(Item(item_id=1))
    await two.aio_run(Item(item_id=2))
    await join(mf)
    assert sorted(seen) == [1, 2]


async def test_callback_handle_follows_it_under_the_parent_workflow(mf: Mageflow) -> None:
    seen: list[int] = []
    produce, collect = produce_and_collect(mf, seen)
    cb = await mf.sign(collect)
    old_key = cb.key
    parent = await mf.sign(produce, success_callbacks=[cb])
    tag = parent.key[parent.key.index("{") : parent.key.index("}") + 1]
    assert tag in cb.key
    assert parent.success_callbacks == [cb.key]
    assert (await mf.load_signature(cb.key)).key == cb.key
    assert (await mf.load_signature(old_key)).key == cb.key  # the old key forwards
    await mf.notifier.watch(cb.key)
    await parent.aio_run(Item(item_id=5))
    assert await cb.aresult(timeout=5) is None
    assert await cb.astatus() is SignatureStatus.DONE
    assert seen == [5]


# -- failures, retries, timeouts ------------------------------------------------------------------


async def test_error_callback_fires_once_after_the_last_retry(mf: Mageflow) -> None:
    attempts: list[int] = []
    errors: list[ItemFailed] = []

    @mf.task(retries=2)
    async def flaky(msg: Item) -> None:
        attempts.append(msg.item_id)
        raise ValueError(f"attempt {len(attempts)} failed")

    @mf.task
    async def on_error(msg: ItemFailed) -> None:
        errors.append(msg)

    sig = await mf.sign(flaky, error_callbacks=[await mf.sign(on_error)])
    with pytest.raises(TaskFailedError) as info:
        await sig.aio_run(Item(item_id=9))
    await join(mf)
    assert len(attempts) == 3
    assert len(errors) == 1
    assert errors[0].item_id == 9
    assert errors[0].error.message == "attempt 3 failed"
    assert info.value.error_message == "attempt 3 failed"


async def test_success_after_retries_fires_only_success_callbacks(mf: Mageflow) -> None:
    attempts: list[int] = []
    ok: list[Msg] = []
    failed: list[Msg] = []

    @mf.task(retries=2)
    async def flaky(msg: Item) -> str:
        attempts.append(msg.item_id)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return "finally"

    recorder(mf, "on_ok", ok)
    recorder(mf, "on_err", failed)
    sig = await mf.sign(
        flaky, success_callbacks=[await mf.sign("on_ok")], error_callbacks=[await mf.sign("on_err")]
    )
    assert await sig.aio_run(Item(item_id=1)) == "finally"
    await join(mf)
    assert len(attempts) == 3
    assert ok == [{"results": "finally"}]
    assert failed == []


async def test_timeout_fails_the_task_with_timeout_error(mf: Mageflow) -> None:
    errors: list[ItemFailed] = []

    @mf.task(timeout=0.2)
    async def slow(msg: Item) -> None:
        await asyncio.sleep(10)

    @mf.task
    async def on_error(msg: ItemFailed) -> None:
        errors.append(msg)

    sig = await mf.sign(slow, error_callbacks=[await mf.sign(on_error)])
    with pytest.raises(TaskFailedError) as info:
        await sig.aio_run(Item(item_id=3), timeout=5)
    await join(mf)
    assert info.value.error_type == "TimeoutError"
    assert [e.error.type for e in errors] == ["TimeoutError"]
    assert "TimeoutError" in errors[0].error.traceback
    assert await sig.astatus() is SignatureStatus.FAILED


class PlainTaskError(Item):
    failure: TaskError
    note: str


async def test_error_field_receives_type_message_and_traceback(mf: Mageflow) -> None:
    marked: list[ItemFailed] = []
    typed: list[PlainTaskError] = []

    @mf.task
    async def explode(msg: Item) -> None:
        raise KeyError(f"missing {msg.item_id}")

    @mf.task
    async def on_marked(msg: ItemFailed) -> None:
        marked.append(msg)

    @mf.task
    async def on_typed(msg: PlainTaskError) -> None:
        typed.append(msg)

    sig = await mf.sign(
        explode, error_callbacks=[await mf.sign(on_marked), await mf.sign(on_typed, note="n")]
    )
    with pytest.raises(TaskFailedError):
        await sig.aio_run(Item(item_id=4))
    await join(mf)
    assert len(marked) == len(typed) == 1
    for err in (marked[0].error, typed[0].failure):
        assert err.type == "KeyError"
        assert err.message == "'missing 4'"
        assert "Traceback" in err.traceback
        assert "in explode" in err.traceback
        assert err.key == sig.key
        assert err.task_name == "explode"
    assert (typed[0].item_id, typed[0].note) == (4, "n")


async def test_statuses_pending_then_done_or_failed(mf: Mageflow) -> None:
    @mf.task
    async def ok(msg: Item) -> int:
        return msg.item_id

    @mf.task
    async def bad(msg: Item) -> None:
        raise RuntimeError("no")

    good_sig, bad_sig = await mf.sign(ok), await mf.sign(bad)
    for sig in (good_sig, bad_sig):
        assert (await mageflow.load_signature(sig.key)).status is SignatureStatus.PENDING
    assert await good_sig.aio_run(Item(item_id=1)) == 1
    with pytest.raises(TaskFailedError) as info:
        await bad_sig.aio_run(Item(item_id=1))
    assert info.value.key == bad_sig.key
    assert (info.value.task_name, info.value.error_type) == ("bad", "RuntimeError")
    assert info.value.error_message == "no"
    done = await mageflow.load_signature(good_sig.key)
    failed = await mageflow.load_signature(bad_sig.key)
    assert (done.status, done.result_value) == (SignatureStatus.DONE, 1)
    assert failed.status is SignatureStatus.FAILED
    assert failed.error is not None and failed.error.type == "RuntimeError"


# -- ways of running ------------------------------------------------------------------------------


async def test_aio_run_no_wait_with_a_dict_and_with_a_model(mf: Mageflow) -> None:
    seen: list[Item] = []

    @mf.task
    async def remember(msg: Item) -> int:
        seen.append(msg)
        return msg.item_id

    by_dict, by_model = await mf.sign(remember), await mf.sign(remember)
    assert await by_dict.aio_run_no_wait({"item_id": 1}) is None
    assert await by_model.aio_run_no_wait(Item(item_id=2)) is None
    assert await by_dict.aresult(timeout=5) == 1
    assert await by_model.aresult(timeout=5) == 2
    assert sorted(m.item_id for m in seen) == [1, 2]


async def test_decorated_task_runs_through_the_engine_or_as_a_function(
    mf: Mageflow, sync_redis: redis.Redis, namespace: str
) -> None:
    calls: list[int] = []

    @mf.task
    async def square(msg: Item) -> int:
        calls.append(msg.item_id)
        return msg.item_id**2

    assert await square(Item(item_id=3)) == 9  # a plain call: no Redis involved
    assert list(sync_redis.scan_iter(f"{namespace}:sig:*")) == []
    assert await square.aio_run(Item(item_id=4)) == 16
    assert await square.aio_run({"item_id": 5}) == 25
    assert calls == [3, 4, 5]


async def test_engine_context_only_when_asked_for(mf: Mageflow) -> None:
    contexts: list[Any] = []

    @mf.task
    async def one_param(msg: Item) -> str:
        return "one"

    @mf.task
    async def two_params(msg: Item, ctx: InProcContext) -> str:
        contexts.append(ctx)
        return "two"

    @mf.task(with_context=True)
    async def asked(msg: Item, *rest: Any) -> str:
        contexts.append(rest)
        return "asked"

    assert await one_param.aio_run(Item(item_id=1)) == "one"
    sig = await mf.sign(two_params)
    assert await sig.aio_run(Item(item_id=1)) == "two"
    assert await asked.aio_run(Item(item_id=1)) == "asked"
    ctx, rest = contexts
    assert isinstance(ctx, InProcContext)
    assert (ctx.signature_key, ctx.task_name, ctx.attempt) == (sig.key, "two_params", 0)
    assert len(rest) == 1 and isinstance(rest[0], InProcContext)


class Loose(BaseModel):
    item_id: str


async def test_model_validators_override_the_task_model(mf: Mageflow) -> None:
    seen: list[BaseModel] = []

    @mf.task
    async def strict(msg: Item) -> None:
        seen.append(msg)

    sig = await mageflow.sign(strict, model_validators=Loose)
    await sig.aio_run({"item_id": "abc"})
    assert seen == [Loose(item_id="abc")]
    with pytest.raises(TaskFailedError) as info:
        await (await mageflow.sign(strict)).aio_run({"item_id": "abc"})
    assert info.value.error_type == "MessageValidationError"
