"""Fixtures and helpers shared by the offline Hatchet engine tests (the test modules
import the ``*_fixture`` functions, which pytest then finds under their ``name``).

``hatchet`` is the spec's client, ``Mageflow(hatchet_sdk_client, redis_url)``, on a real
``hatchet_sdk.Hatchet`` whose gRPC and REST calls go to a :class:`LoopbackHatchet` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from hatchet_app_fake import LoopbackHatchet
from hatchet_sdk.runnables.workflow import BaseWorkflow

from mageflow import Mageflow, MageflowConfig
from mageflow.engines.hatchet import HatchetEngine

T = TypeVar("T")


@pytest.fixture(name="loopback")
def loopback_fixture() -> Iterator[LoopbackHatchet]:
    server = LoopbackHatchet().start()
    yield server
    server.stop()


@pytest.fixture(name="hatchet")
async def hatchet_fixture(
    loopback: LoopbackHatchet, redis_url: str, config: MageflowConfig, sync_redis: redis.Redis
) -> AsyncIterator[Mageflow]:
    """The spec's ``hatchet = Mageflow(hatchet, redis)``, on the test Redis and namespace."""
    client = Mageflow(loopback.client(), redis_url, config=config)
    yield client
    await client.close()
    keys = list(sync_redis.scan_iter(f"{config.namespace}:*", count=1000))
    if keys:
        sync_redis.delete(*keys)


@pytest.fixture(name="keep_signal_handlers")
def keep_signal_handlers_fixture() -> Iterator[None]:
    """A Hatchet ``Worker`` installs SIGINT/SIGTERM/SIGQUIT handlers; put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def engine_of(client: Mageflow) -> HatchetEngine:
    assert isinstance(client.engine, HatchetEngine)
    return client.engine


def worker_workflows(*clients: Mageflow) -> list[BaseWorkflow[Any]]:
    """What a worker of these clients registers on Hatchet."""
    return [w for c in clients for w in engine_of(c).worker_workflows(c, None)]


async def drain(loopback: LoopbackHatchet, *clients: Mageflow) -> int:
    """Let the loopback server run every triggered run on these clients' workers."""
    return await loopback.drain(worker_workflows(*clients))


async def serve(loopback: LoopbackHatchet, client: Mageflow, waiting: Awaitable[T]) -> T:
    """Await ``waiting`` (e.g. ``sig.aio_run(msg)``) while the loopback server runs the runs."""
    task = asyncio.ensure_future(waiting)
    for _ in range(500):
        await drain(loopback, client)
        if task.done():
            return task.result()
        await asyncio.sleep(0.01)
    task.cancel()
    raise AssertionError("the awaited run never finished")
