"""Turning what the user passed as ``redis_client`` into a redis.asyncio client."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from mageflow.errors import ConfigurationError, RedisUnavailableError
from mageflow.store.embedded import embedded_default

T = TypeVar("T")


def client_from_url(url: str, *, max_connections: int = 256) -> aioredis.Redis:
    """A client with settings that suit mageflow's traffic.

    A blocking pool waits for a free connection instead of raising past its size (redis-py 8's
    plain pool raises MaxConnectionsError); no socket read timeout, since the pub/sub listener
    idles by design; a short retry so a Redis that is down is reported within about a second.
    """
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


async def resolve_redis(
    redis_client: aioredis.Redis | str | None, data_dir: str | None
) -> tuple[aioredis.Redis, bool]:
    """(client, owned): a client we created is closed by us; one the user passed is theirs."""
    if isinstance(redis_client, aioredis.Redis):
        return redis_client, False
    if isinstance(redis_client, str):
        return client_from_url(redis_client), True
    if redis_client is not None:
        raise ConfigurationError(
            f"redis_client must be a redis.asyncio.Redis, a URL or None, not "
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
