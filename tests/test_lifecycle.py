"""Suspend, interrupt, resume and cancel of tasks, chains and swarms.

Tasks record when they start, end or get cancelled, and hold on a gate when asked to, so each test
checks what really ran (and what never got past its start) as well as the statuses in Redis.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import mageflow
from mageflow import (
    ChainSignature,
    InvalidTransitionError,
    Mageflow,
    Signature,
    SignatureNotFoundError,
    SignatureStatus,
    SwarmConfig,
    SwarmSignature,
    TaskAlreadyRunningError,
    TaskCanceledError,
    is_failed_result,
)
from mageflow.envelope import Envelope

S = SignatureStatus
pytestmark = pytest.mark.timeout(120)


class Log:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[str] = []
        self.cancelled: list[str] = []
        self.fired: Counter[str] = Counter()
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def open(self, *names: str) -> None:
        for name in names:
            self.gates[name].set()


@pytest.fixture
async def log(mf: Mageflow) -> AsyncIterator[Log]:
    log = Log()

    @mf.task
    async def work(msg: dict[str, Any]) -> Any:
        name = msg["name"]
        log.started.append(name)
        try:
            if msg.get("hold"):
                await log.gates[name].wait()
        except asyncio.CancelledError:
            log.cancelled.append(name)
            raise
        log.ended.append(name)
        return msg.get("results", msg.get("start", 0)) + msg.get("inc", 0)

    @mf.task
    async def on_ok(msg: dict[str, Any]) -> None:
        log.fired[msg["tag"]] += 1

    @mf.task
    async def on_err(msg: dict[str, Any]) -> None:
        log.fired[msg["tag"]] += 1

    yield log
    log.open(*log.gates)  # never leave a held task behind for the client's shutdown


async def task(mf: Mageflow, name: str, *, cbs: bool = False, **kw: Any) -> Signature:
    ok = [await mf.sign("on_ok", tag=f"{name}-ok")] if cbs else []
    err = [await mf.sign("on_err", tag=f"{name}-err")] if cbs else []
    return await mf.sign("work", name=name, success_callbacks=ok, error_callbacks=err, **kw)


async def join(mf: Mageflow) -> None:
    await mf.engine.join()


async def status_of(mf: Mageflow, key: str) -> SignatureStatus:
    return SignatureStatus((await mf.store.load(key)).status)


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value if isinstance(value, bool) else await value:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- single tasks ----------------------------------------------------------------------------------


async def test_suspended_pending_task_parks_its_message_and_runs_once_on_resume(
    mf: Mageflow, log: Log
) -> None:
    sig = await task(mf, "t", cbs=True, inc=2)
    await sig.suspend()
    assert sig.status is S.SUSPENDED
    await mf.engine.dispatch("work", Envelope(sig=sig.key, input={"start": 40}))
    await eventually(lambda: _has_env(mf, sig.key))
    await asyncio.sleep(0.05)
    await join(mf)
    assert log.started == []
    assert await status_of(mf, sig.key) is S.SUSPENDED

    await sig.resume()
    assert await sig.aresult(timeout=5) == 42  # the parked message, not a new one
    await join(mf)
    assert log.started == ["t"]
    assert log.fired == {"t-ok": 1}


async def _has_env(mf: Mageflow, key: str) -> bool:
    return bool((await mf.store.load(key)).get("env"))


async def test_running_task_refuses_suspend_and_interrupt_stops_it(mf: Mageflow, log: Log) -> None:
    sig = await task(mf, "t", cbs=True, hold=True, inc=5)
    waiter = asyncio.create_task(sig.aio_run({"start": 1}))
    await eventually(lambda: log.started == ["t"])
    with pytest.raises(TaskAlreadyRunningError) as info:  # suspend would let it finish: refused
        await sig.suspend()
    assert isinstance(info.value, InvalidTransitionError) and info.value.status == "active"
    await sig.interrupt()
    assert sig.status is S.INTERRUPTED
    await eventually(lambda: log.cancelled == ["t"])
    await asyncio.sleep(0.05)
    assert log.ended == [] and not waiter.done()

    log.open("t")
    await sig.resume()
    assert await asyncio.wait_for(waiter, 5) == 6  # same message again, run from the start
    await join(mf)
    assert log.started == ["t", "t"] and log.ended == ["t"]
    assert log.fired == {"t-ok": 1}


@pytest.mark.parametrize("running", [False, True])
async def test_cancel_stops_a_task_for_good(mf: Mageflow, log: Log, running: bool) -> None:
    sig = await task(mf, "t", cbs=True, hold=True)
    if running:
        waiter = asyncio.create_task(sig.aio_run())
        await eventually(lambda: log.started == ["t"])
    else:
        await mf.notifier.watch(sig.key)
        waiter = asyncio.create_task(sig.aresult(timeout=5))
    await mageflow.cancel(sig.key)
    with pytest.raises(TaskCanceledError):
        await asyncio.wait_for(waiter, 5)
    if not running:  # its message arrives after all: it must not run
        await mf.engine.dispatch("work", Envelope(sig=sig.key, input={}))
    await asyncio.sleep(0.05)
    await join(mf)
    assert log.cancelled == (["t"] if running else [])
    assert log.ended == [] and log.fired == {}
    assert await status_of(mf, sig.key) is S.CANCELED
    with pytest.raises(InvalidTransitionError):
        await (await mf.load_signature(sig.key)).aio_run_no_wait()


@pytest.mark.parametrize(
    ("final", "action"),
    [("pending", "resume"), ("done", "resume"), ("done", "suspend"), ("done", "cancel"),
     ("done", "interrupt"), ("failed", "suspend"), ("canceled", "resume"), ("canceled", "cancel")],
)  # fmt: skip
async def test_invalid_transitions(mf: Mageflow, log: Log, final: str, action: str) -> None:
    sig = await task(mf, "t")
    if final == "done":
        await sig.aio_run()
    elif final == "failed":
        await mf.store.start_task(sig.key, "work", 0, 60_000, Envelope(sig.key, {}).to_json())
        await mf.runtime.finish(sig.key, "failed", '{"type":"X","message":"x"}', "")
    elif final == "canceled":
        await sig.cancel()
    with pytest.raises(InvalidTransitionError) as info:
        await getattr(mageflow, action)(sig.key)
    assert info.value.status == final
    assert await status_of(mf, sig.key) == final
    with pytest.raises(SignatureNotFoundError):
        await getattr(mageflow, action)(f"{mf.keys.namespace}:sig:{{nope}}:nope")


# -- chains ----------------------------------------------------------------------------------------


async def abc_chain(mf: Mageflow, hold: bool) -> ChainSignature:
    steps = [await task(mf, n, hold=hold, inc=i) for n, i in (("a", 1), ("b", 10), ("c", 100))]
    return await mf.chain(
        steps,
        success=await mf.sign("on_ok", tag="chain-ok"),
        error=await mf.sign("on_err", tag="chain-err"),
    )


@pytest.mark.parametrize("action", ["suspend", "interrupt"])
async def test_paused_chain_starts_no_next_step(mf: Mageflow, log: Log, action: str) -> None:
    chain = await abc_chain(mf, hold=True)
    waiter = asyncio.create_task(chain.aio_run({"start": 0}))
    await eventually(lambda: log.started == ["a"])
    await getattr(chain, action)()
    paused = S.SUSPENDED if action == "suspend" else S.INTERRUPTED
    a, b, c = chain.tasks
    # suspend: the running step goes on; interrupt: it is stopped too.
    first = S.ACTIVE if action == "suspend" else S.INTERRUPTED
    assert [await status_of(mf, k) for k in (chain.key, a, b, c)] == [paused, first, paused, paused]
    log.open("a", "b", "c")
    await eventually(lambda: log.ended == ["a"] or log.cancelled == ["a"])
    await asyncio.sleep(0.1)
    await join(mf)
    assert log.started == ["a"] and await status_of(mf, chain.key) is paused

    await chain.resume()
    assert await asyncio.wait_for(waiter, 5) == 111
    await join(mf)
    assert log.started == (["a", "b", "c"] if action == "suspend" else ["a", "a", "b", "c"])
    assert log.ended == ["a", "b", "c"]
    assert log.fired == {"chain-ok": 1}


async def test_canceled_chain_tells_its_swarm_which_still_completes(mf: Mageflow, log: Log) -> None:
    chain = await abc_chain(mf, hold=True)
    other = await task(mf, "x", inc=7)
    swarm = await mf.swarm(
        [chain, other],
        is_swarm_closed=True,
        success_callbacks=[await mf.sign("on_ok", tag="sw-ok")],
    )
    waiter = asyncio.create_task(swarm.aio_run())
    await eventually(lambda: "a" in log.started)
    await chain.cancel()
    result = await asyncio.wait_for(waiter, 5)
    assert is_failed_result(result[0]) and result[0]["$mageflow_failed"]["type"] == "Canceled"
    assert result[1] == 7
    await asyncio.sleep(0.05)
    await join(mf)
    assert log.cancelled == ["a"] and sorted(log.started) == ["a", "x"]
    assert log.fired == {"sw-ok": 1}
    keys = [chain.key, *chain.tasks]
    assert [await status_of(mf, k) for k in keys] == [S.CANCELED] * 4


async def test_canceling_a_later_step_ends_the_chain(mf: Mageflow, log: Log) -> None:
    a = await task(mf, "a0", hold=True)
    chain = await mf.chain([a, *[await task(mf, n) for n in ("b0", "c0")]])
    waiter = asyncio.create_task(chain.aio_run())
    await eventually(lambda: log.started == ["a0"])
    await mageflow.cancel(chain.tasks[1])
    log.open("a0")
    with pytest.raises(TaskCanceledError):
        await asyncio.wait_for(waiter, 5)
    await join(mf)
    assert log.started == ["a0"]


@pytest.mark.parametrize("action", ["suspend", "interrupt"])
@pytest.mark.parametrize("parent", ["chain", "swarm"])
async def test_container_paused_before_its_launch_runs_after_resume(
    mf: Mageflow, log: Log, action: str, parent: str
) -> None:
    inner = await mf.chain([await task(mf, "b", inc=10)])
    first = await task(mf, "a", hold=True, inc=1)
    if parent == "chain":
        outer: Signature = await mf.chain([first, inner])
    else:  # one slot: `a` holds it, then it goes to `inner`
        config = SwarmConfig(max_concurrency=1)
        outer = await mf.swarm([first, inner], config=config, is_swarm_closed=True)
    waiter = asyncio.create_task(outer.aio_run({"start": 0}))
    await eventually(lambda: log.started == ["a"])
    await getattr(mageflow, action)(inner.key)  # pending: its launch is yet to come
    log.open("a")
    await eventually(lambda: log.ended == ["a"])
    await asyncio.sleep(0.1)
    assert log.started == ["a"]
    await mageflow.resume(inner.key)  # the launch that came meanwhile must not be lost
    assert await asyncio.wait_for(waiter, 5) == (11 if parent == "chain" else [1, 10])
    assert log.started == ["a", "b"]


# -- swarms ----------------------------------------------------------------------------------------


async def six_members(mf: Mageflow) -> SwarmSignature:
    members = [await task(mf, f"m{i}", hold=True, inc=i) for i in range(6)]
    return await mf.swarm(
        members,
        config=SwarmConfig(max_concurrency=2),
        is_swarm_closed=True,
        success_callbacks=[await mf.sign("on_ok", tag="sw-ok")],
        error_callbacks=[await mf.sign("on_err", tag="sw-err")],
    )


async def test_suspended_swarm_starts_no_new_members(mf: Mageflow, log: Log) -> None:
    swarm = await six_members(mf)
    waiter = asyncio.create_task(swarm.aio_run())
    await eventually(lambda: sorted(log.started) == ["m0", "m1"])
    await swarm.suspend()
    members = await swarm.tasks()
    assert [await status_of(mf, k) for k in members] == [S.ACTIVE] * 2 + [S.SUSPENDED] * 4

    log.open("m0", "m1")
    await eventually(lambda: len(log.ended) == 2)
    await asyncio.sleep(0.1)
    await join(mf)
    assert sorted(log.started) == ["m0", "m1"]
    counts = await mf.store.redis.hmget(swarm.key, ["running", "nok"])
    assert [int(c or 0) for c in counts] == [0, 2]

    log.open(*[f"m{i}" for i in range(6)])
    await swarm.resume()
    assert await asyncio.wait_for(waiter, 5) == list(range(6))
    await join(mf)
    assert sorted(log.started) == [f"m{i}" for i in range(6)]
    assert log.fired == {"sw-ok": 1}


async def test_canceled_swarm_stops_running_members_and_cancels_the_rest(
    mf: Mageflow, log: Log
) -> None:
    swarm = await six_members(mf)
    waiter = asyncio.create_task(swarm.aio_run())
    await eventually(lambda: sorted(log.started) == ["m0", "m1"])
    await mageflow.cancel(swarm.key)
    with pytest.raises(TaskCanceledError):
        await asyncio.wait_for(waiter, 5)
    await eventually(lambda: sorted(log.cancelled) == ["m0", "m1"])
    await asyncio.sleep(0.1)
    await join(mf)
    assert sorted(log.started) == ["m0", "m1"] and log.ended == [] and log.fired == {}
    members = await swarm.tasks()
    assert [await status_of(mf, k) for k in [swarm.key, *members]] == [S.CANCELED] * 7


# -- a control call racing a worker's finish -------------------------------------------------------

EXPECTED = {"task": 1, "chain": 2, "swarm": [1, 1]}


async def after(call: Awaitable[None]) -> None:
    await asyncio.sleep(random.choice([0, 0, 0.0005, 0.001]))  # either side may be first
    await call


async def race_once(mf: Mageflow, log: Log, kind: str, action: str, i: int) -> bool:
    """Claim a task by hand, then finish it while `action` hits its root. Returns True when the
    finish won (the task ended done)."""
    target = await task(mf, f"t{i}", cbs=True, inc=1)
    root = target
    follow = await task(mf, f"n{i}", inc=1, hold=True)  # the root cannot end before the race
    root_ok = [await mf.sign("on_ok", tag=f"root{i}")]
    if kind == "chain":
        root = await mf.chain([target, follow], success_callbacks=root_ok)
    elif kind == "swarm":
        config = SwarmConfig(max_concurrency=1)
        root = await mf.swarm([target, follow], config=config, is_swarm_closed=True,
                              success_callbacks=root_ok)  # fmt: skip
    await mf.notifier.watch(root.key)
    if root is not target:  # started, but its launch of `target` is delivered by hand below
        assert not isinstance(await mf.store.start_container(root.key, "{}", ""), str)
    envelope = Envelope(sig=target.key, input={})
    assert not isinstance(
        await mf.store.start_task(target.key, "work", 0, 60_000, envelope.to_json()), str
    )

    ctl, fin = await asyncio.gather(
        after(getattr(mageflow, action)(root.key)),
        after(mf.runtime.finish(target.key, "done", "1", "")),
        return_exceptions=True,
    )
    assert fin is None
    log.open(f"n{i}")
    await join(mf)
    finished = await status_of(mf, target.key)
    won = finished is S.DONE
    lost = {"cancel": S.CANCELED, "interrupt": S.INTERRUPTED, "suspend": S.DONE}[action]
    assert finished in (S.DONE, lost)
    if kind != "task":  # a container is never finished by its first task: control applies
        assert ctl is None
    elif action == "suspend":  # refused: running (TaskAlreadyRunningError) or already done
        assert isinstance(ctl, InvalidTransitionError)
        assert ctl.status == ("active" if isinstance(ctl, TaskAlreadyRunningError) else "done")
    else:  # refused exactly when the finish was first
        assert won == (isinstance(ctl, InvalidTransitionError) and ctl.status == "done")
        assert won == (ctl is not None)
    assert log.fired[f"t{i}-ok"] == int(won) and log.fired[f"t{i}-err"] == 0

    if action == "cancel":
        assert await status_of(mf, root.key) is (S.DONE if kind == "task" and won else S.CANCELED)
        assert log.fired[f"root{i}"] == 0
    elif not (kind == "task" and won):
        await mageflow.resume(root.key)
    if action != "cancel":
        assert await (await mf.load_signature(root.key)).aresult(timeout=5) == EXPECTED[kind]
        await join(mf)
        assert log.fired[f"t{i}-ok"] == 1 and log.fired[f"t{i}-err"] == 0
        assert log.fired[f"root{i}"] == int(kind != "task")
        assert log.started.count(f"t{i}") == int(not won)  # reran only when its finish lost
    return won


@pytest.mark.parametrize("kind", ["task", "chain", "swarm"])
@pytest.mark.parametrize("action", ["suspend", "interrupt", "cancel"])
async def test_control_racing_a_finish(mf: Mageflow, log: Log, kind: str, action: str) -> None:
    wins: list[bool] = []
    # Until each side has won a few times (a suspend never beats a running task's finish).
    while len(wins) < 20 or (action != "suspend" and min(wins.count(True), wins.count(False)) < 3):
        assert len(wins) < 80, f"the race always went one way: {wins}"
        wins.append(await race_once(mf, log, kind, action, len(wins)))
    assert action != "suspend" or all(wins)
    await asyncio.sleep(0.05)
    await join(mf)
    assert all(n <= 1 for n in log.fired.values())


# -- by key ----------------------------------------------------------------------------------------


async def test_module_level_controls_follow_the_key(mf: Mageflow, log: Log) -> None:
    if mf.keys.shards == 1:
        pytest.skip("with one shard a signature never moves (set MAGEFLOW_SHARDS > 1)")
    sig = await task(mf, "t", hold=True, inc=3)
    old_key = sig.key
    # A chain lives in the shard of its first step: a later step of another shard moves there.
    first = await task(mf, "first")
    for _ in range(100):
        if mf.keys.shard(first.key) != mf.keys.shard(sig.key):
            break
        first = await task(mf, "first")
    chain = await mf.chain([first, sig])
    assert sig.key != old_key
    await mageflow.suspend(old_key)  # an old key still resolves
    assert await status_of(mf, sig.key) is S.SUSPENDED
    await mageflow.resume(old_key)
    waiter = asyncio.create_task(chain.aio_run())
    await eventually(lambda: log.started == ["first", "t"])
    await mageflow.interrupt(chain.key)
    await eventually(lambda: log.cancelled == ["t"])
    log.open("t")
    await mageflow.resume(chain.key)
    assert await asyncio.wait_for(waiter, 5) == 3
    with pytest.raises(InvalidTransitionError):
        await mageflow.cancel(chain.key)
