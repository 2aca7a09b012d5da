"""Broker-specific care for the Taskiq engine: recovering Redis stream messages, config checks.

taskiq-redis's ``RedisStreamBroker`` acknowledges messages and re-claims the pending ones of dead
consumers (``XAUTOCLAIM`` after ``idle_timeout`` ms), but only right after a read that returned
new messages: a quiet queue never recovers what a killed worker held, so a workflow waiting on
those messages would wait forever. Every mageflow worker therefore runs :func:`sweep_streams`,
which moves entries idle for longer than ``idle_timeout`` back to the end of their stream as new
entries (one Lua script: claim, re-add, acknowledge, delete), where any worker reads them. The
same round trims what every consumer group has read and acknowledged (``XTRIM MINID``), so the
stream does not grow without bound.

:func:`adapt_stream_broker` also replaces the broker's ``listen``: taskiq-redis's ends (and takes
the worker with it) on the first lost connection, and fails on every entry without a ``data``
field. Ours reconnects with backoff, creates the consumer group again if the broker's Redis lost
it, and hands entries without data to the engine's dead-letter hook.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from taskiq import AckableMessage, AsyncBroker

from mageflow.errors import PoisonMessageError
from mageflow.poison import poison
from mageflow.store.schema import PoisonReason
from mageflow.store.streaming import CommandStream

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
-- Trim what every group has read and acknowledged: entries older than the oldest of each
-- group's last-delivered id and pending entries are of no use to anyone.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms or '0'), tonumber(seq or '0')
  end
  local function before(a, b)
    local am, as = parse(a)
    local bm, bs = parse(b)
    return am < bm or (am == bm and as < bs)
  end
  local floor = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    local last = info['last-delivered-id']
    if last and (floor == nil or before(last, floor)) then floor = last end
    if tonumber(info['pending'] or 0) > 0 then
      local oldest = redis.call('XPENDING', KEYS[1], info['name'])[2]
      if oldest and before(oldest, floor) then floor = oldest end
    end
  end
  if floor then redis.call('XTRIM', KEYS[1], 'MINID', '~', floor) end
end
return moved
"""

SWEEPER_CONSUMER = "mageflow-sweeper"
BATCH = 100
#: Pauses before reading again after the broker's Redis failed a read (the last one repeats).
RECONNECT_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: Pauses between tries of an acknowledgement that cannot reach the broker's Redis. One that
#: never gets through only means the message comes back and is skipped as finished.
ACK_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Acknowledgements wait this long (s) for others to go in the same XACK, or until this many.
ACK_DELAY = 0.005
ACK_BATCH = 100
#: At shutdown, the last acknowledgements get this long (s).
ACK_FLUSH_TIMEOUT = 5.0
#: A send (XADD) that gets no answer this long (s) fails, and its connection is given up.
SEND_TIMEOUT = 15.0
_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)

#: What the engine does with a stream entry that has no ``data`` field: (stream, id, fields);
#: it dead-letters the entry and returns True when it may be acknowledged.
JunkHook = Callable[[str, str, dict[bytes, bytes]], Awaitable[bool]]


class StreamMessage(AckableMessage):
    """A delivery from a Redis stream, with where it came from (for dead letters)."""

    source: str = ""


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


def adapt_stream_broker(broker: AsyncBroker) -> None:
    """Make a RedisStreamBroker send (XADD) over one streamed connection, acknowledge (XACK) in
    batches (:class:`AckBatch`), and listen with :func:`_listen` (see the module doc).

    taskiq-redis builds a new ``Redis(connection_pool=...)`` for every kick and every ack; in
    redis-py 8 that constructor is costly (it rebuilds the response-callback table), and each
    command is a socket write of its own, the costliest step on loopback (bench/analysis.md).
    The commands are the broker's own (same stream, fields and trimming). Brokers of other
    kinds are left alone.
    """
    if type(broker).__name__ != "RedisStreamBroker" or getattr(broker, "_mageflow_shared", False):
        return
    stream: Any = broker
    client = Redis(connection_pool=stream.connection_pool)
    # Sends go over one connection, written as they come (store/streaming.py): the sends of one
    # loop turn leave in one socket write, the costliest step of a send on loopback.
    sends: list[CommandStream] = []

    async def kick(message: Any) -> None:
        queue_name = message.labels.get("queue_name") or stream.queue_name
        trim = [] if stream.maxlen is None else ["MAXLEN", stream.maxlen]
        if trim and stream.approximate:
            trim.insert(1, "~")
        if not sends:
            sends.append(CommandStream(stream.connection_pool))
        line = sends[0]
        try:
            # A half-open connection never answers (with socket_timeout=None nothing else would
            # notice): give it up, so this send is retried and later ones use a new connection.
            async with asyncio.timeout(SEND_TIMEOUT):
                await line.execute("XADD", queue_name, *trim, "*", "data", message.message)
        except TimeoutError:
            line.abandon(redis_errors.TimeoutError("the broker's Redis did not answer an XADD"))
            raise

    acks = AckBatch(client, stream.consumer_group_name)

    def ack_generator(id: str, queue_name: str) -> Any:
        async def ack() -> None:
            acks.add(queue_name, id)

        return ack

    shutdown = stream.shutdown

    async def flush_then_shutdown() -> None:
        try:  # a worker's last acknowledgements, before the pool closes
            async with asyncio.timeout(ACK_FLUSH_TIMEOUT):
                await acks.flush()
        except TimeoutError:  # (those messages come back and are skipped as finished)
            log.warning("could not send the last acknowledgements in %g s", ACK_FLUSH_TIMEOUT)
        finally:
            if sends:
                await sends.pop().aclose()
            await shutdown()

    stream.kick = kick
    stream._ack_generator = ack_generator
    stream.shutdown = flush_then_shutdown
    stream.listen = lambda: _listen(stream, client)
    stream._mageflow_shared = True


