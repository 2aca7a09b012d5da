"""The cluster harness works, and what redis-py's asyncio ``RedisCluster`` does on it.

The last tests pin behaviour code written for a cluster relies on: scripts and transactions
must stay within one slot, pipelines route each command to its slot, and a pattern
subscription hears a PUBLISH made on any node.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import CrossSlotTransactionError, RedisClusterException

from .harness import ExistingCluster, RedisClusterHarness

SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return ARGV[1]"


@pytest.fixture
def prefix() -> str:
    return f"mfc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def rc(
    redis_cluster: RedisClusterHarness | ExistingCluster, prefix: str
) -> AsyncIterator[RedisCluster]:
    async with RedisCluster.from_url(redis_cluster.url, decode_responses=True) as client:
        yield client
        # Only needed on a shared REDIS_CLUSTER_URL cluster; scan_iter visits every master.
        async for key in client.scan_iter(match=f"*{prefix}*"):
            await client.delete(key)


async def test_keys_of_every_master(rc: RedisCluster, prefix: str) -> None:
    values = {f"{prefix}:{i}": str(i) for i in range(30)}
    for key, value in values.items():
        await rc.set(key, value)
    assert {k: await rc.get(k) for k in values} == values
    nodes = {getattr(rc.get_node_from_key(k), "name", None) for k in values}
    assert nodes == {n.name for n in rc.get_primaries()}, "30 keys should reach every master"


async def test_scripts_take_keys_of_one_slot(rc: RedisCluster, prefix: str) -> None:
    a, b = f"{{{prefix}}}:a", f"{{{prefix}}}:b"  # one hash tag: one slot
    assert await rc.eval(SCRIPT, 2, a, b, "1") == "1"
    sha = await rc.script_load(SCRIPT)  # loaded on every master
    assert await rc.evalsha(sha, 2, a, b, "2") == "2"
    assert [await rc.get(a), await rc.get(b)] == ["2", "2"]

    # redis-py refuses before sending: RedisClusterException itself (not a RedisError); the
    # server's own refusal would be ClusterCrossSlotError, a ResponseError.
    c = f"{{{prefix}-other}}:c"
    assert rc.keyslot(a) != rc.keyslot(c)
    for call in (rc.eval(SCRIPT, 2, a, c, "3"), rc.evalsha(sha, 2, a, c, "3")):
        with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
            await call
    assert await rc.get(c) is None


async def test_pipeline_routes_each_evalsha_to_its_slot(rc: RedisCluster, prefix: str) -> None:
    sha = await rc.script_load(SCRIPT)
    keys = [f"{{{prefix}-{i}}}" for i in range(30)]  # slots of every master
    pipe = rc.pipeline(transaction=False)
    for key in keys:
        pipe.evalsha(sha, 2, f"{key}:a", f"{key}:b", key)
    assert await pipe.execute() == keys
    assert [await rc.get(f"{key}:b") for key in keys] == keys


async def test_transaction_needs_one_slot(rc: RedisCluster, prefix: str) -> None:
    tag = f"{{{prefix}}}"
    async with rc.pipeline(transaction=True) as tx:
        tx.set(f"{tag}:a", "1")
        tx.incr(f"{tag}:n")
        tx.get(f"{tag}:a")
        assert await tx.execute() == [True, 1, "1"]

    tx = rc.pipeline(transaction=True)
    tx.set(f"{tag}:a", "2")
    tx.set(f"{prefix}:elsewhere", "2")  # queuing does not check slots, execute() does
    with pytest.raises(CrossSlotTransactionError):  # a RedisClusterException
        await tx.execute()
    assert [await rc.get(f"{tag}:a"), await rc.get(f"{prefix}:elsewhere")] == ["1", None]


async def test_pattern_subscription_hears_other_nodes(rc: RedisCluster, prefix: str) -> None:
    pubsub = rc.pubsub()
    await pubsub.psubscribe(f"{prefix}.*")
    node = pubsub.get_pubsub_node()
    assert node is not None
    others = [n for n in rc.get_primaries() if n.name != node.name]
    for other in others:  # classic PUBLISH reaches every node over the cluster bus
        await rc.publish(f"{prefix}.news", other.name, target_nodes=other)
    heard = []
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            heard.append(message["data"])
        if len(heard) == len(others):
            break
    await pubsub.aclose()
    assert sorted(heard) == sorted(n.name for n in others)


async def test_failover_keeps_keys_readable(redis_cluster_ha: RedisClusterHarness) -> None:
    cluster = redis_cluster_ha
    # One retry is what a read needs after a promotion: the first attempt goes to the dead
    # master the client's slot map still names, its ConnectionError makes the client reload the
    # map, and the retry reaches the new master. NoBackoff: the map is right by then.
    client = RedisCluster.from_url(cluster.url, decode_responses=True, retry=Retry(NoBackoff(), 1))
    async with client as rc:
        values = {f"fo:{i}": str(i) for i in range(30)}
        for key, value in values.items():
            await rc.set(key, value)
        dead = cluster.master_of_key("fo:0")
        cluster.wait_replicated()  # replication is asynchronous: don't lose the writes
        cluster.kill_master(dead)
        new = cluster.wait_for_promotion(dead, timeout=30)

        assert dead not in cluster.masters() and new in cluster.masters()
        assert cluster.master_of_key("fo:0") == new
        assert {k: await rc.get(k) for k in values} == values
