"""Exactly-once effects under duplicate deliveries, retries and batched writes.

A message may reach a worker twice (redelivery, a retried publish). The task body may then run
again only when the first holder is presumed dead (its lease expired); callbacks, chain steps and
swarm slots must move on exactly once either way.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from mageflow import Mageflow, MageflowConfig, Signature, SignatureStatus, SwarmConfig
from mageflow.envelope import Envelope
from mageflow.tasks import TaskDef
from tests.conftest import namespace_keys

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(namespace: str, request: pytest.FixtureRequest) -> MageflowConfig:
    return MageflowConfig(namespace=namespace, lease_seconds=getattr(request, "param", 300.0))


class Log:
    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.fired: Counter[str] = Counter()
        self.gates: dict[str, asyncio.Event] = {}


@pytest.fixture
async def log(mf: Mageflow) -> AsyncIterator[Log]:
    log = Log()

    @mf.task
    async def work(msg: dict[str, Any]) -> Any:
        name = msg["name"]
        log.runs[name] += 1
        if name in log.gates and log.runs[name] == 1:  # only its first run waits
            await log.gates[name].wait()
        await asyncio.sleep(msg.get("sleep", 0))
        return msg.get("results", 0) + msg.get("inc", 0)

    @mf.task
    async def on_ok(msg: dict[str, Any]) -> None:
        log.fired[msg["tag"]] += 1

    yield log
    for gate in log.gates.values():
        gate.set()


def work(mf: Mageflow) -> TaskDef:
    return mf.tasks["work"]


async def leaf(mf: Mageflow, name: str, **kw: Any) -> Signature:
    ok = [await mf.sign("on_ok", tag=f"{name}-ok")]
    return await mf.sign("work", name=name, success_callbacks=ok, **kw)


async def join(mf: Mageflow) -> None:
    await asyncio.sleep(0.05)
    await mf.engine.join()


async def deliver(mf: Mageflow, key: str, times: int, **input: Any) -> list[str]:
    """Deliver the same message for ``key`` ``times`` times at once; the runs' outcomes."""
    envelope = Envelope(sig=key, input=input)
    runs = [mf.runtime.run(work(mf), envelope, 0, None) for _ in range(times)]
    return sorted(o.status for o in await asyncio.gather(*runs))


async def test_duplicate_deliveries_run_the_task_once(mf: Mageflow, log: Log) -> None:
    sig = await leaf(mf, "t", inc=1, sleep=0.05)
    assert await deliver(mf, sig.key, 3) == ["done", "skipped", "skipped"]
    assert await deliver(mf, sig.key, 1) == ["skipped"]  # a late one after it finished
    await join(mf)
    assert log.runs == {"t": 1} and log.fired == {"t-ok": 1}
    assert (await sig.aload()).result_value == 1


async def test_duplicate_step_delivery_advances_the_chain_once(mf: Mageflow, log: Log) -> None:
    steps = [await leaf(mf, "a", inc=1, sleep=0.05), await leaf(mf, "b", inc=10)]
    chain = await mf.chain([*steps, await leaf(mf, "c", inc=100)], success_callbacks=[
        await mf.sign("on_ok", tag="chain-ok")])  # fmt: skip
    await mf.notifier.watch(chain.key)
    answer = await mf.store.start_container(chain.key, "{}", "")
    assert [a.key for a in answer.actions()] == [chain.tasks[0]]
    # The chain's launch of its first step is delivered twice (and its own dispatch never).
    assert await deliver(mf, chain.tasks[0], 2) == ["done", "skipped"]
    assert await chain.aresult(timeout=5) == 111
    assert await deliver(mf, chain.tasks[0], 1) == ["skipped"]
    await join(mf)
    assert log.runs == {"a": 1, "b": 1, "c": 1}
    assert log.fired == {"a-ok": 1, "b-ok": 1, "c-ok": 1, "chain-ok": 1}


