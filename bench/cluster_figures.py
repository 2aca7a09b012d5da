"""The state store on one Redis vs on a Redis Cluster: a 2,000-task swarm, in one run.

``.venv/bin/python -m bench.cluster_figures [--members 2000] [--rounds 3]``

Both stores are private ``redis-server`` processes on loopback with the same persistence (AOF,
``appendfsync everysec``), started and stopped by pid with the test suite's harnesses: one Redis,
and a cluster of 3 masters (no replicas) made with ``redis-cli --cluster create``. On each, in
alternating rounds, the in-process engine runs a closed swarm of ``--members`` trivial tasks
(max_concurrency 100) with one success callback that sums the results; the time is from the start
to the callback's end; then ``--members`` one-task workflows launched at once, to the end of the
last. The single Redis uses 1 shard (its default), the cluster 16 (its default). Reported for
each: the median time and tasks/s on each store, their ratio, and how the commands of the
cluster rounds spread over its masters (``total_commands_processed``): a workflow lives in one
shard, so one swarm loads one master, and many workflows spread over all three.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "faults")]

from cluster.harness import RedisClusterHarness  # noqa: E402
from faults.harness import RedisServer  # noqa: E402

from mageflow import Mageflow, MageflowConfig, SwarmConfig  # noqa: E402


async def many_workflows(url: str, count: int) -> float:
    """Seconds from launching ``count`` one-task workflows (spread over the shards) to the end
    of the last one."""
    mf = Mageflow(None, url, config=MageflowConfig(namespace=f"clbench-{uuid.uuid4().hex[:6]}"))
    left = [count]
    ended = asyncio.Event()

    @mf.task(name="item")
    async def item(msg: dict[str, Any]) -> int:
        left[0] -= 1
        if left[0] == 0:
            ended.set()
        return int(msg["i"])

    async with mf:
        async with mf.abounded_field():
            sigs = [await mf.sign("item", i=i) for i in range(count)]
        started = time.perf_counter()
        async with mf.abounded_field():
            for sig in sigs:
                await sig.aio_run_no_wait({})
        await asyncio.wait_for(ended.wait(), 300)
        return time.perf_counter() - started


async def one_swarm(url: str, members: int) -> float:
    """Seconds from the start of a ``members``-task swarm to the end of its callback."""
    mf = Mageflow(None, url, config=MageflowConfig(namespace=f"clbench-{uuid.uuid4().hex[:6]}"))
    ended = asyncio.Event()

    @mf.task(name="item")
    async def item(msg: dict[str, Any]) -> int:
        return int(msg["i"])

    @mf.task(name="sum_up")
    async def sum_up(msg: dict[str, Any]) -> None:
        assert sum(msg["results"]) == members * (members - 1) // 2
        ended.set()

    async with mf:
        async with mf.abounded_field():
            sigs = [await mf.sign("item", i=i) for i in range(members)]
            swarm = await mf.swarm(
                sigs,
                success_callbacks=[await mf.sign("sum_up")],
                config=SwarmConfig(max_concurrency=100),
                is_swarm_closed=True,
            )
        started = time.perf_counter()
        await swarm.aio_run_no_wait({})
        await asyncio.wait_for(ended.wait(), 300)
        return time.perf_counter() - started


def commands(ports: list[int]) -> dict[int, int]:
    out = {}
    for port in ports:
        with redis.Redis(port=port) as r:
            out[port] = int(r.info("stats")["total_commands_processed"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mf-cluster-bench-"))
    single = RedisServer(root, "single")
    single.start()
    try:
        with RedisClusterHarness(masters=3, replicas=0, root=root / "cluster") as cluster:
            cluster_url = cluster.store_url
            single_url = f"redis://127.0.0.1:{single.port}/0"
            asyncio.run(one_swarm(single_url, 200))  # warm-up: imports, script loads
            asyncio.run(one_swarm(cluster_url, 200))
            masters = cluster.masters()
            spread: dict[str, dict[int, int]] = {}
            times: dict[str, dict[str, list[float]]] = {}
            for name, run in (("swarm", one_swarm), ("workflows", many_workflows)):
                times[name] = {"one Redis": [], "cluster": []}
                before = commands(masters)
                for _ in range(args.rounds):
                    times[name]["one Redis"].append(asyncio.run(run(single_url, args.members)))
                    times[name]["cluster"].append(asyncio.run(run(cluster_url, args.members)))
                after = commands(masters)
                spread[name] = {p: after[p] - before[p] for p in masters}
    finally:
        single.kill()
    report(times["swarm"], args, spread["swarm"], f"a swarm of {args.members} tasks + 1 callback")
    report(times["workflows"], args, spread["workflows"], f"{args.members} one-task workflows")


def report(
    times: dict[str, list[float]], args: argparse.Namespace, spread: dict[int, int], what: str
) -> None:
    print(f"\n{what}, in-process engine, {args.rounds} rounds")
    print("| store | shards | median time | tasks/s | rounds (s) |")
    print("|---|---|---|---|---|")
    medians = {}
    for name, shards in (("one Redis", 1), ("cluster", 16)):
        median = medians[name] = statistics.median(times[name])
        rounds = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name} | {shards} | {median:.2f} s | {args.members / median:,.0f} | {rounds} |")
    print(f"cluster / one Redis speed: {medians['one Redis'] / medians['cluster']:.2f}x")
    total = sum(spread.values())
    shares = ", ".join(f"{n / total:.0%}" for n in sorted(spread.values(), reverse=True))
    print(f"commands of the cluster rounds per master: {shares} ({total:,} in all)")


if __name__ == "__main__":
    main()
