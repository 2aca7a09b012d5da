"""Map over a result and per-member callbacks, on the in-process engine.

A map fans out one copy of its task per item of a list known only when it runs; per-member
callbacks fire once per member with that member's result (or message and error), before the
container's own callbacks.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from pydantic import BaseModel

import mageflow
from mageflow import (
    Mageflow,
    ReturnValue,
    SwarmConfig,
    TaskError,
    TaskFailedError,
    is_failed_result,
)
from mageflow.mapping import expand
from mageflow.store.schema import Field
from mageflow.testing import TestRun


class Charge(BaseModel):
    amount: ReturnValue[int]
    fee: int = 0


class Failed(BaseModel):
    error: TaskError
    amount: int | None = None


class Track:
    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.calls: list[int] = []
        self.item_ok: list[Any] = []
        self.item_err: list[dict[str, Any]] = []
        self.done: list[Any] = []


@pytest.fixture
async def track(mf: Mageflow) -> Track:
    t = Track()

    @mf.task(name="list_orders")
    async def list_orders(msg: dict[str, Any]) -> list[int]:
        return msg.get("orders", [10, 20, 30, 40, 50])

    @mf.task(name="charge")
    async def charge(msg: Charge) -> int:
        t.running += 1
        t.most = max(t.most, t.running)
        t.calls.append(msg.amount)
        await asyncio.sleep(0.05)
        t.running -= 1
        if msg.amount < 0:
            raise ValueError(f"negative amount {msg.amount}")
        return msg.amount + msg.fee

    @mf.task(name="total")
    async def total(msg: dict[str, Any]) -> int:
        return sum(msg["results"])

    @mf.task(name="item_ok")
    async def item_ok(msg: dict[str, Any]) -> None:
        t.item_ok.append(msg["results"])

    @mf.task(name="item_err")
    async def item_err(msg: Failed) -> None:
        t.item_err.append({"amount": msg.amount, "error": msg.error.message})

    @mf.task(name="all_done")
    async def all_done(msg: dict[str, Any]) -> None:
        t.done.append(msg["results"])

    return t


async def test_a_map_in_a_chain_fans_out_over_the_previous_result(
    mf: Mageflow, track: Track
) -> None:
    charges = await mageflow.map("charge", config=SwarmConfig(max_concurrency=2), fee=1)
    flow = await mageflow.chain(["list_orders", charges, "total"])
    assert await flow.aio_run({}) == 155  # (10 + 20 + 30 + 40 + 50) + 5 fees
    assert sorted(track.calls) == [10, 20, 30, 40, 50]
    assert track.most == 2
    mapped = await mf.load_signature(charges.key)
    assert await mapped.aresult() == [11, 21, 31, 41, 51]  # in input order
    assert len(await mapped.tasks()) == 5


async def test_a_map_run_on_its_own_takes_its_items_from_the_message(
    mf: Mageflow, track: Track
) -> None:
    by_default = await mf.map("charge")
    assert await by_default.aio_run({"items": [1, 2], "fee": 100}) == [101, 102]
    named = await mf.amap("charge", items_field="amounts", fee=5)
    assert await named.aio_run({"amounts": [7]}) == [12]


async def test_an_empty_list_completes_at_once(mf: Mageflow, track: Track) -> None:
    mapped = await mf.map("charge", success_callbacks=[await mf.sign("all_done")])
    assert await mapped.aio_run({"items": []}) == []
    await _until(lambda: track.done == [[]])
    assert track.calls == []


async def test_input_that_is_not_a_list_fails_the_map(mf: Mageflow, track: Track) -> None:
    mapped = await mf.map("charge", error_callbacks=[await mf.sign("item_err")])
    with pytest.raises(TaskFailedError) as failed:
        await mapped.aio_run({"items": {"not": "a list"}})
    assert failed.value.error_type == "MapInputError"
    assert "needs a list of items in the field 'items', not dict" in failed.value.error_message
    await _until(lambda: len(track.item_err) == 1)
    in_chain = await mf.chain(["total", await mf.map("charge")])
    with pytest.raises(TaskFailedError, match="previous step's result, not int"):
        await in_chain.aio_run({"results": [1, 2]})


async def test_failed_items_are_marked_and_the_limit_stops_the_map(
    mf: Mageflow, track: Track
) -> None:
    mapped = await mf.map("charge")
    results = await mapped.aio_run({"items": [1, -2, 3]})
    assert results[0] == 1 and results[2] == 3 and is_failed_result(results[1])
    strict = await mf.map("charge", config=SwarmConfig(max_concurrency=1, stop_after_n_failures=1))
    with pytest.raises(TaskFailedError):
        await strict.aio_run({"items": [-1, 2, 3]})


async def test_the_task_may_be_a_signature_or_a_chain(mf: Mageflow, track: Track) -> None:
    with_fee = await mf.sign("charge", fee=1000)
    assert await (await mf.map(with_fee)).aio_run({"items": [1, 2]}) == [1001, 1002]
    twice = await mf.chain(["charge", await mf.sign("charge", fee=1)])
    assert await (await mf.map(twice)).aio_run({"items": [5, 6]}) == [6, 7]
    assert sorted(track.calls) == [1, 2, 5, 5, 6, 6]


async def test_per_item_callbacks_fire_once_per_member_before_the_maps_own(
    mf: Mageflow, track: Track, redis_url: str
) -> None:
    run = await TestRun(mf, redis_url).start()  # records the order messages were sent in
    try:
        mapped = await mageflow.map(
            "charge",
            item_success_callbacks=[await mageflow.sign("item_ok")],
            item_error_callbacks=[await mageflow.sign("item_err")],
            success_callbacks=[await mageflow.sign("all_done")],
        )
        results = await mapped.aio_run({"items": [3, -4, 5, 6]})
        await _until(lambda: len(track.done) == 1 and len(track.item_ok) == 3)
        await asyncio.sleep(0.2)  # nothing more may fire
        assert Counter(track.item_ok) == Counter([3, 5, 6])
        # An error callback gets the failed member's message (its item included) and error.
        assert track.item_err == [{"amount": -4, "error": "negative amount -4"}]
        assert track.done == [results]
        sent = [d.task_name for d in run.dispatches]
        assert sent.index("all_done") > max(i for i, n in enumerate(sent) if n == "item_ok")
        assert sent.count("item_ok") == 3 and sent.count("item_err") == 1
    finally:
        await run.stop()


async def test_a_swarms_members_get_per_member_callbacks_static_and_added(
    mf: Mageflow, track: Track
) -> None:
    members = [await mf.sign("charge", amount=a) for a in (1, 2)]
    swarm = await mf.swarm(
        members,
        item_success_callbacks=[await mf.sign("item_ok")],
        success_callbacks=[await mf.sign("all_done")],
    )
    await swarm.aio_run_no_wait()
    await swarm.add_tasks([await mf.sign("charge", amount=3)], close=True)
    assert await swarm.aresult(timeout=10) == [1, 2, 3]
    await _until(lambda: len(track.done) == 1 and len(track.item_ok) == 3)
    assert sorted(track.item_ok) == [1, 2, 3]


async def test_a_start_expanded_twice_runs_one_set_of_members(mf: Mageflow, track: Track) -> None:
    """A process that wrote the copies and died before claiming the map leaves them behind; the
    start message is sent again and only the claimed copies run."""
    mapped = await mf.map("charge", item_success_callbacks=[await mf.sign("item_ok")])
    await mf.ensure_started()
    record = await mf.store.load(mapped.key)
    from mageflow.envelope import Envelope

    orphans, _, _ = await expand(mf, record, Envelope(mapped.key, {"items": [7, 8]}))
    assert await mapped.aio_run({"items": [7, 8]}) == [7, 8]
    await _until(lambda: len(track.item_ok) == 2)
    await asyncio.sleep(0.2)
    assert sorted(track.calls) == [7, 8] and sorted(track.item_ok) == [7, 8]
    assert not set(orphans) & set(await mapped.tasks())
    assert all(r is not None and r.status == "pending" for r in await mf.store.load_many(orphans))


async def test_two_deliveries_of_one_start_run_the_items_once(mf: Mageflow, track: Track) -> None:
    mapped = await mf.map("charge")
    await mf.ensure_started()
    await mf.runtime.launch(mapped.key, _envelope(mapped.key, [1, 2, 3]))
    record = await mf.store.load(mapped.key)
    from mageflow.envelope import Envelope

    # The same start message again, as a recovery round or a duplicate delivery would send it.
    await mf.sender.start_container(record.key, Envelope(record.key, {"items": [1, 2, 3]}))
    assert await mapped.aresult(timeout=10) == [1, 2, 3]
    await asyncio.sleep(0.2)
    assert sorted(track.calls) == [1, 2, 3]


async def test_maps_cannot_take_added_tasks(mf: Mageflow, track: Track) -> None:
    mapped = await mf.map("charge")
    assert mapped._record.get(Field.TEMPLATE)
    with pytest.raises(mageflow.InvalidTransitionError):
        await mapped.add_tasks(["charge"])


def _envelope(key: str, items: list[int]) -> Any:
    from mageflow.envelope import Envelope

    return Envelope(key, {"items": items})


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
