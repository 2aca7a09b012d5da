"""The state Redis loses its last second of writes under a running swarm.

A power loss with ``appendfsync everysec`` costs up to a second of writes. Here the state Redis
(separate from the broker's, so no message comes back on its own) is SIGKILLed mid-swarm and its
append-only file cut back to where it stood one second earlier, then it starts again on the same
port. What that second recorded (claims, finishes, the outbox entries of the next members) is
gone, while the broker has already delivered and acknowledged the messages: only mageflow's
recovery can bring that work back (leases that ran out, outbox entries never claimed).

The swarm must complete with every record done, the swarm callback once, and no worker exited.
Bodies (of members and of member callbacks) may run twice, but only those whose first run ended
inside the lost second: nothing older is ever repeated.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import Faults
from harness import AofSampler, FaultCluster, until

from mageflow import SwarmConfig

SIZE = 40
LOST = 1.0  # seconds of writes the crash loses
SLACK = 0.3  # a body that ended just before the cut may have had its finish written after it


@pytest.mark.timeout(120)
async def test_a_swarm_completes_after_redis_loses_its_last_second(faults: Faults) -> None:
    state, broker = faults.server("state"), faults.server("broker")
    cluster = faults.cluster(state, broker, record=broker, lease=2.0, grace=2.0)
    workers = [cluster.start_worker(concurrency=5) for _ in range(2)]
    for worker in workers:
        await cluster.ready(worker)
    sampler = AofSampler(state)
    async with cluster.producer() as mf:
        await cluster.registered(mf)
        members = [
            await mf.sign("member", success_callbacks=[await mf.sign("member_ok", i=i)], i=i)
            for i in range(SIZE)
        ]
        swarm = await mf.swarm(
            members,
            success_callbacks=[await mf.sign("swarm_ok", tag="swarm")],
            config=SwarmConfig(max_concurrency=3),
            is_swarm_closed=True,
            sleep=0.5,  # ~6 members a second: the crash lands mid-swarm
        )
        moved = [await m.aload() for m in members]
        callbacks = [m.success_callbacks[0] for m in moved]
        sampler.start()
        started = time.time()
        await swarm.aio_run_no_wait({})

        await until(lambda: ran(cluster) >= 10, 30, f"10 members to run:\n{cluster.all_logs()}")
        await asyncio.sleep(max(0.0, started + 2 * LOST - time.time()))  # a second to lose
        state.kill()
        crashed = time.time()
        await sampler.stop()
        cut_at, size = sampler.before(crashed - LOST)
        cut = state.truncate_aof(size)
        state.start()
        assert ran(cluster) < SIZE, "the swarm ended before the crash"

        result = await swarm.aresult(timeout=60)
        keys = [m.key for m in moved] + callbacks

        async def all_done() -> bool:
            records = await mf.store.load_many(keys)
            return all(r is not None and r.status == "done" for r in records)

        await until(all_done, 30, "every member and member callback to be done")

    assert result == [i * i for i in range(SIZE)]
    assert len(cluster.records("swarm_ok", "swarm")) == 1
    repeated = 0
    for i in range(SIZE):
        for task in ("member", "member_ok"):
            runs = cluster.records(task, i)
            assert runs, (task, i)
            if len(runs) > 1:
                repeated += 1
                assert runs[0]["t"] >= cut_at - SLACK, (task, i, runs, cut_at)
    assert [w.poll() for w in workers] == [None, None], cluster.all_logs()
    print(f"\n{cut}; lost {crashed - cut_at:.2f} s; {repeated} bodies ran again; swarm complete")


def ran(cluster: FaultCluster) -> int:
    return sum(1 for i in range(SIZE) if cluster.records("member", i))
