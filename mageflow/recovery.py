"""Leases and recovery, written once for every engine.

Every client (a producer, a worker, an in-process app) runs one loop, every ``period`` seconds:

1. **heartbeat**: extend the leases of the tasks running in this process (the engine says which)
   and stop the local runs whose signature was canceled or interrupted meanwhile (a stop request
   that was lost still takes effect within one period);
2. **recovery**: send again what nobody is seeing through: outbox entries queued more than
   ``grace`` seconds ago that no receiver claimed (their sender died or could not reach the
   engine; for a message a durable engine accepted, the wait is the longer accepted grace, after
   which the broker or Redis must have lost it), and running tasks whose lease ran out (their
   holder died). It runs once at start-up too, so a restarted process finishes what it left.

Sending again is safe however often it happens: the claim in ``start_task.lua`` lets one
delivery through, and every transition takes effect once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from mageflow.engines.base import Engine
from mageflow.sender import Sender
from mageflow.store.redis_store import Store
from mageflow.store.schema import SignatureStatus, Verdict

log = logging.getLogger("mageflow.recovery")

#: Statuses that mean "stop this run" when the heartbeat sees them on a task running here.
STOP_STATUSES = frozenset({SignatureStatus.CANCELED, SignatureStatus.INTERRUPTED, Verdict.MISSING})
#: Actions one recovery call takes at most; a larger backlog is taken in further calls.
BATCH = 200
#: Recovery calls in one round at most, so one round is bounded however large the backlog.
MAX_CALLS = 50
#: How long the presence hash outlives the last announcement of any process.
PRESENCE_TTL_MS = 24 * 3600 * 1000


@dataclass(slots=True)
class Presence:
    """What ``mageflow workers`` shows of a process that registered tasks."""

    tasks: list[str]
    engine: str
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_json(self) -> str:
        now = int(time.time() * 1000)
        data = {"tasks": self.tasks, "engine": self.engine, "started": self.started_ms}
        return json.dumps({**data, "heartbeat": now})


class Keeper:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        sender: Sender,
        *,
        lease_seconds: float,
        period: float,
        grace_seconds: float,
        presence: Presence | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.sender = sender
        self.lease_ms = int(lease_seconds * 1000)
        self.grace_ms = int(grace_seconds * 1000)
        self.period = period
        self.presence = presence
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.announce()
        await self.recover()
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="mageflow-keeper")

    async def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        if self.presence is not None:
            with contextlib.suppress(Exception):  # a stale entry only ages out
                await self.store.retire(self.presence.worker)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.beat()
                await self.announce()
                await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis trouble: leases run on; the next round tries again
                log.warning("lease/recovery round failed: %r", exc)

    async def announce(self) -> None:
        if self.presence is not None:
            await self.store.announce(
                self.presence.worker, self.presence.to_json(), PRESENCE_TTL_MS
            )

    async def beat(self) -> None:
        keys = self.engine.running_keys()
        if not keys:
            return
        statuses = await self.store.heartbeat(keys, self.lease_ms)
        for key, status in zip(keys, statuses, strict=True):
            if status in STOP_STATUSES and self.engine.stop_local(key):
                log.info("stopped the run of %s here: its status is %s", key, status)

    async def recover(self) -> int:
        """One recovery round; returns how many messages it sent again."""
        sent = 0
        for _ in range(MAX_CALLS):
            actions = await self.store.recover(self.grace_ms, BATCH)
            mine = [a for a in actions if not self.engine.holds(a.key)]
            if mine:
                log.info("recovery: sending %d message(s) again", len(mine))
                await self.sender.send(mine)
                sent += len(mine)
            if len(actions) < BATCH:
                break
        return sent
