"""Cancel requests for the Taskiq engine: every worker listens on the namespace's cancel channel
and stops the run of the signature key it hears, if it runs it (``TaskiqEngine.cancel``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mageflow.engines.base import EngineServices

log = logging.getLogger("mageflow.taskiq")


async def listen_for_cancels(
    services: EngineServices, pubsub: Any, cancel_local: Callable[[str], bool]
) -> None:
    """Call ``cancel_local`` with every key published on the cancel channel, forever; a lost
    subscription is made again (runs canceled meanwhile stop through the heartbeat's status
    check). ``pubsub`` is already subscribed, so no request sent after the start is missed."""
    channel = services.keys.cancel_channel
    while True:
        try:
            if pubsub is None:
                pubsub = services.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel)
            msg = await pubsub.get_message(timeout=1.0)
            if msg and msg.get("type") == "message":
                cancel_local(_text(msg["data"]))
        except asyncio.CancelledError:
            await _close_quietly(pubsub)
            raise
        except Exception as exc:  # reconnect; runs meanwhile stop via the status check
            log.warning("cancel listener lost Redis (%r); reconnecting", exc)
            await _close_quietly(pubsub)
            pubsub = None
            await asyncio.sleep(1.0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()
