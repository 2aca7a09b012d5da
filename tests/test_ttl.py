"""Workflow state expires: nothing outlives a finished workflow by more than ``done_ttl``, and a
workflow that makes progress does not expire while it runs.

The general ``active_ttl`` here (30 s) is far longer than ``done_ttl`` (1 s), so a key that is only
bounded by the active TTL shows up as a leftover instead of quietly expiring during the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis

from mageflow import (
    InvalidTransitionError,
    Mageflow,
    MageflowConfig,
    Signature,
    SignatureStatus,
    SwarmConfig,
    TaskCanceledError,
    TaskFailedError,
    TTLConfig,
)
from mageflow.config import KindTTL
from tests.conftest import namespace_keys

pytestmark = pytest.mark.timeout(120)
ACTIVE_MS = 30_000


@pytest.fixture
def config(namespace: str, request: pytest.FixtureRequest) -> MageflowConfig:
    ttl = getattr(request, "param", None) or TTLConfig(active_ttl=ACTIVE_MS / 1000, done_ttl=1)
    return MageflowConfig(namespace=namespace, ttl=ttl)


class Log:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.fired: list[str] = []
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)


@pytest.fixture
async def log(mf: Mageflow) -> AsyncIterator[Log]:
    log = Log()

    @mf.task
    async def work(msg: dict[str, Any]) -> Any:
        name = msg.get("name", "")
        log.started.append(name)
        if msg.get("hold"):
            await log.gates[name].wait()
        await asyncio.sleep(msg.get("sleep", 0))
        if msg.get("fail"):
            raise ValueError(f"{name} failed")
        return name

    @mf.task
    async def on_ok(msg: dict[str, Any]) -> None:
        log.fired.append(msg["tag"])

    @mf.task
    async def on_err(msg: dict[str, Any]) -> None:
        log.fired.append(msg["tag"])

    @mf.durable_task(retries=1)  # type: ignore[untyped-decorator]
    async def parent(msg: dict[str, Any]) -> Any:
        child = await mf.sign(work, name="child")
        if child.status is SignatureStatus.PENDING:
            await child.aio_run_no_wait()
        if "parent" not in log.started:
            log.started.append("parent")
            raise ConnectionError("first attempt fails")
        return await child.aresult(timeout=5)

    yield log
    for gate in log.gates.values():
        gate.set()


async def leaf(mf: Mageflow, name: str, cbs: bool = False, **kw: Any) -> Signature:
    ok = [await mf.sign("on_ok", tag=f"{name}-ok")] if cbs else []
    err = [await mf.sign("on_err", tag=f"{name}-err")] if cbs else []
    return await mf.sign("work", name=name, success_callbacks=ok, error_callbacks=err, **kw)


def callbacks(mf: Mageflow, name: str) -> Awaitable[dict[str, Any]]:
    async def make() -> dict[str, Any]:
        return {
            "success_callbacks": [await mf.sign("on_ok", tag=f"{name}-ok")],
            "error_callbacks": [await mf.sign("on_err", tag=f"{name}-err")],
        }

    return make()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- nothing is left after done_ttl ----------------------------------------------------------------


async def task_ok(mf: Mageflow, log: Log) -> None:
    assert await (await leaf(mf, "t", cbs=True)).aio_run() == "t"


async def task_fails(mf: Mageflow, log: Log) -> None:
    with pytest.raises(TaskFailedError):
        await (await leaf(mf, "t", cbs=True, fail=True)).aio_run()


async def chain_ok(mf: Mageflow, log: Log) -> None:
    steps = [await leaf(mf, n) for n in "abc"]
    assert await (await mf.chain(steps, **await callbacks(mf, "ch"))).aio_run() == "c"


async def chain_fails(mf: Mageflow, log: Log) -> None:
    steps = [await leaf(mf, "a"), await leaf(mf, "b", fail=True), await leaf(mf, "c")]
    with pytest.raises(TaskFailedError):
        await (await mf.chain(steps, **await callbacks(mf, "ch"))).aio_run()


async def swarm_with_failure(mf: Mageflow, log: Log) -> None:
    members = [await leaf(mf, "a"), await leaf(mf, "b", fail=True), await leaf(mf, "c")]
    config = SwarmConfig(max_concurrency=2)
    cbs = await callbacks(mf, "sw")
    swarm = await mf.swarm(members, config=config, is_swarm_closed=True, **cbs)
    assert len(await swarm.aio_run()) == 3


async def swarm_aborted(mf: Mageflow, log: Log) -> None:
    members = [await leaf(mf, "a", fail=True), await leaf(mf, "b"), await leaf(mf, "c")]
    config = SwarmConfig(max_concurrency=1, stop_after_n_failures=1)
    cbs = await callbacks(mf, "sw")
    with pytest.raises(TaskFailedError):
        await (await mf.swarm(members, config=config, is_swarm_closed=True, **cbs)).aio_run()


async def steps_with_own_callbacks(mf: Mageflow, log: Log) -> None:
    steps = [await leaf(mf, "a", cbs=True), await leaf(mf, "b")]
    assert await (await mf.chain(steps)).aio_run() == "b"


async def nested(mf: Mageflow, log: Log) -> None:
    inner_swarm = await mf.swarm(
        [await leaf(mf, "s1"), await leaf(mf, "s2")],
        is_swarm_closed=True,
        **await callbacks(mf, "is"),
    )
    good = await mf.chain([await leaf(mf, "g1"), inner_swarm], **await callbacks(mf, "good"))
    bad = await mf.chain(
        [await leaf(mf, "b1", fail=True), await leaf(mf, "b2")], **await callbacks(mf, "bad")
    )
    root = await mf.swarm(
        [good, await leaf(mf, "x"), bad], is_swarm_closed=True, **await callbacks(mf, "root")
    )
    assert len(await root.aio_run()) == 3
    await mf.engine.join()
    assert sorted(log.fired) == ["bad-err", "good-ok", "is-ok", "root-ok"]


async def canceled(mf: Mageflow, log: Log) -> None:
    members = [await leaf(mf, f"m{i}", hold=True) for i in range(4)]
    config = SwarmConfig(max_concurrency=2)
    swarm = await mf.swarm(
        members, config=config, is_swarm_closed=True, **await callbacks(mf, "sw")
    )
    waiter = asyncio.create_task(swarm.aio_run())
    await until(lambda: len(log.started) >= 2)
    await swarm.cancel()
    with pytest.raises(TaskCanceledError):
        await waiter


async def suspended_then_resumed(mf: Mageflow, log: Log) -> None:
    chain = await mf.chain([await leaf(mf, "a", hold=True), await leaf(mf, "b")])
    waiter = asyncio.create_task(chain.aio_run())
    await until(lambda: bool(log.started))
    await chain.suspend()
    log.gates["a"].set()
    await asyncio.sleep(0.1)
    await chain.resume()
    assert await waiter == "b"


async def step_paused_after_its_chain_failed(mf: Mageflow, log: Log) -> None:
    chain = await mf.chain([await leaf(mf, "a", fail=True), await leaf(mf, "b", cbs=True)])
    with pytest.raises(TaskFailedError):
        await chain.aio_run()
    never = await mf.load_signature(chain.tasks[1])  # pending, and will never run
    for action in (never.suspend, never.resume):
        with contextlib.suppress(InvalidTransitionError):  # refusing is fine too
            await action()


async def durable_retry(mf: Mageflow, log: Log) -> None:
    assert await (await mf.sign("parent")).aio_run() == "child"


async def map_with_item_callbacks(mf: Mageflow, log: Log) -> None:
    """A map's template and per-member callback templates never run: they expire with it."""
    mapped = await mf.map(
        "work",
        item_success_callbacks=[await mf.sign("on_ok", tag="item-ok")],
        item_error_callbacks=[await mf.sign("on_err", tag="item-err")],
        **await callbacks(mf, "map"),
    )
    assert await mapped.aio_run({"items": ["a", "b"]}) == ["", ""]  # work returns its name
    await until(lambda: log.fired.count("item-ok") == 2 and "map-ok" in log.fired)


