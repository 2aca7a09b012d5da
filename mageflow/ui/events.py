"""Server-sent events of status changes, for the workflow list or one workflow's tree.

The stream re-reads what it follows every ``Hub.interval`` seconds. It opens with a snapshot
(``event: list`` or ``event: tree``, the same JSON as the matching GET), then sends, as things
change, ``event: status`` with ``{"key", "status"}`` for each node whose status changed and a
new snapshot whenever anything in it changed (swarm counts and results move without a status
change). A comment line keeps a quiet stream open through proxies.

Reading Redis by polling keeps the viewer a pure reader: it needs no pub/sub of its own and
sees every change however it was made. The stream ends when the client goes away, when the
workflow is gone, or when the server stops (within one interval).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis import exceptions as redis_errors
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mageflow.errors import MageflowError, RedisUnavailableError
from mageflow.ui.hub import Hub

Reader = Callable[[], Awaitable[Any]]
Statuses = Callable[[Any], dict[str, str]]
#: Errors after which Redis may answer again: the stream says so and keeps trying.
PASSING = (RedisUnavailableError, redis_errors.ConnectionError, redis_errors.TimeoutError)


def message(event: str, data: Any) -> bytes:
    """One SSE message; JSON escapes newlines, so ``data`` always fits on one line."""
    text = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {text}\n\n".encode()


def error_data(exc: BaseException) -> dict[str, str]:
    name = type(exc).__name__ if isinstance(exc, MageflowError) else "RedisUnavailableError"
    return {"error": name, "message": str(exc)}


def row_statuses(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {row["key"]: row["status"] for row in rows}


async def feed(
    hub: Hub, read: Reader, first: Any, snapshot: str, statuses_of: Statuses
) -> AsyncGenerator[bytes, None]:
    """The messages of one stream; ``first`` is the read made before the stream started (so a
    bad key was a 404, not an error inside a 200 stream)."""
    loop = asyncio.get_running_loop()
    yield message(snapshot, first)
    sent, known = json.dumps(first, default=str), statuses_of(first)
    quiet_since, failing = loop.time(), False
    while await hub.pause():
        try:
            current = await read()
        except PASSING as exc:
            if not failing:  # once per outage, not every interval
                yield message("error", error_data(exc))
            failing, sent = True, ""  # a snapshot follows the outage, changed or not
            continue
        except MageflowError as exc:  # the workflow expired or is no longer a record
            yield message("error", error_data(exc))
            return
        failing = False
        now = statuses_of(current)
        changes = [(k, s) for k, s in now.items() if known.get(k) != s]
        for key, status in changes:
            yield message("status", {"key": key, "status": status})
        text = json.dumps(current, default=str)
        if text != sent:  # always so when a status changed: statuses are part of it
            yield message(snapshot, current)
        elif loop.time() - quiet_since >= hub.keepalive:
            yield b": keep-alive\n\n"
        else:
            continue
        sent, known, quiet_since = text, now, loop.time()


class EventStream(StreamingResponse):
    """Sends ``feed``'s messages until it ends or the client disconnects, whichever is first.

    Starlette's StreamingResponse stops on a disconnect only when it next writes (for ASGI
    servers of spec 2.4), and a quiet stream may not write for a while; listening for the
    disconnect here ends the stream, and frees its reads, as soon as the client goes."""

    def __init__(self, hub: Hub, messages: AsyncGenerator[bytes, None]) -> None:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        super().__init__(messages, media_type="text/event-stream", headers=headers)
        self.hub = hub
        self.messages = messages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.hub.streams += 1
        streaming = asyncio.ensure_future(self._send_all(send))
        listening = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
            failed = streaming.exception() if streaming.done() else None
        finally:
            for task in (streaming, listening):
                task.cancel()
            await asyncio.gather(streaming, listening, return_exceptions=True)
            await self.messages.aclose()
            self.hub.streams -= 1
        if failed is not None:
            raise failed

    async def _send_all(self, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:  # the client went away in the middle of a write
            return
