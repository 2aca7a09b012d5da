"""mageflow's store on a Redis Cluster: how a client is given one, where the shards land, and
the check that keeps every script call and MULTI within one slot.

The workflow suite itself runs on a cluster too: ``make test`` runs the modules listed in the
Makefile's CLUSTER_SUITE again with MAGEFLOW_TEST_CLUSTER=1 (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from mageflow import Mageflow, MageflowConfig
from mageflow.errors import CrossSlotError
from mageflow.store.keys import CLUSTER_SHARDS, KeySchema, one_slot
from mageflow.store.redis_store import Store

from .harness import ExistingCluster, RedisClusterHarness

Cluster = RedisClusterHarness | ExistingCluster


def cluster_url(cluster: Cluster) -> str:
    return cluster.store_url


@pytest.fixture
def namespace() -> str:
    return f"mfcl-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def rc(redis_cluster: Cluster, namespace: str) -> AsyncIterator[RedisCluster]:
    async with RedisCluster.from_url(redis_cluster.url, decode_responses=True) as client:
        yield client
        async for key in client.scan_iter(match=f"{namespace}:*"):
            await client.delete(key)


def register(mf: Mageflow) -> None:
    @mf.task(name="double")
    async def double(msg: dict[str, Any]) -> int:
        return 2 * int(msg.get("results", msg.get("x", 0)))

    @mf.task(name="total")
    async def total(msg: dict[str, Any]) -> int:
        return sum(msg["results"])


async def test_a_cluster_url_gives_a_cluster_client_with_sixteen_shards(
    redis_cluster: Cluster, namespace: str, rc: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAGEFLOW_SHARDS", raising=False)
    mf = Mageflow(None, cluster_url(redis_cluster), config=MageflowConfig(namespace=namespace))
    register(mf)
    try:
        assert mf.keys.shards == CLUSTER_SHARDS
        members = [await mf.sign("double", x=i) for i in range(8)]
        swarm = await mf.swarm(members, is_swarm_closed=True)
        assert isinstance(mf.store.redis, RedisCluster)
        chain = await mf.chain([swarm, await mf.sign("total")])
        assert await chain.aio_run({}) == 56
    finally:
        await mf.close()


async def test_a_cluster_client_instance_is_taken_as_is(rc: RedisCluster, namespace: str) -> None:
    mf = Mageflow(None, rc, config=MageflowConfig(namespace=namespace))
    register(mf)
    try:
        sig = await mf.sign("double", x=21)
        assert await sig.aio_run({}) == 42
        assert mf.store.redis is rc
    finally:
        await mf.close()
    assert await rc.ping()  # the user's client is theirs: close() leaves it open


async def test_the_shards_spread_over_every_master(redis_cluster: Cluster) -> None:
    if not isinstance(redis_cluster, RedisClusterHarness):
        pytest.skip("needs the private cluster's topology")
    owners = [
        redis_cluster.master_of_key(shard.outbox)
        for shard in KeySchema("mageflow", CLUSTER_SHARDS).all_shards
    ]
    counts = {port: owners.count(port) for port in redis_cluster.masters()}
    assert len(counts) == 3 and min(counts.values()) >= 5, counts


def test_a_shard_keeps_its_indexes_and_records_in_one_slot() -> None:
    keys = KeySchema("mageflow", CLUSTER_SHARDS)
    slots = set()
    for shard in keys.all_shards:
        sig = keys.new_signature(shard.tag)
        own = {key_slot(k.encode()) for k in [*shard.indexes, sig, f"{sig}:members"]}
        assert len(own) == 1, shard
        slots |= own
    assert len(slots) == CLUSTER_SHARDS


def test_the_slot_check_refuses_keys_of_two_slots() -> None:
    keys = KeySchema("mageflow", 4)
    a, b = (keys.new_signature(s.tag) for s in keys.all_shards[:2])
    one_slot("script", [a, f"{a}:queue", keys.shard(a).outbox])
    with pytest.raises(CrossSlotError, match="mageflow bug") as info:
        one_slot("script watch", [keys.shard(a).outbox, b])
    assert info.value.keys == [keys.shard(a).outbox, b]


async def test_the_suite_runs_with_the_slot_check_on(redis_url: str, namespace: str) -> None:
    # tests/conftest.py turns it on for every test and every worker process a test starts.
    assert Store.check_slots
    mf = Mageflow(None, redis_url, config=MageflowConfig(namespace=namespace))
    await mf.start()
    try:
        a, b = (mf.keys.new_signature(s.tag) for s in mf.keys.all_shards[:2])
        with pytest.raises(CrossSlotError):  # refused before anything is sent
            await mf.store._call("heartbeat", [a, b], [1000])
    finally:
        await mf.close()


def test_the_command_line_reads_a_cluster(redis_cluster: Cluster, namespace: str) -> None:
    import subprocess
    import sys

    async def make() -> str:
        mf = Mageflow(None, cluster_url(redis_cluster), config=MageflowConfig(namespace=namespace))
        register(mf)
        try:
            sig = await mf.sign("double", x=4)
            await sig.aio_run({})
            return sig.key
        finally:
            await mf.close()

    key = asyncio.run(make())
    url = cluster_url(redis_cluster)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mageflow",
            "ls",
            "--json",
            "--redis-url",
            url,
            "--namespace",
            namespace,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["key"], r["status"]) for r in rows] == [(key, "done")]
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        for k in client.scan_iter(match=f"{namespace}:*"):
            client.delete(k)
    finally:
        client.close()