SCENARIOS = [
    task_ok, task_fails, chain_ok, chain_fails, swarm_with_failure, swarm_aborted,
    steps_with_own_callbacks, nested, canceled, suspended_then_resumed, durable_retry,
    step_paused_after_its_chain_failed,
    map_with_item_callbacks,
]  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_finished_workflow_leaves_no_keys_after_done_ttl(
    mf: Mageflow,
    log: Log,
    sync_redis: redis.Redis,
    namespace: str,
    scenario: Callable[[Mageflow, Log], Awaitable[None]],
) -> None:
    await scenario(mf, log)
    await mf.engine.join()
    # What stays is the namespace's, not the workflow's: the task registry, and the presence of
    # this (live) process in the workers hash.
    registry = [f"{namespace}:registry", f"{namespace}:workers"]
    deadline = asyncio.get_running_loop().time() + 3.5  # done_ttl is 1 s
    while namespace_keys(sync_redis, namespace) != registry:
        if asyncio.get_running_loop().time() > deadline:
            left = namespace_keys(sync_redis, namespace)
            pttl = {k: sync_redis.pttl(k) for k in left}
            raise AssertionError(f"keys left after done_ttl: {pttl}")
        await asyncio.sleep(0.1)


# -- the active TTL follows the workflow's progress ------------------------------------------------


