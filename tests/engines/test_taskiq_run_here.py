"""A worker hands a finished delivery's slot to its first follow-up (TaskiqEngine(run_here=...)).

The follow-up runs next in the same slot, without the broker: the worker's concurrency holds, a
draining worker sends follow-ups to the broker instead, and the task still gets taskiq's context.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
from test_taskiq import Cluster, clusters, registered, until  # noqa: F401 (a fixture)

from mageflow import Mageflow

STEPS = ["step", "add"]


async def chain_of_steps(mf: Mageflow, tag: str, n: int, seconds: float = 0.0) -> object:
    return await mf.chain([await mf.sign("step", tag=tag, seconds=seconds) for _ in range(n)])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("run_here", [True, False])
async def test_a_worker_runs_the_next_step_itself_unless_told_not_to(
    clusters: Callable[..., Cluster],  # noqa: F811 (the fixture imported above)
    run_here: bool,
) -> None:
    cluster = clusters("stream", run_here=run_here)
    worker = cluster.start(concurrency=4)
    await cluster.ready(worker)
    async with cluster.producer() as mf:
        await registered(cluster, mf, STEPS)
        chain = await mf.chain([await mf.sign("add", amount=1) for _ in range(5)])
        assert await chain.aio_run({"prev": 0}, timeout=30) == 5
    assert [len(cluster.records("add", i)) for i in range(5)] == [1] * 5  # each step ran once
    # Messages the broker handed out: the first step only, when the worker runs the rest itself.
    (group,) = cluster.broker.xinfo_groups(cluster.queue)
    assert group["entries-read"] == (1 if run_here else 5)
    await until(lambda: cluster.pending() == 0, 10, "every delivery acknowledged")


@pytest.mark.timeout(60)
async def test_the_concurrency_holds_and_the_step_gets_taskiqs_context(
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    """With --concurrency 1, chains whose steps run in a handed-over slot never overlap with
    each other or with deliveries from the broker."""
    cluster = clusters("stream")
    worker = cluster.start(concurrency=1)
    await cluster.ready(worker)
    async with cluster.producer() as mf:
        await registered(cluster, mf, STEPS)
        chains = [await chain_of_steps(mf, "one", 4, seconds=0.05) for _ in range(3)]
        results = await asyncio.gather(*(c.aio_run({}, timeout=30) for c in chains))
    assert results == [4, 4, 4]
    runs = [r for prev in range(4) for r in cluster.records("step", "one", prev)]
    assert len(runs) == 12
    assert max(r["running"] for r in runs) == 1, runs
    # Every step, from the broker or not, sees taskiq's Context with its own message.
    assert {(r["task"], tuple(r["kwargs"])) for r in runs} == {("step", ("attempt", "envelope"))}


@pytest.mark.timeout(90)
async def test_a_draining_worker_sends_the_next_step_to_the_broker(
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    cluster = clusters("stream")
    first = cluster.start(concurrency=2)
    await cluster.ready(first)
    async with cluster.producer() as mf:
        await registered(cluster, mf, STEPS)
        chain = await chain_of_steps(mf, "drain", 3, seconds=1.0)
        await chain.aio_run_no_wait({})
        await until(lambda: bool(cluster.records("step", "drain", 0)), 30, "the first step")
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, cluster.log(first)  # it finished its step, then left
        assert not cluster.records("step", "drain", 1), "the draining worker ran the next step"
        second = cluster.start(concurrency=2)
        assert await chain.aresult(timeout=30) == 3
    steps = [cluster.records("step", "drain", prev) for prev in range(3)]
    assert [len(s) for s in steps] == [1, 1, 1], steps  # each step once
    assert steps[0][0]["pid"] == str(first.pid)
    assert {s[0]["pid"] for s in steps[1:]} == {str(second.pid)}
    await until(lambda: cluster.pending() == 0, 10, "every delivery acknowledged")
