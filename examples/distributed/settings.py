"""Settings shared by the worker app and the producer (the producer never imports the tasks).

The broker is taskiq-redis's RedisStreamBroker: messages are acknowledged after they ran, so the
messages of a worker that dies are handed to another one. Settings worth knowing:

* ``idle_timeout``: how long (ms) a message may stay unacknowledged before another worker takes it.
  Keep it above your longest task; mageflow's claim makes sure a live run is never duplicated.
* ``socket_timeout``: redis-py 8 reads time out after 5 s by default; blocking reads wait
  ``xread_block`` ms, so the timeout must be longer than that.
* ``max_connection_pool_size``: each running task acknowledges and sends through this pool.
"""

from __future__ import annotations

import os

from taskiq_redis import RedisStreamBroker

from mageflow import Mageflow, MageflowConfig

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CONCURRENCY = 50  # keep in step with `mageflow worker ... --concurrency`


def make_client() -> Mageflow:
    broker = RedisStreamBroker(
        REDIS_URL,
        queue_name="mageflow-example",
        consumer_group_name="mageflow-example-workers",
        idle_timeout=60_000,
        xread_block=2_000,
        xread_count=10,
        socket_timeout=30,
        max_connection_pool_size=CONCURRENCY + 20,
    )
    config = MageflowConfig(namespace="mageflow-example", lease_seconds=30)
    return Mageflow(broker, REDIS_URL, config=config)
