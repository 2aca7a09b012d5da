"""A map on real Taskiq workers: fan-out over a result, per-member callbacks, and a worker
SIGKILLed in the middle (nothing lost; only the killed worker's runs repeat)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from test_taskiq import Cluster, clusters, registered, until  # noqa: F401 (a fixture)

from mageflow import SwarmConfig

SIZE = 60


@pytest.mark.timeout(180)
async def test_a_map_survives_a_killed_worker(
    clusters: Callable[..., Cluster],  # noqa: F811 (the fixture imported above)
) -> None:
    cluster = clusters("stream", lease=1.5, idle_ms=2000)
    victim, survivor = cluster.start(concurrency=10), cluster.start(concurrency=10)
    await cluster.ready(victim)
    await cluster.ready(survivor)
    names = ["square_item", "item_done", "on_ok"]
    async with cluster.producer() as mf:
        await registered(cluster, mf, names)
        mapped = await mf.map(
            "square_item",
            config=SwarmConfig(max_concurrency=10),
            item_success_callbacks=[await mf.sign("item_done", tag="item")],
            success_callbacks=[await mf.sign("on_ok", tag="map")],
            sleep=0.2,
        )
        await mapped.aio_run_no_wait({"items": list(range(SIZE))})

        def ran() -> int:
            return sum(1 for i in range(SIZE) if cluster.records("square_item", i))

        await until(lambda: ran() >= 15, 60, "15 items to run")
        cluster.kill(victim)
        killed = time.monotonic()
        cluster.start(concurrency=10)
        results = await mapped.aresult(timeout=60)
        await until(
            lambda: all(cluster.records("item_done", i * i) for i in range(SIZE)),
            30,
            "every per-item callback",
        )

    assert results == [i * i for i in range(SIZE)]
    dead, rerun = str(victim.pid), 0
    for i in range(SIZE):
        runs = [str(pid) for pid in cluster.records("square_item", i)]
        assert runs and all(pid == dead for pid in runs[:-1]), (i, runs)  # repeats: the dead's
        rerun += len(runs) > 1
        fired = cluster.records("item_done", i * i)
        assert [f["value"] for f in fired][-1:] == [i * i]
        assert all(f["pid"] == dead for f in fired[:-1]), (i, fired)
    assert [r["value"] for r in cluster.records("ok", "map")] == [results]
    await until(lambda: cluster.pending() == 0, 30, "every message acknowledged")
    assert survivor.poll() is None
    print(
        f"\nmap of {SIZE}: {rerun} item(s) re-run after the kill, done "
        f"{time.monotonic() - killed:.1f} s after it"
    )
