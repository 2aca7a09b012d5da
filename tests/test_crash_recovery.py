"""Property test: a process that dies at a random point of the transition path loses nothing.

Each example builds a random workflow (the generator of test_properties: chains and swarms up to
three deep, some tasks failing, callbacks everywhere) and runs it on a client whose engine fails
some sends (a broker refusing them) and, at a drawn send, "dies": from then on it sends nothing
and its event-loop work is cut off, either after its in-flight tasks finish (the crash falls
between a transition committing and its follow-ups leaving) or at once (tasks die mid-run).
A second client of the same app then starts, as a restarted process would. Then:

* the root ends with the outcome its plan implies;
* every signature that ran finished exactly once, and each callback's record ended exactly when
  its owner ended that way (once: a callback finishes once however often its message was sent);
* when the crash let in-flight work finish, every callback body also ran exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mageflow import DispatchError, Mageflow, MageflowConfig
from mageflow.engines.inproc import InProcEngine
from mageflow.envelope import Envelope
from mageflow.tasks import TaskDef
from tests.conftest import sync_client
from tests.test_properties import Box, World, boxes, outcome, size


class DyingEngine(InProcEngine):
    """Refuses the sends numbered in ``refuse``; from send ``die_at`` on, refuses everything."""

    def __init__(self, refuse: set[int], die_at: int) -> None:
        super().__init__()
        self.refuse = refuse
        self.die_at = die_at
        self.sends = 0
        self.dead = asyncio.Event()

    async def dispatch(self, task: TaskDef | str, envelope: Envelope) -> str | None:
        self.sends += 1
        if self.sends >= self.die_at:
            self.dead.set()
        if self.dead.is_set() or self.sends in self.refuse:
            raise ConnectionError(f"send {self.sends} refused")
        return await super().dispatch(task, envelope)


async def die(mf: Mageflow, engine: DyingEngine, *, drain: bool) -> None:
    """End the first client as a killed process would: nothing more is sent, nothing is
    cleaned up; with ``drain`` its running tasks get to finish first (their follow-ups stay
    unsent), else they are cut off mid-run."""
    if drain:
        await asyncio.wait_for(engine.join(), 10)
    for run in list(engine._running.values()):
        run.cancel()
    await asyncio.gather(*engine._running.values(), return_exceptions=True)
    if mf._keeper is not None:
        await mf._keeper.stop()
    if mf._sender is not None:
        await mf._sender.close()
    if mf._notifier is not None:
        await mf._notifier.close()
    await mf.store.redis.aclose()
    mf._store = None  # the process is gone: no close(), no exit hook


async def run_example(url: str, root: Box, refuse: set[int], die_at: int, drain: bool) -> None:
    namespace = f"mfcrash-{uuid.uuid4().hex[:10]}"
    config = MageflowConfig(namespace=namespace, lease_seconds=0.4)
    engine = DyingEngine(refuse, die_at)
    first = Mageflow(engine, url, config=config)
    world = World(first)
    world.register()
    sync = sync_client(url)
    second: Mageflow | None = None
    try:
        sig = await world.build(root, "r")
        keys = await world.keys(sig.key, "r", {})
        # The very first send may be refused (DispatchError): the run is queued all the same.
        with contextlib.suppress(DispatchError):
            await sig.aio_run_no_wait()
        # If the workflow ends before the drawn crash point, the restart finds nothing to do.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(engine.dead.wait(), 5)
        await die(first, engine, drain=drain)

        second = Mageflow(None, url, config=config)
        again = World(second, fired=world.fired)
        again.register()
        await second.start()  # the restarted process: recovery runs at once, then periodically
        final = await second.notifier.wait(keys["r"], timeout=30)
        # The root may have ended before the crash with its callbacks still queued: recovery
        # sends those once they are a grace period old. Wait until nothing is queued or running.
        async with asyncio.timeout(15):
            while await second.store.outbox_size() or second.engine.running_keys():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await second.engine.join()
        assert final.status == outcome(root), (final.status, final.get("error"))
        await check(second, world, keys, strict=drain)
    finally:
        if second is not None:
            await second.close()
        stale = list(sync.scan_iter(f"{namespace}:*", count=1000))
        if stale:
            sync.delete(*stale)
        sync.close()


async def check(mf: Mageflow, world: World, keys: dict[str, str], *, strict: bool) -> None:
    for path, key in keys.items():
        node, record = world.nodes[path], await mf.store.load(key)
        assert record.status in ("done", "failed", "canceled", "pending"), (path, record.status)
        if record.status in ("done", "failed"):
            assert record.status == outcome(node), (path, record.status)
        if path in world.containers or getattr(node, "cbs", False):
            owner = record.status
            for tag, when in (("ok", "done"), ("err", "failed")):
                cb = record.key_list("ok" if tag == "ok" else "err")
                cb_status = (await mf.store.load(cb[0])).status
                assert (cb_status == "done") == (owner == when), (path, tag, owner, cb_status)
                if strict:
                    assert world.fired[f"{path}:{tag}"] == (owner == when), (path, world.fired)
                else:
                    assert (world.fired[f"{path}:{tag}"] >= 1) == (owner == when)


@settings(
    max_examples=20,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    root=boxes(3).filter(lambda b: size(b) <= 10),
    refuse=st.sets(st.integers(1, 30), max_size=4),
    die_at=st.integers(1, 30),
    drain=st.booleans(),
)
def test_a_process_dying_anywhere_loses_nothing(
    redis_url: str, root: Box, refuse: set[int], die_at: int, drain: bool
) -> None:
    asyncio.run(run_example(redis_url, root, refuse, die_at, drain))
