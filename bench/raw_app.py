"""Raw Taskiq: the same trivial tasks on the same stream broker, with no orchestration at all.

Results go to a push-style result backend: each worker ``RPUSH``es ``[task_id, finished_at,
value, is_err]`` onto one list on the state server, and the client pops them (see
:class:`ResultWaiter`). Taskiq's stock Redis result backend would make the client poll every
pending task, which would measure polling rather than Taskiq.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker, AsyncResultBackend, TaskiqResult

from bench.wiring import Wiring, stream_broker

NOOP = "raw_noop"
COLLECT = "raw_collect"


class PushResultBackend(AsyncResultBackend[Any]):
    """Appends every result to one Redis list; the bench's client reads them off in order."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self.redis: Redis | None = None

    async def startup(self) -> None:
        self.redis = Redis.from_url(self.url)

    async def shutdown(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
        assert self.redis is not None
        item = [task_id, time.time(), result.return_value, result.is_err]
        await self.redis.rpush(self.key, json.dumps(item))

    async def is_result_ready(self, task_id: str) -> bool:
        raise NotImplementedError("the bench reads results with ResultWaiter")

    async def get_result(self, task_id: str, with_logs: bool = False) -> TaskiqResult[Any]:
        raise NotImplementedError("the bench reads results with ResultWaiter")


def make_broker(w: Wiring) -> AsyncBroker:
    broker = stream_broker(w).with_result_backend(PushResultBackend(w.state_url, w.results_key))

    @broker.task(task_name=NOOP)
    async def raw_noop(x: int = 0) -> int:
        return x + 1

    @broker.task(task_name=COLLECT)
    async def raw_collect(values: list[int]) -> int:
        return len(values)

    return broker


class ResultWaiter:
    """One reader of the results list, handing each result to whoever waits for its task id."""

    def __init__(self, url: str, key: str) -> None:
        self.redis = Redis.from_url(url, socket_timeout=None)
        self.key = key
        self.done_at: dict[str, float] = {}
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._early: dict[str, Any] = {}
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.redis.aclose()

    async def wait(self, task_id: str) -> Any:
        if task_id in self._early:
            return self._early.pop(task_id)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = fut
        return await fut

    async def _read(self) -> None:
        while True:
            batch: Any = await self.redis.lpop(self.key, 1000)
            if not batch:
                popped = await self.redis.blpop([self.key], timeout=1)
                batch = [popped[1]] if popped else []
            for raw in batch:
                task_id, finished, value, is_err = json.loads(raw)
                self.done_at[task_id] = finished
                result: Any = RuntimeError(f"task {task_id} failed") if is_err else value
                fut = self._waiting.pop(task_id, None)
                if fut is None:
                    self._early[task_id] = result
                elif isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
