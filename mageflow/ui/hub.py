"""What the viewer's requests share: one store opened on first use, and the stop signal for
its event streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from mageflow.store.redis_store import Store

#: Opens a store and closes it on exit, as :func:`mageflow.inspection.open_store` does.
StoreFactory = Callable[[], AbstractAsyncContextManager[Store]]


class Hub:
    """The store of one app, opened lazily so a Redis that is down when the server starts
    gives 503 answers (and a later request succeeds once it is back) instead of no server."""

    def __init__(self, factory: StoreFactory, interval: float, keepalive: float) -> None:
        self.factory = factory
        #: Seconds between two reads of an event stream.
        self.interval = interval
        #: Seconds of silence after which a stream sends a comment, so proxies keep it open.
        self.keepalive = keepalive
        #: Open event streams (tests and shutdown use it to see that they ended).
        self.streams = 0
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._exits = AsyncExitStack()
        self._store: Store | None = None

    async def store(self) -> Store:
        if self._store is None:
            async with self._lock:  # concurrent first requests open one store, not several
                if self._store is None:
                    self._store = await self._exits.enter_async_context(self.factory())
        return self._store

    def stop_streams(self) -> None:
        """Make every event stream end within one interval (the server is shutting down:
        uvicorn waits for open responses, and a stream never ends by itself)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def pause(self) -> bool:
        """Wait one interval; False (at once) when the streams must stop."""
        try:
            async with asyncio.timeout(self.interval):
                await self._stopping.wait()
        except TimeoutError:
            return True
        return False

    async def aclose(self) -> None:
        self.stop_streams()
        self._store = None
        await self._exits.aclose()

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.aclose()
