"""The Hatchet engine's own duties, offline: task declarations, dispatch, chains and swarms, cancel,
leases and workers. Same loopback setup as test_hatchet.py (see hatchet_app_fake)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

import pytest
import redis
from hatchet_app_fake import TENANT, LoopbackHatchet
from hatchet_app_fixtures import (  # noqa: F401
    drain,
    engine_of,
    hatchet_fixture,
    keep_signal_handlers_fixture,
    loopback_fixture,
    serve,
    worker_workflows,
)
from hatchet_sdk import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    RateLimit,
    Worker,
)
from hatchet_sdk.runnables.workflow import Standalone
from pydantic import BaseModel

from mageflow import ConfigurationError, Mageflow, MageflowConfig, SignatureStatus, SwarmConfig
from mageflow.engines.hatchet import HatchetEnvelope
from mageflow.models.message import ReturnValue


class Item(BaseModel):
    n: int


class Step(BaseModel):
    results: Any = None
    n: int = 0


# -- declarations ---------------------------------------------------------------------------------


async def test_declaration_payload(hatchet: Mageflow) -> None:
    @hatchet.task(
        name="declared",
        input_validator=Item,
        retries=4,
        timeout=90,
        concurrency=ConcurrencyExpression(
            expression="input.input.n",
            max_runs=3,
            limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN,
        ),
        schedule_timeout=timedelta(minutes=2),
        rate_limits=[RateLimit(static_key="api", units=2)],
        backoff_factor=2.0,
        description="a declared task",
    )
    async def declared(msg: Item) -> None:
        pass

    assert isinstance(declared.standalone, Standalone)
    proto = declared.standalone.to_proto()
    (task,) = proto.tasks
    assert proto.name == "declared" and proto.description == "a declared task"
    assert (task.readable_id, task.action) == ("declared", "declared:declared")
    assert task.retries == 4
    assert task.timeout == "105s"  # the task's 90 s plus the grace that lets mageflow's fire first
    assert task.schedule_timeout == "2m"
    assert [(c.expression, c.max_runs) for c in task.concurrency] == [("input.input.n", 3)]
    assert task.rate_limits[0].key == "api" and task.rate_limits[0].units == 2
    assert task.backoff_factor == 2.0 and not task.is_durable
    schema = json.loads(proto.input_json_schema)
    assert schema["title"] == "HatchetEnvelope" and "sig" in schema["properties"]
    assert hatchet.tasks["declared"].timeout == 90


async def test_declaration_defaults_and_durable(hatchet: Mageflow) -> None:
    @hatchet.task(name="defaults", concurrency=2)
    async def defaults(msg: Item) -> None:
        pass

    @hatchet.durable_task(name="durable-one")
    async def durable_one(msg: Item) -> None:
        pass

    (task,) = defaults.standalone.to_proto().tasks
    assert task.retries == 0 and task.timeout == "75s"  # Hatchet's 60 s default, plus grace
    assert hatchet.tasks["defaults"].timeout == 60  # which mageflow now enforces too
    assert [c.max_runs for c in task.concurrency] == [2]
    (durable,) = durable_one.standalone.to_proto().tasks
    assert durable.is_durable


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_events": ["user:created"]}, "on_events= is not supported"),
        ({"on_crons": ["* * * * *"]}, "on_crons= is not supported"),
        ({"colour": "red"}, "unknown option(s) colour"),
    ],
)
async def test_declaration_rejects_what_cannot_work(
    hatchet: Mageflow, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):

        @hatchet.task(name="rejected", **options)
        async def rejected(msg: Item) -> None:
            pass


# -- dispatch -------------------------------------------------------------------------------------


async def test_producer_dispatches_by_name_without_the_task(
    loopback: LoopbackHatchet,
    hatchet: Mageflow,
    redis_url: str,
    config: MageflowConfig,
) -> None:
    """A producer process signs a task only a worker registered; the run goes out by name."""

    @hatchet.task(name="remote-task", input_validator=Item)
    async def remote_task(msg: Item) -> int:
        return msg.n + 1

    await hatchet.start()  # the worker publishes its tasks to the registry
    producer = Mageflow(loopback.client(), redis_url, config=config)
    try:
        sig = await producer.sign("remote-task")
        await sig.aio_run_no_wait(Item(n=1))
        (run,) = loopback.triggered()
        assert run.name == "remote-task" and run.input["input"] == {"n": 1}
        assert engine_of(producer).standalone("remote-task") is not remote_task.standalone
        await drain(loopback, hatchet)  # the worker runs it
        assert await sig.astatus() is SignatureStatus.DONE and sig.result_value == 2
        assert (await sig.aload())._record.get("run") == run.run_id
    finally:
        await producer.close()


async def test_hatchet_metadata_is_carried_to_dispatched_runs(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    @hatchet.task(name="first", input_validator=Item)
    async def first(msg: Item) -> int:
        return msg.n

    @hatchet.task(name="second", input_validator=Step)
    async def second(msg: Step) -> None:
        pass

    nxt = await hatchet.sign("second")
    sig = await hatchet.sign("first", success_callbacks=[nxt])
    await sig.aio_run_no_wait(Item(n=1))
    (run,) = loopback.triggered()
    run.request.additional_metadata = json.dumps({**run.metadata, "customer": "acme"})
    await drain(loopback, hatchet)
    sent = loopback.run_for(nxt.key).metadata
    assert sent["customer"] == "acme"  # the user's metadata travels on
    assert sent["mageflow_signature"] == nxt.key  # mageflow's own keys are the new run's
    assert sent["mageflow_workflow"] == run.metadata["mageflow_workflow"]


async def test_a_payload_that_is_not_an_envelope_fails_without_retries(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    @hatchet.task(name="guarded", input_validator=Item, retries=3)
    async def guarded(msg: Item) -> None:
        pass

    from hatchet_sdk import NonRetryableException

    with pytest.raises(NonRetryableException, match="not a mageflow envelope"):
        await guarded.standalone.aio_mock_run(input=HatchetEnvelope())


# -- chains and swarms ----------------------------------------------------------------------------


async def test_chain_runs_step_by_step_through_hatchet(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    @hatchet.task(name="add-one", input_validator=Step)
    async def add_one(msg: Step) -> int:
        return (msg.results if msg.results is not None else msg.n) + 1

    chain = await hatchet.chain([add_one, add_one, add_one])
    assert await serve(loopback, hatchet, chain.aio_run(Step(n=10))) == 13
    runs = loopback.triggered("add-one")
    assert len(runs) == 3 and all(r.status == "COMPLETED" for r in runs)
    assert [r.input["has_ret"] for r in runs] == [False, True, True]
    assert [r.input["ret"] for r in runs] == [None, 11, 12]


class Collected(BaseModel):
    values: ReturnValue[list[Any]]


async def test_swarm_runs_members_through_hatchet(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    got: list[list[Any]] = []

    @hatchet.task(name="square", input_validator=Item)
    async def square(msg: Item) -> int:
        return msg.n * msg.n

    @hatchet.task(name="collect", input_validator=Collected)
    async def collect(msg: Collected) -> None:
        got.append(msg.values)

    members = [await hatchet.sign(square, n=i) for i in range(4)]
    swarm = await hatchet.swarm(
        members,
        success_callbacks=[await hatchet.sign(collect)],
        config=SwarmConfig(max_concurrency=2),
        is_swarm_closed=True,
    )
    await swarm.aio_run_no_wait({})
    assert len(loopback.triggered("square")) == 2  # only max_concurrency members were sent
    await drain(loopback, hatchet)
    assert got == [[0, 1, 4, 9]]
    assert len(loopback.triggered("square")) == 4


# -- cancel ---------------------------------------------------------------------------------------


def _cancelled_ids(loopback: LoopbackHatchet) -> list[Any]:
    path = f"/api/v1/stable/tenants/{TENANT}/tasks/cancel"
    return [body for p, body in loopback.rest_calls if p == path]


async def test_cancel_calls_hatchet_with_the_run_id(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    engine = engine_of(hatchet)
    assert await engine.cancel("3d1b3a26-ed5e-4eb5-a1bf-b1dfa99df5b0")
    assert _cancelled_ids(loopback) == [{"externalIds": ["3d1b3a26-ed5e-4eb5-a1bf-b1dfa99df5b0"]}]

    key = "ns:sig:{abc123}:def456"
    assert await engine.cancel(key)  # no run id stored yet: cancel by the signature's metadata
    body = _cancelled_ids(loopback)[1]
    assert body["filter"]["additionalMetadata"] == ["mageflow_sig_id:def456"]
    assert "since" in body["filter"]
    assert not await engine.cancel("neither-a-run-nor-a-signature")


#: Upper bound of every wait in the sibling-cancel test: nothing there waits unbounded.
BOUND = 10.0


async def test_a_failing_member_cancels_its_running_sibling_through_the_hatchet_api(
    hatchet: Mageflow, loopback: LoopbackHatchet
) -> None:
    # What the offline stand-in can show: the failing member makes mageflow ask Hatchet's REST API
    # to cancel the sibling's run, by the run id dispatch stored. No server stops that run here,
    # so the sibling is released and finishes on its own; its signature stays canceled.
    # The members are told apart by their bound kwargs, never by dispatch order (both are sent
    # at once); they run one at a time in a fixed order; every wait is bounded.
    started, release = asyncio.Event(), asyncio.Event()

    @hatchet.task(name="member", input_validator=Item)
    async def member(msg: Item) -> int:
        if msg.n == 0:
            raise ValueError("first member fails")
        started.set()
        await asyncio.wait_for(release.wait(), BOUND)
        return msg.n

    swarm = await hatchet.swarm(
        [await hatchet.sign(member, n=0), await hatchet.sign(member, n=1)],
        config=SwarmConfig(stop_after_n_failures=1),
        is_swarm_closed=True,
    )
    await asyncio.wait_for(swarm.aio_run_no_wait({}), BOUND)  # returns once both are dispatched
    runs = loopback.triggered("member")
    assert len(runs) == 2
    by_n = {(await hatchet.load_signature(r.input["sig"])).kwargs["n"]: r for r in runs}
    failing, running = by_n[0], by_n[1]
    (workflow,) = [w for w in worker_workflows(hatchet) if w.name == "member"]
    assert isinstance(workflow, Standalone)

    busy = asyncio.ensure_future(loopback.execute(workflow, running))
    try:
        await asyncio.wait_for(started.wait(), BOUND)  # the sibling is now running
        record = (await hatchet.load_signature(running.input["sig"]))._record
        assert record.status == "active"
        assert record.get("run") == running.run_id  # dispatch's run id was stored
        await asyncio.wait_for(loopback.execute(workflow, failing), BOUND)
        assert failing.status == "FAILED" and failing.attempts == [0]
        assert _cancelled_ids(loopback) == [{"externalIds": [running.run_id]}]
        assert await asyncio.wait_for(swarm.astatus(), BOUND) is SignatureStatus.FAILED
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(busy, return_exceptions=True), BOUND)
    sibling = await hatchet.load_signature(running.input["sig"])
    assert await sibling.astatus() is SignatureStatus.CANCELED  # its late result changes nothing


# -- leases ---------------------------------------------------------------------------------------


async def test_running_tasks_keep_their_lease(
    loopback: LoopbackHatchet, redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    client = Mageflow(
        loopback.client(), redis_url, config=MageflowConfig(namespace=namespace, lease_seconds=0.3)
    )
    leases: list[int] = []

    @client.task(name="long", input_validator=Item)
    async def long(msg: Item) -> None:
        for _ in range(6):
            await asyncio.sleep(0.15)
            leases.append(int(sync_redis.zscore(client.keys.shard(sig.key).leases, sig.key) or 0))

    try:
        sig = await client.sign("long")
        await sig.aio_run_no_wait(Item(n=1))
        await drain(loopback, client)
        assert await sig.astatus() is SignatureStatus.DONE
        assert len(set(leases)) >= 3 and leases == sorted(leases)  # extended while it ran
        assert engine_of(client)._running == {}
    finally:
        await client.close()
        sync_redis.delete(*sync_redis.scan_iter(f"{namespace}:*"))


# -- workers --------------------------------------------------------------------------------------


async def test_worker_registers_mageflow_tasks_and_user_workflows(
    hatchet: Mageflow, loopback: LoopbackHatchet, keep_signal_handlers: None
) -> None:
    @hatchet.task(name="mf-a", input_validator=Item)
    async def mf_a(msg: Item) -> None:
        pass

    @hatchet.task(name="mf-b", input_validator=Item)
    async def mf_b(msg: Item) -> None:
        pass

    sdk = engine_of(hatchet).hatchet

    @sdk.task(name="plain-hatchet-task")
    async def plain(input: Any, ctx: Context) -> None:
        pass

    events: list[str] = []

    async def lifespan() -> AsyncGenerator[dict[str, str], None]:
        events.append(f"setup, mageflow started: {hatchet.store is not None}")
        yield {"db": "conn"}
        events.append("teardown")

    worker = hatchet.worker("test-worker", slots=7, workflows=[plain, mf_b], lifespan=lifespan)
    assert isinstance(worker, Worker) and worker.slots == 7
    names = [w.name for w in worker._workflows]
    assert names == ["mf-a", "mf-b", "plain-hatchet-task"]  # mf_b unwrapped and not doubled
    for workflow in worker._workflows:  # what the worker sends Hatchet when it starts
        await worker.aio_register_workflow(workflow)
    assert [r.name for r in loopback.registered] == names
    assert loopback.registered[0].tasks[0].action == "mf-a:mf-a"

    assert worker._lifespan is not None
    gen = worker._lifespan()
    assert await anext(gen) == {"db": "conn"}  # what tasks see as ctx.lifespan
    assert events == ["setup, mageflow started: True"]
    with pytest.raises(StopAsyncIteration):
        await anext(gen)
    assert events[-1] == "teardown"
    with pytest.raises(ConfigurationError, match="not started"):
        hatchet.store  # noqa: B018  (mageflow was closed with the worker)


async def test_worker_without_user_lifespan(hatchet: Mageflow, keep_signal_handlers: None) -> None:
    worker = hatchet.worker("bare")
    assert worker._lifespan is not None
    gen = worker._lifespan()
    assert await anext(gen) is None
    assert hatchet.store is not None
    with pytest.raises(StopAsyncIteration):
        await anext(gen)
    with pytest.raises(ConfigurationError, match="must be Hatchet workflows or mageflow tasks"):
        engine_of(hatchet).worker_workflows(hatchet, [object()])