def junk_burier(bury: Callable[[PoisonMessageError, Any, str], Awaitable[bool]]) -> JunkHook:
    """The :data:`JunkHook` that dead-letters an entry without data through ``bury`` (the
    engine's: True once the letter is written)."""

    async def hook(stream: str, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        names = sorted(k.decode("utf-8", "replace") for k in fields)
        error = poison(
            PoisonReason.NO_DATA,
            f"the stream entry has no 'data' field (fields: {', '.join(names) or 'none'})",
        )
        raw = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()
        }
        return await bury(error, raw, f"taskiq stream {stream} entry {entry_id}")

    return hook


def set_junk_hook(broker: AsyncBroker, hook: JunkHook) -> None:
    """Where a worker's stream listener sends entries without data (see :data:`JunkHook`)."""
    if getattr(broker, "_mageflow_shared", False):
        broker._mageflow_junk = hook  # type: ignore[attr-defined]


class AckBatch:
    """Acknowledgements of one consumer group, sent as one ``XACK`` per stream for all that
    gathered in the last few milliseconds, instead of one command (and one socket write, the
    worker's costliest step on loopback; bench/analysis.md) per delivery.

    Delaying an acknowledgement is safe: a delivery is acknowledged only once its outcome is on
    record, so if this process dies with acknowledgements unsent, the broker hands those
    messages out again and each is skipped as finished."""

    def __init__(self, client: Redis, group: str) -> None:
        self.client = client
        self.group = group
        self._ids: dict[str, list[str]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def add(self, stream: str, entry_id: str) -> None:
        ids = self._ids.setdefault(stream, [])
        ids.append(entry_id)
        if len(ids) >= ACK_BATCH:
            self._send_now()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._send_now)

    def _send_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        taken, self._ids = self._ids, {}
        loop = asyncio.get_running_loop()
        for stream, ids in taken.items():
            task = loop.create_task(_ack(self.client, stream, self.group, ids))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def flush(self) -> None:
        """Send what gathered and wait for every acknowledgement under way."""
        self._send_now()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


async def _ack(client: Redis, stream: str, group: str, entry_ids: list[str]) -> None:
    for pause in (*ACK_BACKOFF, None):
        try:
            await client.xack(stream, group, *entry_ids)
            return
        except _CONNECTION_ERRORS as exc:
            if pause is None:
                log.warning(
                    "could not acknowledge %d stream entries (%s ...; %r); they will be "
                    "delivered again and skipped, their signatures having finished",
                    len(entry_ids),
                    entry_ids[0],
                    exc,
                )
                return
            await asyncio.sleep(pause)
        except Exception as exc:  # (a reply error: retrying would not help)
            log.warning("could not acknowledge %d stream entries: %r", len(entry_ids), exc)
            return


async def _listen(stream: Any, client: Redis) -> AsyncGenerator[AckableMessage, None]:
    """Deliveries from the broker's streams, forever: a failed read is retried with backoff."""
    failures = 0
    streams = {stream.queue_name: ">", **stream.additional_streams}
    while True:
        try:
            fetched: Any = await client.xreadgroup(
                stream.consumer_group_name,
                stream.consumer_name,
                streams,
                block=stream.block,
                count=stream.count,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            await _recover_read(stream, exc, failures)
            continue
        if failures:
            log.warning("reading from the broker's Redis again after %d failed read(s)", failures)
            failures = 0
        for name, entries in fetched or []:
            queue = name.decode() if isinstance(name, bytes) else str(name)
            for raw_id, fields in entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                data = fields.get(b"data") if isinstance(fields, dict) else None
                if data is None:
                    await _junk(stream, client, queue, entry_id, fields or {})
                    continue
                yield StreamMessage(
                    data=data,
                    ack=stream._ack_generator(id=entry_id, queue_name=queue),
                    source=f"taskiq stream {queue} entry {entry_id}",
                )


async def _recover_read(stream: Any, exc: BaseException, failures: int) -> None:
    pause = RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF)) - 1]
    if isinstance(exc, redis_errors.ResponseError) and "NOGROUP" in str(exc):
        log.warning(
            "the broker's stream or consumer group %r is gone (its Redis restarted without its "
            "data?): creating it again. Messages that Redis lost are sent again by mageflow's "
            "recovery only if they were still in its outbox.",
            stream.consumer_group_name,
        )
        try:
            await stream._declare_consumer_group()
        except Exception as again:  # still down: the next read tells
            log.debug("could not create the consumer group yet: %r", again)
    else:
        level = (
            logging.WARNING if failures == 1 or pause == RECONNECT_BACKOFF[-1] else logging.DEBUG
        )
        log.log(level, "lost the broker's Redis (%r); reading again in %.1f s", exc, pause)
    await asyncio.sleep(pause)


async def _junk(stream: Any, client: Redis, queue: str, entry_id: str, fields: Any) -> None:
    hook: JunkHook | None = getattr(stream, "_mageflow_junk", None)
    if hook is None:
        log.error("stream %s entry %s has no data field; leaving it", queue, entry_id)
        return
    if await hook(queue, entry_id, dict(fields)):
        await _ack(client, queue, stream.consumer_group_name, [entry_id])
