"""Coalesce script calls issued in the same event-loop turn into one pipeline.

Many tasks finish at about the same time; each needs one EVALSHA. Sending them one by one costs a
round trip and a connection checkout each; sending whatever was queued during one loop turn as a
single non-transactional pipeline costs one. Every script is atomic on its own, so grouping them
changes no semantics, and a caller still awaits only its own answer.

One batch is in flight at a time, so answers come back in the order the calls were made: two
tasks finishing together free their swarm slots in queue order, and the members those slots go to
are dispatched in that same order.

A single Redis streams its calls instead (streaming.py), which keeps the same order without
waiting for a batch's answers; a Redis Cluster, whose calls go to several masters, batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

MAX_BATCH = 512
#: A single Redis or a Redis Cluster: a cluster pipeline sends each call to its slot's master.
AnyRedis = aioredis.Redis | RedisCluster


@dataclass(slots=True)
class _Call:
    sha: str
    numkeys: int
    args: list[Any]
    future: asyncio.Future[Any]


class ScriptBatcher:
    def __init__(self, client: AnyRedis, reload: Callable[[], Awaitable[None]]) -> None:
        self._client = client
        self._reload = reload
        self._queue: list[_Call] = []
        self._flushing: asyncio.Task[None] | None = None

    async def call(self, sha: str, numkeys: int, args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        call = _Call(sha, numkeys, args, loop.create_future())
        self._queue.append(call)
        if len(self._queue) == 1 and self._flushing is None:
            loop.call_soon(self._start_flush)
        return await call.future

    async def aclose(self) -> None:
        """Nothing to stop: a batch in flight ends with its pipeline (the stream's interface)."""

    def _start_flush(self) -> None:
        if not self._queue or self._flushing is not None:
            return
        calls, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._flushing = asyncio.get_running_loop().create_task(self._flush(calls))
        self._flushing.add_done_callback(self._flushed)

    def _flushed(self, _task: asyncio.Task[None]) -> None:
        self._flushing = None
        self._start_flush()  # whatever queued up meanwhile goes out as the next batch

    async def _flush(self, calls: list[_Call]) -> None:
        try:
            results = await self._send(calls)
            missing = [c for c, r in zip(calls, results, strict=True) if _no_script(r)]
            if missing:  # Redis restarted and forgot the scripts: load them, send those again
                await self._reload()
                for c, r in zip(missing, await self._send(missing), strict=True):
                    _settle(c, r)
            for c, r in zip(calls, results, strict=True):
                if not c.future.done():
                    _settle(c, r)
        except BaseException as exc:  # connection trouble: every caller of the batch hears it
            for c in calls:
                if not c.future.done():
                    c.future.set_exception(exc)

    async def _send(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for c in calls:
            pipe.evalsha(c.sha, c.numkeys, *c.args)
        return await pipe.execute(raise_on_error=False)


def _no_script(result: Any) -> bool:
    return isinstance(result, redis_errors.NoScriptError)


def _settle(call: _Call, result: Any) -> None:
    if call.future.done():
        return
    if isinstance(result, Exception):
        call.future.set_exception(result)
    else:
        call.future.set_result(result)
