"""Delays and rate limits on the in-process engine (docs/scheduling.md).

Times that decide "not before its due time" are read from the records, all on Redis's clock: the
due time (``Field.DUE``) and the claim that started a task (``Field.STARTED``). Tasks also note
their own start on the local clock (the same host's clock here), for the bounds a body sees.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

import mageflow
from mageflow import (
    InvalidArgumentError,
    InvalidSettingError,
    InvalidValueError,
    Mageflow,
    MageflowConfig,
    RateLimit,
    Signature,
    SignatureStatus,
    SwarmConfig,
    TaskCanceledError,
)
from mageflow.engines.inproc import InProcContext
from mageflow.envelope import Envelope
from mageflow.inspection import iso, workflow_tree
from mageflow.store.keys import KeySchema
from mageflow.store.schema import Field
from tests.rates import most_in_window

S = SignatureStatus
pytestmark = pytest.mark.timeout(120)


@dataclass
class Runs:
    """What the tasks of a test did: (name, local start ms, attempt) in start order."""

    starts: list[tuple[str, float, int]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.starts]

    def count(self, name: str) -> int:
        return self.names().count(name)


def register(mf: Mageflow, runs: Runs) -> None:
    async def note(msg: dict[str, Any], ctx: InProcContext) -> str:
        runs.starts.append((msg.get("name", "?"), time.time() * 1000, ctx.attempt))
        return str(msg.get("name", "?"))

    mf.task(name="work")(note)
    mf.task(name="limited", rate_limit="10/s")(note)
    mf.task(name="per_customer", rate_limit=RateLimit("2/s", key="customer"))(note)


@pytest.fixture
async def runs(mf: Mageflow) -> AsyncIterator[Runs]:
    found = Runs()
    register(mf, found)
    yield found


def redis_ms(sync_redis: redis.Redis) -> int:
    seconds, micros = sync_redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def field_ms(sig: Signature, name: Field) -> int:
    value = (await sig.aload())._record.get(name)
    assert value, f"{sig.key} has no {name}"
    return int(value)


def delayed_entries(sync_redis: redis.Redis, namespace: str, key: str) -> list[str]:
    delayed = KeySchema(namespace).shard(key).delayed
    return [e for e in sync_redis.zrange(delayed, 0, -1) if e.startswith(key + "@")]


# -- delays ---------------------------------------------------------------------------------------


async def test_a_delayed_task_waits_for_its_due_time_then_runs(
    mf: Mageflow, runs: Runs, sync_redis: redis.Redis, namespace: str
) -> None:
    sig = await mf.sign("work", name="late")
    before = redis_ms(sync_redis)
    await sig.aio_run_no_wait({}, delay=0.8)
    due = await field_ms(sig, Field.DUE)
    assert due >= before + 800
    assert delayed_entries(sync_redis, namespace, sig.key) == [f"{sig.key}@{due}"]
    await asyncio.sleep(0.4)
    assert runs.count("late") == 0 and await sig.astatus() is S.PENDING
    assert await sig.aresult(timeout=10) == "late"
    assert await field_ms(sig, Field.STARTED) >= due
    assert runs.starts[0][1] >= due
    assert delayed_entries(sync_redis, namespace, sig.key) == []


async def test_a_timedelta_delay_and_aio_run_wait_too(mf: Mageflow, runs: Runs) -> None:
    sig = await mf.sign("work", name="td")
    assert await sig.aio_run({}, delay=timedelta(milliseconds=300), timeout=10) == "td"
    assert await field_ms(sig, Field.STARTED) >= await field_ms(sig, Field.DUE)

    @mf.task(name="shortcut")
    async def shortcut(msg: dict[str, Any]) -> str:
        return "ran"

    # The decorated task's shortcuts take them too (and refuse bad ones before signing).
    started = await shortcut.aio_run_no_wait({}, delay=0.3)
    assert await field_ms(started, Field.DUE) > 0 and await started.aresult(timeout=10) == "ran"
    assert await shortcut.aio_run({}, at=datetime.now(UTC) + timedelta(seconds=0.2)) == "ran"
    with pytest.raises(InvalidValueError):
        await shortcut.aio_run({}, delay=-1)


async def test_at_runs_at_an_aware_datetime_and_a_past_one_at_once(
    mf: Mageflow, runs: Runs
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=0.6)
    sig = await mf.sign("work", name="at")
    await sig.aio_run_no_wait({}, at=at)
    assert await field_ms(sig, Field.DUE) == round(at.timestamp() * 1000)
    assert await sig.aresult(timeout=10) == "at"
    assert await field_ms(sig, Field.STARTED) >= round(at.timestamp() * 1000)

    past = await mf.sign("work", name="past")
    await past.aio_run_no_wait({}, at=datetime.now(UTC) - timedelta(hours=1))
    assert await past.aresult(timeout=10) == "past"  # due at once: no wait of an hour


async def test_a_delayed_chain_starts_its_first_step_only_when_due(
    mf: Mageflow, runs: Runs
) -> None:
    chain = await mf.chain([await mf.sign("work", name="c1"), await mf.sign("work", name="c2")])
    await chain.aio_run_no_wait({}, delay=0.6)
    due = await field_ms(chain, Field.DUE)
    await asyncio.sleep(0.3)
    assert runs.starts == []
    assert await chain.aresult(timeout=10) == "c2"
    first = await mf.load_signature(chain.tasks[0])
    assert await field_ms(first, Field.STARTED) >= due
    assert runs.names() == ["c1", "c2"]


async def test_a_delayed_swarm_starts_no_member_before_it_is_due(mf: Mageflow, runs: Runs) -> None:
    members = [await mf.sign("work", name=f"m{i}") for i in range(3)]
    swarm = await mf.swarm(members, config=SwarmConfig(max_concurrency=3), is_swarm_closed=True)
    await swarm.aio_run_no_wait({}, delay=0.6)
    due = await field_ms(swarm, Field.DUE)
    assert await swarm.aresult(timeout=10) == ["m0", "m1", "m2"]
    for key in await swarm.tasks():
        assert await field_ms(await mf.load_signature(key), Field.STARTED) >= due


async def test_sign_delay_holds_a_success_callback_after_its_task(mf: Mageflow, runs: Runs) -> None:
    callback = await mageflow.sign("work", name="cb", delay=0.6)
    main = await mf.sign("work", name="main", success_callbacks=[callback])
    assert await main.aio_run({}, timeout=10) == "main"
    ended = await field_ms(main, Field.FINISHED)
    await asyncio.sleep(0.3)
    assert runs.names() == ["main"]  # the callback waits its delay after it was queued
    cb = await mf.load_signature(main.success_callbacks[0])
    assert await field_ms(cb, Field.DUE) >= ended + 600
    await cb.aresult(timeout=10)
    assert await field_ms(cb, Field.STARTED) >= ended + 600
    assert runs.names() == ["main", "cb"]


async def test_an_early_delivery_of_a_waiting_task_is_deferred_not_run(
    mf: Mageflow, runs: Runs
) -> None:
    """Whatever delivers the message before it is due (a stray copy, a direct dispatch), the
    claim refuses it and does not count an attempt."""
    sig = await mf.sign("work", name="early")
    await sig.aio_run_no_wait({}, delay=2)
    outcome = await mf.runtime.run(
        mf.tasks["work"], Envelope(sig.key, {}), 0, InProcContext(sig.key, "work", 0, 0)
    )
    assert outcome.status == "deferred"
    assert runs.starts == [] and await sig.astatus() is S.PENDING
    await sig.cancel()


# -- lifecycle while waiting ------------------------------------------------------------------


@pytest.mark.parametrize("pause", ["suspend", "interrupt"])
async def test_resumed_before_its_due_time_it_still_waits_for_it(
    mf: Mageflow, runs: Runs, pause: str
) -> None:
    sig = await mf.sign("work", name="r")
    await sig.aio_run_no_wait({}, delay=1.2)
    due = await field_ms(sig, Field.DUE)
    await getattr(sig, pause)()
    assert sig.status is (S.SUSPENDED if pause == "suspend" else S.INTERRUPTED)
    await asyncio.sleep(0.2)
    await sig.resume()
    await asyncio.sleep(0.3)
    assert runs.starts == [] and await sig.astatus() is S.PENDING
    assert await sig.aresult(timeout=10) == "r"
    assert await field_ms(sig, Field.STARTED) >= due
    assert runs.count("r") == 1


async def test_resumed_after_its_due_time_it_runs_at_once(
    mf: Mageflow, runs: Runs, sync_redis: redis.Redis, namespace: str
) -> None:
    sig = await mf.sign("work", name="r")
    await sig.aio_run_no_wait({}, delay=0.5)
    await sig.suspend()
    await asyncio.sleep(1.2)  # past due: the release leaves the message parked on the record
    assert runs.starts == [] and await sig.astatus() is S.SUSPENDED
    assert delayed_entries(sync_redis, namespace, sig.key) == []
    resumed = redis_ms(sync_redis)
    await sig.resume()
    assert await sig.aresult(timeout=10) == "r"
    # Its wait was served before the resume: no second delay (that would be >= 500 ms).
    assert await field_ms(sig, Field.STARTED) - resumed < 450
    assert runs.count("r") == 1


async def test_canceled_while_waiting_it_never_runs(
    mf: Mageflow, runs: Runs, sync_redis: redis.Redis, namespace: str
) -> None:
    sig = await mf.sign("work", name="never")
    await sig.aio_run_no_wait({}, delay=0.4)
    await sig.cancel()
    assert sig.status is S.CANCELED
    await asyncio.sleep(1.0)
    assert runs.starts == []
    assert await sig.astatus() is S.CANCELED
    assert delayed_entries(sync_redis, namespace, sig.key) == []  # released, and dropped
    with pytest.raises(TaskCanceledError):
        await sig.aresult(timeout=2)


async def test_a_canceled_waiting_chain_runs_no_step(mf: Mageflow, runs: Runs) -> None:
    chain = await mf.chain([await mf.sign("work", name="c1"), await mf.sign("work", name="c2")])
    await chain.aio_run_no_wait({}, delay=0.4)
    await chain.cancel()
    await asyncio.sleep(1.0)
    assert runs.starts == []
    for key in [chain.key, *chain.tasks]:
        assert await (await mf.load_signature(key)).astatus() is S.CANCELED


async def test_the_delay_survives_a_restart_and_runs_once(
    mf: Mageflow, runs: Runs, redis_url: str, config: MageflowConfig
) -> None:
    sig = await mf.sign("work", name="restart")
    await sig.aio_run_no_wait({}, delay=1.0)
    due = await field_ms(sig, Field.DUE)
    await mf.close()  # gone before it is due: nothing in this process will release it
    assert runs.starts == []
    later = Mageflow(None, redis_url, config=config)
    register(later, runs)
    try:
        again = await later.load_signature(sig.key)
        assert await again.aresult(timeout=10) == "restart"
        assert await field_ms(again, Field.STARTED) >= due
        await asyncio.sleep(0.5)
        assert runs.count("restart") == 1
    finally:
        await later.close()


async def test_two_clients_releasing_at_once_run_each_message_once(
    mf: Mageflow, runs: Runs, redis_url: str, config: MageflowConfig
) -> None:
    other = Mageflow(None, redis_url, config=config)
    register(other, runs)
    try:
        await other.start()
        at = datetime.now(UTC) + timedelta(seconds=0.5)
        sigs = [await mf.sign("work", name=f"x{i}") for i in range(30)]
        for sig in sigs:
            await sig.aio_run_no_wait({}, at=at)
        for sig in sigs:
            await sig.aresult(timeout=10)
        await asyncio.sleep(0.3)
        assert sorted(runs.names()) == sorted(f"x{i}" for i in range(30))
    finally:
        await other.close()


async def test_tree_shows_when_a_waiting_node_is_due(mf: Mageflow, runs: Runs) -> None:
    step = await mf.sign("work", name="s")
    chain = await mf.chain([step])
    await chain.aio_run_no_wait({}, delay=1.0)
    due = await field_ms(chain, Field.DUE)
    tree = await workflow_tree(mf.store, chain.key)
    assert tree["due_at"] == iso(due) and tree["due_at"].endswith("Z")
    assert tree["children"][0]["due_at"] is None  # the step does not wait for a time itself
    await chain.aresult(timeout=10)
    assert (await workflow_tree(mf.store, chain.key))["due_at"] is None


async def test_bad_delays_raise_typed_errors_and_write_nothing(mf: Mageflow, runs: Runs) -> None:
    sig = await mf.sign("work", name="ok")
    naive = datetime.now() + timedelta(seconds=1)
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"delay": -1}, InvalidValueError),
        ({"delay": float("nan")}, InvalidValueError),
        ({"delay": "5"}, InvalidArgumentError),
        ({"delay": True}, InvalidArgumentError),
        ({"at": naive}, InvalidValueError),
        ({"at": "tomorrow"}, InvalidArgumentError),
        ({"delay": 1, "at": datetime.now(UTC)}, InvalidValueError),
        ({"delay": 3 * 24 * 3600}, InvalidValueError),  # past the 1-day active TTL
    ]
    for kwargs, error in cases:
        with pytest.raises(error):
            await sig.aio_run_no_wait({}, **kwargs)
    with pytest.raises(InvalidValueError):
        await mf.sign("work", delay=-0.5)
    with pytest.raises(InvalidArgumentError):
        await mageflow.sign("work", delay="soon")
    # Nothing was launched or parked by the refused calls: it still runs normally.
    assert await sig.astatus() is S.PENDING and not sig._record.get(Field.DUE)
    assert await sig.aio_run({}, timeout=10) == "ok"


@pytest.mark.parametrize("bad", ["100/d", "10 / s", "0/s", "abc", "1.5/s", "2000/s", 100, object()])
def test_a_bad_rate_limit_is_refused_at_decoration(mf: Mageflow, bad: Any) -> None:
    with pytest.raises(InvalidSettingError):

        @mf.task(name="bad", rate_limit=bad)
        async def bad_task(msg: dict[str, Any]) -> None: ...


def test_rate_limit_forms_and_key() -> None:
    assert RateLimit("100/s").stored == "100/1000"
    assert RateLimit("10/m").stored == "10/60000"
    assert RateLimit("1000/h").stored == "1000/3600000"
    with pytest.raises(InvalidSettingError):
        RateLimit("5/s", key="")


# -- rate limits ------------------------------------------------------------------------------


async def started_ms(mf: Mageflow, sigs: list[Signature]) -> list[int]:
    return [await field_ms(s, Field.STARTED) for s in sigs]


async def test_a_rate_limited_task_never_exceeds_its_limit_runs_in_order_and_drops_none(
    mf: Mageflow, runs: Runs, sync_redis: redis.Redis, namespace: str
) -> None:
    sigs = [await mf.sign("limited", name=f"n{i:02d}") for i in range(25)]
    for sig in sigs:
        await sig.aio_run_no_wait({})
    for sig in sigs:
        await sig.aresult(timeout=30)
    claims = await started_ms(mf, sigs)
    # Never early: the i-th reservation is i intervals (100 ms) after the first.
    assert all(c - claims[0] >= 100 * i for i, c in enumerate(claims))
    # The recorded starts (the limiter's grants, Redis clock) hold the limit exactly; a body
    # starts a moment after its claim,
    # and that moment varies, so two bodies may share a window's edge: one more is tolerated.
    assert most_in_window([float(c) for c in claims], 1000) <= 10
    assert most_in_window([t for _, t, _ in runs.starts], 1000) <= 11
    assert runs.names() == [f"n{i:02d}" for i in range(25)]  # submission order, none dropped
    assert {attempt for _, _, attempt in runs.starts} == {0}  # waiting is not an attempt
    limiter = f"{namespace}:rate:limited"
    assert 0 < sync_redis.pttl(limiter) <= 2 * 1000 + 100  # gone a window after its last slot


async def test_per_key_limits_are_independent_and_read_kwargs_or_input(
    mf: Mageflow, runs: Runs, sync_redis: redis.Redis, namespace: str
) -> None:
    # Customer a's key is a bound kwarg on some and in the message on others: one limiter.
    a = [await mf.sign("per_customer", name=f"a{i}", customer="a") for i in range(2)]
    a += [await mf.sign("per_customer", name=f"a{i}") for i in range(2, 4)]
    b = [await mf.sign("per_customer", name=f"b{i}") for i in range(4)]
    for sig in a[:2]:
        await sig.aio_run_no_wait({})
    for sig in a[2:]:
        await sig.aio_run_no_wait({"customer": "a"})
    for sig in b:
        await sig.aio_run_no_wait({"customer": "b"})
    for sig in a + b:
        await sig.aresult(timeout=30)
    a_claims, b_claims = await started_ms(mf, a), await started_ms(mf, b)
    for claims in (a_claims, b_claims):
        assert all(c - claims[0] >= 500 * i for i, c in enumerate(claims))  # 2/s each
    # Had b waited behind a (one limiter), its first start would be >= 2 s after a's.
    assert b_claims[0] - a_claims[0] < 1000
    assert (
        sync_redis.exists(f"{namespace}:rate:per_customer:a", f"{namespace}:rate:per_customer:b")
        == 2
    )


async def test_releases_that_come_late_do_not_bunch_past_the_limit(
    mf: Mageflow, runs: Runs
) -> None:
    """Slots are reserved 100 ms apart, but if nothing releases them on time (here: the
    scheduler is stopped until every slot has passed) they all come due together; the limiter
    still lets at most 10 start in any second."""
    sigs = [await mf.sign("limited", name=f"n{i:02d}") for i in range(16)]
    await mf.start()
    assert mf._keeper is not None
    await mf._keeper.scheduler.stop()
    for sig in sigs:
        await sig.aio_run_no_wait({})
    await asyncio.sleep(2.0)  # every slot (the last 1.5 s after the first) has passed
    assert runs.names() == ["n00"]
    await mf._keeper.scheduler.start()
    for sig in sigs:
        await sig.aresult(timeout=30)
    claims = await started_ms(mf, sigs)
    assert most_in_window([float(c) for c in claims], 1000) <= 10
    assert sorted(runs.names()) == [f"n{i:02d}" for i in range(16)]


async def test_the_limit_holds_across_two_clients(
    mf: Mageflow, runs: Runs, redis_url: str, config: MageflowConfig
) -> None:
    other = Mageflow(None, redis_url, config=config)
    register(other, runs)
    try:
        mine = [await mf.sign("limited", name=f"m{i}") for i in range(8)]
        theirs = [await other.sign("limited", name=f"o{i}") for i in range(8)]
        await asyncio.gather(
            *(s.aio_run_no_wait({}) for s in mine), *(s.aio_run_no_wait({}) for s in theirs)
        )
        for sig in mine + theirs:
            await sig.aresult(timeout=30)
        claims = sorted(await started_ms(mf, mine + theirs))
        assert most_in_window([float(c) for c in claims], 1000) <= 10
        assert all(c - claims[0] >= 100 * i for i, c in enumerate(claims))
        assert sorted(runs.names()) == sorted(
            [f"m{i}" for i in range(8)] + [f"o{i}" for i in range(8)]
        )
    finally:
        await other.close()


async def test_waiting_work_and_its_indexes_have_ttls(
    mf: Mageflow, runs: Runs, sync_redis: redis.Redis, namespace: str
) -> None:
    sig = await mf.sign("work", name="ttl")
    await sig.aio_run_no_wait({}, delay=5)
    assert sync_redis.pttl(mf.keys.shard(sig.key).delayed) > 0
    assert sync_redis.pttl(sig.key) > 0
    await sig.cancel()