def fresh(client: redis.Redis, *keys: str, ttl_ms: int = ACTIVE_MS) -> bool:
    return all(ttl_ms - 400 < int(client.pttl(k)) <= ttl_ms for k in keys)


def aged(client: redis.Redis, *keys: str, ttl_ms: int = ACTIVE_MS) -> bool:
    return all(0 < int(client.pttl(k)) < ttl_ms - 700 for k in keys)


SHORT = TTLConfig(active_ttl=3, done_ttl=1)


async def keep_ttl(client: redis.Redis, keys: list[str], seconds: float) -> None:
    """For ``seconds``, every key keeps more than a third of the 3 s active TTL."""
    for _ in range(int(seconds / 0.25)):
        await asyncio.sleep(0.25)
        left = {k: int(client.pttl(k)) for k in keys}
        assert all(ms > 1000 for ms in left.values()), left


@pytest.mark.parametrize("config", [SHORT], indirect=True)
async def test_a_workflow_that_makes_progress_never_expires(
    mf: Mageflow, log: Log, sync_redis: redis.Redis
) -> None:
    # Refreshing what a container waits for is rate-limited (once per quarter of its TTL), and
    # heartbeats refresh running tasks and their containers: nothing expires mid-run, however
    # long the run is compared with the active TTL.
    a = await leaf(mf, "a", cbs=True, hold=True)
    b = await leaf(mf, "b", hold=True)
    chain = await mf.chain([a, b])
    await a.aload()  # its callbacks moved with it
    waiting = [chain.key, a.key, b.key, a.success_callbacks[0], a.error_callbacks[0]]
    waiter = asyncio.create_task(chain.aio_run())
    await until(lambda: log.started == ["a"])
    await keep_ttl(sync_redis, waiting, 7.5)  # more than twice the active TTL
    log.gates["a"].set()
    await until(lambda: log.started == ["a", "b"])
    await chain.suspend()
    await chain.resume()
    await keep_ttl(sync_redis, [chain.key, b.key], 4)
    log.gates["b"].set()
    assert await waiter == "b"
    assert all(0 < int(sync_redis.pttl(k)) <= 1000 for k in (chain.key, b.key))


OVERRIDES = TTLConfig(
    active_ttl=ACTIVE_MS / 1000,
    done_ttl=1,
    chain=KindTTL(done_ttl=6.5),
    swarm=KindTTL(active_ttl=12.5),
)


@pytest.mark.parametrize("config", [OVERRIDES], indirect=True)
async def test_per_kind_overrides_apply(mf: Mageflow, log: Log, sync_redis: redis.Redis) -> None:
    member = await leaf(mf, "m", hold=True)
    swarm = await mf.swarm([member], is_swarm_closed=True)
    waiter = asyncio.create_task(swarm.aio_run())
    await until(lambda: log.started == ["m"])
    assert fresh(sync_redis, swarm.key, ttl_ms=12_500)
    assert fresh(sync_redis, member.key)
    log.gates["m"].set()
    assert await waiter == ["m"]

    chain = await mf.chain([await leaf(mf, "a"), await leaf(mf, "b")])
    assert await chain.aio_run() == "b"
    assert 6_000 < int(sync_redis.pttl(chain.key)) <= 6_500
    assert all(0 < int(sync_redis.pttl(k)) <= 1_000 for k in chain.tasks)


