"""Broker-specific care for the Taskiq engine: recovering Redis stream messages, config checks.

taskiq-redis's ``RedisStreamBroker`` acknowledges messages and re-claims the pending ones of dead
consumers (``XAUTOCLAIM`` after ``idle_timeout`` ms), but only right after a read that returned
new messages: a quiet queue never recovers what a killed worker held, so a workflow waiting on
those messages would wait forever. Every mageflow worker therefore runs :func:`sweep_streams`,
which moves entries idle for longer than ``idle_timeout`` back to the end of their stream as new
entries (one Lua script: claim, re-add, acknowledge, delete), where any worker reads them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker

log = logging.getLogger("mageflow.taskiq")

# KEYS[1] stream. ARGV: group, consumer, min idle (ms), count. Returns how many entries moved.
REQUEUE_IDLE = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0',
                           'COUNT', ARGV[4])
local moved = 0
for _, entry in ipairs(claimed[2]) do
  local id, fields = entry[1], entry[2]
  if type(fields) == 'table' and #fields > 0 then
    redis.call('XADD', KEYS[1], '*', unpack(fields))
    moved = moved + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
end
return moved
"""

SWEEPER_CONSUMER = "mageflow-sweeper"
BATCH = 100


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """What the sweeper needs to know about a ``RedisStreamBroker``."""

    pool: Any
    streams: tuple[str, ...]
    group: str
    idle_ms: int
    block_ms: int
    socket_timeout: float | None


def stream_settings(broker: AsyncBroker) -> StreamSettings | None:
    """The stream settings of a taskiq-redis ``RedisStreamBroker``; None for other brokers."""
    try:
        from taskiq_redis import RedisStreamBroker
    except ImportError:  # pragma: no cover - taskiq-redis not installed
        return None
    if not isinstance(broker, RedisStreamBroker):
        return None
    kwargs = broker.connection_pool.connection_kwargs
    timeout = kwargs.get("socket_timeout", 5.0)  # redis-py's default read timeout
    return StreamSettings(
        pool=broker.connection_pool,
        streams=(broker.queue_name, *broker.additional_streams),
        group=broker.consumer_group_name,
        idle_ms=int(broker.idle_timeout),
        block_ms=int(broker.block),
        socket_timeout=None if timeout is None else float(timeout),
    )


async def requeue_idle(settings: StreamSettings) -> int:
    """Move every entry pending longer than the idle timeout back to its stream; how many moved."""
    moved = 0
    async with Redis(connection_pool=settings.pool) as conn:
        for stream in settings.streams:
            while True:
                n = int(
                    await conn.eval(
                        REQUEUE_IDLE,
                        1,
                        stream,
                        settings.group,
                        SWEEPER_CONSUMER,
                        settings.idle_ms,
                        BATCH,
                    )
                )
                moved += n
                if n < BATCH:
                    break
    return moved


async def sweep_streams(settings: StreamSettings) -> None:
    """Run :func:`requeue_idle` every half idle timeout (bounded to 0.2 .. 30 s), forever."""
    period = min(max(settings.idle_ms / 2000, 0.2), 30.0)
    while True:
        await asyncio.sleep(period)
        try:
            moved = await requeue_idle(settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis trouble: try again next round
            log.warning("could not re-queue idle stream messages: %r", exc)
            continue
        if moved:
            log.warning(
                "re-queued %d message(s) left unacknowledged for over %.1f s (a worker died or a "
                "task outran the stream idle timeout)",
                moved,
                settings.idle_ms / 1000,
            )


def broker_warnings(broker: AsyncBroker, concurrency: int) -> list[str]:
    """Settings of ``broker`` that lose messages, stall workers or pickle data, in plain words."""
    return _backend_warnings(broker) + _delivery_warnings(broker, concurrency)


def _backend_warnings(broker: AsyncBroker) -> list[str]:
    backend = broker.result_backend
    if type(backend).__name__ == "DummyResultBackend":
        return []
    serializer = type(getattr(backend, "serializer", None)).__name__
    pickles = " and pickles it" if serializer == "PickleSerializer" else ""
    return [
        f"the broker has a result backend ({type(backend).__name__}): taskiq stores a result for "
        f"every mageflow message there{pickles}, though mageflow keeps results in its own store "
        "(JSON). Drop the result backend, or give it a JSON serializer."
    ]


def _delivery_warnings(broker: AsyncBroker, concurrency: int) -> list[str]:
    name = type(broker).__name__
    if name == "ListQueueBroker":
        return [
            "ListQueueBroker pops messages with BRPOP and has no acknowledgement: messages a "
            "worker holds when it dies are lost for good. Use taskiq_redis.RedisStreamBroker."
        ]
    if name == "PubSubBroker":
        return ["PubSubBroker delivers every message to every worker; use RedisStreamBroker."]
    qos = getattr(broker, "_qos", None)
    if name == "AioPikaBroker" and isinstance(qos, int) and qos != concurrency:
        effect = (
            "runs fewer tasks at once than it could"
            if qos < concurrency
            else "holds messages that idle workers could run"
        )
        return [
            f"AioPikaBroker(qos={qos}) lets RabbitMQ hand this worker {qos} unacknowledged "
            f"messages at a time with --concurrency {concurrency}: the worker {effect}. "
            f"Pass qos={concurrency}."
        ]
    settings = stream_settings(broker)
    return [] if settings is None else _stream_warnings(settings, concurrency)


def _stream_warnings(s: StreamSettings, concurrency: int) -> list[str]:
    out = []
    if s.socket_timeout is not None and s.socket_timeout <= s.block_ms / 1000:
        out.append(
            f"the broker's Redis socket_timeout ({s.socket_timeout} s) is not above xread_block "
            f"({s.block_ms} ms): every blocking read will time out. Pass socket_timeout=None or a "
            "value above the block time to RedisStreamBroker(...)."
        )
    size = getattr(s.pool, "max_connections", None)
    if isinstance(size, int) and size < concurrency + 2:
        out.append(
            f"the broker's Redis pool holds {size} connections for {concurrency} concurrent "
            f"tasks; acks and sends will queue for a connection. Pass "
            f"max_connection_pool_size={concurrency + 10} or more."
        )
    return out


def share_stream_client(broker: AsyncBroker) -> None:
    """Make a RedisStreamBroker send (XADD) and acknowledge (XACK) through one long-lived client.

    taskiq-redis builds a new ``Redis(connection_pool=...)`` for every kick and every ack; in
    redis-py 8 that constructor is costly (it rebuilds the response-callback table), and on a
    mageflow worker, which kicks each next step and acks each delivery, it was about a fifth of
    the worker's CPU (see docs/benchmarks.md). The commands sent are exactly the broker's own;
    only the client object is reused. Brokers of other kinds are left alone.
    """
    if type(broker).__name__ != "RedisStreamBroker" or getattr(broker, "_mageflow_shared", False):
        return
    stream: Any = broker
    client = Redis(connection_pool=stream.connection_pool)

    async def kick(message: Any) -> None:
        queue_name = message.labels.get("queue_name") or stream.queue_name
        await client.xadd(
            queue_name,
            {b"data": message.message},
            maxlen=stream.maxlen,
            approximate=stream.approximate,
        )

    def ack_generator(id: str, queue_name: str) -> Any:
        async def ack() -> None:
            await client.xack(queue_name, stream.consumer_group_name, id)

        return ack

    stream.kick = kick
    stream._ack_generator = ack_generator
    stream._mageflow_shared = True
