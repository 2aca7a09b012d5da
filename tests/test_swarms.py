"""Swarms: members run in parallel under a concurrency limit; results come back in add order.

The ``kit`` task records when each member starts and ends and how many run at once, so the limits
are checked at every instant, not only through the final result.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

import mageflow
from mageflow import (
    Mageflow,
    ReturnValue,
    Signature,
    SignatureStatus,
    SwarmClosedError,
    SwarmConfig,
    SwarmFullError,
    TaskError,
    TaskFailedError,
    is_failed_result,
)

DONE, FAILED, CANCELED, ACTIVE = (
    SignatureStatus.DONE,
    SignatureStatus.FAILED,
    SignatureStatus.CANCELED,
    SignatureStatus.ACTIVE,
)


async def status_of(mf: Mageflow, key: str) -> SignatureStatus:
    return await (await mf.load_signature(key)).astatus()


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Item(BaseModel):
    i: int
    pause: float = 0.0
    fail: bool = False


class ListResult(BaseModel):
    results: list[Any]


class SwarmError(BaseModel):
    error: TaskError


class Seen(BaseModel):
    value: Annotated[int, ReturnValue()]


class Kit:
    """The ``work`` task (returns ``i``; sleeps ``pause``; raises when ``fail``) with its log, and
    ``on_done``/``on_error`` callbacks that record what they receive."""

    def __init__(self, mf: Mageflow) -> None:
        self.mf = mf
        self.running = 0
        self.samples: list[int] = []  # tasks running, at every start and end
        self.started: list[int] = []
        self.finished: list[int] = []  # ended without failing or being cancelled
        self.done_with: list[list[Any]] = []
        self.errors: list[TaskError] = []

        @mf.task(name="work")
        async def work(msg: Item) -> int:
            self.running += 1
            self.started.append(msg.i)
            self.samples.append(self.running)
            try:
                await asyncio.sleep(msg.pause)
                if msg.fail:
                    raise ValueError(f"member {msg.i} failed")
            finally:
                self.samples.append(self.running)
                self.running -= 1
            self.finished.append(msg.i)
            return msg.i

        @mf.task(name="on_done")
        async def on_done(msg: ListResult) -> None:
            self.done_with.append(msg.results)

        @mf.task(name="on_error")
        async def on_error(msg: SwarmError) -> None:
            self.errors.append(msg.error)

    async def members(
        self,
        n: int,
        pause: Callable[[int], float] = lambda _: 0.0,
        fail: Callable[[int], bool] = lambda _: False,
        start: int = 0,
    ) -> list[Signature]:
        return [
            await self.mf.sign("work", i=i, pause=pause(i), fail=fail(i))
            for i in range(start, start + n)
        ]

    async def ok(self) -> list[Signature]:
        return [await self.mf.sign("on_done")]

    async def err(self) -> list[Signature]:
        return [await self.mf.sign("on_error")]


@pytest.fixture
def kit(mf: Mageflow) -> Kit:
    return Kit(mf)


# -- concurrency and order ------------------------------------------------------------------------


@pytest.mark.parametrize("max_concurrency", [1, 3, 7])
async def test_running_members_never_exceed_max_concurrency(
    mf: Mageflow, kit: Kit, max_concurrency: int
) -> None:
    n = max_concurrency * 4
    members = await kit.members(n, pause=lambda _: random.uniform(0.01, 0.04))
    config = SwarmConfig(max_concurrency=max_concurrency)
    swarm = await mf.swarm(members, config=config, is_swarm_closed=True)
    assert await swarm.aio_run() == list(range(n))
    assert max(kit.samples) == max_concurrency
    assert all(0 < s <= max_concurrency for s in kit.samples)
    assert sorted(kit.started) == list(range(n))


async def test_concurrency_limit_holds_for_members_added_while_running(
    mf: Mageflow, kit: Kit
) -> None:
    swarm = await mf.swarm(config=SwarmConfig(max_concurrency=3))
    await swarm.aio_run_no_wait()
    for batch in range(4):
        added = await kit.members(5, pause=lambda _: random.uniform(0.01, 0.03), start=batch * 5)
        await swarm.add_tasks(added)
        await asyncio.sleep(0.01)
    await swarm.close_swarm()
    assert await swarm.aresult(timeout=10) == list(range(20))
    assert max(kit.samples) == 3
    assert all(s <= 3 for s in kit.samples)


@pytest.mark.parametrize("max_concurrency", [1, 3])
async def test_members_start_in_the_order_added(
    mf: Mageflow, kit: Kit, max_concurrency: int
) -> None:
    # Distinct durations, so slots free up one at a time.
    members = await kit.members(9, pause=lambda i: 0.01 + 0.007 * i)
    config = SwarmConfig(max_concurrency=max_concurrency)
    swarm = await mf.swarm(members, config=config, is_swarm_closed=True)
    assert await swarm.tasks() == [m.key for m in members]
    assert await swarm.aio_run() == list(range(9))
    assert kit.started == list(range(9))


async def test_results_follow_add_order_when_later_members_finish_first(
    mf: Mageflow, kit: Kit
) -> None:
    n = 6
    members = await kit.members(n, pause=lambda i: 0.03 * (n - i))
    swarm = await mageflow.aswarm(members, is_swarm_closed=True)
    assert await swarm.aio_run() == list(range(n))
    assert kit.finished == list(reversed(range(n)))  # later members really finished first
    by_key = await swarm.results()
    assert list(by_key) == [m.key for m in members] == await swarm.tasks()
    assert list(by_key.values()) == list(range(n))


# -- adding and closing ---------------------------------------------------------------------------


async def test_closed_swarm_rejects_new_members(mf: Mageflow, kit: Kit) -> None:
    closed = await mf.swarm(await kit.members(1), is_swarm_closed=True)
    assert closed.is_swarm_closed
    with pytest.raises(SwarmClosedError):
        await closed.add_tasks(["work"])
    with pytest.raises(SwarmClosedError):
        await closed.aio_run_in_swarm("work", {"i": 1})
    assert len(await closed.tasks()) == 1

    later = await mf.swarm(await kit.members(1))
    await later.add_tasks(await kit.members(1, start=1), close=True)
    with pytest.raises(SwarmClosedError):
        await later.add_tasks(await kit.members(1, start=2))
    assert await later.aio_run() == [0, 1]

    opened = await mf.swarm(await kit.members(1, start=5))
    await opened.aio_run_no_wait()
    await opened.close_swarm()
    with pytest.raises(SwarmClosedError):
        await opened.add_tasks(await kit.members(1, start=6))
    assert await opened.aresult(timeout=5) == [5]


async def test_max_task_allowed(mf: Mageflow, kit: Kit) -> None:
    config = SwarmConfig(max_task_allowed=3)
    with pytest.raises(SwarmFullError):
        await mf.swarm(await kit.members(4), config=config)

    swarm = await mf.swarm(await kit.members(2), config=config)
    with pytest.raises(SwarmFullError) as info:
        await swarm.add_tasks(await kit.members(2, start=2))
    assert info.value.limit == 3
    assert len(await swarm.tasks()) == 2  # a rejected add adds nothing
    await swarm.add_tasks(await kit.members(1, start=2))
    with pytest.raises(SwarmFullError):
        await swarm.add_tasks(await kit.members(1, start=3))
    await swarm.close_swarm()
    assert await swarm.aio_run() == [0, 1, 2]


async def test_open_swarm_completes_only_after_close(mf: Mageflow, kit: Kit) -> None:
    swarm = await mf.swarm(
        await kit.members(2), success_callbacks=await kit.ok(), error_callbacks=await kit.err()
    )
    assert not swarm.is_swarm_closed
    await swarm.aio_run_no_wait()
    await eventually(lambda: sorted(kit.finished) == [0, 1])
    await asyncio.sleep(0.1)
    await mf.engine.join()
    assert [await status_of(mf, k) for k in await swarm.tasks()] == [DONE, DONE]
    assert await swarm.astatus() is ACTIVE
    assert kit.done_with == []

    await swarm.add_tasks(await kit.members(1, start=2))
    await swarm.close_swarm()
    assert await swarm.aresult(timeout=5) == [0, 1, 2]
    await mf.engine.join()
    assert kit.done_with == [[0, 1, 2]]
    assert kit.errors == []


async def test_members_added_while_running_then_closed(mf: Mageflow) -> None:
    started: list[int] = []
    gate = asyncio.Event()

    @mf.task
    async def gated(msg: Item) -> int:
        started.append(msg.i)
        if msg.i == 0:
            await gate.wait()
        return msg.i * 10

    swarm = await mf.swarm([await mf.sign(gated, i=0)], config=SwarmConfig(max_concurrency=2))
    await swarm.aio_run_no_wait()
    await eventually(lambda: started == [0])
    added = await swarm.add_tasks([await mf.sign(gated, i=1), await mf.sign(gated, i=2)])
    await eventually(lambda: sorted(started) == [0, 1, 2])
    await asyncio.sleep(0.05)
    assert [await status_of(mf, s.key) for s in added] == [DONE, DONE]
    await swarm.aio_run_tasks_in_swarm([gated, gated], [{"i": 3}, {"i": 4}], close=True)
    assert await swarm.astatus() is ACTIVE
    gate.set()
    assert await swarm.aresult(timeout=5) == [0, 10, 20, 30, 40]


async def test_empty_closed_swarm_completes_with_empty_list(mf: Mageflow, kit: Kit) -> None:
    swarm = await mf.swarm(
        is_swarm_closed=True, success_callbacks=await kit.ok(), error_callbacks=await kit.err()
    )
    assert await swarm.aio_run() == []
    await mf.engine.join()
    assert kit.done_with == [[]]

    later = await mf.swarm()
    await later.aio_run_no_wait()
    assert await later.astatus() is ACTIVE
    await later.close_swarm()
    assert await later.aresult(timeout=5) == []


# -- failures -------------------------------------------------------------------------------------


async def test_failed_members_are_marked_and_swarm_still_completes(mf: Mageflow, kit: Kit) -> None:
    members = await kit.members(5, fail=lambda i: i % 2 == 1)
    swarm = await mf.swarm(
        members,
        is_swarm_closed=True,
        success_callbacks=await kit.ok(),
        error_callbacks=await kit.err(),
    )
    result = await swarm.aio_run()
    await mf.engine.join()
    assert await swarm.astatus() is DONE
    assert [is_failed_result(r) for r in result] == [False, True, False, True, False]
    assert [result[0], result[2], result[4]] == [0, 2, 4]
    for i in (1, 3):
        failure = TaskError.model_validate(result[i]["$mageflow_failed"])
        assert (failure.type, failure.message) == ("ValueError", f"member {i} failed")
        assert failure.key == members[i].key
    assert kit.done_with == [result]
    assert kit.errors == []

    by_key = await swarm.results()
    assert list(by_key) == [m.key for m in members]
    values = list(by_key.values())
    assert values[0::2] == [0, 2, 4]
    assert [(type(v), v.message) for v in values[1::2]] == [
        (TaskError, "member 1 failed"),
        (TaskError, "member 3 failed"),
    ]


async def test_stop_after_n_failures_cancels_queued_members(mf: Mageflow, kit: Kit) -> None:
    members = await kit.members(10, pause=lambda i: 0.01 if i < 2 else 0.3, fail=lambda i: i < 2)
    swarm = await mf.swarm(
        members,
        config=SwarmConfig(max_concurrency=2, stop_after_n_failures=2),
        is_swarm_closed=True,
        success_callbacks=await kit.ok(),
        error_callbacks=await kit.err(),
    )
    with pytest.raises(TaskFailedError) as info:
        await swarm.aio_run()
    assert info.value.key in (members[0].key, members[1].key)
    await asyncio.sleep(0.5)  # longer than a member runs: a stray start would finish by now
    await mf.engine.join()

    assert await swarm.astatus() is FAILED
    assert set(kit.started) <= {0, 1, 2}
    assert kit.finished == []  # member 2 (if it started) was cancelled
    statuses = [await status_of(mf, m.key) for m in members]
    assert statuses == [FAILED] * 2 + [CANCELED] * 8
    assert len(kit.errors) == 1
    assert kit.errors[0].key == info.value.key
    assert kit.done_with == []


async def test_swarm_failure_raises_with_the_failed_members_key(mf: Mageflow, kit: Kit) -> None:
    members = await kit.members(5, fail=lambda i: i == 3)
    config = SwarmConfig(max_concurrency=1, stop_after_n_failures=1)
    swarm = await mf.swarm(members, config=config, is_swarm_closed=True)
    with pytest.raises(TaskFailedError) as info:
        await swarm.aio_run()
    assert info.value.key == members[3].key
    assert info.value.error_type == "ValueError"
    assert [await status_of(mf, m.key) for m in members] == [DONE] * 3 + [FAILED, CANCELED]
    assert kit.started == [0, 1, 2, 3]


# -- kwargs and duplicates ------------------------------------------------------------------------


async def test_swarm_kwargs_and_run_message_reach_every_member(mf: Mageflow) -> None:
    received: dict[str, dict[str, Any]] = {}

    @mf.task
    async def record(msg: dict[str, Any]) -> str:
        received[msg["name"]] = dict(msg)
        return str(msg["name"])

    tasks = [await mf.sign(record, name="a", shared="member-a"), await mf.sign(record, name="b")]
    swarm = await mf.swarm([*tasks, "record"], swarm_kw="S", shared="swarm")
    await swarm.add_tasks(["record"], name="d", shared="member-d")
    await swarm.close_swarm()
    result = await swarm.aio_run({"run": "R", "name": "c", "shared": "run"})
    assert result == ["a", "b", "c", "d"]
    assert received == {
        "a": {"run": "R", "swarm_kw": "S", "name": "a", "shared": "member-a"},
        "b": {"run": "R", "swarm_kw": "S", "name": "b", "shared": "swarm"},
        "c": {"run": "R", "swarm_kw": "S", "name": "c", "shared": "swarm"},
        "d": {"run": "R", "swarm_kw": "S", "name": "d", "shared": "member-d"},
    }


async def test_run_in_swarm_binds_the_message_and_starts_the_swarm(mf: Mageflow) -> None:
    received: list[dict[str, Any]] = []

    @mf.task
    async def record(msg: dict[str, Any]) -> Any:
        received.append(dict(msg))
        return msg["x"]

    swarm = await mf.swarm(base="S", shared="swarm")
    assert swarm.status is SignatureStatus.PENDING
    await swarm.aio_run_in_swarm(record, {"x": 0, "shared": "msg"})
    assert await swarm.astatus() is ACTIVE
    await swarm.aio_run_tasks_in_swarm([record, "record"], [{"x": 1}, {"x": 2}], close=True)
    assert await swarm.aresult(timeout=5) == [0, 1, 2]
    assert sorted(received, key=lambda m: m["x"]) == [
        {"base": "S", "shared": "msg", "x": 0},
        {"base": "S", "shared": "swarm", "x": 1},
        {"base": "S", "shared": "swarm", "x": 2},
    ]


async def test_aduplicate_many_makes_independent_members(mf: Mageflow, kit: Kit) -> None:
    callbacks: list[int] = []

    @mf.task
    async def seen(msg: Seen) -> None:
        callbacks.append(msg.value)

    original = await mf.sign("work", i=1, success_callbacks=[await mf.sign(seen)])
    copies = await original.aduplicate_many(3)
    bumped = await original.aduplicate_many(2, i=7)
    assert len({original.key, *(c.key for c in copies + bumped)}) == 6
    assert all(c.status is SignatureStatus.PENDING for c in copies + bumped)
    assert [dict(c.kwargs) for c in copies] == [{"i": 1}] * 3
    assert [dict(c.kwargs) for c in bumped] == [{"i": 7}] * 2
    assert dict((await mf.load_signature(original.key)).kwargs) == {"i": 1}
    for c in copies + bumped:
        assert len(c.success_callbacks) == 1
        assert c.success_callbacks != original.success_callbacks

    swarm = await mf.swarm([original, *copies, *bumped], is_swarm_closed=True)
    assert await swarm.aio_run() == [1, 1, 1, 1, 7, 7]
    await mf.engine.join()
    assert sorted(callbacks) == [1, 1, 1, 1, 7, 7]