@pytest.mark.parametrize(
    "config",
    [TTLConfig(active_ttl=ACTIVE_MS / 1000, done_ttl=1, chain=KindTTL(active_ttl=5))],
    indirect=True,
)
async def test_per_kind_active_ttl_applies_from_creation(
    mf: Mageflow, log: Log, sync_redis: redis.Redis
) -> None:
    chain = await mf.chain([await leaf(mf, "a")])
    assert fresh(sync_redis, chain.key, ttl_ms=5_000)
    assert fresh(sync_redis, chain.tasks[0])


# -- a workflow longer than one TTL ----------------------------------------------------------------


@pytest.mark.parametrize("config", [TTLConfig(active_ttl=1, done_ttl=30)], indirect=True)
@pytest.mark.parametrize("kind", ["chain", "swarm"])
async def test_workflow_making_progress_outlives_the_active_ttl(
    mf: Mageflow, log: Log, kind: str
) -> None:
    # Every step is shorter than active_ttl, the whole run is longer.
    steps = [await leaf(mf, f"s{i}", sleep=0.6) for i in range(3)]
    cbs = await callbacks(mf, kind)
    if kind == "chain":
        sig: Signature = await mf.chain(steps, **cbs)
    else:
        config = SwarmConfig(max_concurrency=1)
        sig = await mf.swarm(steps, config=config, is_swarm_closed=True, **cbs)
    result = await sig.aio_run(timeout=5)
    assert result == ("s2" if kind == "chain" else ["s0", "s1", "s2"])
    await mf.engine.join()
    assert log.fired == [f"{kind}-ok"]


@pytest.mark.parametrize("config", [TTLConfig(active_ttl=30, done_ttl=1)], indirect=True)
async def test_swarm_results_outlive_early_members_done_ttl(mf: Mageflow, log: Log) -> None:
    members = [await leaf(mf, "fast"), await leaf(mf, "slow", sleep=2.2)]
    swarm = await mf.swarm(members, is_swarm_closed=True)
    assert await swarm.aio_run(timeout=5) == ["fast", "slow"]


@pytest.mark.parametrize("config", [TTLConfig(active_ttl=30, done_ttl=1)], indirect=True)
async def test_chain_paused_longer_than_done_ttl_resumes(mf: Mageflow, log: Log) -> None:
    chain = await mf.chain([await leaf(mf, "a", hold=True), await leaf(mf, "b")])
    waiter = asyncio.create_task(chain.aio_run(timeout=5))
    await until(lambda: log.started == ["a"])
    await chain.suspend()
    log.gates["a"].set()
    await asyncio.sleep(2.2)  # `a` finished long ago
    await chain.resume()
    assert await waiter == "b"


# -- every key has a TTL ---------------------------------------------------------------------------


async def test_every_key_but_the_registry_has_a_ttl(
    mf: Mageflow, log: Log, sync_redis: redis.Redis, namespace: str
) -> None:
    """Mid-run (a held task holds a lease, a swarm queues members), after an aio_run that failed
    before launching, and with a dead letter written: nothing mageflow wrote lives forever."""
    from mageflow import SerializationError
    from mageflow.poison import poison
    from mageflow.store.schema import PoisonReason

    early = await leaf(mf, "early", cbs=True)
    with pytest.raises(SerializationError):
        await early.aio_run({"when": object()})
    members = [await leaf(mf, f"m{i}", hold=True) for i in range(3)]
    swarm = await mf.swarm(members, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
    await swarm.aio_run_no_wait()
    await until(lambda: bool(log.started))
    await mf.runtime.dead.bury(poison(PoisonReason.NO_DATA, "no data"), b"", "test")

    keys = namespace_keys(sync_redis, namespace)
    assert mf.keys.shard(swarm.key).leases in keys and f"{namespace}:dead" in keys
    forever = [k for k in keys if k != f"{namespace}:registry" and sync_redis.pttl(k) < 0]
    assert forever == []
    await swarm.cancel()
