"""Waiting for signatures to finish, for ``aio_run`` and ``aresult``, told by the store.

``watch.lua`` sets a signature's waited flag and reads its status in one step; a signature that
ends with the flag set is announced on its workflow's ``done`` channel (lib.lua). One pattern
subscription per client feeds every waiter, so nothing polls: a waiter sleeps until the notice
for its key arrives. A notice can only be missed while the subscription is down; when it comes
back, every waiter reads its status once more. Besides ends, two notices wake waiters: a
signature moved under another key (they look it up again there), and one that got the done TTL
without running (it never will: they get TaskCanceledError).

A waiter rides out a short Redis outage: while Redis cannot be reached it keeps trying, with
backoff, for up to ``outage_seconds`` (MageflowConfig.redis_outage_seconds) before it raises
RedisUnavailableError. The work itself goes on in the workers meanwhile; the waiter only asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from mageflow.errors import SignatureNotFoundError, TaskCanceledError
from mageflow.store.connect import ride_out
from mageflow.store.records import Record
from mageflow.store.redis_store import MAX_FORWARDS, Store, _s
from mageflow.store.schema import Notice, Verdict

log = logging.getLogger("mageflow.waiting")
RECONNECT_PAUSE = 0.5


class Notifier:
    def __init__(self, store: Store, outage_seconds: float = 30.0) -> None:
        self.store = store
        self.outage_seconds = outage_seconds
        self._futures: dict[str, list[asyncio.Future[str]]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def _ensure_listener(self) -> None:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        # No need to wait for Redis to confirm the subscription: a waiter registers its future
        # before it reads the status, and the confirmation wakes every waiter to read it again.

    async def _listen(self) -> None:
        while True:
            pubsub: Any = self.store.redis.pubsub()
            try:
                await pubsub.psubscribe(self.store.keys.done_pattern)
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is not None:
                        self._handle(msg)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:  # the subscription dropped: waiters read their status again
                log.warning("lost the done-notice subscription (%r); reconnecting", exc)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                self._wake_all()
                await asyncio.sleep(RECONNECT_PAUSE)

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "psubscribe":  # once per connection: the subscription is live from here on
            self._wake_all()  # anything that ended while we were not subscribed
        elif kind == "pmessage":
            key, _, outcome = _s(msg["data"]).partition(" ")
            for fut in self._futures.pop(key, []):
                if not fut.done():
                    fut.set_result(outcome)

    def _wake_all(self) -> None:
        futures, self._futures = self._futures, {}
        for group in futures.values():
            for fut in group:
                if not fut.done():
                    fut.set_result("")

    async def watch(self, key: str) -> tuple[str, Record | None]:
        """Ask for a notice when ``key`` ends (before launching it, so none is missed). Returns
        the key it lives under now and, when it has ended already, its record."""
        await self._ensure_listener()
        for _ in range(MAX_FORWARDS):
            answer = await ride_out(
                functools.partial(self.store.watch, key),
                self.outage_seconds,
                f"waiting for {key}",
                log,
            )
            if answer.verdict is Verdict.MOVED:
                key = answer.detail[0]
                continue
            if answer.verdict is Verdict.MISSING:
                raise SignatureNotFoundError(key)
            if answer.verdict is Verdict.FINISHED:
                return key, Record(key, answer.pairs())
            return key, None
        raise SignatureNotFoundError(key)

    async def wait(self, key: str, timeout: float | None = None) -> Record:
        """Block until the signature reaches a terminal status; return its record."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            fut: asyncio.Future[str] = loop.create_future()
            self._futures.setdefault(key, []).append(fut)
            current, record = await self.watch(key)
            if record is not None or current != key:
                self._discard(key, fut)
                if record is not None:
                    return record
                key = current  # it moved: listen under the key it has now
                continue
            remaining = None if deadline is None else deadline - loop.time()
            try:
                notice = await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                self._discard(key, fut)
                _, record = await self.watch(key)
                if record is not None:
                    return record
                raise TimeoutError(f"signature {key} did not finish within {timeout} s") from None
            if notice == Notice.NEVER:
                _, record = await self.watch(key)
                if record is not None:
                    return record
                raise TaskCanceledError(key, "never-run (what would have started it ended)")
            # Any other notice (its end, a move, a reconnect): read it again, under its new key.

    def _discard(self, key: str, fut: asyncio.Future[str]) -> None:
        group = self._futures.get(key)
        if group and fut in group:
            group.remove(fut)
            if not group:
                del self._futures[key]

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
