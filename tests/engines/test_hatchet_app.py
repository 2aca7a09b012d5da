"""The live tests' worker app (hatchet_app.py), run offline on the loopback server: the same
scenarios as test_hatchet_live.py, so the app and the scenarios are known to work without a
server, and the live run adds only what a real Hatchet server and worker process bring."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
from hatchet_app import build
from hatchet_app_fake import LoopbackHatchet
from hatchet_app_fixtures import loopback_fixture, serve  # noqa: F401

from mageflow import Mageflow, SignatureStatus, SwarmConfig, TaskFailedError


@pytest.fixture
async def app(
    loopback: LoopbackHatchet, redis_url: str, namespace: str, sync_redis: redis.Redis
) -> AsyncIterator[Mageflow]:
    client = build(loopback.client(), redis_url, namespace)
    yield client
    await client.close()
    keys = list(sync_redis.scan_iter(f"{namespace}:*", count=1000))
    if keys:
        sync_redis.delete(*keys)


async def test_success_callback(app: Mageflow, loopback: LoopbackHatchet) -> None:
    callback = await app.sign("live-on-success", field_int=7)
    sig = await app.sign("live-double", success_callbacks=[callback])
    assert await serve(loopback, app, sig.aio_run({"x": 21})) == {"doubled": 42}
    expected = {"task_result": {"doubled": 42}, "field_int": 7}
    assert await serve(loopback, app, callback.aresult()) == expected


async def test_error_callback_after_the_retries(app: Mageflow, loopback: LoopbackHatchet) -> None:
    on_error = await app.sign("live-on-error", label="failed")
    sig = await app.sign("live-fail", error_callbacks=[on_error])
    with pytest.raises(TaskFailedError, match="attempt 2 of x=3"):
        await serve(loopback, app, sig.aio_run({"x": 3}))
    got = await serve(loopback, app, on_error.aresult())
    assert got == {"x": 3, "label": "failed", "error": "attempt 2 of x=3"}
    assert loopback.run_for(sig.key).attempts == [0, 1, 2]


async def test_retries_use_hatchets_retry_count(app: Mageflow, loopback: LoopbackHatchet) -> None:
    sig = await app.sign("live-flaky")
    assert await serve(loopback, app, sig.aio_run({"x": 1})) == {"attempt": 2}


async def test_chain(app: Mageflow, loopback: LoopbackHatchet) -> None:
    chain = await app.chain(["live-add-one", "live-add-one", "live-add-one"])
    assert await serve(loopback, app, chain.aio_run({"x": 10})) == 13


async def test_swarm(app: Mageflow, loopback: LoopbackHatchet) -> None:
    collect = await app.sign("live-collect")
    members = [await app.sign("live-square", x=i) for i in range(5)]
    swarm = await app.swarm(
        members,
        success_callbacks=[collect],
        config=SwarmConfig(max_concurrency=2),
        is_swarm_closed=True,
    )
    assert await serve(loopback, app, swarm.aio_run({})) == [0, 1, 4, 9, 16]
    assert await serve(loopback, app, collect.aresult()) == {"values": [0, 1, 4, 9, 16]}
    assert await swarm.astatus() is SignatureStatus.DONE