async def test_duplicate_member_delivery_frees_its_swarm_slot_once(mf: Mageflow, log: Log) -> None:
    members = [await leaf(mf, f"m{i}", inc=i, sleep=0.05) for i in range(3)]
    swarm = await mf.swarm(members, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
    log.gates["m1"] = asyncio.Event()
    await mf.notifier.watch(swarm.key)
    answer = await mf.store.start_container(swarm.key, "{}", "")
    assert [a.key for a in answer.actions()] == [members[0].key]
    assert await deliver(mf, members[0].key, 3) == ["done", "skipped", "skipped"]
    assert await deliver(mf, members[0].key, 1) == ["skipped"]
    while log.runs["m1"] == 0:  # noqa: ASYNC110 - the freed slot went to the next member
        await asyncio.sleep(0.01)
    counts = await mf.store.redis.hmget(swarm.key, ["running", "nok", "nfail"])
    assert [int(c or 0) for c in counts] == [1, 1, 0]
    log.gates["m1"].set()
    assert await swarm.aresult(timeout=5) == [0, 1, 2]
    counts = await mf.store.redis.hmget(swarm.key, ["running", "nok", "nfail"])
    assert [int(c or 0) for c in counts] == [0, 3, 0]
    await join(mf)
    assert log.runs == {"m0": 1, "m1": 1, "m2": 1}
    assert log.fired == {"m0-ok": 1, "m1-ok": 1, "m2-ok": 1}


@pytest.mark.parametrize("config", [0.3], indirect=True)  # lease_seconds
async def test_a_run_whose_lease_ran_out_is_taken_over_but_finishes_once(
    mf: Mageflow, log: Log
) -> None:
    sig = await leaf(mf, "t", inc=1)
    envelope = Envelope(sig=sig.key, input={})
    log.gates["t"] = asyncio.Event()
    # A delivery the heartbeat does not know about: as if its process had stopped beating.
    first = asyncio.create_task(mf.runtime.run(work(mf), envelope, 0, None))
    await asyncio.sleep(0.05)
    assert await deliver(mf, sig.key, 1) == ["skipped"]  # the holder's lease is still live
    # The lease runs out: recovery sends the message again and that delivery takes over ...
    await eventually(lambda: log.runs["t"] == 2, timeout=10)
    log.gates["t"].set()
    await first  # ... and of the two finishes only the first counts
    await join(mf)
    assert log.runs == {"t": 2} and log.fired == {"t-ok": 1}
    assert await sig.astatus() is SignatureStatus.DONE


async def eventually(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - a bounded wait on state changed by other tasks
            await asyncio.sleep(0.01)


# -- durable retry cache ---------------------------------------------------------------------------


@pytest.mark.parametrize("check_status", [True, False])
async def test_durable_retry_gets_the_same_children_and_starts_them_once(
    mf: Mageflow, log: Log, sync_redis: redis.Redis, namespace: str, check_status: bool
) -> None:
    signed: list[list[str]] = []

    @mf.durable_task(retries=2)  # type: ignore[untyped-decorator]
    async def parent(msg: dict[str, Any]) -> list[Any]:
        kids = [await mf.sign("work", name=f"kid{i}", inc=i) for i in (1, 2)]
        signed.append([k.key for k in kids])
        for kid in kids:
            if not check_status or kid.status is SignatureStatus.PENDING:
                await kid.aio_run_no_wait()
        if len(signed) == 1:
            raise ConnectionError("the first attempt fails after starting its children")
        return [await kid.aresult(timeout=5) for kid in kids]

    assert await parent.aio_run() == [1, 2]
    await join(mf)
    assert len(signed) == 2 and signed[0] == signed[1]
    assert log.runs == {"kid1": 1, "kid2": 1}
    keys = [k for k in namespace_keys(sync_redis, namespace) if sync_redis.type(k) == "hash"]
    tasks = [sync_redis.hget(k, "task") for k in keys]
    assert sorted(t for t in tasks if t) == ["parent", "work", "work"]  # no stray copies


# -- abounded_field --------------------------------------------------------------------------------


async def test_abounded_field_writes_and_starts_everything_at_exit(
    mf: Mageflow, log: Log, sync_redis: redis.Redis, namespace: str
) -> None:
    await mf.start()
    before = namespace_keys(sync_redis, namespace)
    async with mf.abounded_field():
        a = await mf.sign("work", name="a", inc=1)
        chain = await mf.chain([a, await mf.sign("work", name="b", inc=10)])
        await a.kwargs.aupdate(inc=5)
        lone = await mf.sign("work", name="lone", inc=7)
        await lone.aio_run_no_wait()
        await chain.aio_run_no_wait()
        await asyncio.sleep(0.05)
        assert namespace_keys(sync_redis, namespace) == before
        assert log.runs == {}
    keys = namespace_keys(sync_redis, namespace)
    assert {chain.key, lone.key, *chain.tasks} <= set(keys)
    assert sync_redis.hget(a.key, "k:inc") == "5"
    assert await chain.aresult(timeout=5) == 15
    assert await lone.aresult(timeout=5) == 7
    await join(mf)
    assert log.runs == {"a": 1, "b": 1, "lone": 1}


async def test_abounded_field_writes_and_starts_nothing_on_error(
    mf: Mageflow, log: Log, sync_redis: redis.Redis, namespace: str
) -> None:
    await mf.start()
    before = namespace_keys(sync_redis, namespace)
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with mf.abounded_field():
            a = await mf.sign("work", name="a", inc=1)
            chain = await mf.chain([a, await mf.sign("work", name="b")])
            await a.kwargs.aupdate(inc=5)
            await chain.aio_run_no_wait()
            await (await mf.sign("work", name="lone")).aio_run_no_wait()
            raise RuntimeError("changed my mind")
    await join(mf)
    assert namespace_keys(sync_redis, namespace) == before
    assert log.runs == {}
