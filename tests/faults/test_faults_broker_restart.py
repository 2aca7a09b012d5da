"""The broker's Redis dies under a running swarm and comes back on the same port.

A standalone worker (``--workers 1``: no supervisor would restart it) must live through it: its
stream reads fail and are retried with backoff, its acknowledgements and sends wait, and the
swarm completes. The state Redis is untouched, so every claim holds: each member body, each
member callback and the swarm callback runs exactly once, whatever the broker lost.

Two ways back: with its data (the AOF replayed: the stream and consumer group are as they were),
and wiped (a fresh server: the stream, the group and every queued message are gone; mageflow's
recovery sends again what no worker claimed within the accepted grace).

The worker sends every follow-up through the broker here (``run_here=False``), so the swarm
needs the broker to go on. With the default (a worker runs its tasks' follow-ups itself) the
swarm goes on while the broker is down: the last test.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
from conftest import Faults
from harness import FaultCluster, until

from mageflow import Mageflow, SignatureStatus, SwarmConfig, SwarmSignature

SIZE = 40


async def watch_alive(proc: subprocess.Popen[bytes], exits: list[int | None]) -> None:
    """Record the worker's exit code the moment it has one (the test asserts it never does)."""
    while True:
        code = proc.poll()
        if code is not None:
            exits.append(code)
            return
        await asyncio.sleep(0.05)


async def start_swarm(mf: Mageflow) -> tuple[SwarmSignature, list[str], list[str]]:
    members = [
        await mf.sign("member", success_callbacks=[await mf.sign("member_ok", i=i)], i=i)
        for i in range(SIZE)
    ]
    swarm = await mf.swarm(
        members,
        success_callbacks=[await mf.sign("swarm_ok", tag="swarm")],
        config=SwarmConfig(max_concurrency=5),
        is_swarm_closed=True,
        sleep=0.3,
    )
    # The swarm moved each member and its callback under its own hash tag: read the keys now.
    moved = [await m.aload() for m in members]
    await swarm.aio_run_no_wait({})
    return swarm, [m.key for m in moved], [m.success_callbacks[0] for m in moved]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("comeback", ["with_data", "wiped"])
async def test_worker_lives_through_a_broker_redis_restart(faults: Faults, comeback: str) -> None:
    state, broker = faults.server("state"), faults.server("broker")
    cluster: FaultCluster = faults.cluster(
        state, broker, record=state, lease=2.0, grace=2.0, run_here=False
    )
    worker = cluster.start_worker(concurrency=10)
    exits: list[int | None] = []
    watcher = asyncio.create_task(watch_alive(worker, exits))
    try:
        await cluster.ready(worker)
        async with cluster.producer() as mf:
            await cluster.registered(mf)
            swarm, members, callbacks = await start_swarm(mf)

            await until(lambda: _ran(cluster) >= 8, 30, f"8 members to run:\n{cluster.all_logs()}")
            ran_before = _ran(cluster)
            broker.kill()
            killed = time.monotonic()
            await asyncio.sleep(3.0)
            broker.start(wipe=comeback == "wiped")
            down_for = time.monotonic() - killed
            assert _ran(cluster) < SIZE, "the swarm ended while the broker was down"

            await check_once(cluster, mf, swarm, members, callbacks)

        await until(lambda: cluster.pending() == 0, 30, "every delivery acknowledged")
        await until(
            lambda: cluster.indexes() == {"outbox": 0, "leases": 0}, 15, "empty outbox and leases"
        )
        await asyncio.sleep(0.5)
        assert not exits, f"the worker exited with {exits}:\n{cluster.log(worker)[-4000:]}"
        log = cluster.log(worker)
        assert "lost the broker's Redis" in log, log[-4000:]
        assert "reading from the broker's Redis again" in log, log[-4000:]
        if comeback == "wiped":
            assert "creating it again" in log, log[-4000:]  # the consumer group was re-made
        print(
            f"\nbroker {comeback}: down {down_for:.1f} s with {ran_before}/{SIZE} members run; "
            f"swarm of {SIZE} completed, every member and callback ran once"
        )
    finally:
        watcher.cancel()


@pytest.mark.timeout(90)
async def test_follow_ups_run_here_while_the_broker_is_down(faults: Faults) -> None:
    state, broker = faults.server("state"), faults.server("broker")
    cluster: FaultCluster = faults.cluster(state, broker, record=state, lease=2.0, grace=2.0)
    worker = cluster.start_worker(concurrency=10)
    await cluster.ready(worker)
    async with cluster.producer() as mf:
        await cluster.registered(mf)
        swarm, members, callbacks = await start_swarm(mf)
        await until(lambda: _ran(cluster) >= 8, 30, f"8 members to run:\n{cluster.all_logs()}")
        broker.kill()
        # Each finished member starts the next in the same worker: no message goes through the
        # broker, so the whole swarm, its callbacks included, goes on without it.
        await until(
            lambda: bool(cluster.records("swarm_ok", "swarm")),
            30,
            f"the swarm to complete with the broker down:\n{cluster.all_logs()}",
        )
        assert worker.poll() is None, cluster.log(worker)[-4000:]
        broker.start()
        await check_once(cluster, mf, swarm, members, callbacks)
    await until(
        lambda: cluster.indexes() == {"outbox": 0, "leases": 0}, 15, "empty outbox and leases"
    )


async def check_once(
    cluster: FaultCluster,
    mf: Mageflow,
    swarm: SwarmSignature,
    members: list[str],
    callbacks: list[str],
) -> object:
    """The swarm's result, once every member, member callback and the swarm callback ran
    exactly once with the right value."""
    result = await swarm.aresult(timeout=45)
    swarm_status = (await mf.load_signature(swarm.key)).status

    async def all_done() -> bool:  # member callbacks may still run after the swarm
        records = await mf.store.load_many(members + callbacks)
        return all(r is not None and r.status == "done" for r in records)

    await until(all_done, 30, "every member and member callback to be done")
    records = await mf.store.load_many(members + callbacks)
    assert result == [i * i for i in range(SIZE)]
    assert swarm_status is SignatureStatus.DONE
    assert [r.status if r else None for r in records] == ["done"] * (2 * SIZE)
    for i in range(SIZE):
        assert len(cluster.records("member", i)) == 1, (i, cluster.records("member", i))
        done = cluster.records("member_ok", i)
        assert [c["value"] for c in done] == [i * i], (i, done)
    assert [c["value"] for c in cluster.records("swarm_ok", "swarm")] == [result]
    return result


def _ran(cluster: FaultCluster) -> int:
    return sum(1 for i in range(SIZE) if cluster.records("member", i))
