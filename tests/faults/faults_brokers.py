"""The stream broker of the fault tests, built the same way by the worker app and the producer.

No side effects on import: the test process imports it to build its producer, and the worker app
(``faults_app``) to build the worker's broker.
"""

from __future__ import annotations

from taskiq_redis import RedisStreamBroker


def group_of(queue: str) -> str:
    """The consumer group every worker of ``queue`` reads with."""
    return f"{queue}-workers"


def make_broker(
    url: str, queue: str, *, idle_ms: int = 3000, xread_count: int = 4
) -> RedisStreamBroker:
    return RedisStreamBroker(
        url,
        queue_name=queue,
        consumer_group_name=group_of(queue),
        idle_timeout=idle_ms,  # unacknowledged this long: the sweeper hands it out again
        xread_block=500,
        xread_count=xread_count,
        max_connection_pool_size=64,
        socket_timeout=5,  # above the block time; a dead server is noticed by the socket anyway
        socket_connect_timeout=2,
    )
