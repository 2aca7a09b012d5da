"""The worker app of ``bench/rate_figures.py``: one rate-limited task that notes its start.

Workers load ``bench.rate_app:worker_client`` (``python -m mageflow.engines.taskiq_worker``);
the bench process builds its producer with :func:`broker` and signs the task by name.
Settings come from the environment (``RATE_*``), set by the bench.
"""

from __future__ import annotations

import os
import time
from typing import Any

from taskiq_redis import RedisStreamBroker

from mageflow import Mageflow, MageflowConfig

TASK = "rated"


def broker(url: str, queue: str) -> RedisStreamBroker:
    return RedisStreamBroker(
        url,
        queue_name=queue,
        consumer_group_name=f"{queue}-workers",
        xread_block=1000,
        xread_count=8,
        socket_timeout=10,  # above the block time
        max_connection_pool_size=64,
    )


def starts_key(namespace: str) -> str:
    return f"{namespace}:bench:starts"


def worker_client() -> Mageflow:
    url, namespace = os.environ["RATE_REDIS_URL"], os.environ["RATE_NAMESPACE"]
    config = MageflowConfig(namespace=namespace)
    mf = Mageflow(broker(url, os.environ["RATE_QUEUE"]), url, config=config)

    @mf.task(name=TASK, rate_limit=os.environ.get("RATE_LIMIT", "100/s"))
    async def rated(msg: dict[str, Any]) -> None:
        await mf.store.redis.rpush(starts_key(namespace), f"{time.time()!r} {os.getpid()}")

    return mf
