"""A caller waiting for a result rides out a short Redis outage, and gives up on a long one.

The Redis here is a private embedded server (persistent, on its own unix socket) that the test
stops and starts again under the waiter; the task runs in-process and outlives the outage.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from mageflow import Mageflow, MageflowConfig, RedisUnavailableError
from mageflow.store.embedded import EmbeddedRedis


class Nap(BaseModel):
    seconds: float


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_server.start()
    yield redis_server
    redis_server.stop()


def napping_client(server: EmbeddedRedis, outage_seconds: float) -> Mageflow:
    config = MageflowConfig(
        namespace=f"mftest-{uuid.uuid4().hex[:8]}", redis_outage_seconds=outage_seconds
    )
    mf = Mageflow(None, server.url, config=config)

    @mf.task(name="nap")
    async def nap(msg: Nap) -> str:
        await asyncio.sleep(msg.seconds)
        return "rested"

    return mf


@pytest.mark.timeout(60)
async def test_a_waiter_rides_out_a_short_outage(server: EmbeddedRedis) -> None:
    async with napping_client(server, outage_seconds=20) as mf:
        sig = await mf.sign("nap")
        waiting = asyncio.create_task(sig.aio_run({"seconds": 3.0}, timeout=40))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.5)  # the waiter's subscription drops and its reads fail meanwhile
        assert not waiting.done()
        await asyncio.to_thread(server.start)
        assert await asyncio.wait_for(waiting, 45) == "rested"


@pytest.mark.timeout(60)
async def test_a_waiter_gives_up_after_the_outage_budget(server: EmbeddedRedis) -> None:
    mf = napping_client(server, outage_seconds=1.0)
    try:
        sig = await mf.sign("nap")
        waiting = asyncio.create_task(sig.aio_run({"seconds": 3.0}, timeout=40))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.stop)
        with pytest.raises(RedisUnavailableError):
            await asyncio.wait_for(waiting, 20)
    finally:
        await asyncio.to_thread(server.start)  # so the client can close cleanly
        await mf.close()


@pytest.mark.timeout(60)
async def test_a_task_that_ends_during_an_outage_keeps_its_outcome(server: EmbeddedRedis) -> None:
    """The body has run when Redis goes away: its finish is retried until Redis is back,
    instead of being lost and run again through the lease."""
    runs: list[str] = []
    config = MageflowConfig(namespace=f"mftest-{uuid.uuid4().hex[:8]}", redis_outage_seconds=20)
    async with Mageflow(None, server.url, config=config) as mf:

        @mf.task(name="once")
        async def once(msg: Nap) -> str:
            runs.append("ran")
            await asyncio.sleep(msg.seconds)
            return "kept"

        @mf.task(name="after")
        async def after(msg: dict[str, object]) -> None:
            runs.append("callback")

        sig = await mf.sign("once", success_callbacks=[await mf.sign("after")])
        waiting = asyncio.create_task(sig.aio_run({"seconds": 1.0}, timeout=40))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(2.0)  # the task ends (at 1 s) while Redis is down
        await asyncio.to_thread(server.start)
        assert await asyncio.wait_for(waiting, 45) == "kept"
        await mf.engine.join()
    assert runs == ["ran", "callback"]
