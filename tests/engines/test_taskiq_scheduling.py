"""Delays and rate limits on real Taskiq worker processes (docs/scheduling.md).

The producer signs the worker app's tasks by name; the due times and the claims that started
the tasks are read from the records (Redis's clock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from test_taskiq import Cluster, clusters, registered, until  # noqa: F401 (a fixture)

from mageflow import SignatureStatus
from mageflow.store.schema import Field
from tests.rates import most_in_window

pytestmark = pytest.mark.timeout(180)


async def test_a_delayed_task_runs_on_a_worker_once_due(
    clusters: Callable[..., Cluster],  # noqa: F811 (the fixture imported above)
) -> None:
    cluster = clusters("stream")
    worker = cluster.start()
    await cluster.ready(worker)
    async with cluster.producer() as mf:
        await registered(cluster, mf, ["double"])
        sig = await mf.sign("double")
        await sig.aio_run_no_wait({"x": 4}, delay=1.0)
        await asyncio.sleep(0.5)
        assert cluster.records("double", 4) == []
        assert await sig.aresult(timeout=30) == 8
        record = (await sig.aload())._record
        assert int(record.get(Field.STARTED)) >= int(record.get(Field.DUE))
    assert cluster.records("double", 4) == [worker.pid]


async def test_a_rate_limited_batch_on_two_workers_stays_under_the_limit(
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    cluster = clusters("stream")
    workers = [cluster.start(concurrency=20) for _ in range(2)]
    for w in workers:
        await cluster.ready(w)
    async with cluster.producer() as mf:
        await registered(cluster, mf, ["limited"])
        sigs = [await mf.sign("limited", x=i) for i in range(30)]
        await asyncio.gather(*(s.aio_run_no_wait({}) for s in sigs))
        for sig in sigs:
            assert await sig.aresult(timeout=60) is not None
        claims = [int((await s.aload())._record.get(Field.STARTED)) for s in sigs]
    assert most_in_window(claims, 1000) <= 10
    # 30 starts at 10/s cannot take less than 2.9 s from the first to the last.
    assert max(claims) - min(claims) >= 2900
    # The deliveries that had to wait were acknowledged too (the broker keeps none of them).
    await until(lambda: cluster.pending() == 0, 10, "every delivery acknowledged")
    runs = cluster.records("limited")
    assert sorted(r["x"] for r in runs) == list(range(30))  # each ran once, none dropped
    starts = [round(r["at"] * 1000) for r in runs]
    # A body starts a moment after its claim, and that moment varies: one more at an edge.
    assert most_in_window(starts, 1000) <= 11
    pids = [r["pid"] for r in runs]
    print(f"runs per worker: { {p: pids.count(p) for p in set(pids)} }")


async def test_a_delayed_task_survives_its_worker_being_killed(
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    cluster = clusters("stream", lease=1.0)
    first = cluster.start()
    await cluster.ready(first)
    async with cluster.producer() as mf:
        await registered(cluster, mf, ["double"])
        sig = await mf.sign("double")
        await sig.aio_run_no_wait({"x": 9}, delay=3.0)
        key = sig.key
    # The producer is gone; the only process that could release it is killed before it is due.
    cluster.kill(first)
    assert cluster.sync.hget(key, Field.STATUS) == SignatureStatus.PENDING
    assert cluster.records("double", 9) == []
    second = cluster.start()
    await cluster.ready(second)
    done = SignatureStatus.DONE
    await until(lambda: cluster.sync.hget(key, Field.STATUS) == done, 30, "the delayed task")
    await asyncio.sleep(1.0)  # a second run, had there been one, would show by now
    assert cluster.records("double", 9) == [second.pid]
    started, due = cluster.sync.hmget(key, [Field.STARTED, Field.DUE])
    assert int(started) >= int(due)
