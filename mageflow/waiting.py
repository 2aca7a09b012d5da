"""Waiting for signatures to finish, for ``aio_run``.

A finished signature whose ``w`` flag is set is announced on its workflow's ``done`` channel (see
lib.lua). One pattern subscription per client feeds every waiter; each waiter also re-reads the
status now and then, so a notice lost to a reconnect only delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mageflow.status import SignatureStatus
from mageflow.store.records import Record
from mageflow.store.redis_store import Store, _s

RECHECK_SECONDS = (0.5, 1.0, 2.0, 5.0)


class Notifier:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._futures: dict[str, list[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._ready = asyncio.Event()

    async def _ensure_listener(self) -> None:
        if self._listener is None:
            self._pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.psubscribe(self.store.keys.done_pattern)
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # connection trouble: waiters fall back to re-reading status
                await asyncio.sleep(0.5)
                continue
            if msg and msg.get("type") == "pmessage":
                key = _s(msg["data"]).split(" ", 1)[0]
                for fut in self._futures.pop(key, []):
                    if not fut.done():
                        fut.set_result(None)

    async def mark(self, key: str) -> None:
        """Ask for a notice when ``key`` finishes (before launching it, so none is missed)."""
        await self._ensure_listener()
        await self.store.set_fields(key, {"w": "1"})

    async def wait(self, key: str, timeout: float | None = None) -> Record:
        """Block until the signature reaches a terminal status; return its record."""
        await self._ensure_listener()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        attempt = 0
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            self._futures.setdefault(key, []).append(fut)
            record = await self.store.load(key)
            if SignatureStatus(record.status).is_terminal:
                return record
            pause = RECHECK_SECONDS[min(attempt, len(RECHECK_SECONDS) - 1)]
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, pause)
            if deadline is not None and loop.time() >= deadline:
                record = await self.store.load(key)
                if SignatureStatus(record.status).is_terminal:
                    return record
                raise TimeoutError(f"signature {key} did not finish within {timeout} s")
            attempt += 1

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
