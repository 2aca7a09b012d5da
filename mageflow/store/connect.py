"""Turning what the user passed as ``redis_client`` into a redis.asyncio client."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from mageflow.errors import ConfigurationError, InvalidSettingError, RedisUnavailableError
from mageflow.store.embedded import embedded_default
from mageflow.store.keys import CLUSTER_SHARDS, MAX_SHARDS

#: URL schemes that name a Redis Cluster: any node of it, e.g. redis+cluster://10.0.0.5:7000
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
Client = aioredis.Redis | RedisCluster


def shard_count(redis_client: Client | str | None, configured: int | None) -> int:
    """The namespace's shard count: the configured one, else $MAGEFLOW_SHARDS, else 16 on a
    cluster (a RedisCluster, or a ``redis+cluster://`` URL given or in $REDIS_URL) and 1
    otherwise. Known before connecting, so keys made before the first Redis call are right."""
    if configured is not None:
        return configured
    raw = os.environ.get("MAGEFLOW_SHARDS", "").strip()
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_SHARDS:
            raise InvalidSettingError("MAGEFLOW_SHARDS", raw, f"a whole number 1..{MAX_SHARDS}")
        return int(raw)
    if redis_client is None:
        redis_client = os.environ.get("REDIS_URL", "")
    if isinstance(redis_client, str):
        return CLUSTER_SHARDS if redis_client.startswith(CLUSTER_SCHEMES) else 1
    return CLUSTER_SHARDS if isinstance(redis_client, RedisCluster) else 1


T = TypeVar("T")


def client_from_url(url: str, *, max_connections: int = 256) -> Client:
    """A client with settings that suit mageflow's traffic (a RedisCluster for a
    ``redis+cluster://`` URL).

    A blocking pool waits for a free connection instead of raising past its size (redis-py 8's
    plain pool raises MaxConnectionsError); no socket read timeout, since the pub/sub listener
    idles by design; a short retry so a Redis that is down is reported within about a second.
    """
    if url.startswith(CLUSTER_SCHEMES):
        return cluster_from_url(url, max_connections)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )
    return aioredis.Redis(connection_pool=pool)


def cluster_from_url(url: str, max_connections: int) -> RedisCluster:
    """A RedisCluster from ``redis+cluster://host:port``: the node named is only where the
    client first learns the cluster's layout; it finds the rest itself."""
    plain = url.replace("+cluster://", "://", 1)
    return RedisCluster.from_url(
        plain,
        decode_responses=True,
        max_connections=max_connections,
        socket_connect_timeout=5,
        socket_timeout=None,  # as for a single Redis: pub/sub listeners idle by design
        # A master that fails over is replaced within a few seconds: keep trying through it.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 6),
    )


def reconnect(client: Client) -> Client:
    """A new client like ``client``, for another event loop (connections belong to one)."""
    if isinstance(client, RedisCluster):
        nodes = [ClusterNode(n.host, n.port) for n in client.get_nodes()]
        return RedisCluster(startup_nodes=nodes, decode_responses=True, socket_timeout=None)
    pool = client.connection_pool
    return aioredis.Redis(
        connection_pool=type(pool)(connection_class=pool.connection_class, **pool.connection_kwargs)
    )


async def resolve_redis(
    redis_client: Client | str | None, data_dir: str | None
) -> tuple[Client, bool]:
    """(client, owned): a client we created is closed by us; one the user passed is theirs."""
    if isinstance(redis_client, aioredis.Redis | RedisCluster):
        return redis_client, False
    if isinstance(redis_client, str):
        return client_from_url(redis_client), True
    if redis_client is not None:
        raise ConfigurationError(
            f"redis_client must be a redis.asyncio.Redis, a redis.asyncio.cluster.RedisCluster, "
            f"a URL or None, not "
            f"{type(redis_client).__name__} (a sync redis.Redis will not work)."
        )
    url = os.environ.get("REDIS_URL")
    if not url:
        server = embedded_default(data_dir)
        url = await asyncio.to_thread(server.start)
    return client_from_url(url), True


#: Pauses between tries of an operation that cannot reach Redis (the last one repeats).
OUTAGE_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)


async def ride_out(
    operation: Callable[[], Awaitable[T]], seconds: float, what: str, log: logging.Logger
) -> T:
    """``await operation()``, tried again with backoff while Redis is unreachable, for up to
    ``seconds``; then its RedisUnavailableError goes to the caller. For operations that are safe
    to repeat (every script is: a second finish or watch is a no-op)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    for tries in itertools.count():
        try:
            return await operation()
        except RedisUnavailableError as exc:
            pause = OUTAGE_BACKOFF[min(tries, len(OUTAGE_BACKOFF) - 1)]
            if loop.time() + pause > give_up:
                raise
            if tries == 0:
                log.warning("%s: %s; retrying for up to %g s", what, exc.cause, seconds)
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")  # itertools.count() never ends
