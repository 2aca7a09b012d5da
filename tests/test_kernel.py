"""The durable transition path: every follow-up is in the outbox before it is sent, a failed send
is retried or recovered, a paused signature keeps the message it would have got, and waiting is
told by the store.

Each test here names a defect the old design had; it fails on that design.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
import redis
from pydantic import BaseModel

from mageflow import (
    DispatchError,
    Mageflow,
    MageflowConfig,
    ReturnValue,
    SignatureStatus,
    SwarmConfig,
    TaskCanceledError,
)
from mageflow.engines.inproc import InProcEngine
from mageflow.envelope import Envelope
from mageflow.store.schema import KWARG_PREFIX, PLAN, Field
from mageflow.tasks import TaskDef

S = SignatureStatus
pytestmark = pytest.mark.timeout(60)


class Log:
    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.got: dict[str, Any] = {}


class Total(BaseModel):
    value: Annotated[int, ReturnValue()]
    tag: str


def register(mf: Mageflow, log: Log) -> None:
    @mf.task(name="work")
    async def work(msg: dict[str, Any]) -> int:
        log.runs[msg["name"]] += 1
        await asyncio.sleep(msg.get("sleep", 0))
        return int(msg.get("n", 0))

    @mf.task(name="note")
    async def note(msg: dict[str, Any]) -> None:
        log.runs[msg["tag"]] += 1
        log.got[msg["tag"]] = msg.get("results")

    @mf.task(name="collect", input_validator=Total)
    async def collect(msg: Total) -> None:
        log.runs[msg.tag] += 1
        log.got[msg.tag] = msg.value


@pytest.fixture
async def log(mf: Mageflow) -> AsyncIterator[Log]:
    log = Log()
    register(mf, log)
    yield log


async def eventually(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - a bounded wait on state other tasks change
            await asyncio.sleep(0.01)


# -- paused signatures keep their message -------------------------------------------------------


async def test_a_suspended_success_callback_gets_the_result_on_resume(
    mf: Mageflow, log: Log
) -> None:
    cb = await mf.sign("collect", tag="cb")
    task = await mf.sign("work", name="t", n=41, success_callbacks=[cb])
    await cb.suspend()
    assert await task.aio_run({}) == 41
    await mf.engine.join()
    assert log.runs["cb"] == 0 and await cb.astatus() is S.SUSPENDED
    await cb.resume()  # the old design raised: "what would start it already ended"
    await cb.aresult(timeout=5)
    assert log.got == {"cb": 41} and log.runs["cb"] == 1


async def test_aio_run_no_wait_on_a_suspended_signature_parks_the_message(
    mf: Mageflow, log: Log
) -> None:
    sig = await mf.sign("work", name="t")
    await sig.suspend()
    await sig.aio_run_no_wait({"n": 7})  # the old design raised InvalidTransitionError
    await asyncio.sleep(0.05)
    await mf.engine.join()
    assert log.runs["t"] == 0 and await sig.astatus() is S.SUSPENDED
    await sig.resume()
    assert await sig.aresult(timeout=5) == 7
    assert log.runs["t"] == 1


async def test_a_suspended_chain_started_runs_with_its_message_on_resume(
    mf: Mageflow, log: Log
) -> None:
    chain = await mf.chain([await mf.sign("work", name="a"), await mf.sign("collect", tag="b")])
    await chain.suspend()
    await chain.aio_run_no_wait({"n": 3})
    await asyncio.sleep(0.05)
    assert log.runs == {}
    await chain.resume()
    await chain.aresult(timeout=5)
    assert log.got == {"b": 3}


# -- follow-ups are durable before they are sent -----------------------------------------------


class BrokenBroker(InProcEngine):
    """An engine whose sends of the named tasks fail, as a broker that is down would."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing
        self.refused: Counter[str] = Counter()

    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        name = task if isinstance(task, str) else task.name
        if name in self.failing:
            self.refused[name] += 1
            raise ConnectionError(f"broker down for {name}")
        return await super().dispatch(task, envelope)


class TwoProcesses:
    """Two processes of the same app on one namespace: the first sends through ``engine`` and
    ends; the second, started later, recovers what the first could not send."""

    def __init__(self, redis_url: str, namespace: str, engine: BrokenBroker) -> None:
        self.url, self.namespace, self.log = redis_url, namespace, Log()
        self.first = Mageflow(engine, redis_url, config=MageflowConfig(namespace=namespace))
        register(self.first, self.log)
        self.second: Mageflow | None = None

    async def start_second(self) -> Mageflow:
        config = MageflowConfig(namespace=self.namespace, lease_seconds=0.3)
        self.second = Mageflow(None, self.url, config=config)
        register(self.second, self.log)
        await self.second.start()
        return self.second

    async def close(self) -> None:
        await self.first.close()
        if self.second is not None:
            await self.second.close()


@pytest.fixture
async def pair(redis_url: str, namespace: str) -> AsyncIterator[TwoProcesses]:
    both = TwoProcesses(redis_url, namespace, BrokenBroker(set()))
    yield both
    await both.close()


