"""Brokers for the Taskiq engine tests, built the same way by the worker app and the producer.

Settings come from the environment (``MFT_*``), so each test gets its own stream or queue.
"""

from __future__ import annotations

import os

from taskiq import AsyncBroker

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def make_broker(
    kind: str,
    queue: str,
    redis_url: str,
    *,
    idle_ms: int = 600_000,
    qos: int = 20,
    xread_count: int = 4,
) -> AsyncBroker:
    """A broker on its own stream (``kind="stream"``) or RabbitMQ queue (``kind="amqp"``)."""
    if kind == "stream":
        from taskiq_redis import RedisStreamBroker

        return RedisStreamBroker(
            redis_url,
            queue_name=queue,
            consumer_group_name=f"{queue}-workers",
            idle_timeout=idle_ms,  # unacknowledged this long: another worker may take it
            xread_block=1000,
            xread_count=xread_count,  # few: do not hoard messages other workers could run
            max_connection_pool_size=64,
            socket_timeout=10,  # above the 1 s block time (redis-py 8 defaults to 5 s)
        )
    if kind == "amqp":
        from taskiq_aio_pika import AioPikaBroker
        from taskiq_aio_pika.exchange import Exchange
        from taskiq_aio_pika.queue import Queue, QueueType

        expires = {"x-expires": 300_000}  # test queues vanish 5 min after their last use
        return AioPikaBroker(
            AMQP_URL,
            exchange=Exchange(name=queue, auto_delete=True),
            task_queues=[Queue(name=queue, type=QueueType.CLASSIC, arguments=expires)],
            dead_letter_queue=Queue(
                name=f"{queue}.dead", type=QueueType.CLASSIC, arguments=expires
            ),
            qos=qos,  # = worker concurrency: more would hoard messages other workers could run
        )
    raise ValueError(f"unknown broker kind {kind!r}")


def broker_from_env() -> AsyncBroker:
    return make_broker(
        os.environ["MFT_BROKER"],
        os.environ["MFT_QUEUE"],
        os.environ.get("MFT_BROKER_URL") or os.environ["MFT_REDIS_URL"],
        idle_ms=int(os.environ.get("MFT_IDLE_MS", "600000")),
        qos=int(os.environ.get("MFT_CONCURRENCY", "20")),
        xread_count=int(os.environ.get("MFT_XREAD_COUNT", "4")),
    )