async def test_a_closed_swarm_callback_whose_send_failed_is_recovered(
    pair: TwoProcesses, sync_redis: redis.Redis
) -> None:
    first, log = pair.first, pair.log
    assert isinstance(first.engine, BrokenBroker)
    first.engine.failing.add("note")
    swarm = await first.swarm(
        [await first.sign("work", name="m", n=5)],
        success_callbacks=[await first.sign("note", tag="swarm-ok")],
    )
    await swarm.aio_run_no_wait({})
    await eventually(lambda: log.runs["m"] == 1)
    await first.engine.join()
    # Closing completes the swarm; its callback's send fails and the caller hears it.
    with pytest.raises(DispatchError, match="sent again automatically"):
        await swarm.close_swarm()
    assert await swarm.astatus() is S.DONE
    assert (
        sync_redis.zcard(first.keys.shard(swarm.key).outbox) == 1
    )  # queued in the same step, durably
    await first.close()  # this process ends before its own retries get through
    second = await pair.start_second()
    await eventually(lambda: log.runs["swarm-ok"] == 1)
    await second.engine.join()
    assert log.runs["swarm-ok"] == 1 and log.got["swarm-ok"] == [5]
    assert sync_redis.zcard(first.keys.shard(swarm.key).outbox) == 0


async def test_members_added_to_a_running_swarm_survive_a_failed_send(pair: TwoProcesses) -> None:
    first, log = pair.first, pair.log
    assert isinstance(first.engine, BrokenBroker)
    swarm = await first.swarm(
        [await first.sign("work", name="m0", sleep=0.05)], config=SwarmConfig(max_concurrency=5)
    )
    await swarm.aio_run_no_wait({})
    first.engine.failing.add("work")
    with pytest.raises(DispatchError):
        await swarm.add_tasks([await first.sign("work", name="m1", n=1)], close=True)
    await first.close()
    second = await pair.start_second()
    assert await (await second.load_signature(swarm.key)).aresult(timeout=10) == [0, 1]
    assert log.runs == {"m0": 1, "m1": 1}


async def test_a_resumed_task_whose_send_failed_is_retried_by_the_same_client(
    mf: Mageflow, log: Log
) -> None:
    engine = mf.engine
    assert isinstance(engine, InProcEngine)
    sig = await mf.sign("work", name="t", n=2)
    await sig.suspend()
    await sig.aio_run_no_wait({})
    real = engine.dispatch
    fails = [1]

    async def flaky(task: TaskDef | str, envelope: Envelope) -> str | None:
        if fails:
            fails.pop()
            raise ConnectionError("broker blinked")
        return await real(task, envelope)

    engine.dispatch = flaky  # type: ignore[method-assign]
    with pytest.raises(DispatchError):
        await sig.resume()
    assert await sig.aresult(timeout=5) == 2  # the sender's own retry got it through
    assert log.runs["t"] == 1


# -- waiting is told, not polled -----------------------------------------------------------------


async def test_aresult_hears_of_the_end_without_polling(
    mf: Mageflow, log: Log, redis_url: str, namespace: str
) -> None:
    sig = await mf.sign("work", name="t", sleep=0.6)
    await sig.aio_run_no_wait({})  # not aio_run: the old design polled at 0.5/1/2/5 s here
    started = time.monotonic()
    assert await sig.aresult(timeout=10) == 0
    # Told by the store: seen as soon as it ends (0.6 s), not at the next poll (1.5 s).
    assert time.monotonic() - started < 1.2


# -- the schema decides what a copy keeps ----------------------------------------------------------


async def test_a_duplicate_keeps_the_plan_and_none_of_the_run(mf: Mageflow, log: Log) -> None:
    cb = await mf.sign("collect", tag="cb")
    sig = await mf.sign("work", name="t", n=4, success_callbacks=[cb])
    assert await sig.aio_run({}) == 4
    await mf.engine.join()
    copy = await sig.aduplicate(n=6)
    record = await mf.store.load(copy.key)
    extra = {f for f in record.fields if f not in PLAN and not f.startswith(KWARG_PREFIX)}
    assert extra == {Field.STATUS}, extra
    assert record.status == S.PENDING
    assert await copy.aio_run({}) == 6
    await mf.engine.join()
    assert log.runs == {"t": 2, "cb": 2} and log.got == {"cb": 6}


async def test_a_waiter_follows_its_signature_when_it_moves(mf: Mageflow, log: Log) -> None:
    sig = await mf.sign("work", name="t", n=3)
    waiter = asyncio.create_task(sig.aresult(timeout=10))
    await asyncio.sleep(0.05)  # it listens under the key it has now ...
    chain = await mf.chain([sig, await mf.sign("collect", tag="c")])  # ... which moves
    await chain.aio_run_no_wait({})
    assert await waiter == 3


async def test_a_waiter_moved_with_a_whole_subtree_hears_its_end(mf: Mageflow, log: Log) -> None:
    inner = await mf.chain(
        [await mf.sign("work", name="a", n=2), await mf.sign("collect", tag="b")]
    )
    waiter = asyncio.create_task(inner.aresult(timeout=10))
    await asyncio.sleep(0.05)
    outer = await mf.chain([inner, await mf.sign("work", name="c")])  # rewritten under outer
    await outer.aio_run_no_wait({})
    assert await waiter is None  # collect returns nothing
    assert log.got == {"b": 2}


async def test_waiting_for_a_callback_that_will_never_fire_ends(mf: Mageflow, log: Log) -> None:
    on_error = await mf.sign("collect", tag="never")
    sig = await mf.sign("work", name="t", error_callbacks=[on_error])
    on_error = await mf.load_signature((await sig.aload()).error_callbacks[0])
    waiter = asyncio.create_task(on_error.aresult(timeout=10))
    await asyncio.sleep(0.05)
    assert await sig.aio_run({}) == 0  # it succeeds: its error callback never runs
    with pytest.raises(TaskCanceledError):
        await waiter
